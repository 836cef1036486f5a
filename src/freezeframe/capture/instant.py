"""Taking the snapshots of one capture at one instant: the writers of all volumes paused when
there are several (or when the file systems must be at rest), each file system that needs it
frozen around its own snapshot, everything handed to the watchdog first, and the snapshots made
readable only after the writers run again.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from freezeframe import hooks
from freezeframe.capture import fsfreeze
from freezeframe.capture.providers.base import ReadOnlyView, SnapshotProvider
from freezeframe.capture.volumes import Volume
from freezeframe.capture.watchdog import Watchdog
from freezeframe.capture.writer_pause import WriterPause
from freezeframe.errors import (
    FreezeFailed,
    FreezeframeError,
)


@dataclass
class Instant:
    """What it took: the writers' pause (if any) and, per frozen mount point, the freeze in ms."""

    pause: WriterPause | None = None
    freeze_ms: dict[str, float] = field(default_factory=dict)
    freezes_in_time: bool = True

    @property
    def pause_in_time(self) -> bool:
        return self.pause is None or self.pause.in_time


def take_all(
    targets: list[tuple[Volume, SnapshotProvider]],
    run_id: str,
    views: list[ReadOnlyView],
    *,
    at_rest: bool,
    pause_cap_s: float,
    freeze_cap_s: float,
) -> Instant:
    """Snapshot every volume; each view is appended to ``views`` as soon as it exists, so the
    caller removes it whatever happens next. ``at_rest`` asks for the `filesystem` level."""
    freezing = at_rest and any(provider.needs_freeze for _v, provider in targets)
    # A provider whose snapshot neither FIFREEZE nor its own take puts at rest (btrfs) gets
    # its writers paused at `filesystem`.
    pausing = len(targets) > 1 or (
        at_rest and any(not (p.needs_freeze or p.freezes_itself) for _v, p in targets)
    )
    undos = [provider.undo_argv(volume, run_id) for volume, provider in targets]
    instant = Instant()
    for volume, _provider in targets:
        fsfreeze.write_back(_root(volume))
    with ExitStack() as stack:
        needs_watchdog = pausing or freezing or any(undos)
        watchdog = stack.enter_context(Watchdog()) if needs_watchdog else None
        if pausing:
            assert watchdog is not None
            devices = {os.lstat(_root(volume)).st_dev for volume, _p in targets}
            instant.pause = stack.enter_context(WriterPause(devices, watchdog, pause_cap_s))
        for (volume, provider), undo in zip(targets, undos, strict=True):
            if at_rest and provider.needs_freeze:
                assert watchdog is not None
                view = _frozen_take(
                    volume, provider, run_id, watchdog=watchdog, cap_s=freeze_cap_s, instant=instant
                )
                views.append(view)
            else:
                views.append(
                    _guarded_take(
                        volume,
                        provider,
                        run_id,
                        undo=undo,
                        watchdog=watchdog,
                        cap_s=freeze_cap_s,
                        instant=instant,
                        at_rest=at_rest,
                    )
                )
        if pausing:
            hooks.reached(hooks.Point.PAUSED)
    providers = {provider.name: provider for _v, provider in targets}
    for view in views:
        providers[view.provider].expose(view)
    hooks.reached(hooks.Point.SNAPSHOTS_READABLE)
    return instant


def _frozen_take(
    volume: Volume,
    provider: SnapshotProvider,
    run_id: str,
    *,
    watchdog: Watchdog,
    cap_s: float,
    instant: Instant,
) -> ReadOnlyView:
    mount_point = volume.mount.mount_point
    token = watchdog.arm_freeze(mount_point, cap_s)
    started = time.monotonic()
    try:
        fsfreeze.freeze(mount_point)
    except FreezeframeError as exc:
        watchdog.disarm(token)
        raise FreezeFailed(str(exc)) from exc
    try:
        view = provider.take(volume, run_id)
        hooks.reached(hooks.Point.FROZEN)
    finally:
        fsfreeze.thaw(mount_point)
        instant.freezes_in_time &= watchdog.disarm(token)
        instant.freeze_ms[mount_point] = (time.monotonic() - started) * 1000
    return view


def _guarded_take(
    volume: Volume,
    provider: SnapshotProvider,
    run_id: str,
    *,
    undo: list[str] | None,
    watchdog: Watchdog | None,
    cap_s: float,
    instant: Instant,
    at_rest: bool,
) -> ReadOnlyView:
    """``provider.take``, with ``undo`` (its ``undo_argv``, if any) armed in the watchdog for
    the freeze cap. A provider that freezes the file system itself (LVM) records the window it
    measured (else its take's whole time, within which the freeze lies) as the freeze at
    `filesystem`."""
    token = watchdog.arm_command(undo, {}, cap_s) if undo and watchdog is not None else None
    started = time.monotonic()
    try:
        view = provider.take(volume, run_id)
    finally:
        if token is not None and watchdog is not None:
            instant.freezes_in_time &= watchdog.disarm(token)
    if at_rest and provider.freezes_itself:
        taken_ms = (time.monotonic() - started) * 1000
        window = view.window_ms if view.window_ms is not None else taken_ms
        instant.freeze_ms[volume.mount.mount_point] = window
    return view


def _root(volume: Volume) -> str:
    return volume.subvolume or volume.mount.mount_point
