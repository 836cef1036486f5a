"""ext4 and XFS on an LVM logical volume: ``lvcreate --snapshot`` of the LV, mounted read-only
under /run/freezeframe/snapshots/lvm/<vg>/<snapshot>, read, unmounted and removed.

A volume is LVM's when its device-mapper device's uuid starts with ``LVM-``; ``lvs`` then says
whether it is thin (the snapshot needs no size; refused when its pool is over 90 % full) or
thick (a copy-on-write store of ``snapshot_size`` bytes, default 20 % of the origin, refused
when the VG has less free). The checks run in ``unsupported_reason``: before anything is
suspended or frozen.

Level: lvcreate suspends the origin with lockfs (lvm2 always does for a snapshot's origin, and
offers no switch to skip it), and device-mapper's lockfs freezes the file system on it: the
snapshot is of a flushed, frozen file system, `filesystem` level: an ext4 snapshot needs no
journal replay; an XFS one still had its log replayed when mounted (seen on Linux 6.1 in the
lab), into the snapshot, over the data the frozen file system had written.
A separate FIFREEZE around it is not wanted (``needs_freeze`` is False): the suspend's own
freeze of an already frozen file system fails with EBUSY on the kernels we test. `crash` is not
offered separately: it is served by this stronger snapshot. The mount is writable underneath
(snapshots are read-write LVs), so a journal that does need replay is replayed into the
snapshot, never the origin; XFS mounts it with ``nouuid``, since it carries the origin's uuid.

A thick snapshot whose store fills becomes invalid: ``confirm`` (after reading, before
the data read from it is trusted) fails loudly then. Snapshot names carry the run id, so a
dead run's snapshots and mounts are found and removed (``find_leftovers``).

Proven in the VM lab's guest (tests/system/test_lvm_lab.py, test_lvm_backup.py): this project's
test host has no device-mapper.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from freezeframe.capture.providers.base import ReadOnlyView, run_is_alive, run_tool
from freezeframe.capture.providers.lvm_report import (
    DEFAULT_SNAPSHOT_SIZE,
    LV_FIELDS,
    LVM_UUID_PREFIX,
    VG_FIELDS,
    LogicalVolume,
    SnapshotPlan,
    SnapshotSize,
    VolumeGroup,
    damage,
    parse_lvs,
    parse_vgs,
    plan_snapshot,
    run_of_snapshot,
    split_dm_name,
)
from freezeframe.capture.volumes import Volume
from freezeframe.errors import FreezeframeError, SnapshotDamaged

MOUNT_ROOT = "/run/freezeframe/snapshots/lvm"
# $1: the snapshot's name, $2: the VG's device-mapper prefix ("my--vg-"), $3: the kernel's
# block devices (/sys/block), $4: lvm's lock file of the VG. lvcreate runs in a session of its
# own and outlives the run: this waits for it to end (40 s at most), then, under the VG's lock
# (so no lvm command is mid-change), repairs what an lvcreate that died itself (the OOM killer)
# or hangs left: every device of the VG the kernel shows suspended (dm/suspended is 1).
RESUME_SCRIPT = """
i=0
while [ $i -lt 800 ] && pgrep -f -- "--name $1 " >/dev/null 2>&1; do sleep 0.05; i=$((i+1)); done
if [ -d "$(dirname "$4")" ] && command -v flock >/dev/null 2>&1; then
  exec 9>>"$4" && flock -w 10 9
fi
suspended=$(for dm in "$3"/dm-*/dm; do
  [ "$(cat "$dm/suspended" 2>/dev/null)" = 1 ] || continue
  # "$2"-*: a VG whose name starts with this one's and a dash ("vg" and "vg-2")
  device=$(cat "$dm/name") && case "$device" in "$2"-*) ;; "$2"*) echo "$device";; esac
done)
# A device goes back to the table it ran with: a table lvcreate loaded but did not switch to is
# dropped (clear) first; resumed with it, an origin would map onto a -real layer lvcreate had
# not activated yet, and every I/O of its file system would fail. A device with no live table
# (a layer lvcreate was still making) is in no one's I/O path: it is left to lvremove.
# Layers first (a snapshot's -real and -cow, a pool's data and metadata): a device resumed
# over a layer still suspended would hang its I/O there.
repair() {
  case "$(dmsetup info -c --noheadings -o attr "$1" | tr -d ' ')" in
    L*) dmsetup clear "$1"; dmsetup resume "$1";;
  esac
}
for device in $suspended; do
  case "$device" in *-real|*-cow|*_tdata|*_tmeta|*-tpool) repair "$device";; esac
done
for device in $suspended; do
  case "$device" in *-real|*-cow|*_tdata|*_tmeta|*-tpool) ;; *) repair "$device";; esac
done
"""
FILE_SYSTEMS = ("ext4", "xfs")
SYS_DEV_BLOCK = Path("/sys/dev/block")
SYS_BLOCK = "/sys/block"
LVM_LOCK_DIR = "/run/lock/lvm"  # lvm.conf's global/locking_dir, as Debian ships it
SAMPLE_S = 0.0005  # how often the origin's suspended flag is read during lvcreate
LVM_TIMEOUT_S = 120.0
REPORT = ("--reportformat", "json", "--units", "b", "--nosuffix")


class LvmProvider:
    name = "lvm"
    needs_freeze = False  # never FIFREEZE first: lvcreate's suspend would then fail (EBUSY)
    freezes_itself = True  # lvcreate's suspend flushes and freezes the file system (lockfs)

    def __init__(self, snapshot_size: SnapshotSize = DEFAULT_SNAPSHOT_SIZE) -> None:
        self.snapshot_size = snapshot_size  # a thick snapshot's store

    def unsupported_reason(self, volume: Volume) -> str | None:
        if volume.fs_type not in FILE_SYSTEMS:
            return f"{volume.fs_type} is not ext4 or xfs"
        names = lvm_names(volume.mount.device)
        if names is None:
            return f"{volume.mount.source} is not an LVM logical volume"
        if shutil.which("lvcreate") is None:
            return "lvm2 is not installed"
        if os.geteuid() != 0:
            return "LVM snapshots need root"
        if volume.mount.read_only:
            return f"{volume.mount.mount_point} is mounted read-only"
        try:
            self.plan(volume, "19700101T000000-0-000000")
        except FreezeframeError as exc:
            return str(exc)
        return None

    def plan(self, volume: Volume, run_id: str) -> SnapshotPlan:
        """The snapshot ``take`` would create, from lvm's report now; or why none can be."""
        names = lvm_names(volume.mount.device)
        if names is None:
            raise FreezeframeError(f"{volume.mount.source} is no longer an LVM logical volume")
        lv = report_lv(*names)
        pool = report_lv(lv.vg, lv.pool) if lv.kind == "thin" and lv.pool else None
        vg = report_vg(lv.vg) if lv.kind == "thick" else None
        return plan_snapshot(lv, pool, vg, run_id, self.snapshot_size)

    def take(self, volume: Volume, run_id: str) -> ReadOnlyView:
        plan = self.plan(volume, run_id)
        started = time.monotonic()
        created_ns = time.time_ns()
        try:
            with SuspendWindow(volume.mount.device) as window:
                run_to_its_end(
                    *plan.lvcreate_argv(), what=f"lvcreate --snapshot of {plan.origin.full_name}"
                )
        except BaseException:
            # A failed or interrupted lvcreate may still have made the LV: never leave it.
            with contextlib.suppress(FreezeframeError):
                self.remove_leftover(f"{plan.origin.vg}/{plan.name}")
            raise
        elapsed_ms = (time.monotonic() - started) * 1000
        handle = f"{plan.origin.vg}/{plan.name}"
        root = os.path.join(_mount_dir(handle), volume.mount.root.lstrip("/"))
        return ReadOnlyView(
            self.name, volume, volume.mount.mount_point, root.rstrip("/"), created_ns,
            elapsed_ms, handle, window.ms,
        )  # fmt: skip

    def expose(self, view: ReadOnlyView) -> None:
        """Mount the snapshot read-only (a journal that needs it is replayed into the snapshot)."""
        directory = _mount_dir(view.handle)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        options = "ro,nouuid" if view.volume.fs_type == "xfs" else "ro"
        run_tool("mount", "-t", view.volume.fs_type, "-o", options, f"/dev/{view.handle}",
                 directory, what=f"mount of snapshot {view.handle}")  # fmt: skip

    def undo_argv(self, volume: Volume, run_id: str) -> list[str] | None:
        """What the watchdog runs if ``take`` overruns its cap or this process dies in it:
        wait for this run's lvcreate to end, then resume any device of the VG still suspended
        (an lvcreate that died between its suspend and resume leaves the origin suspended,
        and every writer to it hangs)."""
        names = lvm_names(volume.mount.device)
        if names is None:
            return None
        vg, lv = names
        name = f"ff-{run_id}-{lv}"
        return resume_argv(name, vg)

    def facts(self, volume: Volume) -> dict[str, object]:
        """For `doctor`: the LV, thin or thick, and the space its snapshot would use."""
        names = lvm_names(volume.mount.device)
        if names is None:
            return {}
        try:
            lv = report_lv(*names)
            facts: dict[str, object] = {"logical_volume": lv.full_name, "kind": lv.kind}
            if lv.kind == "thin" and lv.pool:
                pool = report_lv(lv.vg, lv.pool)
                facts.update(thin_pool=pool.full_name, pool_data_percent=pool.data_percent,
                             pool_metadata_percent=pool.metadata_percent)  # fmt: skip
            elif lv.kind == "thick":
                vg = report_vg(lv.vg)
                facts.update(vg_free=vg.free, snapshot_size=str(self.snapshot_size))
        except FreezeframeError as exc:
            return {"error": str(exc)}
        return facts

    def confirm(self, view: ReadOnlyView) -> None:
        """Raise unless the snapshot is still whole: called after reading it, before what was
        read is kept (a thick snapshot whose store filled meanwhile is invalid)."""
        vg, name = view.handle.split("/", 1)
        try:
            snapshot = report_lv(vg, name)
        except FreezeframeError as exc:
            raise SnapshotDamaged(f"snapshot {view.handle} is gone: {exc}") from exc
        reason = damage(snapshot)
        if reason is not None:
            raise SnapshotDamaged(f"{reason}; nothing read from it is kept")

    def remove(self, view: ReadOnlyView) -> None:
        self.remove_leftover(_mount_dir(view.handle))
        self.remove_leftover(view.handle)

    def scratch_paths(self, view: ReadOnlyView) -> list[str]:
        return [MOUNT_ROOT]

    def find_leftovers(self, volume: Volume) -> list[str]:
        """Mounts, then snapshots (``vg/name``), of ``volume``'s LV made by runs now dead."""
        names = lvm_names(volume.mount.device)
        if names is None:
            return []
        vg, origin = names
        snapshots = [
            lv
            for lv in parse_lvs(run_tool("lvs", *REPORT, "-o", LV_FIELDS, vg, what="lvs"))
            if lv.origin == origin and _dead(lv.name)
        ]
        found = [
            directory for lv in snapshots if os.path.isdir(directory := _mount_dir(lv.full_name))
        ]
        return found + [lv.full_name for lv in snapshots]

    def remove_leftover(self, path: str) -> None:
        if path.startswith(MOUNT_ROOT + "/"):
            if os.path.ismount(path):
                try:
                    run_tool("umount", path)
                except FreezeframeError:
                    run_tool("umount", "--lazy", path)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)
            return
        vg, name = path.split("/", 1)
        if any(lv.name == name for lv in _lvs_of(vg)):
            # lvremove suspends the origin too (to drop its snapshot-origin layer): never
            # stopped halfway either.
            run_to_its_end("lvremove", "-y", path, what=f"lvremove of snapshot {path}")


def resume_argv(
    snapshot: str, vg: str, sys_block: str = SYS_BLOCK, lock_dir: str = LVM_LOCK_DIR
) -> list[str]:
    """RESUME_SCRIPT for the snapshot ``snapshot`` of VG ``vg``."""
    prefix = vg.replace("-", "--") + "-"
    lock = os.path.join(lock_dir, f"V_{vg}")
    return ["sh", "-c", RESUME_SCRIPT, "sh", snapshot, prefix, sys_block, lock]


def run_to_its_end(*argv: str, what: str) -> str:
    """Run an lvm command that suspends devices (lvcreate and lvremove of a snapshot) in a
    session of its own, and never stop it halfway: one killed between its suspend and its
    resume leaves the origin suspended (its file system frozen) or mapped onto layers not
    (or no longer) active. A Ctrl-C to the run's process group does not reach it; the run's
    death does not end it: its output goes to memory files (memfd), not to pipes whose
    reader's death would kill it with SIGPIPE, nor to a file system (TMPDIR may be on the
    very LV it freezes, and a write there would wait for a thaw only it can do). An
    interrupt here (Ctrl-C, SIGTERM) waits for it, then is raised. Its stdout, or one
    FreezeframeError."""
    out, err = os.memfd_create("lvm-stdout"), os.memfd_create("lvm-stderr")
    try:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        except OSError as exc:
            raise FreezeframeError(f"{what} failed: {exc}") from exc
        interrupt: BaseException | None = None
        deadline = time.monotonic() + LVM_TIMEOUT_S
        while True:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                break
            except subprocess.TimeoutExpired as exc:
                # Left running, not killed: the watchdog's undo repairs what it holds suspended.
                raise FreezeframeError(
                    f"{what} failed: still running after {LVM_TIMEOUT_S:g} s"
                ) from exc
            except BaseException as exc:  # noqa: BLE001 - raised again once lvm has finished
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt
        stdout, stderr = (_memfd_text(fd) for fd in (out, err))
    finally:
        os.close(out)
        os.close(err)
    if proc.returncode != 0:
        complaint = (stderr or stdout).strip().splitlines()
        last = complaint[-1].strip() if complaint else f"exit status {proc.returncode}"
        raise FreezeframeError(f"{what} failed: {last}")
    return stdout


def _memfd_text(fd: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode(errors="replace") if size else ""


class SuspendWindow:
    """How long device-mapper held a device suspended (lockfs: its file system frozen) while
    lvcreate ran: a thread samples the device's ``dm/suspended`` flag every SAMPLE_S. ``ms``
    is the time between the first and last sample that saw it suspended, plus one interval;
    a suspend shorter than an interval may be seen by none (then one interval); None when
    the flag cannot be read."""

    def __init__(self, device: str) -> None:
        self._flag = SYS_DEV_BLOCK / device / "dm" / "suspended"
        self._stop = threading.Event()
        self._first: float | None = None
        self._last = 0.0
        self._readable = True
        self._thread = threading.Thread(target=self._sample, name="dm-suspend", daemon=True)

    def __enter__(self) -> SuspendWindow:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def ms(self) -> float | None:
        if not self._readable:
            return None
        seen = self._last - self._first if self._first is not None else 0.0
        return (seen + SAMPLE_S) * 1000

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                suspended = self._flag.read_bytes().strip() == b"1"
            except OSError:
                self._readable = False
                return
            if suspended:
                self._last = time.monotonic()
                if self._first is None:
                    self._first = self._last
            time.sleep(SAMPLE_S)


def lvm_names(device: str) -> tuple[str, str] | None:
    """VG and LV of the block device ``major:minor``, when it is an LVM LV, else None."""
    dm = SYS_DEV_BLOCK / device / "dm"
    try:
        uuid = (dm / "uuid").read_text().strip()
        name = (dm / "name").read_text().strip()
    except OSError:
        return None
    if not uuid.startswith(LVM_UUID_PREFIX) or "-" in uuid[len(LVM_UUID_PREFIX) :]:
        return None  # not lvm's, or a layer device (uuid with a -real, -cow... suffix)
    return split_dm_name(name)


def report_lv(vg: str, lv: str) -> LogicalVolume:
    found = parse_lvs(run_tool("lvs", *REPORT, "-o", LV_FIELDS, f"{vg}/{lv}", what="lvs"))
    if len(found) != 1:
        raise FreezeframeError(f"lvs reported {len(found)} LVs for {vg}/{lv}")
    return found[0]


def report_vg(vg: str) -> VolumeGroup:
    found = parse_vgs(run_tool("vgs", *REPORT, "-o", VG_FIELDS, vg, what="vgs"))
    if len(found) != 1:
        raise FreezeframeError(f"vgs reported {len(found)} VGs for {vg}")
    return found[0]


def _lvs_of(vg: str) -> list[LogicalVolume]:
    return parse_lvs(run_tool("lvs", *REPORT, "-o", LV_FIELDS, vg, what="lvs"))


def _mount_dir(handle: str) -> str:
    """Where the snapshot ``vg/name`` is mounted."""
    return os.path.join(MOUNT_ROOT, handle)


def _dead(name: str) -> bool:
    run_id = run_of_snapshot(name)
    return run_id is not None and not run_is_alive(run_id)
