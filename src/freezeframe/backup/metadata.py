"""Reading a file's metadata into a tree node: stat fields, owner names, xattrs, holes."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from freezeframe.repository.tree import TYPE_BITS, Node

_TYPE_OF_BITS = {bits: name for name, bits in TYPE_BITS.items()}


def node_type(mode: int) -> str | None:
    """The tree type for a file mode; None for what a backup skips (sockets)."""
    return _TYPE_OF_BITS.get(stat.S_IFMT(mode))


def node_from_stat(name: bytes, kind: str, st: os.stat_result) -> Node:
    return Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        size=st.st_size if kind == "file" else 0,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink if kind != "dir" else 1,
        rdev=st.st_rdev if kind in ("chardev", "blockdev") else 0,
    )


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def read_xattrs(path: bytes) -> dict[bytes, bytes]:
    """All extended attributes (POSIX ACLs included) without following a symlink."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.ENOENT):
            return {}
        raise
    result = {}
    for name in names:
        try:
            result[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                raise
    return result


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges of a file that hold data; holes are what lies between."""
    extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            extents.append((start, end - start))
        offset = end
    os.lseek(fd, 0, os.SEEK_SET)
    return extents


def may_be_sparse(st: os.stat_result) -> bool:
    """Cheap test before asking for extents: fewer blocks allocated than the size needs."""
    return st.st_size > 0 and st.st_blocks * 512 < st.st_size
