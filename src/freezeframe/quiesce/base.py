"""What every quiescer offers. The capture layer calls ``prepare`` on all, ``freeze`` in order,
takes the snapshots, then ``thaw`` in reverse order, always; ``record`` goes into the snapshot.

A quiescer holds what it holds through something that dies with freezeframe (a database
session, a file lock), or names in ``undo_on_crash`` a command the watchdog runs if freezeframe
dies while it is frozen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# The run's source paths, one per line, in the context ``prepare`` receives.
PATHS_KEY = "FREEZEFRAME_PATHS"
# "1" in the context when the snapshot is a VM's disks taken inside a guest: nothing can be added
# to it after the thaw, so what a quiescer would add then must be put in place during the hold.
IN_IMAGE_KEY = "FREEZEFRAME_IN_IMAGE"


def source_paths(context: Mapping[str, str]) -> list[str]:
    return [p for p in context.get(PATHS_KEY, "").split("\n") if p]


def within_any(path: str, roots: Iterable[str]) -> bool:
    """Whether ``path`` is one of ``roots`` or lies below one, symlinks resolved."""
    real = os.path.realpath(path)
    return any(
        real == base or real.startswith(base.rstrip("/") + "/")
        for base in map(os.path.realpath, roots)
    )


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


@dataclass
class BackupFiles:
    """What a quiescer adds to the backup once the application is released: files known only
    then (PostgreSQL's backup_label and the WAL up to the end of its backup), staged under the
    directory it was given and stored at the application's own paths, and files the snapshot
    holds that a restore must not have (a server's pid file)."""

    add: dict[str, str] = field(default_factory=dict)  # path as the application sees it -> staged
    leave_out: list[str] = field(default_factory=list)
    positions: dict[str, Any] = field(default_factory=dict)  # merged into the record


@runtime_checkable
class AddsFiles(Protocol):
    def files_for_backup(self, staging_dir: str, timeout_s: float) -> BackupFiles:
        """Called after every quiescer is thawed and before the backup reads the snapshots."""
