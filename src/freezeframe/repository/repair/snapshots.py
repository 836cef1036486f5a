"""``repair snapshots``: write new snapshots without what the repository lost.

Each snapshot's trees are walked; a directory whose tree cannot be loaded is removed, a file
whose content has a blob the index lacks is truncated before that blob, and every tree above a
change is written again. The new snapshot keeps the original's time, host, paths and record,
gains the tag ``repaired`` and a ``repair`` section naming the original and what changed. The
original stays until ``--forget`` (or a later ``forget``) removes it, and a snapshot whose root
directory is lost cannot be repaired: only forgotten.

It trusts the index: blobs that are indexed but damaged in their pack are not seen, so run
``repair packs`` first (which drops them from the index). If the lost files still exist on the
source, a new backup stores their blobs again and heals the old snapshots instead, without
truncating anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound, UsageError
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import (
    Snapshot,
    delete_snapshot,
    load_snapshot,
    save_snapshot,
)
from freezeframe.repository.tree import Node, encode_tree
from freezeframe.repository.walk import load_tree
from freezeframe.storage.base import Kind

REPAIRED_TAG = "repaired"
RECORDED_PATHS = 1000  # in the snapshot's repair section; the command's output has them all


@dataclass(frozen=True)
class Change:
    path: str
    what: str


@dataclass
class SnapshotFix:
    original: str
    repaired: str | None
    """The new snapshot's id; None when the root directory is lost (nothing to keep)."""
    changes: list[Change] = field(default_factory=list)


@dataclass
class SnapshotRepair:
    snapshots_checked: int = 0
    fixed: list[SnapshotFix] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    """Snapshot files that cannot be read at all (nothing in them can be saved)."""
    forgotten: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class _Rewritten:
    tree: bytes | None  # None: the tree is lost
    changes: tuple[tuple[bytes, str], ...]  # (path relative to the tree, what changed)


@dataclass
class _Frame:
    tree_id: bytes
    nodes: list[Node]
    out: list[Node] = field(default_factory=list)
    changes: list[tuple[bytes, str]] = field(default_factory=list)
    position: int = 0
    changed: bool = False


def repair_snapshots(
    repo: Repository,
    refs: list[str] | None = None,
    *,
    forget: bool = False,
    dry_run: bool = False,
) -> SnapshotRepair:
    """Repair the snapshots ``refs`` (id prefixes), or all; see the module docstring. Must run
    under the exclusive lock (it may delete snapshots)."""
    result = SnapshotRepair(dry_run=dry_run)
    names = sorted(repo.list_names(Kind.SNAPSHOTS))
    if refs:
        names = _resolve(names, refs)
    memo: dict[bytes, _Rewritten] = {}
    for name in names:
        try:
            snapshot = load_snapshot(repo, name)
        except NotFound:
            continue
        except IntegrityError as exc:
            result.unreadable[name] = str(exc)
            continue
        result.snapshots_checked += 1
        rewritten = _rewrite(repo, snapshot.tree, memo, save=not dry_run)
        if rewritten.tree == snapshot.tree:
            continue
        changes = [Change(_absolute(rel), what) for rel, what in rewritten.changes]
        fix = SnapshotFix(original=snapshot.id, repaired=None, changes=changes)
        if rewritten.tree is not None:
            fix.repaired = _save(repo, snapshot, rewritten.tree, changes, dry_run)
        result.fixed.append(fix)
    if forget and not dry_run:
        repo.flush()
        doomed = [fix.original for fix in result.fixed] + sorted(result.unreadable)
        for snapshot_id in doomed:
            delete_snapshot(repo, snapshot_id)
        result.forgotten = doomed
    return result


def _save(
    repo: Repository, original: Snapshot, tree: bytes, changes: list[Change], dry_run: bool
) -> str:
    record: dict[str, Any] = {
        "original": original.id,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "changes": len(changes),
        "paths": [{"path": c.path, "what": c.what} for c in changes[:RECORDED_PATHS]],
    }
    tags = original.tags if REPAIRED_TAG in original.tags else [*original.tags, REPAIRED_TAG]
    repaired = replace(original, tree=tree, tags=tags, repair=record, id="")
    if dry_run:
        return ""
    repo.flush()  # the new trees are durable and indexed before a snapshot refers to them
    return save_snapshot(repo, repaired)


def _rewrite(
    repo: Repository, root: bytes, memo: dict[bytes, _Rewritten], *, save: bool
) -> _Rewritten:
    """The tree ``root`` without what is lost (iterative post-order, each tree once)."""
    if root in memo:
        return memo[root]
    start = _load(repo, root)
    if start is None:
        memo[root] = _Rewritten(None, ((b"", "the snapshot's root directory is lost"),))
        return memo[root]
    stack = [_Frame(root, start)]
    active = {root}
    while stack:
        frame = stack[-1]
        if frame.position == len(frame.nodes):
            stack.pop()
            active.discard(frame.tree_id)
            new_id = _store(repo, frame.out, save) if frame.changed else frame.tree_id
            memo[frame.tree_id] = _Rewritten(new_id, tuple(frame.changes))
            continue
        node = frame.nodes[frame.position]
        if node.type == "dir" and node.subtree is not None and node.subtree not in memo:
            if node.subtree in active:  # a tree inside itself: only a forged one does that
                memo[node.subtree] = _Rewritten(None, ())
                continue
            nodes = _load(repo, node.subtree)
            if nodes is None:
                memo[node.subtree] = _Rewritten(None, ())
                continue
            stack.append(_Frame(node.subtree, nodes))
            active.add(node.subtree)
            continue
        frame.position += 1
        _place(repo, frame, node, memo)
    return memo[root]


def _place(repo: Repository, frame: _Frame, node: Node, memo: dict[bytes, _Rewritten]) -> None:
    """Put ``node`` (or what is left of it) into the tree being rebuilt."""
    if node.type == "dir":
        sub = memo[node.subtree] if node.subtree is not None else _Rewritten(None, ())
        if sub.tree is None:
            frame.changes.append((node.name, "directory removed: its contents are lost"))
            frame.changed = True
            return
        for rel, what in sub.changes:
            frame.changes.append((node.name + b"/" + rel if rel else node.name, what))
        if sub.tree != node.subtree:
            node = replace(node, subtree=sub.tree)
            frame.changed = True
    elif node.type == "file":
        truncated = _truncated(repo, node)
        if truncated is not None:
            frame.changes.append(
                (
                    node.name,
                    f"truncated from {node.size} to {truncated.size} bytes: its content "
                    "from there on is lost",
                )
            )
            node = truncated
            frame.changed = True
    frame.out.append(node)


def _truncated(repo: Repository, node: Node) -> Node | None:
    """The file cut before its first blob the index lacks; None when it is whole."""
    kept = 0
    length = 0
    for blob_id in node.content:
        location = repo.locate(blob_id)
        if location is None or location.blob_type != BlobType.DATA:
            break
        kept += 1
        length += location.raw_length
    if kept == len(node.content):
        return None
    if node.sparse_map is None:
        return replace(node, content=node.content[:kept], size=length)
    extents = []
    left = length
    for start, size in node.sparse_map:
        if left <= 0:
            break
        extents.append((start, min(size, left)))
        left -= size
    end = extents[-1][0] + extents[-1][1] if extents else 0
    return replace(node, content=node.content[:kept], size=end, sparse_map=extents)


def _load(repo: Repository, tree_id: bytes) -> list[Node] | None:
    try:
        return load_tree(repo, tree_id)
    except FreezeframeError:
        return None


def _store(repo: Repository, nodes: list[Node], save: bool) -> bytes:
    data = encode_tree(nodes)
    if not save:
        return repo.blob_id(data)
    blob_id, _added = repo.save_blob(BlobType.TREE, data)
    return blob_id


def _resolve(names: list[str], refs: list[str]) -> list[str]:
    chosen = []
    for ref in refs:
        matches = [name for name in names if name.startswith(ref.lower())]
        if not matches:
            raise NotFound(f"no snapshot {ref}")
        if len(matches) > 1:
            raise UsageError(f"snapshot id {ref} is ambiguous; give more digits")
        chosen.append(matches[0])
    return sorted(set(chosen))


def _absolute(rel: bytes) -> str:
    return os.fsdecode(b"/" + rel)
