"""Reading a file's bytes for the chunker: whole files, or only the data extents of sparse ones."""

from __future__ import annotations

import os


def open_for_backup(path: bytes) -> int:
    """Open without following a symlink and, where allowed, without touching atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        return os.open(path, flags)  # O_NOATIME needs ownership or CAP_FOWNER


def read_small(fd: int, size_hint: int) -> bytes:
    """The whole content of a small file, however its size changed since the stat. A regular
    file returns short reads only at its end, so one read usually suffices."""
    want = size_hint + 1
    first = os.read(fd, want)
    if len(first) < want:
        return first
    parts = [first]
    while part := os.read(fd, 1 << 20):
        parts.append(part)
    return b"".join(parts)


class ExtentReader:
    """A ``readinto`` source over a file's data extents, in order, with holes left out."""

    def __init__(self, fd: int, extents: list[tuple[int, int]] | None) -> None:
        self._fd = fd
        self._extents = list(extents) if extents is not None else None
        self._offset = 0
        self.bytes_read = 0

    def readinto(self, buffer: memoryview) -> int:
        if self._extents is None:
            n = os.readv(self._fd, [buffer])  # EINTR is retried by Python (PEP 475)
        else:
            n = 0
            while self._extents and n == 0:
                start, length = self._extents[0]
                if self._offset >= length:
                    self._extents.pop(0)
                    self._offset = 0
                    continue
                size = min(len(buffer), length - self._offset)
                n = os.preadv(self._fd, [buffer[:size]], start + self._offset)
                if n == 0:  # the file shrank under us: the extent ends here
                    self._extents.pop(0)
                    self._offset = 0
                self._offset += n
        self.bytes_read += n
        return n
