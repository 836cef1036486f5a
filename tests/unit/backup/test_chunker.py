"""The segmented chunker must cut exactly where FastCDC cuts the whole stream at once, or
deduplication across files and runs would depend on how reads happened to be split."""

from __future__ import annotations

import io
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from freezeframe.backup import chunker as chunker_module
from freezeframe.backup.chunker import Chunker
from freezeframe.repository.config import ChunkerParams

SMALL = ChunkerParams(min_size=1024, avg_size=4096, max_size=16384)


class _TrickleReader:
    """Returns at most ``step`` bytes per read, as a pipe or a slow disk may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._stream = io.BytesIO(data)
        self._step = step

    def readinto(self, buffer: memoryview) -> int:
        return self._stream.readinto(buffer[: self._step])


def _whole(data: bytes, params: ChunkerParams, seed: int) -> list[bytes]:
    cdc = FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=1,
        seed=seed,
    )
    return [bytes(c.data) for c in cdc.cut_buf(data)]


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300_000), seed=st.integers(0, 2**31 - 1), step=st.integers(1, 70_000))
def test_segments_cut_like_the_whole_stream(size: int, seed: int, step: int) -> None:
    data = random.Random(seed).randbytes(size)
    original = chunker_module.SEGMENT_SIZE
    chunker_module.SEGMENT_SIZE = 40_000  # many segment boundaries in a small input
    try:
        got = [bytes(c) for c in Chunker(SMALL, seed).chunks(_TrickleReader(data, step))]
    finally:
        chunker_module.SEGMENT_SIZE = original
    assert got == _whole(data, SMALL, seed)
    assert b"".join(got) == data


def test_the_seed_moves_cut_points() -> None:
    data = random.Random(1).randbytes(200_000)
    assert _whole(data, SMALL, 1) != _whole(data, SMALL, 2)
