"""How a running operation talks to whoever started it: warnings, progress and cancellation.

The service layer never prints: a front end passes a ``Reporter`` (the CLI's writes to the
terminal, an API's would queue events), and the operation hands it each phase's progress
object to show as it likes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from freezeframe.errors import Interrupted


class Reporter(Protocol):
    def warn(self, message: str) -> None:
        """Something the user should know that does not stop the operation."""

    def phase(self, name: str, progress: object) -> AbstractContextManager[None]:
        """A phase (``backup``, ``vm NAME``, ``restore``) runs in the block; ``progress`` is
        the counter object it updates (BackupProgress, DiskProgress, RestoreProgress)."""

    @property
    def wants_totals(self) -> bool:
        """Whether someone watches progress, so estimating totals (an extra scan) pays."""


class SilentReporter:
    """Collects warnings and shows nothing: for tests and callers that only want results."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @contextmanager
    def phase(self, name: str, progress: object) -> Iterator[None]:
        yield

    @property
    def wants_totals(self) -> bool:
        return False


class Cancel:
    """Asked for by a front end (an API call, a stopping agent); the operation checks it
    between its steps and stops with ``Interrupted``. Signals still stop the CLI at once."""

    def __init__(self) -> None:
        self._requested = threading.Event()

    def request(self) -> None:
        self._requested.set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def check(self) -> None:
        if self._requested.is_set():
            raise Interrupted("cancelled")


class PhaseCounter:
    """The progress of a maintenance operation that works in steps (a repair), as the
    repository reports it: ``(phase, done, total)``; the reporter's ``phase`` gets it to show."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = ("starting", 0, 0)

    def __call__(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            self._state = (phase, done, total)

    @property
    def state(self) -> tuple[str, int, int]:
        """The phase, how many of its steps are done, of how many (0: not known)."""
        with self._lock:
            return self._state
