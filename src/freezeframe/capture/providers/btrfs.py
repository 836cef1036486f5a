"""btrfs: a read-only subvolume snapshot is atomic for the whole subvolume (crash-consistent).

Snapshots go in ``<subvolume>/.freezeframe-snapshots/ff-<run id>``: on the same file system, as
btrfs requires, and inside the subvolume they show, so a snapshot never contains older snapshots
(a nested subvolume appears in a snapshot as an empty directory). Nested subvolumes are volumes
of their own: a snapshot of the parent does not include them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from freezeframe.capture.providers.base import (
    LEFTOVER_PREFIX,
    ReadOnlyView,
    run_is_alive,
)
from freezeframe.capture.volumes import Volume
from freezeframe.errors import FreezeframeError

SNAPSHOT_DIR = ".freezeframe-snapshots"


class BtrfsProvider:
    name = "btrfs"

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

    def create(self, volume: Volume, run_id: str) -> ReadOnlyView:
        reason = self.unsupported_reason(volume)
        if reason is not None:
            raise FreezeframeError(f"cannot snapshot {volume.path}: {reason}")
        assert volume.subvolume is not None
        directory = os.path.join(volume.subvolume, SNAPSHOT_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        target = os.path.join(directory, LEFTOVER_PREFIX + run_id)
        started = time.monotonic()
        created_ns = time.time_ns()
        _btrfs("subvolume", "snapshot", "-r", volume.subvolume, target)
        elapsed_ms = (time.monotonic() - started) * 1000
        return ReadOnlyView(self.name, volume, volume.subvolume, target, created_ns, elapsed_ms)

    def remove(self, view: ReadOnlyView) -> None:
        self.remove_leftover(view.root)

    def remove_leftover(self, path: str) -> None:
        if os.path.lexists(path):
            _btrfs("subvolume", "delete", path)

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


def _btrfs(*args: str) -> None:
    try:
        subprocess.run(["btrfs", *args], check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        message = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise FreezeframeError(
            f"btrfs {' '.join(args[:2])} failed: {message[-1] if message else exc}"
        ) from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FreezeframeError(f"btrfs {' '.join(args[:2])} failed: {exc}") from exc
