"""Holding applications at a consistent point across the snapshots: every quiescer prepared,
then frozen in order, the snapshots taken, then thawed in reverse order, always.

The whole hold, first freeze to last thaw, has a cap (60 s by default, as VSS). A timer in this
process thaws everything when it passes; holds that would not die with this process (a thaw
script) are also handed to the watchdog, which runs their release at the cap or as soon as
freezeframe dies. A hold released early makes the snapshots not application-consistent, which
``in_time`` reports.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import FreezeframeError, QuiesceError
from freezeframe.quiesce.base import AddsFiles, BackupFiles, Quiescer

BACKSTOP_GRACE_S = 1.0


class ApplicationHold:
    def __init__(
        self,
        quiescers: list[Quiescer],
        watchdog: Watchdog,
        *,
        cap_s: float,
        timeout_s: float,
        environment: dict[str, str],
    ) -> None:
        self.quiescers = quiescers
        self.watchdog = watchdog
        self.cap_s = cap_s
        self.timeout_s = timeout_s
        self.environment = environment
        self.records: list[dict[str, Any]] = []
        self.window_ms = 0.0
        self.in_time = True
        self._frozen: list[tuple[Quiescer, int | None, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._started = 0.0
        self._thaw_errors: list[str] = []

    def __enter__(self) -> ApplicationHold:
        for quiescer in self.quiescers:
            quiescer.prepare(self.timeout_s, self.environment)
        self._started = time.monotonic()
        self._timer = threading.Timer(self.cap_s, self._overrun)
        self._timer.daemon = True
        self._timer.start()
        try:
            for quiescer in self.quiescers:
                self._freeze(quiescer)
        except BaseException:
            self._thaw_all()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._thaw_all()
        if self._thaw_errors and exc is None:
            raise QuiesceError("; ".join(self._thaw_errors))

    def files_for_backup(self, staging_dir: str) -> BackupFiles:
        """After the thaw: what the quiescers add to the backup and leave out of it (each
        quiescer's part is noted in its record)."""
        merged = BackupFiles()
        for quiescer, record in zip(self.quiescers, self.records, strict=False):
            if not isinstance(quiescer, AddsFiles):
                continue
            files = quiescer.files_for_backup(staging_dir, self.timeout_s)
            merged.add.update(files.add)
            merged.leave_out.extend(files.leave_out)
            record.setdefault("positions", {}).update(files.positions)
            record["files_added"] = sorted(files.add)
            record["files_left_out"] = sorted(files.leave_out)
        return merged

    def report(self) -> dict[str, Any]:
        return {
            "window_ms": round(self.window_ms, 3),
            "cap_s": self.cap_s,
            "quiescers": self.records,
        }

    def _freeze(self, quiescer: Quiescer) -> None:
        with self._lock:  # the cap's timer waits for a freeze in progress, then thaws
            if not self.in_time:
                raise QuiesceError(f"the application hold passed its {self.cap_s:g} s cap")
            self._freeze_one(quiescer)

    def _freeze_one(self, quiescer: Quiescer) -> None:
        left = self.cap_s - (time.monotonic() - self._started)
        undo = quiescer.undo_on_crash()
        token = None
        if undo is not None:
            extra = {**self.environment, "FREEZEFRAME_PHASE": "thaw"}
            # A backstop: the timer here releases at the cap; the watchdog only if this process
            # is dead or stuck past the cap and a whole thaw.
            token = self.watchdog.arm_command(
                undo, extra, max(left, 0.001) + self.timeout_s + BACKSTOP_GRACE_S
            )
        record: dict[str, Any] = {"kind": quiescer.kind, "target": quiescer.target}
        started = time.monotonic()
        try:
            record["positions"] = quiescer.freeze(
                min(self.timeout_s, max(left, 0.001)), max(left, 0.001)
            )
        except BaseException:
            record["result"] = "freeze failed"
            self.records.append(record)
            self._frozen.append((quiescer, token, record))  # half frozen: thaw it too
            raise
        record["freeze_ms"] = round((time.monotonic() - started) * 1000, 3)
        record["frozen_at"] = started
        self.records.append(record)
        self._frozen.append((quiescer, token, record))

    def _overrun(self) -> None:
        self.in_time = False
        self._thaw_all()

    def _thaw_all(self) -> None:
        """Thaw in reverse order, once, whoever calls first (the run or the cap's timer)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            while self._frozen:
                quiescer, token, record = self._frozen.pop()
                started = time.monotonic()
                try:
                    quiescer.thaw(self.timeout_s)
                    record.setdefault("result", "ok")
                except (FreezeframeError, OSError) as exc:
                    record["result"] = f"thaw failed: {exc}"
                    self._thaw_errors.append(str(exc))
                ended = time.monotonic()
                record["thaw_ms"] = round((ended - started) * 1000, 3)
                frozen_at = record.pop("frozen_at", started)
                record["pause_ms"] = round((ended - frozen_at) * 1000, 3)
                if token is not None and not self.watchdog.disarm(token):
                    self.in_time = False
            if self._started and not self.window_ms:
                self.window_ms = (time.monotonic() - self._started) * 1000
