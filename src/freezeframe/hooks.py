"""Named points in a run that tests can hook: ``hooks.reached(Point.PAUSED)`` is called there
and does nothing unless a hook is installed for that point (``install``). Tests use them to
hold a run at a point (and kill it there); production code reads no environment for that.

A bottom layer: imports nothing of freezeframe.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

Hook = Callable[["Point"], None]


class Point(StrEnum):
    # Writers paused (several volumes, or `filesystem` on a provider that is not frozen) and
    # every snapshot taken, before they are resumed.
    PAUSED = "capture.paused"
    # One file system frozen (FIFREEZE) and its snapshot taken, before the thaw.
    FROZEN = "capture.frozen"
    # Every snapshot of a capture taken and readable, writers resumed, before it is read.
    SNAPSHOTS_READABLE = "capture.snapshots_readable"
    # Every snapshot of a capture read, before they are confirmed whole.
    SNAPSHOTS_READ = "capture.snapshots_read"
    # The applications held by their quiescers, before the snapshots are taken.
    APPLICATIONS_HELD = "capture.applications_held"
    # A VM's guest file systems frozen by its agent, inside the disks' transaction.
    VM_FROZEN = "vm.frozen"
    # A VM's point-in-time view open, before its disks are read.
    VM_READING = "vm.reading"


_installed: dict[Point, Hook] = {}


def reached(point: Point) -> None:
    """Run the hook installed for ``point``, if any."""
    hook = _installed.get(point)
    if hook is not None:
        hook(point)


def install(point: Point, hook: Hook) -> None:
    """Call ``hook`` whenever ``point`` is reached (replacing an earlier hook there)."""
    _installed[point] = hook


def remove(point: Point) -> None:
    _installed.pop(point, None)
