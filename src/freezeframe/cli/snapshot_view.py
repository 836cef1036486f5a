"""How snapshots look in listings and in JSON (shared by several commands)."""

from __future__ import annotations

from typing import Any

from freezeframe.repository.snapshot import Snapshot


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {"id": snapshot.id, "short_id": snapshot.short_id, **snapshot.to_json()}


def snapshot_row(snapshot: Snapshot) -> list[str]:
    return [
        snapshot.short_id,
        snapshot.time.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        snapshot.host,
        ",".join(snapshot.tags),
        snapshot.consistency.achieved,
        ", ".join(snapshot.paths),
    ]


SNAPSHOT_HEADERS = ["ID", "Time", "Host", "Tags", "Consistency", "Paths"]
