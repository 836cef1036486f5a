"""Read-ahead windows of packs, for storage where every request costs a round trip.

A restore reads a pack's blobs in the order they are stored, a few at a time (one batch of
files after another). Over a remote storage each of those small reads would pay a round trip;
instead the first read of a pack reads a window (up to ``WINDOW`` bytes from there, never past
the pack's last blob and never into the next window already planned), and the reads planned
after it that fall inside are cut out of it: one request serves many batches.

Windows are placed when reads are planned (under one lock), read by whichever thread first
needs one (the others wait for those same bytes) and kept until the budget needs their room
and every read planned in them is done. Memory: at most ``BUDGET`` bytes of windows at a time;
a read that finds no room is planned as a plain range read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from freezeframe.errors import FreezeframeError
from freezeframe.storage.base import Kind, Storage

MiB = 1024 * 1024
WINDOW = 8 * MiB
BUDGET = 64 * MiB


class Window:
    """One contiguous range of a pack, read at most once."""

    __slots__ = ("_data", "_error", "_lock", "end", "pack", "pending", "start")

    def __init__(self, pack: str, start: int, end: int) -> None:
        self.pack = pack
        self.start = start
        self.end = end
        self.pending = 0  # planned reads not done yet (under the windows' lock)
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._error: FreezeframeError | None = None

    def read(self, storage: Storage) -> bytes:
        """The window's bytes (as many as the storage returned); the first caller reads them,
        the others wait for that read. Its FreezeframeError is every caller's."""
        with self._lock:
            if self._data is None and self._error is None:
                try:
                    self._data = storage.get(
                        Kind.DATA, self.pack, self.start, self.end - self.start
                    )
                except FreezeframeError as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._data is not None
            return self._data


class Windows:
    """The windows of one reader, bounded by ``budget`` bytes. Thread-safe."""

    def __init__(self, budget: int = BUDGET, window: int = WINDOW) -> None:
        self._budget = budget
        self._window = window
        self._size = 0
        self._lock = threading.Lock()
        self._by_pack: dict[str, list[Window]] = {}
        self._lru: OrderedDict[Window, None] = OrderedDict()

    def place(self, pack: str, start: int, end: int, blobs_end: int | None) -> Window | None:
        """The window a read of ``pack[start:end]`` is served from (counted as pending until
        ``done``), a new one if none holds it; None when the budget has no room for one."""
        with self._lock:
            windows = self._by_pack.get(pack, ())
            following = None
            for window in windows:
                if window.start <= start and end <= window.end:
                    window.pending += 1
                    self._lru.move_to_end(window)
                    return window
                if window.start >= end and (following is None or window.start < following):
                    following = window.start
            stop = start + max(self._window, end - start)
            if blobs_end is not None:
                stop = min(stop, blobs_end)
            if following is not None:
                stop = min(stop, following)
            stop = max(stop, end)
            if not self._make_room(stop - start):
                return None
            window = Window(pack, start, stop)
            window.pending = 1
            self._by_pack.setdefault(pack, []).append(window)
            self._lru[window] = None
            self._size += stop - start
            return window

    def done(self, window: Window) -> None:
        """A read planned in ``window`` is done (or failed): one fewer to wait for."""
        with self._lock:
            window.pending -= 1

    def _make_room(self, size: int) -> bool:
        """Drop the least recently planned windows nobody waits for until ``size`` fits."""
        if size > self._budget:
            return False
        if self._size + size <= self._budget:
            return True
        for window in list(self._lru):
            if window.pending > 0:
                continue
            del self._lru[window]
            self._by_pack[window.pack].remove(window)
            if not self._by_pack[window.pack]:
                del self._by_pack[window.pack]
            self._size -= window.end - window.start
            if self._size + size <= self._budget:
                return True
        return False
