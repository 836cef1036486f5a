"""snapshots, ls, diff and stats: reading what the repository holds, without changing it.

None takes a lock: they write nothing, so they run even while another process holds the
repository exclusively. The repository may come without its index: those that read trees load it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from freezeframe.errors import NotFound
from freezeframe.repository.diff import Change, diff_snapshots
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, find_snapshot, list_snapshots
from freezeframe.repository.stats import repository_stats, restore_size
from freezeframe.repository.tree import Node
from freezeframe.repository.walk import find_node, walk_tree


@dataclass(frozen=True)
class SnapshotsRequest:
    host: str | None = None
    tags: tuple[str, ...] = ()  # a snapshot must carry all of them


def snapshots(repo: Repository, request: SnapshotsRequest) -> list[Snapshot]:
    """The snapshots of the host carrying every tag, oldest first."""
    return [
        s
        for s in list_snapshots(repo)
        if (request.host is None or s.host == request.host)
        and all(tag in s.tags for tag in request.tags)
    ]


@dataclass(frozen=True)
class ListRequest:
    snapshot: str  # an id prefix, or latest
    path: str = "/"  # only this path of the snapshot and what is below it


@dataclass
class Listing:
    snapshot: Snapshot
    entries: list[tuple[bytes, Node]]  # absolute path in the snapshot, node; tree order


def list_files(repo: Repository, request: ListRequest) -> Listing:
    """The node at the path (when it is one) and everything below it; NotFound when a path
    other than the root is not in the snapshot."""
    repo.ensure_index()
    snapshot = find_snapshot(repo, request.snapshot)
    components = [c for c in os.fsencode(request.path).split(b"/") if c]
    entries = list(_entries(repo, snapshot.tree, components))
    if components and not entries:
        raise NotFound(f"{request.path} is not in snapshot {snapshot.short_id}")
    return Listing(snapshot, entries)


def _entries(
    repo: Repository, tree: bytes, components: list[bytes]
) -> Iterator[tuple[bytes, Node]]:
    """Walking only below the path."""
    if not components:
        yield from walk_tree(repo, tree)
        return
    node = find_node(repo, tree, components)
    if node is None:
        return
    path = b"/" + b"/".join(components)
    yield path, node
    if node.type == "dir" and node.subtree is not None:
        yield from walk_tree(repo, node.subtree, path)


@dataclass(frozen=True)
class DiffRequest:
    first: str  # id prefixes, or latest
    second: str


@dataclass
class SnapshotDiff:
    first: Snapshot
    second: Snapshot
    changes: list[Change]


def diff(repo: Repository, request: DiffRequest) -> SnapshotDiff:
    """What changed from the first snapshot to the second."""
    repo.ensure_index()
    first = find_snapshot(repo, request.first)
    second = find_snapshot(repo, request.second)
    return SnapshotDiff(first, second, diff_snapshots(repo, first, second))


@dataclass(frozen=True)
class StatsRequest:
    restore_size: bool = False  # also add up what restoring every snapshot would write


@dataclass
class Stats:
    repository: dict[str, Any]  # repository.stats.repository_stats
    restore_size: dict[str, int] | None = None


def stats(repo: Repository, request: StatsRequest) -> Stats:
    """Counts and sizes of what is stored (and, if asked, of what it restores to)."""
    repo.ensure_index()
    result = Stats(repository_stats(repo))
    if request.restore_size:
        result.restore_size = restore_size(repo, list_snapshots(repo))
    return result
