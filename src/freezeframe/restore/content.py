"""Writing file contents: blobs read grouped by pack, opened in worker threads, written with
``pwrite`` into descriptors that stay open until each file is complete.

The walk hands over files in batches (a few MiB of content, or a few dozen small files), so
200,000 small files cost a few thousand thread hand-offs, not 200,000. A worker reads every
pack range its batch needs with one storage read per run of nearby blobs, decrypts and verifies
each blob once however many files use it, and writes it at every place it belongs. AES-GCM, zstd
and BLAKE3 release the GIL, so the workers use every core. A small LRU keeps recent blobs, so a
chunk shared by neighbouring files is fetched once. Memory stays bounded: a fixed number of
batches in flight, reads of at most ``MAX_RUN`` bytes, a fixed-size cache.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound
from freezeframe.repository.index import BlobLocation
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node
from freezeframe.storage.base import Kind

MiB = 1024 * 1024
BATCH_BYTES = 4 * MiB
BATCH_FILES = 64
# Reading across a gap this small costs less than another request.
MAX_GAP = 256 * 1024
MAX_RUN = 8 * MiB
CACHE_BYTES = 32 * MiB


@dataclass(eq=False)
class FileJob:
    """A regular file being restored: its open descriptor and where its content goes.

    ``extents`` maps the concatenated content onto a sparse file as (content offset, file
    offset, length), None when the content is written contiguously from offset 0.
    """

    fd: int
    node: Node
    path: str
    writes: list[tuple[bytes, BlobLocation, int]]
    extents: list[tuple[int, int, int]] | None
    data_bytes: int
    pending: int = 0
    error: str | None = None
    starts: list[int] = field(default_factory=list)


def plan_file(repo: Repository, node: Node) -> tuple[list[tuple[bytes, BlobLocation, int]], int]:
    """(blob id, location, content offset) for each chunk of a file, and the content length;
    NotFound/IntegrityError when a blob is missing or the node contradicts itself."""
    writes = []
    offset = 0
    for blob_id in node.content:
        location = repo.index.lookup(blob_id)
        if location is None:
            raise NotFound(f"blob {blob_id.hex()[:16]} of this file is missing from the repository")
        if location.blob_type != BlobType.DATA:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not a data blob")
        writes.append((blob_id, location, offset))
        offset += location.raw_length
    if node.size < 0:
        raise IntegrityError("the recorded size is negative")
    if node.sparse_map is None:
        if offset != node.size:
            raise IntegrityError(
                f"the content ({offset} bytes) does not match the size ({node.size})"
            )
    elif offset > sum(length for _, length in node.sparse_map):
        raise IntegrityError("the content is longer than the recorded data extents")
    return writes, offset


def sparse_extents(node: Node) -> list[tuple[int, int, int]]:
    """The sparse map as (content offset, file offset, length), checked to be ordered,
    disjoint and inside the file, so no write can land past the recorded size."""
    extents = []
    content = 0
    end = 0
    for start, length in node.sparse_map or ():
        if start < end or length < 0 or start + length > node.size:
            raise IntegrityError("the sparse map is out of order or beyond the file's size")
        extents.append((content, start, length))
        content += length
        end = start + length
    return extents


class _BlobCache:
    """Recently opened blobs, bounded by their total size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._blobs: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, blob_id: bytes) -> bytes | None:
        with self._lock:
            data = self._blobs.get(blob_id)
            if data is not None:
                self._blobs.move_to_end(blob_id)
            return data

    def put(self, blob_id: bytes, data: bytes) -> None:
        if len(data) > self._limit // 4:
            return
        with self._lock:
            if blob_id in self._blobs:
                return
            self._blobs[blob_id] = data
            self._size += len(data)
            while self._size > self._limit:
                _, old = self._blobs.popitem(last=False)
                self._size -= len(old)


_Write = tuple[FileJob, bytes, BlobLocation, int]


class ContentWriter:
    """Fills the files the walk creates; ``finished`` is called once per file when its last
    chunk is written (from a worker thread), ``written`` with byte counts for progress."""

    def __init__(
        self,
        repo: Repository,
        workers: int,
        finished: Callable[[FileJob], None],
        written: Callable[[int], None],
    ) -> None:
        self._repo = repo
        self._finished = finished
        self._written = written
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore")
        in_flight = 2 * max(1, workers)
        self._slots = threading.BoundedSemaphore(in_flight)
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_budget = (soft_limit if soft_limit > 0 else 1024) // 2
        self._batch_files = max(1, min(BATCH_FILES, fd_budget // (in_flight + 1)))
        self._cache = _BlobCache(CACHE_BYTES)
        self._lock = threading.Lock()
        self._open: set[FileJob] = set()
        self._failure: BaseException | None = None
        self._batch: list[_Write] = []
        self._batch_bytes = 0
        self._batch_jobs = 0

    def add(self, job: FileJob) -> None:
        """Queue a created file's content (walk thread only); a file without content is
        finished at once."""
        if not job.writes:
            self._finished(job)
            return
        if job.extents is not None:
            job.starts = [content for content, _, _ in job.extents]
        job.pending = len(job.writes)
        with self._lock:
            self._open.add(job)
        self._batch_jobs += 1
        for blob_id, location, offset in job.writes:
            self._batch.append((job, blob_id, location, offset))
            self._batch_bytes += location.raw_length
            if self._batch_bytes >= BATCH_BYTES:
                self._submit()
        if self._batch_jobs >= self._batch_files:
            self._submit()

    def finish(self) -> None:
        """Write what is queued and wait for every file; re-raise a worker's unexpected error."""
        self._submit()
        self._pool.shutdown(wait=True)
        if self._failure is not None:
            raise self._failure

    def abort(self) -> None:
        """Stop early (Ctrl-C, a bug): drop queued batches, wait for running ones, close the
        descriptors of files left unfinished."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            left, self._open = self._open, set()
        for job in left:
            with contextlib.suppress(OSError):
                os.close(job.fd)

    # -- the walk thread's side -------------------------------------------------------------

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._batch_bytes = 0
        self._batch_jobs = 0
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        try:
            future = self._pool.submit(self._run, batch)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        self._slots.release()
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    # -- the workers' side ------------------------------------------------------------------

    def _run(self, batch: list[_Write]) -> None:
        try:
            self._write_batch(batch)
        finally:
            counts: dict[FileJob, int] = {}
            for job, _, _, _ in batch:
                counts[job] = counts.get(job, 0) + 1
            complete = []
            with self._lock:
                for job, count in counts.items():
                    job.pending -= count
                    if job.pending == 0 and job in self._open:
                        self._open.discard(job)
                        complete.append(job)
            for job in complete:
                self._finished(job)

    def _write_batch(self, batch: list[_Write]) -> None:
        users: dict[bytes, list[_Write]] = {}
        for write in batch:
            users.setdefault(write[1], []).append(write)
        by_pack: dict[str, list[tuple[BlobLocation, bytes]]] = {}
        written = 0
        for blob_id, writes in users.items():
            data = self._cache.get(blob_id)
            if data is not None:
                written += self._deliver(writes, data)
            else:
                location = writes[0][2]
                by_pack.setdefault(location.pack, []).append((location, blob_id))
        for pack, blobs in by_pack.items():
            blobs.sort(key=lambda item: item[0].offset)
            for run in _runs(blobs):
                written += self._read_run(pack, run, users)
        self._written(written)

    def _read_run(
        self, pack: str, run: list[tuple[BlobLocation, bytes]], users: dict[bytes, list[_Write]]
    ) -> int:
        start = run[0][0].offset
        end = run[-1][0].offset + run[-1][0].length
        try:
            stored = self._repo.storage.get(Kind.DATA, pack, start, end - start)
        except FreezeframeError as exc:
            for _, blob_id in run:
                _fail(users[blob_id], str(exc))
            return 0
        view = memoryview(stored)
        written = 0
        for location, blob_id in run:
            begin = location.offset - start
            try:
                data = self._repo.open_blob(
                    bytes(view[begin : begin + location.length]),
                    location.blob_type,
                    blob_id,
                    location.raw_length,
                )
            except FreezeframeError as exc:
                _fail(users[blob_id], str(exc))
                continue
            self._cache.put(blob_id, data)
            written += self._deliver(users[blob_id], data)
        return written

    def _deliver(self, writes: list[_Write], data: bytes) -> int:
        """Write one blob wherever it belongs; returns the bytes written."""
        written = 0
        for job, _, _, offset in writes:
            if job.error is not None:
                continue
            try:
                if job.extents is None:
                    _pwrite_all(job.fd, memoryview(data), offset)
                else:
                    _place_sparse(job, data, offset)
                written += len(data)
            except OSError as exc:
                job.error = f"cannot write the content: {exc.strerror or exc}"
        return written


def _runs(blobs: list[tuple[BlobLocation, bytes]]) -> list[list[tuple[BlobLocation, bytes]]]:
    """Group blobs sorted by offset into runs read with one request each."""
    runs: list[list[tuple[BlobLocation, bytes]]] = []
    run_start = run_end = -1
    for item in blobs:
        location = item[0]
        end = location.offset + location.length
        if runs and location.offset - run_end <= MAX_GAP and end - run_start <= MAX_RUN:
            runs[-1].append(item)
            run_end = max(run_end, end)
        else:
            runs.append([item])
            run_start, run_end = location.offset, end
    return runs


def _fail(writes: list[_Write], message: str) -> None:
    for job, _, _, _ in writes:
        if job.error is None:
            job.error = message


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, "the file system accepted no bytes")
        data = data[n:]
        offset += n


def _place_sparse(job: FileJob, data: bytes, content_offset: int) -> None:
    """Write a piece of the concatenated content into the data extents it covers."""
    assert job.extents is not None
    view = memoryview(data)
    index = bisect.bisect_right(job.starts, content_offset) - 1
    while view:
        if index >= len(job.extents):
            raise OSError(0, "the content runs past the recorded data extents")
        content_start, file_offset, length = job.extents[index]
        inside = content_offset - content_start
        n = min(length - inside, len(view))
        if n > 0:
            _pwrite_all(job.fd, view[:n], file_offset + inside)
            view = view[n:]
            content_offset += n
        index += 1
