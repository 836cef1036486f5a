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
