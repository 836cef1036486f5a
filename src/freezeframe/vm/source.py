"""A running VM as a backup source: every disk at one instant (the guest's file systems frozen
around it at `filesystem`, its applications held by the guest hook at `application`), exported
read-only while the VM runs, with the consistency record of that instant.

``with VmSource(...) as view`` decides the level, takes the view and hands over ``view.images``
(where to read each disk) and ``view.consistency()``; the backup stores the images
(``backup.image_tree``) and commits the snapshot inside the block. Leaving the block removes
the view; only a block left without an exception (the snapshot saved) lets the previous dirty
bitmap go, so the changes since the last saved snapshot stay recorded otherwise.

In the snapshot a VM is a directory ``/vm/<name>/`` holding one sparse raw image per disk,
named after the guest device (``vda.raw``), and ``definition.json`` (the disks, their formats
and sizes, QEMU's command line). A plain ``restore`` therefore writes bootable raw images.

Crash safety: before anything is started in QEMU, the watchdog is handed the release of the VM
(thaw the guest, cancel freezeframe's block jobs, remove its nodes and overlays); the guest's
freeze has a deadline of its own (``--freeze-cap``) after which the watchdog thaws it.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from freezeframe import hooks
from freezeframe.backup.image_tree import ImageSource
from freezeframe.backup.images import ImageReader
from freezeframe.capture.session import decide_level
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import FreezeframeError, QmpError, UsageError
from freezeframe.levels import AUTO, Level, Requested
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport
from freezeframe.vm import incremental
from freezeframe.vm.guestfreeze import GuestFreeze
from freezeframe.vm.machine import Disk, VmSpec, disks_of
from freezeframe.vm.pointintime import PointInTime, cleanup, sole_run
from freezeframe.vm.qmp import Qmp
from freezeframe.vm.reach import reachable

RELEASE_DEADLINE_S = 7 * 24 * 3600.0  # the read's own limit is the caller's; this is a backstop
PROVIDER = "qemu-fleecing"

# ``open_reader(socket, export, bitmap)``: one connection to one exported disk (with the dirty
# bitmap of an incremental read).
OpenReader = Callable[[str, str, str | None], ImageReader]


@dataclass(frozen=True)
class VmLevels:
    """The level asked for a VM, what to do when it cannot be reached, and the caps."""

    requested: Requested = AUTO
    fallback: str = "fail"
    freeze_cap_s: float = 10.0
    quiesce_cap_s: float = 60.0


class VmView:
    """The VM's disks as they were at one instant, while the view lasts."""

    def __init__(self, spec: VmSpec, started: datetime, t0: float) -> None:
        self.name = spec.name
        self.directory = f"/vm/{spec.name}"
        self.started = started
        self.t0 = t0  # monotonic, for the summary's duration
        self.warnings: list[str] = []
        self.images: list[ImageSource] = []
        self.files: dict[str, Any] = {}  # beside the images: definition.json
        self._requested: Requested = AUTO
        self._achieved = Level.CRASH
        self._reason = ""
        self._quiesce: dict[str, Any] = {}
        self._volumes: Callable[[], list[dict[str, Any]]] = list

    def settle(
        self,
        requested: Requested,
        achieved: Level,
        reason: str,
        quiesce: dict[str, Any],
        volumes: Callable[[], list[dict[str, Any]]],
    ) -> None:
        """What the view reached; ``volumes`` gives each disk's record once it is read."""
        self._requested, self._achieved, self._reason = requested, achieved, reason
        self._quiesce, self._volumes = quiesce, volumes

    def consistency(self) -> ConsistencyReport:
        """The record of the instant the disks were taken."""
        return ConsistencyReport(
            requested=self._requested,
            achieved=self._achieved,
            volumes=self._volumes(),
            reason=self._reason,
            quiesce=self._quiesce,
        )


class VmSource:
    """A context manager: ``__enter__`` takes the view, ``__exit__`` removes it."""

    def __init__(
        self, repo: Repository, spec: VmSpec, open_reader: OpenReader, levels: VmLevels
    ) -> None:
        self._repo = repo
        self._spec = spec
        self._open_reader = open_reader
        self._levels = levels
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> VmView:
        if self._levels.requested == Level.NONE:
            raise UsageError("a VM is always read from a point-in-time view: use crash or higher")
        with self._stack as stack:
            view = self._take(stack)
            self._stack = stack.pop_all()  # the view outlives this method; __exit__ ends it
        return view

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._succeeded = exc_type is None
        self._stack.close()

    def _take(self, stack: contextlib.ExitStack) -> VmView:
        spec, repo, levels = self._spec, self._repo, self._levels
        result = VmView(spec, datetime.now(UTC), time.monotonic())
        qmp = stack.enter_context(Qmp(spec.qmp))
        stack.enter_context(sole_run(spec.name))
        leftovers = cleanup(qmp, spec.name)
        if leftovers:
            result.warnings.append(f"removed what an earlier run left: {', '.join(leftovers)}")
        disks = disks_of(qmp)
        if not disks:
            raise FreezeframeError(f"VM {spec.name}: QEMU reports no disk to back up")
        top, reason = reachable(spec)
        achieved, decided = decide_level(levels.requested, top, reason, levels.fallback)
        result.warnings += decided
        chain = incremental.chain_of(repo, qmp, spec.name, disks)
        result.files["definition.json"] = {
            "name": spec.name,
            "qemu": qmp.version,
            "command_line": qmp.qemu_command_line(),
            "disks": [d.to_json() for d in disks],
        }
        previous = {drive: link.bitmap for drive, link in chain.items()}
        watchdog = stack.enter_context(Watchdog())
        release = [sys.executable, "-m", "freezeframe.vm.release", "--qmp", spec.qmp]
        release += ["--vm", spec.name] + (["--qga", spec.qga] if spec.qga else [])
        token = watchdog.arm_command(release, {}, RELEASE_DEADLINE_S)
        stack.callback(watchdog.disarm, token)
        self._succeeded = False
        current: list[PointInTime] = [_view(qmp, disks, spec.name, repo)]

        def end_view() -> None:
            current[0].stop()
            # Only once the snapshot is saved may the previous bitmap go: until then the
            # changes since the last saved snapshot must stay recorded.
            current[0].finish(self._succeeded)

        stack.callback(end_view)
        application = achieved == Level.APPLICATION
        freeze = GuestFreeze(
            spec,
            watchdog,
            release,
            levels.quiesce_cap_s if application else levels.freeze_cap_s,
            f"{time.time_ns():x}" if application else None,
        )
        quiesce: dict[str, Any] = {}
        if achieved.at_rest:
            try:
                current[0].start(freeze.freeze, freeze.thaw, previous)
            except QmpError as exc:
                current[0].stop()
                if not freeze.failed:
                    raise
                achieved, decided = decide_level(
                    achieved,
                    Level.CRASH,
                    str(exc),
                    levels.fallback,
                    message=f"VM {spec.name}: {exc}",
                    cause=exc,
                )
                result.warnings += decided
                reason = str(exc)
                current[0] = _view(qmp, disks, spec.name, repo)
                current[0].start(previous=previous)
            if freeze.overran:
                message = (
                    f"VM {spec.name}: the guest's freeze passed its {levels.freeze_cap_s:g} s "
                    "cap and the watchdog thawed it before the disks were taken"
                )
                # The one transaction still took every disk at one instant.
                achieved, decided = decide_level(
                    achieved, Level.CRASH, message, levels.fallback, message=message
                )
                result.warnings += decided
                reason = message
            if achieved == Level.APPLICATION:
                quiesce = freeze.hold_report()
                if freeze.application_error:
                    achieved, decided = decide_level(
                        achieved,
                        Level.FILESYSTEM,
                        freeze.application_error,
                        levels.fallback,
                        message=f"VM {spec.name}: {freeze.application_error}",
                    )
                    result.warnings += decided
                    reason = freeze.application_error
        else:
            current[0].start(previous=previous)
        view = current[0]
        result.images = [
            ImageSource(
                f"{disk.drive}.raw",
                functools.partial(
                    self._open_reader,
                    view.nbd_socket,
                    view.export_of(disk),
                    chain[disk.drive].bitmap,
                ),
                chain[disk.drive].chunks,
            )
            for disk in disks
        ]
        final = achieved
        result.settle(
            levels.requested,
            achieved,
            reason,
            quiesce,
            lambda: [_volume_record(d, view, freeze, final, chain[d.drive]) for d in disks],
        )
        hooks.reached(hooks.Point.VM_READING)
        return result


def _view(qmp: Qmp, disks: list[Disk], name: str, repo: Repository) -> PointInTime:
    run_id = f"{time.time_ns():x}"[-8:]
    return PointInTime(qmp, disks, name, run_id, incremental.bitmap_prefix(repo))


def _volume_record(
    disk: Disk,
    view: PointInTime,
    freeze: GuestFreeze,
    achieved: Level,
    link: incremental.Link,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "drive": disk.drive,
        "node": disk.node,
        "format": disk.format,
        "size": disk.size,
        "provider": PROVIDER,
        "snapshot_time": datetime.fromtimestamp(view.instant_ns / 1e9, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        ),
        "snapshot_ms": round(view.transaction_ms, 3),
    }
    if achieved.at_rest:
        record.update(freeze_ms=round(freeze.freeze_ms, 3), guest_filesystems=freeze.frozen_count)
    record["bitmap"] = view.bitmap  # records the writes after this instant, for the next backup
    if link.parent is not None:
        record["incremental"] = {"parent": link.parent, "bitmap": link.bitmap}
    else:
        record["full_read"] = link.why_full
    return record
