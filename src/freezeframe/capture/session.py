"""One backup's capture: resolve the sources to volumes, decide the level every source can
reach, take the snapshots, hand the backup read paths inside them, and always remove them.

This step supports one or more sources on one btrfs subvolume (crash and filesystem levels) and
live reads (none). Sources on several volumes need their writers paused to be one instant; until
that is wired in, they are limited to `none`, and a nested subvolume below a source limits it too
(its content would be missing from the parent's snapshot), never silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from freezeframe.capture.doctor import LEVELS
from freezeframe.capture.providers.base import ReadOnlyView, new_run_id
from freezeframe.capture.providers.btrfs import SNAPSHOT_DIR, BtrfsProvider
from freezeframe.capture.volumes import BTRFS_SUBVOLUME_ROOT_INODE, Volume, resolve_volume
from freezeframe.errors import FreezeframeError, UsageError

RANK = {level: rank for rank, level in enumerate(reversed(LEVELS))}  # none 0 ... application 3


class ConsistencyUnreachable(FreezeframeError):
    code = "consistency_unreachable"


@dataclass
class CapturedPath:
    original: str
    read_path: str


@dataclass
class CaptureOutcome:
    requested: str
    achieved: str
    paths: list[CapturedPath]
    volumes: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    from_snapshot: bool = False
    # Paths the backup must leave out: where the snapshots themselves live.
    excludes: list[str] = field(default_factory=list)


class Capture:
    """Context manager: ``with Capture(paths, "auto", "fail") as outcome:`` back up
    ``outcome.paths``; the snapshots are removed on every way out."""

    def __init__(self, paths: list[str], requested: str = "auto", fallback: str = "fail") -> None:
        if requested != "auto" and requested not in RANK:
            raise UsageError(f"unknown consistency level {requested!r}")
        if fallback not in ("fail", "degrade"):
            raise UsageError(f"unknown fallback {fallback!r} (fail or degrade)")
        self.paths = [os.path.abspath(p) for p in paths]
        self.requested = requested
        self.fallback = fallback
        self.provider = BtrfsProvider()
        self.views: list[ReadOnlyView] = []

    def __enter__(self) -> CaptureOutcome:
        volumes = [resolve_volume(p) for p in self.paths]
        reachable, reason = self._reachable(volumes)
        achieved, warnings = self._decide(reachable, reason)
        if RANK[achieved] == 0:
            return CaptureOutcome(
                requested=self.requested,
                achieved="none",
                paths=[CapturedPath(p, p) for p in self.paths],
                volumes=[_describe(v, "none") for v in _unique(volumes)],
                warnings=warnings,
            )
        volume = volumes[0]
        for leftover in self.provider.find_leftovers(volume):
            self.provider.remove(_leftover_view(volume, leftover))
        view = self.provider.create(volume, new_run_id())
        self.views.append(view)
        record = _describe(volume, self.provider.name)
        record.update(
            snapshot_time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(view.created_ns / 1e9))
            + "Z",
            snapshot_ms=round(view.create_ms, 3),
            freeze_ms=0.0,
            pause_ms=0.0,
        )
        return CaptureOutcome(
            requested=self.requested,
            achieved=achieved,
            paths=[CapturedPath(p, view.read_path(os.path.realpath(p))) for p in self.paths],
            volumes=[record],
            warnings=warnings,
            from_snapshot=True,
            excludes=[os.path.join(volume.subvolume or "", SNAPSHOT_DIR)],
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for view in reversed(self.views):
            self.provider.remove(view)
        self.views.clear()

    def _reachable(self, volumes: list[Volume]) -> tuple[str, str]:
        """The highest level every source reaches together, and why not higher."""
        distinct = _unique(volumes)
        if len(distinct) > 1:
            return (
                "none",
                "the sources lie on several volumes (pausing writers across volumes "
                "is not available yet)",
            )
        volume = distinct[0]
        reason = self.provider.unsupported_reason(volume)
        if reason is not None:
            if volume.fs_type != "btrfs":
                reason = f"no snapshot provider for {volume.fs_type} here"
            return "none", reason
        nested = _nested_subvolumes(self.paths)
        if nested:
            return "none", f"{nested[0]} is a nested btrfs subvolume (not captured yet)"
        return "filesystem", "application quiescers are not available yet"

    def _decide(self, reachable: str, reason: str) -> tuple[str, list[str]]:
        if self.requested == "auto" or RANK[self.requested] <= RANK[reachable]:
            wanted = reachable if self.requested == "auto" else self.requested
            return wanted, []
        message = f"consistency {self.requested} is not reachable: {reason}"
        if self.fallback == "fail":
            raise ConsistencyUnreachable(message + " (use --fallback degrade to accept less)")
        return reachable, [f"{message}; degraded to {reachable}"]


def _unique(volumes: list[Volume]) -> list[Volume]:
    seen: dict[tuple[str, str | None], Volume] = {}
    for volume in volumes:
        seen.setdefault((volume.mount.mount_point, volume.subvolume), volume)
    return list(seen.values())


def _describe(volume: Volume, provider: str) -> dict[str, Any]:
    return {
        "mount_point": volume.mount.mount_point,
        "fs_type": volume.fs_type,
        "device": volume.mount.source,
        "subvolume": volume.subvolume,
        "provider": provider,
    }


def _nested_subvolumes(paths: list[str]) -> list[str]:
    """btrfs subvolume roots strictly below the sources (same mount)."""
    found = []
    for top in paths:
        if not os.path.isdir(top):
            continue
        device = os.lstat(top).st_dev
        stack = [top]
        while stack:
            current = stack.pop()
            try:
                entries = list(os.scandir(current))
            except OSError:
                continue
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) or entry.name == SNAPSHOT_DIR:
                    continue
                st = entry.stat(follow_symlinks=False)
                if st.st_ino == BTRFS_SUBVOLUME_ROOT_INODE and st.st_dev != device:
                    found.append(entry.path)
                elif st.st_dev == device:
                    stack.append(entry.path)
    return sorted(found)


def _leftover_view(volume: Volume, root: str) -> ReadOnlyView:
    return ReadOnlyView("btrfs", volume, volume.subvolume or "", root, 0, 0.0)
