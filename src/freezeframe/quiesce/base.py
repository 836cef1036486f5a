"""What every quiescer offers. The capture layer calls ``prepare`` on all, ``freeze`` in order,
takes the snapshots, then ``thaw`` in reverse order, always; ``record`` goes into the snapshot.

A quiescer holds what it holds through something that dies with freezeframe (a database
session, a file lock), or names in ``undo_on_crash`` a command the watchdog runs if freezeframe
dies while it is frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from freezeframe.errors import FreezeframeError


class QuiesceError(FreezeframeError):
    code = "quiesce_failed"


class Quiescer(Protocol):
    kind: str
    target: str

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        """Connect and check (versions, permissions) before anything is frozen. ``context``
        describes the run (FREEZEFRAME_RUN_ID, _LEVEL, _VOLUMES) for those that pass it on."""

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        """Bring the application to a consistent point within ``timeout_s`` and hold it, for
        ``hold_s`` at most (what is left of the cap); returns what to record (positions...)."""

    def thaw(self, timeout_s: float) -> None:
        """Release it. Called even when ``freeze`` failed half way; must not raise for an
        application that is already released."""

    def undo_on_crash(self) -> list[str] | None:
        """A command that releases the application if freezeframe dies while frozen, or None
        when the hold dies with this process anyway."""
