"""Which volume a path lives on: mount point, file system type, device and, on btrfs, the
subvolume. The capture layer picks a snapshot provider per volume from this.

The mount table comes from /proc/self/mountinfo (the mounts this process sees, after every
overmount); a btrfs subvolume is found by walking up from the path while the device number stays
the same, since each subvolume has its own anonymous device number and its root is inode 256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from freezeframe.errors import NotFound

BTRFS_SUBVOLUME_ROOT_INODE = 256
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    device: str  # "major:minor" as the kernel reports it
    root: str  # the path inside the file system that is mounted here
    mount_point: str
    options: tuple[str, ...]
    fs_type: str
    source: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class Volume:
    """Where a source path lives. ``subvolume`` is the absolute path of the btrfs subvolume
    root that contains the path (None on other file systems)."""

    path: str
    mount: Mount
    subvolume: str | None

    @property
    def fs_type(self) -> str:
        return self.mount.fs_type


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in table order (a later mount on the same point hides an earlier one)."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        before, _, after = line.partition(" - ")
        fields = before.split()
        fs_type, source, *_super = after.split()
        mounts.append(
            Mount(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=tuple(fields[5].split(",")),
                fs_type=fs_type,
                source=_unescape(source),
            )
        )
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount:
    """The mount that serves ``path`` (absolute, symlinks resolved): the longest mount point
    that contains it, the last one listed when several share that point."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    if best is None:
        raise NotFound(f"no mount serves {path}")
    return best


def btrfs_subvolume_of(path: str, mount_point: str) -> str:
    """The root of the btrfs subvolume holding ``path``: the highest directory at or above it
    with the same device number, no higher than the mount point."""
    device = os.lstat(path).st_dev
    current = path if os.path.isdir(path) and not os.path.islink(path) else os.path.dirname(path)
    while current not in (mount_point, "/"):
        parent = os.path.dirname(current)
        if os.lstat(parent).st_dev != device:
            break
        current = parent
    return current


def resolve_volume(path: str | os.PathLike[str], mounts: list[Mount] | None = None) -> Volume:
    """The volume of an existing path; NotFound when it does not exist."""
    absolute = os.path.realpath(path)
    if not os.path.lexists(absolute):
        raise NotFound(f"{path} does not exist")
    table = mounts if mounts is not None else parse_mountinfo(MOUNTINFO.read_text())
    mount = mount_of(absolute, table)
    subvolume = (
        btrfs_subvolume_of(absolute, mount.mount_point) if mount.fs_type == "btrfs" else None
    )
    return Volume(path=absolute, mount=mount, subvolume=subvolume)


def is_btrfs_subvolume_root(path: str) -> bool:
    st = os.lstat(path)
    return st.st_ino == BTRFS_SUBVOLUME_ROOT_INODE


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
