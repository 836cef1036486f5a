"""FIFREEZE/FITHAW: quiesce a file system (flush dirty data, block new writes) and release it.

Always arm the watchdog before freezing: it thaws the file system if this process dies or the
deadline passes. Never freeze a btrfs before snapshotting it (the snapshot would wait for the
thaw); never freeze ``/`` unless asked.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from freezeframe.errors import FreezeframeError, UsageError

# _IOWR('X', 119, int) and _IOWR('X', 120, int) from <linux/fs.h>
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def freeze(mount_point: str, *, allow_root: bool = False) -> None:
    if os.path.realpath(mount_point) == "/" and not allow_root:
        raise UsageError("refusing to freeze the root file system")
    _ioctl(mount_point, FIFREEZE, "freeze")


def thaw(mount_point: str) -> bool:
    """Thaw; False when the file system was not frozen (thawing twice is harmless)."""
    try:
        _ioctl(mount_point, FITHAW, "thaw")
    except _NotFrozen:
        return False
    return True


def write_back(path: str) -> None:
    """syncfs(2) on the file system holding ``path``: done just before a pause or a freeze, so
    the window that follows only has to write back what arrives meanwhile."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _LIBC.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise FreezeframeError(f"cannot write back {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


class _NotFrozen(Exception):
    """FITHAW of a file system that is not frozen: an answer, caught here, never shown."""


def _ioctl(mount_point: str, request: int, what: str) -> None:
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, 0)
    except OSError as exc:
        if request == FITHAW and exc.errno == errno.EINVAL:
            raise _NotFrozen(f"{mount_point} is not frozen") from exc
        raise FreezeframeError(f"cannot {what} {mount_point}: {exc.strerror}") from exc
    finally:
        os.close(fd)
