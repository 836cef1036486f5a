"""Content-defined chunking (FastCDC) with the repository's secret seed.

The seed varies the cut points per repository, so chunk sizes do not leak which known files a
repository holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

from freezeframe.repository.config import ChunkerParams


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

    def chunks(self, reader: Readable) -> Iterator[bytes]:
        """Chunks as independent ``bytes`` (the chunker reuses its buffer between chunks)."""
        for chunk in self._cdc.cut_stream(reader):
            yield bytes(chunk.data)
