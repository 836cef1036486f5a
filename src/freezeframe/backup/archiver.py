"""The file-tree backup pipeline: walk, chunk, hash, deduplicate, then store in parallel.

The walker (the calling thread) reads files, cuts them into chunks and hashes them; chunks the
repository lacks go to worker threads that compress, encrypt and pack them. zstd, AES-GCM, BLAKE3
and FastCDC all release the GIL, so the pipeline uses every core. A byte budget bounds the chunks
in flight, which bounds memory whatever the size of the files.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from freezeframe.backup.chunker import Chunker
from freezeframe.backup.commit import Labels, StoredTree, commit_snapshot
from freezeframe.backup.excludes import ExcludeMatcher
from freezeframe.backup.files_cache import CachedFile, FilesCache
from freezeframe.backup.metadata import (
    data_extents,
    may_be_sparse,
    node_from_stat,
    node_type,
    read_xattrs,
)
from freezeframe.backup.prefetch import SMALL_FILE, WINDOW, Prefetcher
from freezeframe.backup.progress import BackupProgress
from freezeframe.backup.reader import ExtentReader, open_for_backup, read_small
from freezeframe.backup.scanner import scan_totals
from freezeframe.errors import FreezeframeError, Interrupted, NotFound
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport, Snapshot
from freezeframe.repository.tree import Node, encode_tree

IN_FLIGHT_BYTES = 96 * 1024 * 1024
BATCH_BYTES = 1024 * 1024
BATCH_BLOBS = 256
# Files modified this recently are not cached: a later write within the same timestamp tick
# would otherwise go unnoticed.
CACHE_SETTLE_NS = 2_000_000_000

# The errors a failing disk (or a file system that read it badly) gives, not a file's own.
DEVICE_ERRORS = (errno.EIO, errno.EUCLEAN)


@dataclass(frozen=True)
class SourcePath:
    """What to read, and the absolute path to record (they differ when reading a snapshot)."""

    read_path: bytes
    record_path: bytes


@dataclass
class BackupOptions:
    sources: list[SourcePath]
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    host: str = ""
    one_file_system: bool = False
    consistency: ConsistencyReport = field(default_factory=ConsistencyReport)
    cache_checks_device: bool = True
    # Directories read from elsewhere: record path -> read path (a nested volume's snapshot,
    # which its parent's snapshot shows as an empty directory).
    grafts: dict[bytes, bytes] = field(default_factory=dict)
    # Files known only after the snapshot (a database's backup label): record path -> read
    # path; None leaves the snapshot's file out (a server's pid file).
    replaced: dict[bytes, bytes | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _StagedEntry:
    """A file read from outside the walked tree, listed in it like any directory entry."""

    name: bytes
    path: bytes

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path) if follow_symlinks else os.lstat(self.path)


_Entry = os.DirEntry[bytes] | _StagedEntry


@dataclass
class BackupResult:
    snapshot: Snapshot
    errors: list[tuple[str, str]]


class _ByteBudget:
    """Blocks the walker while too many chunk bytes wait for the workers."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self._cond:
            while self._used > 0 and self._used + n > self._limit:
                self._cond.wait()
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class Archiver:
    """Runs one backup of a set of sources into a repository and writes its snapshot."""

    def __init__(
        self,
        repo: Repository,
        options: BackupOptions,
        files_cache: FilesCache,
        progress: BackupProgress | None = None,
        workers: int | None = None,
        *,
        estimate_totals: bool = False,
    ) -> None:
        """``estimate_totals`` pre-scans the sources for an ETA; only worth its lstat calls when
        someone watches the progress."""
        self.estimate_totals = estimate_totals
        self.repo = repo
        self.options = options
        self.files_cache = files_cache
        self.progress = progress or BackupProgress()
        self.chunker = Chunker(repo.config.chunker, repo.master.chunker_seed)
        self.excludes = ExcludeMatcher(options.excludes)
        self.errors: list[tuple[str, str]] = []
        # Paths the disk under them failed to read (EIO, EUCLEAN): a snapshot is damaged then.
        self.io_errors: list[str] = []
        self.changed_during_read: list[str] = []
        self.stats = {"files_new": 0, "files_changed": 0, "files_unmodified": 0, "dirs": 0}
        self.stats.update(bytes_read=0, bytes_total=0, symlinks=0, special=0)
        self._workers = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2))
        self._budget = _ByteBudget(IN_FLIGHT_BYTES)
        self._batch: list[tuple[bytes, bytes]] = []
        self._prefetcher = Prefetcher()
        self._batch_bytes = 0
        self._failure: BaseException | None = None
        self._futures: set[Future[None]] = set()
        self._futures_lock = threading.Lock()
        self._root_device = 0
        self._now_ns = time.time_ns()
        self._replaced_in: dict[bytes, dict[bytes, bytes | None]] = {}
        for record, read in options.replaced.items():
            parent, _, name = record.rpartition(b"/")
            self._replaced_in.setdefault(parent, {})[name] = read

    def run(self, before_commit: Callable[[], None] | None = None) -> BackupResult:
        """Back up and save the snapshot with the options' consistency record and labels.
        ``before_commit`` runs after the data is durable and before the snapshot is written:
        the caller verifies there that it still holds its lock."""
        stored = self.store()
        labels = Labels(tuple(self.options.tags), self.options.host)
        snapshot = commit_snapshot(
            self.repo, stored, self.options.consistency, labels, before_commit
        )
        self.save_files_cache()
        return BackupResult(snapshot, self.errors)

    def store(self) -> StoredTree:
        """Read the sources and store their tree, every blob durable; the snapshot is the
        caller's to write (``commit.commit_snapshot``), then ``save_files_cache``."""
        started = datetime.now(UTC)
        t0 = time.monotonic()
        for source in self.options.sources:
            if not os.path.lexists(source.read_path):
                raise NotFound(f"{os.fsdecode(source.record_path)} does not exist")
        stop_scan = threading.Event()
        if self.estimate_totals:
            threading.Thread(
                target=scan_totals,
                args=([s.read_path for s in self.options.sources], self.progress, stop_scan),
                daemon=True,
            ).start()
        try:
            root = self._save_root()
            self._check_replaced_placed()
            self._drain()
            self.repo.flush()
        except BaseException as exc:
            self._abort(exc)
            raise
        finally:
            stop_scan.set()
            self._prefetcher.close()
            self._workers.shutdown(wait=True, cancel_futures=True)
        return StoredTree(
            started=started,
            paths=[os.fsdecode(s.record_path) for s in self.options.sources],
            tree=root,
            summary=self._summary(time.monotonic() - t0),
            excludes=list(self.options.excludes),
            changed_during_read=list(self.changed_during_read),
        )

    def save_files_cache(self) -> None:
        """Once the snapshot is saved: the next backup may trust what this one read."""
        try:
            self.files_cache.save()
        except OSError as exc:
            self.errors.append(("files cache", f"not saved: {exc.strerror}"))

    # -- the virtual root: absolute paths of every source, from / down ----------------------

    def _check_replaced_placed(self) -> None:
        """A file to add whose directory the walk never listed (excluded, or a symlink to it
        was walked instead) would be missing from the snapshot: that fails the backup."""
        missing = sorted(
            os.fsdecode(parent)
            for parent, files in self._replaced_in.items()
            if any(read is not None for read in files.values())
        )
        if missing:
            raise FreezeframeError(
                f"files to add to the backup have no directory in it: {', '.join(missing)}"
            )

    def _save_root(self) -> bytes:
        tree: dict[bytes, object] = {}
        for source in self.options.sources:
            parts = [p for p in source.record_path.split(b"/") if p]
            level = tree
            for part in parts[:-1]:
                child = level.setdefault(part, {})
                if not isinstance(child, dict):
                    break  # a source inside another source: the outer one covers it
                level = child
            else:
                if parts:
                    level[parts[-1]] = source
                else:
                    return self._save_source_root(source)
        return self._save_virtual(tree, b"")

    def _save_virtual(self, tree: dict[bytes, object], record_prefix: bytes) -> bytes:
        nodes = []
        for name, child in tree.items():
            record = record_prefix + b"/" + name
            if isinstance(child, SourcePath):
                node = self._save_source(child, name)
                if node is not None:
                    nodes.append(node)
                continue
            assert isinstance(child, dict)
            node = self._parent_dir_node(name, record)
            node.subtree = self._save_virtual(child, record)
            nodes.append(node)
        blob_id, _ = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))
        return blob_id

    def _parent_dir_node(self, name: bytes, record: bytes) -> Node:
        try:
            st = os.lstat(record)
            if stat.S_ISDIR(st.st_mode):
                node = node_from_stat(name, "dir", st)
                node.xattrs = self._xattrs(record)
                return node
        except OSError:
            pass
        return Node(name=name, type="dir", mode=0o755, uid=0, gid=0, mtime_ns=0)

    def _save_source_root(self, source: SourcePath) -> bytes:
        st = os.lstat(source.read_path)
        self._root_device = st.st_dev
        return self._save_dir_tree(source.read_path, source.record_path.rstrip(b"/"))

    def _save_source(self, source: SourcePath, name: bytes) -> Node | None:
        st = os.lstat(source.read_path)
        self._root_device = st.st_dev
        cached = self._unchanged(source.record_path, st) if stat.S_ISREG(st.st_mode) else None
        return self._save_entry(source.read_path, source.record_path, name, st, cached)

    # -- the walk ----------------------------------------------------------------------------

    def _save_entry(
        self,
        read: bytes,
        record: bytes,
        name: bytes,
        st: os.stat_result,
        cached: CachedFile | None = None,
    ) -> Node | None:
        if self._failure is not None:
            raise self._failure
        kind = node_type(st.st_mode)
        if kind is None:
            return None  # sockets are recreated by their programs, never restored
        try:
            if kind == "file":
                return self._save_file(read, record, name, st, cached)
            if kind == "dir" and record in self.options.grafts:
                read = self.options.grafts[record]
                st = os.lstat(read)
            node = node_from_stat(name, kind, st)
            node.xattrs = self._xattrs(read)
            if kind == "dir":
                self.stats["dirs"] += 1
                self.progress.dirs_done += 1
                if self.options.one_file_system and st.st_dev != self._root_device:
                    node.subtree = self._save_dirlist([])
                else:
                    node.subtree = self._save_dir_tree(read, record)
            elif kind == "symlink":
                self.stats["symlinks"] += 1
                node.linktarget = os.readlink(read)
            else:
                self.stats["special"] += 1
            return node
        except FileNotFoundError:
            # Deleted or renamed between the directory listing and now: a change during the
            # read, not an unreadable file.
            self.changed_during_read.append(os.fsdecode(record))
            return None
        except OSError as exc:
            self._error(record, exc)
            return None

    def _save_dir_tree(self, read: bytes, record: bytes) -> bytes:
        nodes = []
        for entry, child_record, st, cached in self._list_dir(read, record):
            node = self._save_entry(entry.path, child_record, entry.name, st, cached)
            if node is not None:
                nodes.append(node)
        return self._save_dirlist(nodes)

    def _list_dir(
        self, read: bytes, record: bytes
    ) -> Iterator[tuple[_Entry, bytes, os.stat_result, CachedFile | None]]:
        """A directory's entries in name order, excludes applied, each regular file with its
        files-cache entry when unchanged; the small files to be read are warmed in the page
        cache a window ahead."""
        try:
            with os.scandir(read) as scan:
                entries: list[_Entry] = list(scan)
        except OSError as exc:
            self._error(record, exc)
            return
        replaced = self._replaced_in.pop(record, None)
        if replaced:
            entries = [e for e in entries if e.name not in replaced]
            entries += [_StagedEntry(n, p) for n, p in replaced.items() if p is not None]
        entries.sort(key=lambda e: e.name)
        listed = []
        for entry in entries:
            child_record = record + b"/" + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                # Gone between the listing and its stat: a change during the read.
                self.changed_during_read.append(os.fsdecode(child_record))
                continue
            except OSError as exc:
                self._error(child_record, exc)
                continue
            if self.excludes and self.excludes.excludes(child_record, stat.S_ISDIR(st.st_mode)):
                continue
            regular = stat.S_ISREG(st.st_mode)
            cached = self._unchanged(child_record, st) if regular else None
            listed.append((entry, child_record, st, cached))
        to_read = [
            i
            for i, (_e, _r, st, cached) in enumerate(listed)
            if cached is None and stat.S_ISREG(st.st_mode) and 0 < st.st_size <= SMALL_FILE
        ]
        warmed = 0
        for position, item in enumerate(listed):
            if warmed < len(to_read) and to_read[warmed] <= position + WINDOW:
                upto = bisect.bisect_right(to_read, position + 2 * WINDOW)
                self._prefetcher.warm([listed[i][0].path for i in to_read[warmed:upto]])
                warmed = upto
            yield item

    def _save_dirlist(self, nodes: list[Node]) -> bytes:
        blob_id, _ = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))
        return blob_id

    def _unchanged(self, record: bytes, st: os.stat_result) -> CachedFile | None:
        """The files-cache entry of a file that looks unchanged and whose chunks are all still
        in the index, else None."""
        cached = self.files_cache.lookup(record, st, self.options.cache_checks_device)
        if cached is None or not all(c in self.repo.index for c in cached.content):
            return None
        return cached

    def _cacheable(self, st: os.stat_result, node: Node) -> bool:
        """Sparse files are not cached (the cache holds no hole map, and reading only their data
        is cheap); nor are files touched too recently for their timestamps to be trusted."""
        settled = self._now_ns - max(st.st_mtime_ns, st.st_ctime_ns) > CACHE_SETTLE_NS
        return settled and node.sparse_map is None

    def _save_file(
        self,
        read: bytes,
        record: bytes,
        name: bytes,
        st: os.stat_result,
        cached: CachedFile | None,
    ) -> Node | None:
        """A file unchanged since the last backup (files cache) is not even opened, and its
        xattrs are read only if it had some: changing an xattr changes the ctime."""
        self.progress.current_path = os.fsdecode(record)
        self.stats["bytes_total"] += st.st_size
        if cached is not None:
            node = node_from_stat(name, "file", st)
            node.xattrs = self._xattrs(read) if cached.has_xattrs else {}
            node.content = list(cached.content)
            self.files_cache.remember(record, st, node.content, bool(node.xattrs))
            self.stats["files_unmodified"] += 1
        else:
            node = self._read_file(read, record, name)
        self.progress.files_done += 1
        self.progress.bytes_done += node.size
        return node

    def _read_file(self, read: bytes, record: bytes, name: bytes) -> Node:
        fd = open_for_backup(read)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise OSError(errno.EAGAIN, "replaced by another kind of file while read")
            node = node_from_stat(name, "file", before)
            node.xattrs = self._xattrs(read)
            known = self.files_cache.knows(record)
            self.stats["files_changed" if known else "files_new"] += 1
            self._read_content(fd, before, node)
            after = os.fstat(fd)
            if _changed(before, after):
                self.changed_during_read.append(os.fsdecode(record))
            elif self._cacheable(before, node):
                self.files_cache.remember(record, before, node.content, bool(node.xattrs))
            return node
        finally:
            os.close(fd)

    def _read_content(self, fd: int, st: os.stat_result, node: Node) -> None:
        extents = data_extents(fd, st.st_size) if may_be_sparse(st) else None
        if extents is not None and sum(length for _, length in extents) < st.st_size:
            node.sparse_map = extents
        else:
            extents = None
        if extents is None and st.st_size < self.chunker.params.min_size:
            data = read_small(fd, st.st_size)
            node.size = len(data)
            node.content = [self._submit(data)] if data else []
            return
        reader = ExtentReader(fd, extents)
        node.content = [self._submit(chunk) for chunk in self.chunker.chunks(reader)]
        if extents is None:
            node.size = reader.bytes_read

    def _submit(self, chunk: bytes | memoryview) -> bytes:
        """Hash a chunk; if the repository lacks it, hand a copy to a worker. Returns its id.
        Small chunks travel in batches: one hand-off per small file would cost more than
        compressing it."""
        self.stats["bytes_read"] += len(chunk)
        blob_id = self.repo.blob_id(chunk)
        if not self.repo.claim_blob(blob_id):
            return blob_id
        if self._failure is not None:
            raise self._failure
        self.progress.bytes_added += len(chunk)
        self._batch.append((blob_id, bytes(chunk)))
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_BLOBS:
            self._send_batch()
        return blob_id

    def _send_batch(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        self._budget.acquire(size)
        future = self._workers.submit(self._store, batch, size)
        with self._futures_lock:
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _store(self, batch: list[tuple[bytes, bytes]], size: int) -> None:
        try:
            for blob_id, chunk in batch:
                self.repo.store_claimed_blob(BlobType.DATA, blob_id, chunk)
        finally:
            self._budget.release(size)

    def _done(self, future: Future[None]) -> None:
        with self._futures_lock:
            self._futures.discard(future)
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def _drain(self) -> None:
        self._send_batch()
        while True:
            with self._futures_lock:
                pending = list(self._futures)
            if not pending:
                break
            for future in pending:
                future.exception()
        if self._failure is not None:
            raise self._failure

    def _abort(self, exc: BaseException) -> None:
        """On Ctrl-C, keep what is complete: finish in-flight blobs and index them, so the next
        backup reuses them. On other failures nothing more is written."""
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            try:
                self._drain()
                self.repo.flush()
            except (FreezeframeError, OSError):
                pass

    def _xattrs(self, path: bytes) -> dict[bytes, bytes]:
        try:
            return read_xattrs(path)
        except OSError as exc:
            self._error(path, exc)
            return {}

    def _error(self, path: bytes, exc: OSError) -> None:
        self.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
        if exc.errno in DEVICE_ERRORS:
            self.io_errors.append(os.fsdecode(path))
        self.progress.errors += 1

    def _summary(self, seconds: float) -> dict[str, object]:
        return {
            **self.stats,
            "bytes_added": self.repo.bytes_added_raw,
            "bytes_stored": self.repo.packer.bytes_written,
            "blobs_added": self.repo.blobs_added,
            "packs_written": self.repo.packer.packs_written,
            "errors": len(self.errors),
            "changed_during_read": len(self.changed_during_read),
            "duration_seconds": round(seconds, 3),
        }


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (
        before.st_size != after.st_size
        or before.st_mtime_ns != after.st_mtime_ns
        or before.st_ctime_ns != after.st_ctime_ns
    )
