"""A disk image into the repository: fixed-size chunks aligned to the image, holes and zero
chunks skipped, read by several workers at once, each on a connection of its own.

Why fixed chunks of 256 KiB rather than content-defined ones: a disk image changes in place,
block by block, so a chunk boundary never has to move; aligned chunks let an incremental read
only the ranges the dirty bitmap marks and take every other chunk from the previous snapshot
unread; 256 KiB keeps the index small (4096 entries per GiB of data) while a scattered write
costs at most one chunk of reading. The result is a file node whose ``sparse_map`` lists the
data extents, so a restore writes a sparse raw image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository

CHUNK = 256 * 1024
RUN = 64  # consecutive chunks a worker takes at a time: long sequential reads
ZERO = bytes(CHUNK)


class ImageReader(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def data_extents(self) -> Iterable[tuple[int, int]]:
        """(offset, length) of every range that may hold data (not a hole, not known zero)."""
        ...

    def dirty_extents(self) -> Iterable[tuple[int, int]]:
        """(offset, length) of every range written since the previous backup (incrementals)."""
        ...

    def close(self) -> None: ...


@dataclass
class StoredDisk:
    size: int
    content: list[bytes] = field(default_factory=list)
    sparse_map: list[tuple[int, int]] = field(default_factory=list)
    bytes_read: int = 0
    bytes_added: int = 0
    chunks_zero: int = 0


@dataclass
class DiskProgress:
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_added: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def chunks_with_data(extents: Iterable[tuple[int, int]], size: int) -> list[int]:
    """The indexes of the chunks an extent list touches."""
    indexes: set[int] = set()
    for offset, length in extents:
        if length <= 0:
            continue
        first = offset // CHUNK
        last = min(offset + length - 1, size - 1) // CHUNK
        indexes.update(range(first, last + 1))
    return sorted(indexes)


def chunk_map(content: list[bytes], sparse_map: list[tuple[int, int]]) -> dict[int, bytes]:
    """A stored image's chunk index -> blob id (indexes absent are holes)."""
    blobs = iter(content)
    found = {}
    for offset, length in sparse_map:
        for index in range(offset // CHUNK, (offset + length + CHUNK - 1) // CHUNK):
            found[index] = next(blobs)
    return found


def store_disk(
    repo: Repository,
    open_reader: Callable[[], ImageReader],
    *,
    workers: int = 2,
    progress: DiskProgress | None = None,
    parent: dict[int, bytes] | None = None,
) -> StoredDisk:
    """``parent``: the previous snapshot's chunks of this disk; only the chunks its dirty
    extents touch are read, every other one is taken from it unread."""
    first = open_reader()
    try:
        size = first.size
        with_data = chunks_with_data(first.data_extents(), size)
        if parent is not None:
            dirty = set(chunks_with_data(first.dirty_extents(), size))
            kept = {i: parent[i] for i in with_data if i not in dirty and i in parent}
            wanted = [i for i in with_data if i in dirty]
        else:
            kept, wanted = {}, with_data
    finally:
        first.close()
    progress = progress or DiskProgress()
    progress.bytes_total += sum(min(CHUNK, size - i * CHUNK) for i in wanted)
    runs = [wanted[i : i + RUN] for i in range(0, len(wanted), RUN)]
    stored = StoredDisk(size)
    job = _Job(repo, size, stored, progress)
    job.ids.update(kept)
    next_run = iter(runs)

    def worker() -> None:
        reader = open_reader()
        try:
            while True:
                with job.lock:
                    run = next(next_run, None)
                if run is None:
                    return
                for index in run:
                    job.store_chunk(reader, index)
        finally:
            reader.close()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(worker) for _ in range(max(1, workers))]:
            future.result()
    for index in sorted(job.ids):
        blob = job.ids[index]
        if blob is None:
            continue
        offset = index * CHUNK
        length = min(CHUNK, size - offset)
        stored.content.append(blob)
        if stored.sparse_map and sum(stored.sparse_map[-1]) == offset:
            start, previous = stored.sparse_map[-1]
            stored.sparse_map[-1] = (start, previous + length)
        else:
            stored.sparse_map.append((offset, length))
    return stored


@dataclass
class _Job:
    """What the workers of one disk share."""

    repo: Repository
    size: int
    stored: StoredDisk
    progress: DiskProgress
    ids: dict[int, bytes | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def store_chunk(self, reader: ImageReader, index: int) -> None:
        offset = index * CHUNK
        length = min(CHUNK, self.size - offset)
        data = reader.read(offset, length)
        added = 0
        if data == ZERO[:length]:
            blob: bytes | None = None
        else:
            blob = self.repo.blob_id(data)
            if self.repo.claim_blob(blob):
                self.repo.store_claimed_blob(BlobType.DATA, blob, data)
                added = length
        with self.lock:
            self.ids[index] = blob
            self.stored.bytes_read += length
            self.stored.bytes_added += added
            self.stored.chunks_zero += blob is None
        with self.progress.lock:
            self.progress.bytes_done += length
            self.progress.bytes_added += added
