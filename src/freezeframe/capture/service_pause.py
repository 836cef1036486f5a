"""Service pause, for any application: the processes of a cgroup (``cgroup:PATH``), a systemd
unit (``unit:NAME``, its cgroup) or one process (``pid:N``) paused across the snapshots, through
the cgroup freezer in place, or SIGSTOP for a single process. A quiescer like the others, so it
runs under the applications' cap; if freezeframe dies, the watchdog resumes it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

from freezeframe.capture import pause, processes
from freezeframe.capture.processes import Process
from freezeframe.errors import FreezeframeError, QuiesceError, UsageError
from freezeframe.quiesce.base import Quiescer
from freezeframe.quiesce.spec import parse as parse_application

KINDS = ("cgroup", "unit", "pid")
CGROUP2_ROOT = "/sys/fs/cgroup"


class CgroupPause:
    def __init__(self, kind: str, target: str) -> None:
        self.kind = kind
        self.target = target
        self.path = ""

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        self.path = _cgroup_path(self.kind, self.target)
        members = pause.members_of(self.path)
        protected = {1, os.getpid(), *processes.ancestors(os.getpid())}
        if members & protected:
            raise QuiesceError(
                f"{self.kind}:{self.target} holds freezeframe, one of its parents or PID 1"
            )

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        try:
            pause.pause(self.path)
        except FreezeframeError as exc:
            raise QuiesceError(f"{self.kind}:{self.target}: {exc}") from exc
        return {"cgroup": self.path, "processes": len(pause.members_of(self.path))}

    def thaw(self, timeout_s: float) -> None:
        if self.path:
            pause.resume(self.path)

    def undo_on_crash(self) -> list[str] | None:
        if os.path.exists(os.path.join(self.path, "cgroup.freeze")):
            return ["sh", "-c", 'echo 0 > "$1/cgroup.freeze"', "sh", self.path]
        return ["sh", "-c", 'echo THAWED > "$1/freezer.state"', "sh", self.path]


class ProcessPause:
    kind = "pid"

    def __init__(self, target: str) -> None:
        self.target = target
        self.process: Process | None = None
        self._stopped = False

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        if not self.target.isdigit():
            raise QuiesceError(f"pid:{self.target} is not a process id")
        pid = int(self.target)
        if pid in {1, os.getpid(), *processes.ancestors(os.getpid())}:
            raise QuiesceError(f"pid:{pid} is freezeframe, one of its parents or PID 1")
        self.process = processes.describe(pid)
        if self.process is None:
            raise QuiesceError(f"pid:{pid} is not a running process")

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        assert self.process is not None
        if processes.state(self.process.pid) in ("T", "t"):
            return {"already_stopped": True}  # not ours to continue
        try:
            os.kill(self.process.pid, signal.SIGSTOP)
        except ProcessLookupError as exc:
            raise QuiesceError(f"pid:{self.target} exited") from exc
        self._stopped = True
        return {"comm": self.process.comm}

    def thaw(self, timeout_s: float) -> None:
        if self._stopped and self.process is not None:
            if processes.same_process(self.process.pid, self.process.start_time):
                os.kill(self.process.pid, signal.SIGCONT)
            self._stopped = False

    def undo_on_crash(self) -> list[str] | None:
        return ["kill", "-CONT", self.target]


def parse(spec: str) -> Quiescer:
    """``--quiesce KIND:TARGET`` for every kind: the service pauses here, the applications'
    own quiescers from ``freezeframe.quiesce``."""
    kind, _sep, target = spec.partition(":")
    if kind == "pid":
        return ProcessPause(target)
    if kind in ("cgroup", "unit"):
        if not target:
            raise UsageError(f"--quiesce {spec!r}: expected {kind}:TARGET")
        return CgroupPause(kind, target)
    return parse_application(spec)


def _cgroup_path(kind: str, target: str) -> str:
    if kind == "unit":
        candidates = [os.path.join(CGROUP2_ROOT, "system.slice", target)]
        candidates.append(os.path.join(CGROUP2_ROOT, "unified", "system.slice", target))
    elif target.startswith("/sys/fs/cgroup/"):
        candidates = [target]
    else:
        candidates = [os.path.join(CGROUP2_ROOT, target.lstrip("/"))]
        candidates.append(os.path.join(CGROUP2_ROOT, "unified", target.lstrip("/")))
    for path in candidates:
        if os.path.exists(os.path.join(path, "cgroup.freeze")) or os.path.exists(
            os.path.join(path, "freezer.state")
        ):
            return path
    raise QuiesceError(f"{kind}:{target}: no cgroup with a freezer at {' or '.join(candidates)}")
