"""``copy``: snapshots of one repository into another (3-2-1: a local repository and a remote
one), blob by blob.

The two repositories must be related (the target made with ``init --copy-chunker-params``
from the source, or both from a third): they share the id key, so a blob's id is the same in
both and trees are copied as they are. Only the blobs the target lacks are read from the source
(decrypted and checked against their ids there), encrypted with the target's key and packed.
Unrelated repositories are refused: copying between them would mean reading every file's
content, cutting it again and rewriting every tree, a full backup's work per snapshot.

Each copied snapshot names the snapshot it copies (``original``); one whose original the target
already holds is skipped, so a second copy copies nothing. A snapshot is committed the way a
backup's is (``backup.commit.save_committed``: flushed, the lock checked, then saved), so a
copy that fails leaves no snapshot whose blobs are not all stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TypeVar

from freezeframe.backup.commit import save_committed
from freezeframe.errors import FreezeframeError, NotFound, UsageError
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.pack import BlobType
from freezeframe.repository.reader import MissingBlobs, PackRun, RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, find_snapshot, list_snapshots
from freezeframe.repository.tree import decode_tree
from freezeframe.service.reporter import Cancel, Reporter

WORKERS = 4
# Reads in flight at most (a pack range is up to 8 MiB): bounds memory to some 100 MiB.
_IN_FLIGHT = 3 * WORKERS
_T = TypeVar("_T")


@dataclass(frozen=True)
class CopyRequest:
    snapshots: tuple[str, ...] = ()  # id prefixes or latest; none: every selected snapshot
    host: str | None = None  # only snapshots of this host
    tags: tuple[str, ...] = ()  # only snapshots carrying every one of these tags
    paths: tuple[str, ...] = ()  # only snapshots whose paths include every one of these


class CopyProgress:
    """Counters the copy updates from its workers; a front end reads them to show progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.snapshots_total = 0
        self.snapshots_done = 0  # copied or skipped
        self.current = ""  # the short id of the snapshot being copied
        self.blobs_added = 0
        self.bytes_added = 0  # bytes of the added blobs before compression

    def added(self, size: int) -> None:
        with self._lock:
            self.blobs_added += 1
            self.bytes_added += size


@dataclass(frozen=True)
class CopiedSnapshot:
    source: Snapshot  # as the source holds it
    target_id: str  # the copy's id in the target (the copy found there when skipped)


@dataclass
class CopyOutcome:
    copied: list[CopiedSnapshot] = field(default_factory=list)
    skipped: list[CopiedSnapshot] = field(default_factory=list)  # copied before
    blobs_added: int = 0
    bytes_added: int = 0  # before compression
    packs_written: int = 0
    bytes_written: int = 0  # as stored in the target (packs with their headers)


def copy(
    source: Repository,
    target: Repository,
    request: CopyRequest,
    reporter: Reporter,
    cancel: Cancel | None = None,
) -> CopyOutcome:
    """Copy the selected snapshots of ``source`` (oldest first) into ``target``, both opened
    without their index (each is loaded under its shared lock); ``cancel`` is honoured
    between snapshots and blobs. A failure raises with the snapshots copied so far kept.

    Each snapshot is committed once its blobs are flushed, so a copy of many snapshots leaves
    a partly filled data pack and tree pack per snapshot, as their backups did."""
    cancel = cancel or Cancel()
    check_related(source, target)
    outcome = CopyOutcome()
    progress = CopyProgress()
    packs_before = target.packer.packs_written
    bytes_before = target.packer.bytes_written
    with RepositoryLock(source, exclusive=False), RepositoryLock(target, exclusive=False) as lock:
        selected = select(source, request)
        progress.snapshots_total = len(selected)
        present = {s.original or s.id: s.id for s in list_snapshots(target)}
        copier = _BlobCopier(source, target, progress, cancel)
        with reporter.phase("copy", progress):
            for snapshot in selected:
                cancel.check()
                key = snapshot.original or snapshot.id
                if key in present:
                    outcome.skipped.append(CopiedSnapshot(snapshot, present[key]))
                else:
                    progress.current = snapshot.short_id
                    copied = replace(snapshot, id="", parent=None, original=key)
                    try:
                        copier.copy_tree(snapshot.tree)
                        save_committed(target, copied, lock.ensure_held)
                    except FreezeframeError as exc:
                        done = len(outcome.copied)
                        kept = f" (the {done} copied before it stay)" if done else ""
                        raise reworded(
                            exc, f"{exc}; snapshot {snapshot.short_id} was not copied{kept}"
                        ) from exc
                    present[key] = copied.id
                    outcome.copied.append(CopiedSnapshot(snapshot, copied.id))
                progress.snapshots_done += 1
    outcome.blobs_added = progress.blobs_added
    outcome.bytes_added = progress.bytes_added
    outcome.packs_written = target.packer.packs_written - packs_before
    outcome.bytes_written = target.packer.bytes_written - bytes_before
    return outcome


def check_related(source: Repository, target: Repository) -> None:
    """UsageError unless blobs can move between the two as they are (the same id key)."""
    if source.config.repository_id == target.config.repository_id:
        raise UsageError("the source and the target are the same repository")
    if source.master.id_key != target.master.id_key:
        raise UsageError(
            "the repositories are not related (their blob ids differ), so their snapshots "
            "cannot be copied: create the target with `freezeframe init "
            "--copy-chunker-params --from-repo SOURCE`, then copy into it"
        )


def select(source: Repository, request: CopyRequest) -> list[Snapshot]:
    """The snapshots to copy, oldest first: those named (``latest``: the latest that passes
    the filters), or every snapshot that passes the filters."""
    matching = [s for s in list_snapshots(source) if _passes(s, request)]
    if not request.snapshots:
        return matching
    chosen: dict[str, Snapshot] = {}
    for ref in request.snapshots:
        if ref == "latest":
            if not matching:
                raise NotFound("the source repository has no snapshot that matches")
            found = matching[-1]
        else:
            found = find_snapshot(source, ref)
        chosen[found.id] = found
    return sorted(chosen.values(), key=lambda s: (s.time, s.id))


def _passes(snapshot: Snapshot, request: CopyRequest) -> bool:
    return (
        (request.host is None or snapshot.host == request.host)
        and all(tag in snapshot.tags for tag in request.tags)
        and all(path in snapshot.paths for path in request.paths)
    )


class _BlobCopier:
    """Moves the blobs below trees from the source to the target, each at most once a run.

    Every tree is read from the source and every blob id it names is looked up in the target
    (a tree the target holds says nothing of its content: an interrupted backup or copy may
    have stored a tree before its data). Data goes first, the trees after it."""

    def __init__(
        self, source: Repository, target: Repository, progress: CopyProgress, cancel: Cancel
    ) -> None:
        self._source = source
        self._target = target
        self._progress = progress
        self._cancel = cancel
        self._visited: set[bytes] = set()

    def copy_tree(self, root: bytes) -> None:
        missing_trees: list[bytes] = []
        missing_data: list[bytes] = []
        frontier = [root] if root not in self._visited else []
        self._visited.update(frontier)
        while frontier:
            self._cancel.check()
            next_frontier: list[bytes] = []
            for tree_id, raw in zip(frontier, self._map(self._read_tree, frontier), strict=True):
                if self._target.claim_blob(tree_id):
                    missing_trees.append(tree_id)
                for node in decode_tree(raw):
                    missing_data += [c for c in node.content if self._target.claim_blob(c)]
                    if node.subtree is not None and node.subtree not in self._visited:
                        self._visited.add(node.subtree)
                        next_frontier.append(node.subtree)
            frontier = next_frontier
        # Data in pack ranges (nearby blobs in one request: a remote source pays per request).
        self._run(
            self._copy_run,
            RepositoryReader(self._source, read_ahead=False).plan_reads(missing_data),
        )
        self._run(lambda blob: self._copy_blob(BlobType.TREE, blob), missing_trees)

    def _read_tree(self, tree_id: bytes) -> bytes:
        return self._read(tree_id, BlobType.TREE)

    def _copy_blob(self, blob_type: BlobType, blob_id: bytes) -> None:
        data = self._read(blob_id, blob_type)
        self._target.store_claimed_blob(blob_type, blob_id, data)
        self._progress.added(len(data))

    def _copy_run(self, run: PackRun | MissingBlobs) -> None:
        try:
            fetched = run.fetch()
            blobs = [(blob_id, fetched.open(blob_id)) for blob_id in run.blob_ids]
        except FreezeframeError as exc:
            raise reworded(exc, f"the source repository: {exc}") from exc
        for blob_id, data in blobs:
            self._target.store_claimed_blob(BlobType.DATA, blob_id, data)
            self._progress.added(len(data))

    def _read(self, blob_id: bytes, blob_type: BlobType) -> bytes:
        """A blob of the source, decrypted and checked against its id; an error says it is
        the source's (run ``check`` there, not on the target)."""
        try:
            return self._source.load_blob(blob_id, blob_type)
        except FreezeframeError as exc:
            raise reworded(exc, f"the source repository: {exc}") from exc

    def _map(self, fn: Callable[[bytes], bytes], items: list[bytes]) -> list[bytes]:
        if len(items) < 4:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            return list(pool.map(fn, items))

    def _run(self, fn: Callable[[_T], None], items: Iterable[_T]) -> None:
        """``fn`` on every item, a few in flight; the first failure stops the rest."""
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            running: set[Future[None]] = set()
            try:
                for item in items:
                    if len(running) >= _IN_FLIGHT:
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        _raise_first(done)
                        self._cancel.check()
                    running.add(pool.submit(fn, item))
                done, running = wait(running, return_when=FIRST_EXCEPTION)
                _raise_first(done)
            finally:
                for future in running:
                    future.cancel()


def _raise_first(futures: Iterable[Future[None]]) -> None:
    for future in futures:
        if future.done() and future.exception() is not None:
            error = future.exception()
            assert error is not None
            raise error


def reworded(exc: FreezeframeError, message: str) -> FreezeframeError:
    """The same kind of error (so the same exit status and code) with a message saying more."""
    try:
        return type(exc)(message)
    except TypeError:  # an error class with arguments of its own
        return FreezeframeError(message)
