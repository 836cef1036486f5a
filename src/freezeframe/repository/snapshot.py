"""Snapshot objects: what was backed up, when, from where, and with which consistency.

A snapshot is encrypted JSON in ``snapshots/<id>``; its id is the BLAKE3 of the stored bytes.
The ``consistency`` section is the record of the capture: the level asked for, the level reached,
per-volume details, and, for a live read (level ``none``), the files that changed while read.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from freezeframe.documents import too_deep
from freezeframe.errors import IntegrityError, NotFound, UsageError
from freezeframe.levels import Level
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind

SNAPSHOT_AAD = b"freezeframe-snapshot"
LEVELS = Level.ascending()  # what ``achieved`` (and ``requested``, or auto) holds, lowest first


@dataclass
class ConsistencyReport:
    requested: str = "none"
    achieved: str = "none"
    volumes: list[dict[str, Any]] = field(default_factory=list)
    changed_during_read: list[str] = field(default_factory=list)
    # Why the level is not higher (empty when it is the highest there is or was asked for).
    reason: str = ""
    # Writers paused so that several volumes show one instant: window_ms, cap_s, writers.
    pause: dict[str, Any] = field(default_factory=dict)
    # Applications held across the snapshots: window_ms, cap_s, quiescers (kind, target,
    # positions, freeze/thaw/pause ms, result).
    quiesce: dict[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    time: datetime
    host: str
    user: str
    paths: list[str]
    tree: bytes
    program_version: str
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    consistency: ConsistencyReport = field(default_factory=ConsistencyReport)
    parent: str | None = None
    repair: dict[str, Any] = field(default_factory=dict)
    """Set on a snapshot written by ``repair snapshots``: the original's id, when, and what
    was removed or truncated."""
    original: str | None = None
    """Set on a snapshot written by ``copy``: the id of the snapshot it copies, in the
    repository it was first made in (a copy of a copy names the first)."""
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "host": self.host,
            "user": self.user,
            "paths": self.paths,
            "tags": self.tags,
            "excludes": self.excludes,
            "tree": self.tree.hex(),
            "parent": self.parent,
            "program_version": self.program_version,
            "summary": self.summary,
            "consistency": asdict(self.consistency),
        } | self._optional()

    def _optional(self) -> dict[str, Any]:
        """The fields only some snapshots have (written by ``repair snapshots``, ``copy``)."""
        return ({"repair": self.repair} if self.repair else {}) | (
            {"original": self.original} if self.original else {}
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any], snapshot_id: str) -> Snapshot:
        try:
            when = datetime.fromisoformat(doc["time"])
            if when.utcoffset() is None:  # would not sort beside the others
                raise ValueError(f"time {doc['time']!r} has no UTC offset")
            return cls(
                id=snapshot_id,
                time=when,
                host=doc["host"],
                user=doc["user"],
                paths=list(doc["paths"]),
                tags=list(doc.get("tags", [])),
                excludes=list(doc.get("excludes", [])),
                tree=bytes.fromhex(doc["tree"]),
                parent=doc.get("parent"),
                program_version=doc.get("program_version", ""),
                summary=dict(doc.get("summary", {})),
                consistency=ConsistencyReport(**doc.get("consistency", {})),
                repair=dict(doc.get("repair", {})),
                original=_original(doc.get("original")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"snapshot {snapshot_id[:8]} is malformed: {exc}") from exc


def _original(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"original {value!r} is not a snapshot id")
    return value


def save_snapshot(repo: Repository, snapshot: Snapshot) -> str:
    data = json.dumps(snapshot.to_json(), sort_keys=True).encode()
    snapshot.id = repo.save_file(Kind.SNAPSHOTS, data, SNAPSHOT_AAD)
    return snapshot.id


def load_snapshot(repo: Repository, snapshot_id: str) -> Snapshot:
    data = repo.load_file(Kind.SNAPSHOTS, snapshot_id, SNAPSHOT_AAD)
    return parse_snapshot(data, snapshot_id)


def parse_snapshot(data: bytes, snapshot_id: str) -> Snapshot:
    """A decrypted snapshot document; IntegrityError when it is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise IntegrityError(f"snapshot {snapshot_id[:8]} is not JSON") from exc
    if not isinstance(doc, dict) or too_deep(doc):
        raise IntegrityError(f"snapshot {snapshot_id[:8]} is malformed")
    return Snapshot.from_json(doc, snapshot_id)


def list_snapshots(repo: Repository, *, strict: bool = False) -> list[Snapshot]:
    """All snapshots, oldest first.

    A snapshot file that cannot be read is left out with one warning, so one damaged file does
    not hide every other snapshot; ``strict`` (prune: whatever it references must not be
    deleted) raises instead."""
    snapshots = []
    for name in repo.list_names(Kind.SNAPSHOTS):
        try:
            snapshots.append(load_snapshot(repo, name))
        except NotFound:
            continue  # forgotten since the listing
        except IntegrityError as exc:
            if strict:
                raise
            repo.warn(f"{exc}; it is left out (`freezeframe repair snapshots` removes it)")
    return sorted(snapshots, key=lambda s: (s.time, s.id))


def find_snapshot(repo: Repository, ref: str, *, host: str | None = None) -> Snapshot:
    """A snapshot by id prefix, or ``latest`` (optionally the latest of a host)."""
    if ref == "latest":
        candidates = [s for s in list_snapshots(repo) if host is None or s.host == host]
        if not candidates:
            raise NotFound("the repository has no snapshots yet")
        return candidates[-1]
    if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
        raise UsageError(f"{ref!r} is not a snapshot id (give at least 4 hex digits, or latest)")
    matches = [name for name in repo.list_names(Kind.SNAPSHOTS) if name.startswith(ref)]
    if not matches:
        raise NotFound(f"no snapshot {ref}")
    if len(matches) > 1:
        raise UsageError(f"snapshot id {ref} is ambiguous; give more digits")
    return load_snapshot(repo, matches[0])


def delete_snapshot(repo: Repository, snapshot_id: str) -> None:
    repo.storage.delete(Kind.SNAPSHOTS, snapshot_id)
