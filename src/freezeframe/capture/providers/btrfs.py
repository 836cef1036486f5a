"""btrfs: a read-only subvolume snapshot is atomic for the whole subvolume (crash-consistent).

Snapshots go in ``<subvolume>/.freezeframe-snapshots/ff-<run id>``: on the same file system, as
btrfs requires, and inside the subvolume they show, so a snapshot never contains older snapshots
(a nested subvolume appears in a snapshot as an empty directory). Nested subvolumes are volumes
of their own: a snapshot of the parent does not include them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import time

from freezeframe.capture.providers.base import (
    LEFTOVER_PREFIX,
    ReadOnlyView,
    run_is_alive,
    run_tool,
)
from freezeframe.capture.volumes import Volume
from freezeframe.errors import FreezeframeError

SNAPSHOT_DIR = ".freezeframe-snapshots"
# struct btrfs_ioctl_vol_args_v2 (<linux/btrfs.h>): fd, transid, flags, 32 bytes of union,
# then the name (BTRFS_SUBVOL_NAME_MAX + 1 bytes); _IOW(0x94, 23, that struct).
VOL_ARGS_V2 = "=qQQ32s4040s"
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417
BTRFS_SUBVOL_RDONLY = 1 << 1


class BtrfsProvider:
    name = "btrfs"
    needs_freeze = False
    freezes_itself = False

    def unsupported_reason(self, volume: Volume) -> str | None:
        if volume.fs_type != "btrfs" or volume.subvolume is None:
            return f"{volume.path} is not on btrfs"
        if shutil.which("btrfs") is None and not os.path.exists("/usr/sbin/btrfs"):
            return "btrfs-progs is not installed"
        if os.geteuid() != 0:
            return "btrfs snapshots need root"
        if volume.mount.read_only:
            return f"{volume.mount.mount_point} is mounted read-only"
        return None

    def take(self, volume: Volume, run_id: str) -> ReadOnlyView:
        reason = self.unsupported_reason(volume)
        if reason is not None:
            raise FreezeframeError(f"cannot snapshot {volume.path}: {reason}")
        assert volume.subvolume is not None
        directory = os.path.join(volume.subvolume, SNAPSHOT_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        target = os.path.join(directory, LEFTOVER_PREFIX + run_id)
        started = time.monotonic()
        created_ns = time.time_ns()
        _snapshot_readonly(volume.subvolume, directory, LEFTOVER_PREFIX + run_id)
        elapsed_ms = (time.monotonic() - started) * 1000
        return ReadOnlyView(self.name, volume, volume.subvolume, target, created_ns, elapsed_ms)

    def undo_argv(self, volume: Volume, run_id: str) -> list[str] | None:
        return None  # a snapshot ioctl holds nothing when its caller dies

    def expose(self, view: ReadOnlyView) -> None:
        """A btrfs snapshot is readable where it is taken."""

    def confirm(self, view: ReadOnlyView) -> None:
        """A read-only btrfs snapshot cannot change or overflow."""

    def facts(self, volume: Volume) -> dict[str, object]:
        return {}

    def remove(self, view: ReadOnlyView) -> None:
        self.remove_leftover(view.root)

    def scratch_paths(self, view: ReadOnlyView) -> list[str]:
        return [os.path.join(view.origin, SNAPSHOT_DIR)]

    def remove_leftover(self, path: str) -> None:
        if os.path.lexists(path):
            run_tool("btrfs", "subvolume", "delete", path, what="btrfs subvolume delete")

    def find_leftovers(self, volume: Volume) -> list[str]:
        if volume.subvolume is None:
            return []
        directory = os.path.join(volume.subvolume, SNAPSHOT_DIR)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [
            os.path.join(directory, name)
            for name in sorted(names)
            if name.startswith(LEFTOVER_PREFIX) and not run_is_alive(name[len(LEFTOVER_PREFIX) :])
        ]


def _snapshot_readonly(subvolume: str, directory: str, name: str) -> None:
    """BTRFS_IOC_SNAP_CREATE_V2 with BTRFS_SUBVOL_RDONLY: the snapshot itself, without the
    milliseconds a `btrfs` process would add to a window in which writers wait."""
    source = os.open(subvolume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        target = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # A mutable buffer: fcntl copies immutable ones into 1024 bytes, too few here.
            args = bytearray(
                struct.pack(VOL_ARGS_V2, source, 0, BTRFS_SUBVOL_RDONLY, b"", os.fsencode(name))
            )
            fcntl.ioctl(target, BTRFS_IOC_SNAP_CREATE_V2, args, True)
        finally:
            os.close(target)
    except OSError as exc:
        raise FreezeframeError(f"cannot snapshot {subvolume}: {exc.strerror}") from exc
    finally:
        os.close(source)
