"""Pausing a cgroup's processes with the cgroup freezer (v2 ``cgroup.freeze`` or v1
``freezer.state``), in place: processes are never moved between cgroups.

As with file-system freezes, arm the watchdog first: it resumes the cgroup at the deadline or
when the pausing process dies. A cgroup that holds this process, the watchdog or PID 1 is refused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from freezeframe.errors import FreezeframeError, UsageError

SETTLE_TIMEOUT_S = 5.0


def pause(cgroup: str, *, protected_pids: tuple[int, ...] = ()) -> None:
    """Freeze every process of ``cgroup`` and wait until the kernel reports it frozen."""
    path = Path(cgroup)
    members = members_of(cgroup)
    forbidden = {1, os.getpid(), *protected_pids} & members
    if forbidden:
        raise UsageError(
            f"refusing to pause {cgroup}: it holds process(es) {sorted(forbidden)} that must "
            "keep running (freezeframe itself, its watchdog or PID 1)"
        )
    _write_state(path, frozen=True)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not is_paused(cgroup):
        if time.monotonic() > deadline:
            resume(cgroup)
            raise FreezeframeError(f"{cgroup} did not freeze within {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.001)


def resume(cgroup: str) -> None:
    _write_state(Path(cgroup), frozen=False)


def is_paused(cgroup: str) -> bool:
    path = Path(cgroup)
    if (path / "cgroup.freeze").exists():
        return "frozen 1" in (path / "cgroup.events").read_text().splitlines()
    return (path / "freezer.state").read_text().strip() == "FROZEN"


def _write_state(path: Path, *, frozen: bool) -> None:
    try:
        if (path / "cgroup.freeze").exists():
            (path / "cgroup.freeze").write_text("1" if frozen else "0")
        elif (path / "freezer.state").exists():
            (path / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            raise FreezeframeError(f"{path} is not a cgroup with a freezer")
    except OSError as exc:
        raise FreezeframeError(f"cannot {'pause' if frozen else 'resume'} {path}: {exc}") from exc


def members_of(cgroup: str) -> set[int]:
    """Every process in the cgroup and its descendants (all of them are frozen)."""
    pids: set[int] = set()
    for directory, _dirs, files in os.walk(cgroup):
        if "cgroup.procs" in files:
            text = (Path(directory) / "cgroup.procs").read_text()
            pids.update(int(line) for line in text.split())
    return pids
