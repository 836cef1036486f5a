"""Writing file contents: blobs read grouped by pack, each opened once, written with ``pwrite``
into descriptors that stay open until each file is complete.

The walk hands over files in batches (a few MiB of content, or a few dozen small files). For
each batch, the reader plans the reads of the blobs not in the cache (a repository: one storage
request per run of nearby blobs of a pack, see ``restore.reader``); each blob is opened
(decrypted and verified) once however many files use it; a small LRU keeps recent blobs, so a
chunk shared by neighbouring files is fetched once.

Two paths, because of the GIL. Large blobs go to worker threads: AES-GCM, zstd and BLAKE3
release the GIL on them, so the workers use every core. Small blobs cost mostly interpreter
time, and threads handing the GIL back and forth on every system call cost more CPU than they
save (measured on 200,000 small files: one thread 16 s, two threads 21-27 s, four 30 s): the
walk thread writes them itself, while reader threads fetch the read groups of the next few
batches, so waiting for the storage still overlaps with work. Only the fetching goes parallel:
one reader thread where a fetch is a local read, ``BlobReader.fetch_threads`` of them where
each pays a round trip (then the large-blob workers hand their fetches to those threads too,
so a batch's requests are in flight together, and more small batches are read ahead).

Memory stays bounded: a fixed number of batches in flight or read ahead (``READ_AHEAD``, twice
that over a storage with latency), read groups of bounded size (a repository's: at most
``repository.reader.MAX_RUN`` bytes, plus its read-ahead windows, at most
``repository.readahead.BUDGET`` bytes), a fixed-size cache.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError, TransientStorageError
from freezeframe.restore.filejob import FileJob
from freezeframe.restore.reader import BlobGroup, BlobReader, FetchedBlobs

MiB = 1024 * 1024
BATCH_BYTES = 4 * MiB
BATCH_FILES = 64
CACHE_BYTES = 16 * MiB
# Batches whose blobs average less than this are written by the walk thread (see above).
SMALL_BLOB = 64 * 1024
READ_AHEAD = 4

_Write = tuple[FileJob, bytes, int, int]  # file, blob id, its length, content offset


@dataclass(eq=False)
class _Plan:
    """One batch: who needs which blob, the blobs found in the cache, the reads for the rest."""

    batch: list[_Write]
    users: dict[bytes, list[_Write]]
    hits: list[tuple[bytes, bytes]]
    groups: Sequence[BlobGroup]
    reads: list[Future[FetchedBlobs]] = field(default_factory=list)  # read ahead (walk thread)


class ContentWriter:
    """Fills the files the walk creates; ``finished`` is called once per file when its last
    chunk is written (from any thread), ``written`` with byte counts for progress."""

    def __init__(
        self,
        blobs: BlobReader,
        workers: int,
        finished: Callable[[FileJob], None],
        written: Callable[[int], None],
    ) -> None:
        self._blobs = blobs
        self._finished = finished
        self._written = written
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="restore")
        self._fetchers = max(1, blobs.fetch_threads)
        self._reader = ThreadPoolExecutor(
            max_workers=self._fetchers, thread_name_prefix="restore-read"
        )
        self._read_ahead = READ_AHEAD if self._fetchers == 1 else 2 * READ_AHEAD
        in_flight = 2 * max(1, workers)
        self._slots = threading.BoundedSemaphore(in_flight)
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_budget = (soft_limit if soft_limit > 0 else 1024) // 2
        # Files stay open from creation to their last write: in worker batches, in batches
        # read ahead, and in the batch being filled.
        queued = in_flight + self._read_ahead + 2
        self._batch_files = max(1, min(BATCH_FILES, fd_budget // queued))
        self._cache = _BlobCache(CACHE_BYTES)
        self._lock = threading.Lock()
        self._in_flight: dict[Future[None], list[_Write]] = {}
        self._ahead: deque[_Plan] = deque()
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
        job.pending = len(job.writes)
        self._batch_jobs += 1
        for blob_id, length, offset in job.writes:
            self._batch.append((job, blob_id, length, offset))
            self._batch_bytes += length
            if self._batch_bytes >= BATCH_BYTES:
                self._submit()
        if self._batch_jobs >= self._batch_files:
            self._submit()

    def finish(self) -> None:
        """Write what is queued and wait for every file; re-raise a worker's unexpected error."""
        self._submit()
        while self._ahead:
            self._write_ahead()
        self._pool.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        if self._failure is not None:
            raise self._failure

    def abort(self) -> list[tuple[FileJob, os.stat_result]]:
        """Stop early (Ctrl-C, a storage that stopped answering, a bug): drop queued batches,
        wait for running ones, close the descriptors of files left unfinished and hand them
        back with their identity, for the caller to remove (a file cut short must not look
        restored)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            dropped = [*self._in_flight.values(), self._batch, *(p.batch for p in self._ahead)]
            self._in_flight.clear()
            self._ahead.clear()
            self._batch = []
        # A file whose writes were not all done is not finished, and nobody else closes it.
        left = {job for batch in dropped for job, _, _, _ in batch if job.pending > 0}
        unfinished = []
        for job in left:
            with contextlib.suppress(OSError):
                unfinished.append((job, os.fstat(job.fd)))
            with contextlib.suppress(OSError):
                os.close(job.fd)
        return unfinished

    # -- handing batches over (walk thread) --------------------------------------------------

    def _submit(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        small = self._batch_bytes < SMALL_BLOB * len(batch)
        self._batch_bytes = 0
        self._batch_jobs = 0
        if small:
            plan = self._plan(batch)
            plan.reads = [self._reader.submit(group.fetch) for group in plan.groups]
            self._ahead.append(plan)
            if len(self._ahead) > self._read_ahead:
                self._write_ahead()
            return
        self._slots.acquire()
        if self._failure is not None:
            self._slots.release()
            raise self._failure
        try:
            future = self._pool.submit(self._run, batch)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._in_flight[future] = batch
        future.add_done_callback(self._done)

    def _write_ahead(self) -> None:
        plan = self._ahead.popleft()
        done = False
        try:
            self._execute(plan, lambda index: plan.reads[index].result())
            done = True
        finally:
            self._complete(plan.batch, done)

    def _done(self, future: Future[None]) -> None:
        if not future.cancelled():
            with self._lock:
                self._in_flight.pop(future, None)
        self._slots.release()
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    # -- writing a batch (either path) -------------------------------------------------------

    def _run(self, batch: list[_Write]) -> None:
        done = False
        try:
            plan = self._plan(batch)
            if self._fetchers > 1:  # every request of the batch in flight at once
                reads = [self._reader.submit(group.fetch) for group in plan.groups]
                try:
                    self._execute(plan, lambda index: reads[index].result())
                finally:
                    for read in reads:
                        read.cancel()
            else:
                self._execute(plan, lambda index: plan.groups[index].fetch())
            done = True
        finally:
            self._complete(batch, done)

    def _plan(self, batch: list[_Write]) -> _Plan:
        users: dict[bytes, list[_Write]] = {}
        for write in batch:
            users.setdefault(write[1], []).append(write)
        hits = []
        misses = []
        for blob_id in users:
            data = self._cache.get(blob_id)
            if data is not None:
                hits.append((blob_id, data))
            else:
                misses.append(blob_id)
        return _Plan(batch, users, hits, self._blobs.plan_reads(misses) if misses else [])

    def _execute(self, plan: _Plan, fetched: Callable[[int], FetchedBlobs]) -> None:
        written = 0
        for blob_id, data in plan.hits:
            written += _deliver(plan.users[blob_id], data)
        for index, group in enumerate(plan.groups):
            try:
                stored = fetched(index)
            except TransientStorageError:
                raise  # the storage stopped answering (retries spent): stop, not damage
            except FreezeframeError as exc:
                for blob_id in group.blob_ids:
                    _fail(plan.users[blob_id], str(exc))
                continue
            for blob_id in group.blob_ids:
                try:
                    data = stored.open(blob_id)
                except FreezeframeError as exc:
                    _fail(plan.users[blob_id], str(exc))
                    continue
                self._cache.put(blob_id, data)
                written += _deliver(plan.users[blob_id], data)
        self._written(written)

    def _complete(self, batch: list[_Write], done: bool) -> None:
        """Count a batch's writes as done; files with nothing left to write are finished. A
        batch cut short (Ctrl-C, a storage that stopped answering, a bug) marks its files
        failed and their ranges damaged, so each is removed rather than left looking
        complete."""
        counts: dict[FileJob, int] = {}
        for job, _, length, offset in batch:
            counts[job] = counts.get(job, 0) + 1
            if not done:
                job.damaged.append((offset, offset + length))  # removed, as damage is
                if job.error is None:
                    job.error = "not completely written: the restore was interrupted"
        complete = []
        with self._lock:
            for job, count in counts.items():
                job.pending -= count
                if job.pending == 0:
                    complete.append(job)
        for job in complete:
            self._finished(job)


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


def _deliver(writes: list[_Write], data: bytes) -> int:
    """Write one blob wherever it belongs; returns the bytes written."""
    written = 0
    for job, _, _, offset in writes:
        if job.error is not None:
            continue
        try:
            job.write(data, offset)
            written += len(data)
        except OSError as exc:
            job.error = f"cannot write the content: {exc.strerror or exc}"
    return written


def _fail(writes: list[_Write], message: str) -> None:
    """A blob could not be read or verified: every file it belongs in is damaged there."""
    for job, _, length, offset in writes:
        job.damaged.append((offset, offset + length))
        if job.error is None:
            job.error = message
