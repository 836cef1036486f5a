"""ext4 and xfs on a loop device whose image file lies on a file system with reflinks (btrfs,
xfs): the image is cloned with FICLONE, which the host file system performs atomically against
the loop device's writes, and the clone is attached to a loop device of its own and mounted
read-only under /run/freezeframe/snapshots.

Taken while the file system is frozen (FIFREEZE flushes it and holds new writes), the clone is a
clean file system: `filesystem`. Taken without freezing, it is what a power cut would leave, and
mounting it replays the journal first (the clone's loop device is writable for that; the mount is
not): `crash`. This is the shape of an LVM or ZFS snapshot (freeze, block-level snapshot, thaw,
mount the snapshot elsewhere), the providers a lab with device-mapper would add next to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from freezeframe.capture.providers.base import (
    LEFTOVER_PREFIX,
    ReadOnlyView,
    run_is_alive,
    run_tool,
)
from freezeframe.capture.volumes import Volume, resolve_volume
from freezeframe.errors import FreezeframeError

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from <linux/fs.h>
CLONE_DIR = ".freezeframe-snapshots"
MOUNT_ROOT = "/run/freezeframe/snapshots"
FREEZABLE = ("ext4", "xfs")
REFLINK_HOSTS = ("btrfs", "xfs")
SYS_BLOCK = Path("/sys/block")


class LoopCloneProvider:
    name = "loop-clone"
    needs_freeze = True  # `filesystem` comes from FIFREEZE around the clone
    freezes_itself = False

    def unsupported_reason(self, volume: Volume) -> str | None:
        if volume.fs_type not in FREEZABLE:
            return f"{volume.fs_type} is not ext4 or xfs"
        loop = loop_device_name(volume.mount.source)
        if loop is None:
            return f"{volume.mount.source} is not a loop device"
        backing = backing_file(loop)
        if backing is None:
            return f"{volume.mount.source} has no image file"
        if _attribute(loop, "offset") != "0" or _attribute(loop, "sizelimit") != "0":
            return f"{volume.mount.source} maps only part of {backing} (offset or size limit)"
        try:
            host = resolve_volume(os.path.dirname(backing))
        except FreezeframeError:
            return f"the image file {backing} is not reachable from here"
        if host.fs_type not in REFLINK_HOSTS:
            return f"its image file {backing} lies on {host.fs_type}, which cannot clone files"
        if os.geteuid() != 0:
            return "cloning and mounting an image needs root"
        return None

    def take(self, volume: Volume, run_id: str) -> ReadOnlyView:
        """Clone the image: fast (extents are shared, not copied) and atomic."""
        loop = loop_device_name(volume.mount.source)
        backing = backing_file(loop) if loop else None
        if loop is None or backing is None:
            raise FreezeframeError(f"{volume.mount.mount_point} is no longer on a loop device")
        directory = os.path.join(os.path.dirname(backing), CLONE_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        name = f"{LEFTOVER_PREFIX}{run_id}-{loop}"
        image = os.path.join(directory, name + ".img")
        started = time.monotonic()
        created_ns = time.time_ns()
        source = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.ioctl(target, FICLONE, source)
            finally:
                os.close(target)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(image)
            raise FreezeframeError(f"cannot clone {backing}: {exc.strerror}") from exc
        finally:
            os.close(source)
        elapsed_ms = (time.monotonic() - started) * 1000
        root = os.path.join(MOUNT_ROOT, name)
        return ReadOnlyView(
            self.name, volume, volume.mount.mount_point, root, created_ns, elapsed_ms, image
        )

    def expose(self, view: ReadOnlyView) -> None:
        """Attach the clone and mount it read-only (the journal is replayed if it needs to be)."""
        os.makedirs(view.root, mode=0o700, exist_ok=True)
        device = run_tool("losetup", "--find", "--show", view.handle).strip()
        options = "ro,nouuid" if view.volume.fs_type == "xfs" else "ro"
        try:
            run_tool("mount", "-t", view.volume.fs_type, "-o", options, device, view.root)
        except FreezeframeError:
            run_tool("losetup", "--detach", device)
            raise

    def undo_argv(self, volume: Volume, run_id: str) -> list[str] | None:
        return None  # a clone ioctl holds nothing when its caller dies

    def confirm(self, view: ReadOnlyView) -> None:
        """A clone is a file of its own: nothing writes to it while it is read."""

    def facts(self, volume: Volume) -> dict[str, object]:
        loop = loop_device_name(volume.mount.source)
        backing = backing_file(loop) if loop is not None else None
        return {"image": backing} if backing else {}

    def remove(self, view: ReadOnlyView) -> None:
        self.remove_leftover(view.root)
        self.remove_leftover(view.handle)

    def scratch_paths(self, view: ReadOnlyView) -> list[str]:
        return [os.path.dirname(view.handle), MOUNT_ROOT]

    def find_leftovers(self, volume: Volume) -> list[str]:
        """Mounts and images of dead runs: mounts first, so images can be detached after."""
        loop = loop_device_name(volume.mount.source)
        found = [
            entry.path
            for entry in _scan(MOUNT_ROOT)
            if _dead(entry.name) and entry.name.endswith(f"-{loop}")
        ]
        backing = backing_file(loop) if loop else None
        if backing is not None:
            directory = os.path.join(os.path.dirname(backing), CLONE_DIR)
            found += [e.path for e in _scan(directory) if _dead(e.name.removesuffix(".img"))]
        return found

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
        for device in _loops_of(path):
            run_tool("losetup", "--detach", device)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def loop_device_name(source: str) -> str | None:
    """``loop3`` for ``/dev/loop3``; None for anything else."""
    name = os.path.basename(source)
    if source.startswith("/dev/loop") and name[4:].isdigit():
        return name
    return None


def backing_file(loop: str) -> str | None:
    text = _attribute(loop, "backing_file")
    return text.removesuffix(" (deleted)") if text else None


def _attribute(loop: str, name: str) -> str | None:
    try:
        return (SYS_BLOCK / loop / "loop" / name).read_text().strip()
    except OSError:
        return None


def _loops_of(image: str) -> list[str]:
    devices = []
    for entry in _scan(str(SYS_BLOCK)):
        if entry.name.startswith("loop") and backing_file(entry.name) == image:
            devices.append(f"/dev/{entry.name}")
    return devices


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _dead(name: str) -> bool:
    """Whether a clone or mount name ``ff-<run id>-<loop>`` belongs to a run that is gone."""
    if not name.startswith(LEFTOVER_PREFIX):
        return False
    return not run_is_alive(name[len(LEFTOVER_PREFIX) :])
