"""Which volumes a backup of some paths spans: the volume of each source, and every volume
mounted or nested below a source that the walk would enter (other mounts, and btrfs subvolumes,
which a snapshot of their parent shows as empty directories). None is ever silently left out:
each becomes a volume of the capture, snapshotted on its own or limiting the level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from freezeframe.capture.providers.btrfs import SNAPSHOT_DIR
from freezeframe.capture.volumes import (
    BTRFS_SUBVOLUME_ROOT_INODE,
    MOUNTINFO,
    Mount,
    Volume,
    parse_mountinfo,
    resolve_volume,
)


@dataclass(frozen=True)
class Layout:
    sources: list[tuple[str, Volume]]  # each source path with its volume
    volumes: list[Volume]  # every volume once, sources' volumes first
    nested: list[Volume]  # the volumes below a source, whose roots must be grafted in

    def key(self, volume: Volume) -> tuple[str, str | None]:
        return _key(volume)


def plan(paths: list[str], *, one_file_system: bool = False) -> Layout:
    mounts = parse_mountinfo(MOUNTINFO.read_text())
    sources = [(path, resolve_volume(path, mounts)) for path in paths]
    volumes: dict[tuple[str, str | None], Volume] = {}
    for _path, volume in sources:
        volumes.setdefault(_key(volume), volume)
    nested: dict[tuple[str, str | None], Volume] = {}
    if not one_file_system:
        for path, volume in sources:
            for root in _roots_below(os.path.realpath(path), volume, mounts):
                below = resolve_volume(root, mounts)
                if _key(below) not in volumes:
                    volumes[_key(below)] = below
                    nested[_key(below)] = below
    return Layout(sources, list(volumes.values()), list(nested.values()))


def _key(volume: Volume) -> tuple[str, str | None]:
    return (volume.mount.mount_point, volume.subvolume)


def _roots_below(top: str, volume: Volume, mounts: list[Mount]) -> list[str]:
    """Mount points strictly below ``top`` and, on btrfs, subvolume roots below it."""
    prefix = top.rstrip("/") + "/"
    mounted = sorted(
        {m.mount_point for m in mounts if m.mount_point.startswith(prefix)}
        - {m for m in _mount_points_under_snapshots(mounts)}
    )
    found = list(mounted)
    if volume.fs_type == "btrfs" and os.path.isdir(top):
        found += _subvolumes_below(top, set(mounted))
    return sorted(set(found))


def _mount_points_under_snapshots(mounts: list[Mount]) -> list[str]:
    return [m.mount_point for m in mounts if f"/{SNAPSHOT_DIR}/" in m.mount_point]


def _subvolumes_below(top: str, skip: set[str]) -> list[str]:
    """btrfs subvolume roots below ``top``: directories with inode 256 on a device of their own.
    (readdir reports a subvolume's id as its inode, so each directory costs one stat.)"""
    found = []
    stack = [(top, os.lstat(top).st_dev)]
    while stack:
        current, device = stack.pop()
        try:
            with os.scandir(current) as scan:
                entries = list(scan)
        except OSError:
            continue
        for entry in entries:
            if entry.name == SNAPSHOT_DIR or entry.path in skip:
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != device and st.st_ino == BTRFS_SUBVOLUME_ROOT_INODE:
                found.append(entry.path)
            stack.append((entry.path, st.st_dev))
    return found
