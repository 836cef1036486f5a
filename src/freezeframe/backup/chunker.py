"""Content-defined chunking (FastCDC) with the repository's secret seed.

The seed varies the cut points per repository, so chunk sizes do not leak which known files a
repository holds. Data is read in large segments and cut in memory (cheaper than pyfastcdc's
stream reader); the tail after the last cut moves to the next segment, so cut points are the
same as if the whole file had been cut at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

from freezeframe.repository.config import ChunkerParams

SEGMENT_SIZE = 16 * 1024 * 1024


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class Chunker:
    """Cuts a stream into chunks; not thread-safe (one per walker thread)."""

    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=seed,
        )
        # One buffer for every file: allocating (and page-faulting) 16 MiB per file would cost
        # more than cutting it.
        self._buffer = bytearray(max(SEGMENT_SIZE, 2 * params.max_size))

    def chunks(self, reader: Readable) -> Iterator[memoryview]:
        """Chunks as views into a segment; a view is valid until the next one is requested,
        so a consumer that keeps a chunk copies it."""
        carry = b""
        view = memoryview(self._buffer)
        segment_size = len(self._buffer)
        while True:
            view[: len(carry)] = carry
            filled = len(carry)
            eof = False
            while filled < segment_size:
                n = reader.readinto(view[filled:])
                if n == 0:
                    eof = True
                    break
                filled += n
            data = view[:filled]
            if not data:
                return
            cuts = list(self._cdc.cut_buf(data))
            last = len(cuts) if eof else len(cuts) - 1
            for chunk in cuts[:last]:
                yield data[chunk.offset : chunk.offset + chunk.length]
            if eof:
                return
            tail = cuts[-1]
            carry = bytes(data[tail.offset :])
