"""Diff: what changed between two snapshots, path by path.

Trees are content-addressed, so two directories with the same subtree id hold the same content
and are skipped without being loaded; a diff of two similar snapshots reads only the trees along
the paths that changed. Kinds of change, one per path:

- ``added`` / ``removed``: the path exists in one snapshot only (listed with everything below);
- ``type``: a file became a directory, a symlink, ...; below it, entries are added or removed;
- ``modified``: a file's content (or a symlink's target, a device's number) differs;
- ``metadata``: same content, but mode, owner, modification time or extended attributes differ.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot
from freezeframe.repository.tree import Node
from freezeframe.repository.walk import load_tree

ChangeKind = Literal["added", "removed", "modified", "type", "metadata"]


@dataclass(frozen=True)
class Change:
    path: str
    change: ChangeKind


def diff_snapshots(repo: Repository, a: Snapshot, b: Snapshot) -> list[Change]:
    """Changes from ``a`` to ``b`` in path order (a directory before what it holds)."""
    changes = _Differ(repo).diff(a.tree, b.tree)
    return sorted(changes, key=lambda c: os.fsencode(c.path).split(b"/"))


class _Differ:
    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._trees: dict[bytes, list[Node]] = {}

    def load(self, tree_id: bytes) -> list[Node]:
        nodes = self._trees.get(tree_id)
        if nodes is None:
            nodes = load_tree(self._repo, tree_id)
            self._trees[tree_id] = nodes
        return nodes

    def diff(self, tree_a: bytes, tree_b: bytes) -> Iterator[Change]:
        # An explicit stack instead of recursion: directory depth is not bounded by us.
        stack: list[tuple[bytes, bytes, bytes]] = [(b"", tree_a, tree_b)]
        while stack:
            prefix, left, right = stack.pop()
            if left == right:
                continue
            old = {n.name: n for n in self.load(left)}
            new = {n.name: n for n in self.load(right)}
            descend: list[tuple[bytes, bytes, bytes]] = []
            for name in sorted(old.keys() | new.keys()):
                path = prefix + b"/" + name
                a, b = old.get(name), new.get(name)
                if a is None and b is not None:
                    yield from self._all(path, b, "added")
                elif b is None and a is not None:
                    yield from self._all(path, a, "removed")
                elif a is not None and b is not None:
                    if a.type != b.type:
                        yield Change(_text(path), "type")
                        yield from self._below(path, a, "removed")
                        yield from self._below(path, b, "added")
                        continue
                    kind = _compare(a, b)
                    if kind is not None:
                        yield Change(_text(path), kind)
                    if a.subtree is not None and b.subtree is not None:
                        descend.append((path, a.subtree, b.subtree))
            stack.extend(descend)

    def _all(self, path: bytes, node: Node, kind: ChangeKind) -> Iterator[Change]:
        yield Change(_text(path), kind)
        yield from self._below(path, node, kind)

    def _below(self, path: bytes, node: Node, kind: ChangeKind) -> Iterator[Change]:
        if node.subtree is None:
            return
        stack = [(path, node.subtree)]
        while stack:
            prefix, tree_id = stack.pop()
            children: list[tuple[bytes, bytes]] = []
            for child in sorted(self.load(tree_id), key=lambda n: n.name):
                child_path = prefix + b"/" + child.name
                yield Change(_text(child_path), kind)
                if child.subtree is not None:
                    children.append((child_path, child.subtree))
            stack.extend(children)


def _compare(a: Node, b: Node) -> ChangeKind | None:
    if (a.content, a.linktarget, a.rdev) != (b.content, b.linktarget, b.rdev):
        return "modified"
    if (a.mode, a.uid, a.gid, a.mtime_ns, a.xattrs) != (b.mode, b.uid, b.gid, b.mtime_ns, b.xattrs):
        return "metadata"
    return None


def _text(path: bytes) -> str:
    return os.fsdecode(path)
