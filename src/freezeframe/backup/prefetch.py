"""Warm the page cache for the small files the walker is about to read.

Reading many small files one after the other waits on the disk once per file. A few threads
ask the kernel to read ahead (POSIX_FADV_WILLNEED) the next files of the current directory, so
the walker mostly finds them in memory, as restic gains by reading files concurrently. Only a
bounded window ahead of the walker is warmed, so nothing useful is evicted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

WINDOW = 128
SMALL_FILE = 1024 * 1024
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Prefetcher:
    def __init__(self, threads: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prefetch")

    def warm(self, paths: Sequence[bytes]) -> None:
        """Start reading ``paths`` into the page cache; returns at once."""
        for start in range(0, len(paths), 16):
            self._pool.submit(_warm, paths[start : start + 16])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _warm(paths: Sequence[bytes]) -> None:
    for path in paths:
        try:
            fd = os.open(path, _FLAGS)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
