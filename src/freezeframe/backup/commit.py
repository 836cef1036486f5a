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
class SnapshotRecord:
    """What a source's backup knows when its tree is stored."""

    started: datetime
    paths: list[str]
    tree: bytes
    consistency: ConsistencyReport
    summary: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    host: str = ""  # '' = this host


def commit_snapshot(
    repo: Repository, record: SnapshotRecord, before_commit: Callable[[], None] | None = None
) -> Snapshot:
    """Flush what is pending, then save the snapshot (its id is set on the returned object)."""
    repo.flush()
    snapshot = Snapshot(
        time=record.started,
        host=record.host or socket.gethostname(),
        user=getpass.getuser(),
        paths=list(record.paths),
        tree=record.tree,
        program_version=f"freezeframe {__version__}",
        tags=list(record.tags),
        excludes=list(record.excludes),
        summary=record.summary,
        consistency=record.consistency,
    )
    if before_commit is not None:
        before_commit()
    save_snapshot(repo, snapshot)
    return snapshot
