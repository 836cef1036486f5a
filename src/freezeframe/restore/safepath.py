"""Creating restored entries only through directory descriptors, so nothing outside the target
is ever written.

A restore never opens a path string below the target: every directory is opened with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's descriptor, starting from a descriptor of
the target itself, and every entry is created relative to the descriptor of its directory. A
symlink planted in the target (or raced into it) is therefore never followed; what stands in the
way of a restored entry is unlinked, never opened. Names from the snapshot are checked before
use, so a hostile tree cannot name ``..`` or smuggle in a ``/``.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path

from freezeframe.errors import (
    FreezeframeError,
    UnsafeName,
    UsageError,
)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# New directories stay private until their recorded mode is applied after their contents.
NEW_DIR_MODE = 0o700
NEW_FILE_MODE = 0o600


def check_name(name: bytes) -> None:
    """Refuse names that are not a single path component: empty, ``.``, ``..``, ``/``, NUL."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafeName(f"refused the unsafe name {name!r} found in the snapshot")


def parse_include(path: str) -> tuple[bytes, ...]:
    """An include path as recorded (absolute, e.g. ``/srv/data/sub``) as its name components."""
    raw = os.fsencode(path)
    if not raw.startswith(b"/") or b"\0" in raw:
        raise UsageError(f"--include {path!r}: give an absolute path as recorded in the snapshot")
    normal = posixpath.normpath(raw)
    return tuple(part for part in normal.split(b"/") if part)


def open_target(target: Path) -> int:
    """Create the target directory if needed and open it; the user chose this path, so symlinks
    in it are followed like any path given on the command line."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise FreezeframeError(
            f"cannot use {target} as the restore target: {exc.strerror}; "
            "choose a directory you can write to"
        ) from exc


def clear_way(dir_fd: int, name: bytes) -> None:
    """Remove whatever non-directory (or empty directory) is at ``name``, never following it."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OSError(exc.errno, "a non-empty directory is in the way") from exc
            raise


def create_file(dir_fd: int, name: bytes, mode: int = NEW_FILE_MODE) -> int:
    """A new, empty regular file opened for writing. Whatever was at ``name`` is unlinked first
    (a planted symlink or a hard link to a file outside the target is never written through)."""
    try:
        return os.open(name, FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        clear_way(dir_fd, name)
        return os.open(name, FILE_FLAGS, mode, dir_fd=dir_fd)


def create_entry(dir_fd: int, name: bytes, make: Callable[[], None]) -> None:
    """Run ``make`` (a symlink, mkfifo, mknod or link call at ``name``), replacing what is there."""
    try:
        make()
    except FileExistsError:
        clear_way(dir_fd, name)
        make()


def make_dir(dir_fd: int, name: bytes) -> tuple[int, bool]:
    """Open the directory ``name``, creating it if needed; returns (descriptor, created).

    An existing real directory is reused (a previous restore into the same target); anything
    else in the way, a symlink above all, is unlinked and replaced.
    """
    created = False
    try:
        os.mkdir(name, NEW_DIR_MODE, dir_fd=dir_fd)
        created = True
    except FileExistsError:
        pass
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd), created
    except OSError as exc:
        if created or exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    clear_way(dir_fd, name)
    os.mkdir(name, NEW_DIR_MODE, dir_fd=dir_fd)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd), True


def open_dir_path(root_fd: int, components: Sequence[bytes]) -> int:
    """Open a directory below ``root_fd`` one component at a time, following no symlink."""
    fd = os.dup(root_fd)
    try:
        for name in components:
            check_name(name)
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming the entry ``name`` of an open directory, for the calls that take no
    ``dir_fd`` (``lsetxattr``). The directory part is the descriptor's magic link, so the
    lookup starts at the directory itself and only ``name`` is resolved."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)
