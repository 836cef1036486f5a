"""Pausing every process that writes to a set of volumes for the few milliseconds their
snapshots take, so snapshots taken one after the other show one instant: while no writer runs,
nothing on those volumes changes.

Each writer is paused through its own freezer cgroup, in place; where that cgroup is the root,
has no freezer, or also holds freezeframe, its watchdog, one of its ancestors or PID 1, the
writer alone gets SIGSTOP. Every pause is handed to the watchdog first, with the time left
under the cap, so a crash of freezeframe or an overrun resumes the writers within a second.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from freezeframe.capture import pause, processes
from freezeframe.capture.processes import Process
from freezeframe.capture.volumes import MOUNTINFO, parse_mountinfo
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import (
    FreezeframeError,
    WriterPauseFailed,
)

# Writers found while others are already paused are paused too, round after round; a set of
# volumes that keeps gaining writers after this many rounds is not pausable.
MAX_ROUNDS = 5
STOPPED_STATES = ("T", "t")


@dataclass(frozen=True)
class PausedWriter:
    pid: int
    comm: str
    how: str  # "cgroup" or "sigstop"
    cgroup: str | None


class WriterPause:
    """``with WriterPause(devices, watchdog, cap_s) as paused:`` take the snapshots inside.
    Afterwards ``pause_ms`` is the window and ``in_time`` says whether the cap held (if not,
    the watchdog resumed the writers early and the snapshots are not one instant)."""

    def __init__(self, devices: set[int], watchdog: Watchdog, cap_s: float) -> None:
        self.devices = devices
        self.watchdog = watchdog
        self.cap_s = cap_s
        self.writers: list[PausedWriter] = []
        self.pause_ms = 0.0
        self.in_time = True
        self._protected = {1, os.getpid(), watchdog.pid} | processes.ancestors(os.getpid())
        self._cgroups: list[tuple[str, int]] = []
        self._stopped: list[tuple[Process, int]] = []
        self._seen: set[int] = set()
        # Read once, not once per writer inside the window: where the cgroup hierarchies are.
        self._mounts = parse_mountinfo(MOUNTINFO.read_text())
        self._started = 0.0

    def __enter__(self) -> WriterPause:
        try:
            for _round in range(MAX_ROUNDS):
                found = processes.writers_of(self.devices, self._protected | self._seen)
                if not found:
                    return self
                for process in found:
                    self._pause(process)
            raise WriterPauseFailed(
                f"new writers kept appearing on the volumes after {MAX_ROUNDS} rounds of pausing"
            )
        except BaseException:
            self._resume_all()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._resume_all()

    def report(self) -> list[dict[str, Any]]:
        return [asdict(writer) for writer in self.writers]

    def _left_s(self) -> float:
        left = self.cap_s - (time.monotonic() - self._started)
        if left <= 0:
            raise WriterPauseFailed(f"pausing the writers took more than the {self.cap_s:g} s cap")
        return left

    def _pause(self, process: Process) -> None:
        self._seen.add(process.pid)
        if not self._started:
            self._started = time.monotonic()  # the window opens with the first pause
        cgroup = processes.freezer_cgroup_of(process.pid, self._mounts)
        if cgroup is not None and any(path == cgroup for path, _t in self._cgroups):
            self.writers.append(PausedWriter(process.pid, process.comm, "cgroup", cgroup))
            return
        if cgroup is not None and not (pause.members_of(cgroup) & self._protected):
            token = self.watchdog.arm_pause(cgroup, self._left_s())
            self._cgroups.append((cgroup, token))
            pause.pause(cgroup, protected_pids=tuple(self._protected))
            self._seen |= pause.members_of(cgroup)
            self.writers.append(PausedWriter(process.pid, process.comm, "cgroup", cgroup))
            return
        if processes.state(process.pid) in STOPPED_STATES:
            return  # stopped by someone else: not ours to continue
        token = self.watchdog.arm_stop(process, self._left_s())
        self._stopped.append((process, token))
        try:
            processes.stop(process.pid)
        except ProcessLookupError:
            return
        self._wait_stopped(process)
        self.writers.append(PausedWriter(process.pid, process.comm, "sigstop", None))

    def _wait_stopped(self, process: Process) -> None:
        """A stop takes effect when every thread returns to user space: a writer waiting on
        its disk (state D) stops when that I/O ends, which on a slow disk can take seconds;
        the pause cap bounds the wait, as it bounds the whole pause."""
        deadline = self._started + self.cap_s
        task_dir = f"/proc/{process.pid}/task"
        while True:
            try:
                tids = os.listdir(task_dir)
            except FileNotFoundError:
                return  # exited
            running = [t for t in tids if _task_state(task_dir, t) not in (*STOPPED_STATES, None)]
            if not running:
                return
            if time.monotonic() > deadline:
                where = _kernel_wait(task_dir, running[0])
                raise WriterPauseFailed(
                    f"{process.comm} (pid {process.pid}) did not stop within the "
                    f"{self.cap_s:g} s pause cap"
                    + (f" (in the kernel at {where})" if where else "")
                )
            time.sleep(0.0005)

    def _resume_all(self) -> None:
        errors = []
        for process, token in reversed(self._stopped):
            if processes.same_process(process.pid, process.start_time):
                with contextlib.suppress(ProcessLookupError):
                    processes.cont(process.pid)
            self.in_time &= self.watchdog.disarm(token)
        for cgroup, token in reversed(self._cgroups):
            try:
                pause.resume(cgroup)
            except FreezeframeError as exc:
                errors.append(str(exc))
            self.in_time &= self.watchdog.disarm(token)
        if self._started and (self._stopped or self._cgroups):
            self.pause_ms = (time.monotonic() - self._started) * 1000
        self._stopped.clear()
        self._cgroups.clear()
        if errors:
            raise FreezeframeError("; ".join(errors))


def _kernel_wait(task_dir: str, tid: str) -> str:
    """Where in the kernel a task waits (its wchan: e.g. a frozen file system's), or ''."""
    try:
        where = Path(task_dir, tid, "wchan").read_text().strip()
    except OSError:
        return ""
    return "" if where in ("", "0") else where


def _task_state(task_dir: str, tid: str) -> str | None:
    try:
        text = Path(task_dir, tid, "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2]
