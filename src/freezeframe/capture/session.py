"""One backup's capture: resolve the sources to volumes, decide the level every volume can
reach, take the snapshots, hand the backup read paths inside them, and always remove them.

Volumes are the sources' own and every volume below a source (other mounts, nested btrfs
subvolumes). At `crash`, one volume is captured by its snapshot alone, which is atomic; several
are snapshotted one after the other while every process writing to them is paused, so together
they show one instant. At `filesystem` each file system is at rest while its snapshot is taken:
frozen (FIFREEZE) where the provider needs it, or, on btrfs, which must not be frozen, with its
writers paused while the snapshot flushes and commits. See ``instant`` for the mechanics.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from freezeframe import hooks
from freezeframe.capture import layout
from freezeframe.capture.application import ApplicationHold
from freezeframe.capture.instant import Instant, take_all
from freezeframe.capture.providers.base import ReadOnlyView, SnapshotProvider, new_run_id
from freezeframe.capture.providers.registry import (
    BY_NAME,
    DEFAULT_OPTIONS,
    SnapshotOptions,
    provider_for,
)
from freezeframe.capture.volumes import Volume, resolve_volume
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import (
    ConsistencyUnreachable,
    FreezeFailed,
    FreezeframeError,
    QuiesceError,
    SnapshotDamaged,
    UsageError,
    WriterPauseFailed,
)
from freezeframe.levels import AUTO, Level, Requested, parse_requested
from freezeframe.quiesce.base import PATHS_KEY, BackupFiles, Quiescer

DEFAULT_PAUSE_CAP_S = 10.0  # writers paused for the snapshots (VSS holds its flush for 10 s)
DEFAULT_FREEZE_CAP_S = 10.0  # one file system frozen for its snapshot (the same 10 s)
DEFAULT_APPLICATION_CAP_S = 60.0  # applications held, first freeze to last thaw (as VSS)
DEFAULT_QUIESCER_TIMEOUT_S = 30.0  # each quiescer's own prepare, freeze and thaw
MAX_CAP_S = 3600.0
FALLBACK_HINT = " (use --fallback degrade to accept less)"


@dataclass
class CapturedPath:
    original: str
    read_path: str


@dataclass
class CaptureOutcome:
    requested: Requested
    achieved: Level
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
    # Applications held across the snapshots: window_ms, cap_s, and per quiescer its record.
    quiesce: dict[str, Any] = field(default_factory=dict)
    # Files the quiescers add after the thaw (path as recorded -> staged copy to read), and
    # files of the snapshots the backup must not hold (recorded paths).
    added_files: dict[str, str] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Caps:
    pause_s: float = DEFAULT_PAUSE_CAP_S
    freeze_s: float = DEFAULT_FREEZE_CAP_S
    application_s: float = DEFAULT_APPLICATION_CAP_S
    quiescer_s: float = DEFAULT_QUIESCER_TIMEOUT_S

    def __post_init__(self) -> None:
        for name, value in (
            ("pause", self.pause_s),
            ("freeze", self.freeze_s),
            ("application", self.application_s),
            ("quiescer timeout", self.quiescer_s),
        ):
            if not 0 < value <= MAX_CAP_S:
                raise UsageError(f"the {name} cap must be more than 0 and at most 3600 seconds")


class Capture:
    """Context manager: ``with Capture(paths, "auto", "fail") as outcome:`` back up
    ``outcome.paths``; the snapshots are removed on every way out. ``never_freeze`` names
    paths (the repository, the cache) whose file systems are never frozen."""

    def __init__(
        self,
        paths: list[str],
        requested: str = AUTO,
        fallback: str = "fail",
        *,
        one_file_system: bool = False,
        caps: Caps | None = None,
        never_freeze: tuple[str, ...] = (),
        quiescers: list[Quiescer] | None = None,
        snapshot_options: SnapshotOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.requested = parse_requested(requested)
        self.snapshot_options = snapshot_options
        if fallback not in ("fail", "degrade"):
            raise UsageError(f"unknown fallback {fallback!r} (fail or degrade)")
        self.paths = [os.path.abspath(p) for p in paths]
        self.fallback = fallback
        self.one_file_system = one_file_system
        self.caps = caps or Caps()
        self.never_freeze = never_freeze
        self.quiescers = quiescers or []
        self.hold_report: dict[str, Any] = {}
        self.hold_files = BackupFiles()
        self.views: list[ReadOnlyView] = []
        self._staging: str | None = None

    def __enter__(self) -> CaptureOutcome:
        try:
            return self._capture()
        except BaseException:
            self._remove_staging()
            raise

    def _capture(self) -> CaptureOutcome:
        plan = layout.plan(self.paths, one_file_system=self.one_file_system)
        reachable, reason, targets = self._reachable(plan)
        achieved, warnings = decide_level(self.requested, reachable, reason, self.fallback)
        reason = reason if achieved == reachable else ""
        if achieved == Level.NONE:
            return self._live(plan, warnings, reason)
        for volume, provider in targets:
            for leftover in provider.find_leftovers(volume):
                provider.remove_leftover(leftover)
        if achieved != Level.APPLICATION:
            return self._snapshots(plan, targets, achieved, warnings, reason)
        try:
            return self._snapshots(plan, targets, achieved, warnings, reason, hold=True)
        except QuiesceError as exc:
            achieved, degraded = decide_level(
                achieved, Level.FILESYSTEM, str(exc), self.fallback, message=str(exc), cause=exc
            )
            self.hold_report = {}
            self.hold_files = BackupFiles()
            return self._snapshots(plan, targets, achieved, [*warnings, *degraded], str(exc))

    def _snapshots(
        self,
        plan: layout.Layout,
        targets: list[tuple[Volume, SnapshotProvider]],
        achieved: Level,
        warnings: list[str],
        reason: str,
        *,
        hold: bool = False,
    ) -> CaptureOutcome:
        """Take the snapshots at ``achieved`` (applications held across them when ``hold``),
        then judge whether every window held."""
        run_id = new_run_id()
        try:
            with ExitStack() as stack:
                if hold:
                    application = stack.enter_context(self._application_hold(targets, run_id))
                instant = take_all(
                    targets,
                    run_id,
                    self.views,
                    at_rest=achieved.at_rest,
                    pause_cap_s=self.caps.pause_s,
                    freeze_cap_s=self.caps.freeze_s,
                )
            if hold and application.in_time:
                files = application.files_for_backup(self._staging_dir())
                self.hold_files = BackupFiles(
                    self._as_recorded(files.add),
                    sorted(self._as_recorded(dict.fromkeys(files.leave_out, ""))),
                )
        except (WriterPauseFailed, FreezeFailed) as exc:
            self._remove_views()
            return self._degrade(plan, targets, warnings, str(exc), Instant(), taking=achieved)
        except BaseException:
            self._remove_views()
            raise
        if hold:
            self.hold_report = application.report()
        if not instant.pause_in_time:
            return self._degrade(
                plan,
                targets,
                warnings,
                f"the writers' pause overran its {self.caps.pause_s:g} s cap and the watchdog "
                "resumed them during the snapshots",
                instant,
                taking=achieved,
            )
        if not instant.freezes_in_time:
            return self._degrade(
                plan,
                targets,
                warnings,
                f"a freeze overran its {self.caps.freeze_s:g} s cap and the watchdog thawed "
                "the file system during its snapshot",
                instant,
                taking=achieved,
            )
        if hold and not application.in_time:
            message = (
                f"the applications' hold passed its {self.caps.application_s:g} s cap and they "
                "were released before the snapshots were done"
            )
            achieved, degraded = self._decide_or_remove(achieved, Level.FILESYSTEM, message)
            return self._outcome(plan, achieved, [*warnings, *degraded], message, instant)
        return self._outcome(plan, achieved, warnings, reason, instant)

    @contextmanager
    def _application_hold(
        self, targets: list[tuple[Volume, SnapshotProvider]], run_id: str
    ) -> Iterator[ApplicationHold]:
        environment = {
            PATHS_KEY: "\n".join(self.paths),
            "FREEZEFRAME_RUN_ID": run_id,
            "FREEZEFRAME_LEVEL": Level.APPLICATION.value,
            "FREEZEFRAME_VOLUMES": ":".join(v.mount.mount_point for v, _p in targets),
        }
        with (
            Watchdog() as watchdog,
            ApplicationHold(
                self.quiescers,
                watchdog,
                cap_s=self.caps.application_s,
                timeout_s=self.caps.quiescer_s,
                environment=environment,
            ) as application,
        ):
            hooks.reached(hooks.Point.APPLICATIONS_HELD)
            yield application

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._remove_views()
        finally:
            self._remove_staging()

    def confirm(self, io_errors: Sequence[str] = ()) -> None:
        """Raise unless every snapshot still shows its instant whole; the backup calls it
        after reading them and before it commits what it read, with the paths whose reads
        failed with a device error: a snapshot that could not be read whole is damaged (on
        a live source those are only the files' own errors)."""
        hooks.reached(hooks.Point.SNAPSHOTS_READ)
        for view in self.views:  # first: a provider names the cause (a store overflowed...)
            BY_NAME[view.provider].confirm(view)
        if self.views and io_errors:
            raise SnapshotDamaged(
                f"reading the snapshots failed with I/O errors on {len(io_errors)} path(s), "
                f"first {io_errors[0]}; nothing read from them is kept"
            )

    def _remove_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _staging_dir(self) -> str:
        """Where quiescers stage the files they add: private to this run, never inside a
        snapshot, removed with the snapshots."""
        if self._staging is None:
            self._staging = tempfile.mkdtemp(prefix="freezeframe-files-")
        return self._staging

    def _degrade(
        self,
        plan: layout.Layout,
        targets: list[tuple[Volume, SnapshotProvider]],
        warnings: list[str],
        message: str,
        instant: Instant,
        *,
        taking: Level,
    ) -> CaptureOutcome:
        """The volumes could not be held still at ``taking``: fail, or take what is left.
        Snapshots taken while writers were still paused are one instant (`crash`), and so is
        one volume's snapshot on its own; otherwise the volumes are read live."""
        one_instant = bool(self.views) and instant.pause_in_time and len(self.views) == len(targets)
        left = Level.CRASH if one_instant or len(targets) == 1 else Level.NONE
        # At `crash` only several volumes are paused, so what is left is then `none`.
        achieved, degraded = self._decide_or_remove(taking, left, message)
        warnings = [*warnings, *degraded]
        if one_instant:
            return self._outcome(plan, achieved, warnings, message, instant)
        self._remove_views()
        if achieved == Level.CRASH:
            volume, provider = targets[0]
            view = provider.take(volume, new_run_id())
            self.views.append(view)
            provider.expose(view)
            return self._outcome(plan, achieved, warnings, message, Instant())
        return self._live(plan, warnings, message)

    def _decide_or_remove(
        self, requested: Level, reachable: Level, message: str
    ) -> tuple[Level, list[str]]:
        """``decide_level`` for a capture under way: its snapshots go when it fails."""
        try:
            return decide_level(requested, reachable, "", self.fallback, message=message)
        except ConsistencyUnreachable:
            self._remove_views()
            raise

    def _remove_views(self) -> None:
        errors = []
        for view in reversed(self.views):
            try:
                BY_NAME[view.provider].remove(view)
            except FreezeframeError as exc:
                errors.append(str(exc))
        self.views.clear()
        if errors:
            raise FreezeframeError("; ".join(errors))

    def _live(self, plan: layout.Layout, warnings: list[str], reason: str) -> CaptureOutcome:
        return CaptureOutcome(
            requested=self.requested,
            achieved=Level.NONE,
            paths=[CapturedPath(p, p) for p in self.paths],
            volumes=[_describe(v, "none") for v in plan.volumes],
            warnings=warnings,
            reason=reason,
        )

    def _outcome(
        self,
        plan: layout.Layout,
        achieved: Level,
        warnings: list[str],
        reason: str,
        instant: Instant,
    ) -> CaptureOutcome:
        view_of = {plan.key(view.volume): view for view in self.views}
        pause_ms = round(instant.pause.pause_ms, 3) if instant.pause is not None else 0.0
        records = []
        for view in self.views:
            record = _describe(view.volume, view.provider)
            record.update(
                snapshot_time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(view.created_ns / 1e9))
                + "Z",
                snapshot_ms=round(view.create_ms, 3),
                freeze_ms=round(instant.freeze_ms.get(view.volume.mount.mount_point, 0.0), 3),
                pause_ms=pause_ms,
            )
            records.append(record)
        paths = [
            CapturedPath(path, view_of[plan.key(volume)].read_path(os.path.realpath(path)))
            for path, volume in plan.sources
        ]
        nested = [view for view in self.views if view.volume in plan.nested]
        grafts = [CapturedPath(view.origin, view.root) for view in nested]
        pause_record: dict[str, Any] = {}
        if instant.pause is not None:
            pause_record = {
                "window_ms": pause_ms,
                "cap_s": self.caps.pause_s,
                "writers": instant.pause.report(),
            }
        excludes = sorted(
            {path for view in self.views for path in BY_NAME[view.provider].scratch_paths(view)}
        )
        return CaptureOutcome(
            requested=self.requested,
            achieved=achieved,
            paths=paths,
            volumes=records,
            warnings=warnings,
            from_snapshot=True,
            excludes=excludes,
            grafts=grafts,
            reason=reason,
            pause=pause_record,
            quiesce=self.hold_report,
            added_files=self.hold_files.add,
            left_out=self.hold_files.leave_out,
        )

    def _as_recorded(self, files: dict[str, str]) -> dict[str, str]:
        """Keys from the application's view (real paths) to the paths the backup records
        (the sources as given, which may lead there through a symlink)."""
        recorded = {}
        for path, staged in files.items():
            for source in self.paths:
                real = os.path.realpath(source)
                if path == real or path.startswith(real.rstrip("/") + "/"):
                    recorded[source + path[len(real) :]] = staged
                    break
            else:
                raise QuiesceError(f"{path} is not inside the paths backed up")
        return recorded

    def _reachable(
        self, plan: layout.Layout
    ) -> tuple[Level, str, list[tuple[Volume, SnapshotProvider]]]:
        """The highest level every volume reaches together, why not higher, and the provider
        of each volume."""
        targets = []
        for volume in plan.volumes:
            provider, why = provider_for(volume, self.snapshot_options)
            if provider is None:
                return Level.NONE, f"{volume.path}: {why}", []
            targets.append((volume, provider))
        protected = self._protected_mounts()
        for volume, provider in targets:
            if provider.needs_freeze and volume.mount.mount_point in protected:
                return (
                    Level.CRASH,
                    f"{volume.mount.mount_point} holds the repository or freezeframe's cache, "
                    "and freezeframe never freezes it",
                    targets,
                )
        if not self.quiescers:
            return (
                Level.FILESYSTEM,
                "no application quiescer given (--quiesce KIND:TARGET)",
                targets,
            )
        return Level.APPLICATION, "", targets

    def _protected_mounts(self) -> set[str]:
        mounts = {"/"}
        for path in self.never_freeze:
            existing = path
            while not os.path.exists(existing) and existing not in ("/", ""):
                existing = os.path.dirname(existing)
            try:
                mounts.add(resolve_volume(existing or "/").mount.mount_point)
            except FreezeframeError:
                continue
        return mounts


def decide_level(
    requested: Requested,
    reachable: Level,
    reason: str,
    fallback: str,
    *,
    message: str = "",
    cause: BaseException | None = None,
) -> tuple[Level, list[str]]:
    """The level to take and the warnings to give: ``requested`` when ``reachable`` allows it
    (``auto``: the highest reachable), else ConsistencyUnreachable (``fallback`` fail) or
    ``reachable`` with a warning saying why (``fallback`` degrade). Paths and VMs decide alike,
    before the capture (why not: ``reason``) and during it, when a level taken is lost
    (``message`` says what happened; ``cause`` is the exception that said so)."""
    if requested == AUTO:
        return reachable, []
    if requested <= reachable:
        return requested, []
    message = message or f"consistency {requested} is not reachable: {reason}"
    if fallback == "fail":
        error = ConsistencyUnreachable(message + FALLBACK_HINT)
        if cause is not None:
            raise error from cause
        raise error
    return reachable, [f"{message}; degraded to {reachable}"]


def _describe(volume: Volume, provider: str) -> dict[str, Any]:
    return {
        "mount_point": volume.mount.mount_point,
        "fs_type": volume.fs_type,
        "device": volume.mount.source,
        "subvolume": volume.subvolume,
        "provider": provider,
    }
