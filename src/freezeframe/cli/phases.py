"""Progress of maintenance commands that work in phases (check, repair, prune): the phase and
how far it is, redrawn on a terminal."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from freezeframe.cli.output import Output, human_duration


class PhaseProgress:
    """The callback the repository layer reports to: ``(phase, done, total)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = "starting"
        self.done = 0
        self.total = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            self.phase, self.done, self.total = phase, done, total

    def render(self, elapsed: float) -> str:
        with self._lock:
            phase, done, total = self.phase, self.done, self.total
        line = f"[{human_duration(elapsed)}] {phase}"
        if total:
            line += f" {done}/{total} ({done / total:.0%})"
        return line


@contextmanager
def phases(out: Output) -> Iterator[PhaseProgress]:
    progress = PhaseProgress()
    with out.live(progress.render):
        yield progress
