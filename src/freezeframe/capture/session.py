"""One backup's capture: resolve the sources to volumes, decide the level every volume can
reach, take the snapshots, hand the backup read paths inside them, and always remove them.

Volumes are the sources' own and every volume below a source (other mounts, nested btrfs
subvolumes). At `crash`, one volume is captured by its snapshot alone, which is atomic; several
are snapshotted one after the other while every process writing to them is paused (see
``writer_pause``), so together they show one instant. At `filesystem` the writers are paused
even for one volume: nothing is written while the snapshot flushes and commits, so the image is
the file system's whole state at that instant, written-back or not. The watchdog resumes the
writers if the cap passes or freezeframe dies."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from freezeframe.capture import layout
from freezeframe.capture.doctor import LEVELS, snapshot_unavailable
from freezeframe.capture.providers.base import ReadOnlyView, new_run_id
from freezeframe.capture.providers.btrfs import SNAPSHOT_DIR, BtrfsProvider
from freezeframe.capture.volumes import Volume
from freezeframe.capture.watchdog import Watchdog
from freezeframe.capture.writer_pause import WriterPause
from freezeframe.errors import FreezeframeError, UsageError

RANK = {level: rank for rank, level in enumerate(reversed(LEVELS))}  # none 0 ... application 3
DEFAULT_PAUSE_CAP_S = 10.0  # writers paused across volumes (VSS holds its flush for 10 s)
# Tests only: keep the writers paused this long, so a test can kill the run inside the window.
HOLD_ENV = "FREEZEFRAME_TEST_HOLD_PAUSE_S"


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
    # Volumes below a source: their snapshot's root is read where the parent shows an empty dir.
    grafts: list[CapturedPath] = field(default_factory=list)
    reason: str = ""
    pause: dict[str, Any] = field(default_factory=dict)


class Capture:
    """Context manager: ``with Capture(paths, "auto", "fail") as outcome:`` back up
    ``outcome.paths``; the snapshots are removed on every way out."""

    def __init__(
        self,
        paths: list[str],
        requested: str = "auto",
        fallback: str = "fail",
        *,
        one_file_system: bool = False,
        pause_cap_s: float = DEFAULT_PAUSE_CAP_S,
    ) -> None:
        if requested != "auto" and requested not in RANK:
            raise UsageError(f"unknown consistency level {requested!r}")
        if fallback not in ("fail", "degrade"):
            raise UsageError(f"unknown fallback {fallback!r} (fail or degrade)")
        if not 0 < pause_cap_s <= 3600:
            raise UsageError("the pause cap must be more than 0 and at most 3600 seconds")
        self.paths = [os.path.abspath(p) for p in paths]
        self.requested = requested
        self.fallback = fallback
        self.one_file_system = one_file_system
        self.pause_cap_s = pause_cap_s
        self.provider = BtrfsProvider()
        self.views: list[ReadOnlyView] = []

    def __enter__(self) -> CaptureOutcome:
        plan = layout.plan(self.paths, one_file_system=self.one_file_system)
        reachable, reason = self._reachable(plan)
        achieved, warnings = self._decide(reachable, reason)
        reason = reason if achieved == reachable else ""
        if RANK[achieved] == 0:
            return self._live(plan, warnings, reason)
        for volume in plan.volumes:
            for leftover in self.provider.find_leftovers(volume):
                self.provider.remove_leftover(leftover)
        try:
            pause = self._snapshot_all(plan.volumes, quiesce=achieved != "crash")
        except BaseException:
            self._remove_views()
            raise
        if pause is not None and not pause.in_time:
            message = (
                f"the writers' pause overran its {self.pause_cap_s:g} s cap and the watchdog "
                "resumed them during the snapshots"
            )
            if self.fallback == "fail":
                self._remove_views()
                raise ConsistencyUnreachable(message + " (use --fallback degrade to accept less)")
            if len(self.views) == 1:  # one snapshot is atomic all the same
                warnings.append(message + "; degraded to crash")
                return self._outcome(plan, "crash", warnings, message, pause)
            self._remove_views()
            return self._live(plan, [*warnings, message + "; degraded to none"], message)
        return self._outcome(plan, achieved, warnings, reason, pause)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove_views()

    def _snapshot_all(self, volumes: list[Volume], *, quiesce: bool) -> WriterPause | None:
        """One snapshot per volume, taken while their writers are paused when there are several
        or when ``quiesce`` asks for the file system's state at rest."""
        run_id = new_run_id()
        if len(volumes) == 1 and not quiesce:
            self.views.append(self.provider.create(volumes[0], run_id))
            return None
        devices = {os.lstat(v.subvolume or v.mount.mount_point).st_dev for v in volumes}
        with Watchdog() as watchdog, WriterPause(devices, watchdog, self.pause_cap_s) as pause:
            for volume in volumes:
                self.views.append(self.provider.create(volume, run_id))
            hold = float(os.environ.get(HOLD_ENV, "0") or 0)
            if hold:
                time.sleep(hold)
        return pause

    def _remove_views(self) -> None:
        errors = []
        for view in reversed(self.views):
            try:
                self.provider.remove(view)
            except FreezeframeError as exc:
                errors.append(str(exc))
        self.views.clear()
        if errors:
            raise FreezeframeError("; ".join(errors))

    def _live(self, plan: layout.Layout, warnings: list[str], reason: str) -> CaptureOutcome:
        return CaptureOutcome(
            requested=self.requested,
            achieved="none",
            paths=[CapturedPath(p, p) for p in self.paths],
            volumes=[_describe(v, "none") for v in plan.volumes],
            warnings=warnings,
            reason=reason,
        )

    def _outcome(
        self,
        plan: layout.Layout,
        achieved: str,
        warnings: list[str],
        reason: str,
        pause: WriterPause | None,
    ) -> CaptureOutcome:
        view_of = {plan.key(view.volume): view for view in self.views}
        records = []
        for view in self.views:
            record = _describe(view.volume, self.provider.name)
            record.update(
                snapshot_time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(view.created_ns / 1e9))
                + "Z",
                snapshot_ms=round(view.create_ms, 3),
                freeze_ms=0.0,
                pause_ms=round(pause.pause_ms, 3) if pause is not None else 0.0,
            )
            records.append(record)
        paths = [
            CapturedPath(path, view_of[plan.key(volume)].read_path(os.path.realpath(path)))
            for path, volume in plan.sources
        ]
        grafts = [
            CapturedPath(view.origin, view.root)
            for view in self.views
            if view.volume in plan.nested
        ]
        pause_record: dict[str, Any] = {}
        if pause is not None:
            pause_record = {
                "window_ms": round(pause.pause_ms, 3),
                "cap_s": self.pause_cap_s,
                "writers": pause.report(),
            }
        return CaptureOutcome(
            requested=self.requested,
            achieved=achieved,
            paths=paths,
            volumes=records,
            warnings=warnings,
            from_snapshot=True,
            excludes=[
                os.path.join(v.subvolume or v.mount.mount_point, SNAPSHOT_DIR) for v in plan.volumes
            ],
            grafts=grafts,
            reason=reason,
            pause=pause_record,
        )

    def _reachable(self, plan: layout.Layout) -> tuple[str, str]:
        """The highest level every volume reaches together, and why not higher."""
        for volume in plan.volumes:
            why = snapshot_unavailable(volume)
            if why is not None:
                return "none", f"{volume.path}: {why}"
        return "filesystem", "application quiescers are not available yet"

    def _decide(self, reachable: str, reason: str) -> tuple[str, list[str]]:
        if self.requested == "auto" or RANK[self.requested] <= RANK[reachable]:
            wanted = reachable if self.requested == "auto" else self.requested
            return wanted, []
        message = f"consistency {self.requested} is not reachable: {reason}"
        if self.fallback == "fail":
            raise ConsistencyUnreachable(message + " (use --fallback degrade to accept less)")
        return reachable, [f"{message}; degraded to {reachable}"]


def _describe(volume: Volume, provider: str) -> dict[str, Any]:
    return {
        "mount_point": volume.mount.mount_point,
        "fs_type": volume.fs_type,
        "device": volume.mount.source,
        "subvolume": volume.subvolume,
        "provider": provider,
    }
