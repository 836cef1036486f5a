"""What ``freezeframe backup --vm SPEC`` prints of each VM's snapshot."""

from __future__ import annotations

from typing import Any

from freezeframe.cli.output import human_bytes, human_duration, snapshot_json
from freezeframe.service.backup import VmBackupResult


def json_of(results: list[VmBackupResult]) -> dict[str, Any]:
    return {"vms": [snapshot_json(r.snapshot) for r in results]}


def text_of(results: list[VmBackupResult]) -> str:
    return "\n".join(_text(r) for r in results)


def _text(result: VmBackupResult) -> str:
    snap = result.snapshot
    s, report = snap.summary, snap.consistency
    line = f"Consistency: {report.achieved} ({s['disks']} disks at one instant"
    frozen = [v.get("freeze_ms") for v in report.volumes if v.get("freeze_ms") is not None]
    if frozen:
        line += f", guest file systems frozen for {frozen[0]:.1f} ms"
    held = report.quiesce.get("quiescers") or []
    if held:
        kinds = ", ".join(str(q.get("kind")) for q in held)
        line += f", {kinds} held in the guest for {report.quiesce.get('window_ms', 0):.1f} ms"
    if report.reason:
        line += f"; not higher: {report.reason}"
    return "\n".join(
        [
            f"VM {snap.paths[0].rsplit('/', 1)[-1]}: read {human_bytes(s['bytes_read'])} of "
            f"{human_bytes(s['bytes_total'])}, added {human_bytes(s['bytes_added'])} in "
            f"{human_duration(s['duration_seconds'])}",
            line + ")",
            f"snapshot {snap.short_id} saved",
        ]
    )
