"""The one way a backup becomes a snapshot: every source (paths, a VM's disks) ends here.

The snapshot is written last, after every blob it references is durable and indexed, and only
while the writer still holds its lock (``before_commit``): a snapshot that names missing data
or that a prune running meanwhile could not see is never written."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from freezeframe import __version__
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport, Snapshot, save_snapshot


@dataclass
class StoredTree:
    """What reading one point-in-time view stored: the snapshot's tree and what it holds."""

    started: datetime
    paths: list[str]
    tree: bytes
    summary: dict[str, Any]
    excludes: list[str] = field(default_factory=list)
    # Files whose size or time changed while they were read (no snapshot under them).
    changed_during_read: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Labels:
    """What the user asked to be written on the snapshot."""

    tags: tuple[str, ...] = ()
    host: str = ""  # '' = this host


def commit_snapshot(
    repo: Repository,
    stored: StoredTree,
    consistency: ConsistencyReport,
    labels: Labels = Labels(),
    before_commit: Callable[[], None] | None = None,
) -> Snapshot:
    """Flush what is pending, then save the snapshot (its id is set on the returned object).
    ``consistency`` is the view's record; what the read itself noticed is added to it."""
    repo.flush()
    consistency.changed_during_read = sorted(stored.changed_during_read)
    snapshot = Snapshot(
        time=stored.started,
        host=labels.host or socket.gethostname(),
        user=getpass.getuser(),
        paths=list(stored.paths),
        tree=stored.tree,
        program_version=f"freezeframe {__version__}",
        tags=list(labels.tags),
        excludes=list(stored.excludes),
        summary=stored.summary,
        consistency=consistency,
    )
    return save_committed(repo, snapshot, before_commit)


def save_committed(
    repo: Repository, snapshot: Snapshot, before_commit: Callable[[], None] | None = None
) -> Snapshot:
    """Flush, check the lock (``before_commit``), save: a snapshot made elsewhere (``copy``)
    is committed the same way as a backup's."""
    repo.flush()
    if before_commit is not None:
        before_commit()
    save_snapshot(repo, snapshot)
    return snapshot
