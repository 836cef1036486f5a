"""Prune: delete the packs that no snapshot needs and repack the partly used ones, in two
phases, so that backups on other hosts go on while it runs and never lose a blob.

What happens to each pack (restic's ``--max-unused`` rule):

- every blob reachable from a snapshot is *used*. A blob stored in several packs is used in one
  copy only (the one in the pack with the largest share of used data), the others are unused;
- a pack with no used blob is a candidate for deletion; a pack with only used blobs is kept;
- partly used packs are repacked, largest unused share first, until the unused bytes left in the
  repository are at most ``max_unused_fraction`` of its size after pruning (default 5 %); the
  others are kept with their unused blobs. A repacked pack becomes a candidate;
- packs that no index names (left by an interrupted backup, or being written by a running one)
  are candidates too.

**Phase 1, mark.** Candidates are not deleted: the new index names every kept and new pack, and a
*mark file* (an index file of format 2, see ``index.py``) names the candidates with the time of
the mark. Blobs of marked packs are readable but never deduplicated against, so a backup that
loads the index after the mark does not come to depend on them.

**Phase 2, sweep** (a later prune, or the same one): the packs of a mark are deleted once

1. the grace period has passed since the mark (``--grace``; it covers listings that lag behind
   writes on some object stores; 0 on a local directory, whose listing is exact), and
2. no lock is held that began before the mark (plus ``CLOCK_MARGIN_S`` of clock skew between
   hosts): such a backup may have loaded the index before the mark and used a candidate blob.
   A stale lock (its holder silent for 30 minutes) is removed instead, so that holder fails
   before it commits (``RepositoryLock.ensure_held``), and
3. no snapshot, listed after 2. held, uses a blob of the pack that has no other live copy: such a
   pack (used by a snapshot written since the mark) is named live again instead.

A mark is swept in the same run as it is made when the grace period is 0 and no other lock is
held after the old index files are gone. Backups never wait for prune: prune takes a
*maintenance* lock, which excludes only other prunes, forgets and exclusive commands.

The order of writes keeps every used blob named by an index file and stored in a pack at every
moment, whatever is interrupted:

1. used blobs of the packs to repack are copied into new packs (each decrypted and verified
   first, so a damaged blob stops the prune instead of being copied); their own index files
   name them;
2. new index files name every kept pack, the new packs and any pack named live again; the mark
   file names the candidates;
3. the index files that were read to plan are deleted (never one written since: a running
   backup's index stays);
4. packs of marks that are due are deleted, then their mark files.

A crash leaves at worst duplicate index entries or a mark not yet swept; the next prune finishes
the work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from freezeframe.errors import FreezeframeError, IntegrityError, StorageError, UsageError
from freezeframe.repository.crypto import content_name
from freezeframe.repository.index import Index, encode_index
from freezeframe.repository.indexfiles import delete_index_files, write_index_files
from freezeframe.repository.locks import LockInfo, RepositoryLock, read_locks
from freezeframe.repository.pack import BlobType, PackEntry
from freezeframe.repository.packer import Packer
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, list_snapshots
from freezeframe.repository.tree import Node, decode_tree
from freezeframe.repository.walk import reachable_blobs
from freezeframe.storage.base import Kind, Storage

Progress = Callable[[str, int, int], None]

WORKERS = 4
CLOCK_MARGIN_S = 10 * 60.0
"""How much earlier than a mark a lock may say it began and still block its sweep: the clocks of
the hosts sharing a repository may differ, and the index files are rewritten over some time."""
REMOTE_GRACE_S = 3600.0
"""The default grace period of a repository that is not a local directory."""


def default_grace(storage: Storage) -> float:
    """No wait on a local directory (its listing is exact); an hour elsewhere."""
    return 0.0 if storage.capabilities.local_directory is not None else REMOTE_GRACE_S


@dataclass
class Mark:
    """A mark file read while planning: when it was made and the packs it names."""

    file: str
    time: float
    packs: dict[str, list[PackEntry]]


def blockers(locks: Iterable[LockInfo], mark_time: float, now: float) -> list[LockInfo]:
    """The live locks that began before ``mark_time`` (less the clock margin), or say nothing of
    when they began: while one is held, the mark's packs stay."""
    return [
        lock
        for lock in locks
        if not lock.is_stale(now)
        and (lock.damaged or lock.since is None or lock.since < mark_time + CLOCK_MARGIN_S)
    ]


@dataclass
class PrunePlan:
    """What ``execute_prune`` will do; printing it is a dry run."""

    keep: dict[str, list[PackEntry]]
    """Kept packs with all their blobs: these entries go into the new index."""
    repack: dict[str, list[PackEntry]]
    """Packs to repack, with the used blobs to copy out of each."""
    delete: list[str]
    """Packs without any used blob."""
    orphans: list[str]
    """Packs that no index names."""
    missing: list[str]
    """Packs the index names but storage lacks; they only held unused blobs (else planning
    fails), so they are simply left out of the new index."""
    index_files: list[str]
    """The index files read to plan (mark files not due are not among them)."""
    pack_sizes: dict[str, int]
    max_unused_fraction: float
    grace_s: float = 0.0
    marked_entries: dict[str, list[PackEntry]] = field(default_factory=dict)
    """The blobs of the candidates that are indexed (the new mark file names them)."""
    sweep: list[str] = field(default_factory=list)
    """Packs of earlier marks that are due: deleted by this run."""
    revive: dict[str, list[PackEntry]] = field(default_factory=dict)
    """Marked packs a snapshot still uses: named live again."""
    due_marks: list[str] = field(default_factory=list)
    """Mark files that are due: deleted once their packs are."""
    pending: int = 0
    """Packs of earlier marks that wait (grace period, or a lock held since before the mark)."""
    blocked_by: list[str] = field(default_factory=list)
    sweep_now: bool = False
    """Whether this run's own candidates are deleted at once (grace 0 and no other lock)."""
    snapshots: frozenset[str] = frozenset()
    """The snapshots the plan counted: one saved since defers the deletion at once."""
    used_blobs: int = 0
    used_bytes: int = 0
    unused_bytes: int = 0
    unused_after: int = 0
    blobs_removed: int = 0

    @property
    def repack_bytes(self) -> int:
        return sum(e.length for entries in self.repack.values() for e in entries)

    @property
    def candidates(self) -> list[str]:
        """The packs this run marks for deletion."""
        return [*self.delete, *self.repack, *self.orphans]

    @property
    def bytes_to_delete(self) -> int:
        gone = [*self.sweep, *(self.candidates if self.sweep_now else [])]
        return sum(self.pack_sizes.get(name, 0) for name in gone)

    @property
    def bytes_to_mark(self) -> int:
        return sum(self.pack_sizes.get(name, 0) for name in self.candidates)

    @property
    def nothing_to_do(self) -> bool:
        return not (
            self.repack
            or self.delete
            or self.orphans
            or self.missing
            or self.sweep
            or self.revive
            or self.due_marks
        )

    def to_json(self) -> dict[str, int | float]:
        """The plan's numbers, for a dry run's report."""
        return {
            "packs_to_keep": len(self.keep),
            "packs_to_repack": len(self.repack),
            "packs_to_delete": len(self.delete),
            "orphan_packs": len(self.orphans),
            "missing_packs": len(self.missing),
            "used_blobs": self.used_blobs,
            "used_bytes": self.used_bytes,
            "unused_bytes": self.unused_bytes,
            "unused_bytes_after": self.unused_after,
            "bytes_to_repack": self.repack_bytes,
            "bytes_to_delete": self.bytes_to_delete,
            "blobs_to_remove": self.blobs_removed,
            "max_unused_fraction": self.max_unused_fraction,
            "packs_to_mark": len(self.candidates),
            "bytes_to_mark": self.bytes_to_mark,
            "marked_packs_to_delete": len(self.sweep),
            "marked_packs_to_revive": len(self.revive),
            "marked_packs_waiting": self.pending,
            "grace_seconds": self.grace_s,
            "deleted_at_once": self.sweep_now,
        }


@dataclass
class PruneStats:
    packs_kept: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphans_deleted: int = 0
    packs_written: int = 0
    blobs_repacked: int = 0
    blobs_removed: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    packs_marked: int = 0
    """Candidates of this run left marked (deleted by a later prune)."""
    marked_packs_deleted: int = 0
    """Packs of earlier marks deleted by this run."""
    packs_revived: int = 0
    marked_packs_waiting: int = 0

    @property
    def bytes_freed(self) -> int:
        return self.bytes_deleted - self.bytes_written

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


# -- planning --------------------------------------------------------------------------------


def plan_prune(
    repo: Repository,
    *,
    max_unused_fraction: float = 0.05,
    grace_s: float | None = None,
    lock: RepositoryLock | None = None,
) -> PrunePlan:
    """Decide which packs to keep, repack and mark, and which marks to sweep; reads indexes,
    locks and trees, never packs. ``lock``: the prune's own (not a blocker of anything).

    Raises IntegrityError, before anything is changed, when an index, snapshot or tree cannot
    be read or a used blob has no stored copy: deleting data then could lose what a damaged
    object refers to."""
    if not 0 <= max_unused_fraction <= 1:
        raise UsageError("the unused-space limit must be between 0 and 100 %")
    grace = default_grace(repo.storage) if grace_s is None else grace_s
    if not (math.isfinite(grace) and grace >= 0):
        raise UsageError("the grace period must be 0 or more")
    now = time.time()
    # Locks first, snapshots after: a snapshot a blocker commits later is seen by a later run.
    others = _other_locks(repo, lock)
    # Snapshots before the index: a backup writes its index before its snapshot, so every
    # snapshot listed here has its blobs in an index file listed after it.
    snapshots = _snapshots(repo)
    index_files = sorted(repo.list_names(Kind.INDEX))
    packs, marks = _read_indexes(repo, index_files)
    sizes = {info.name: info.size for info in repo.storage.list(Kind.DATA)}
    missing = sorted(p for p in packs if p not in sizes)
    present = {p: entries for p, entries in packs.items() if p in sizes}
    marked: dict[str, dict[bytes, PackEntry]] = {}
    for mark in marks:
        for pack, mark_entries in mark.packs.items():
            if pack not in packs and pack in sizes:
                found = marked.setdefault(pack, {})
                for entry in mark_entries:
                    found.setdefault(entry.blob_id, entry)

    copies: dict[bytes, list[tuple[str, PackEntry]]] = {}
    for pack, entries in present.items():
        for entry in entries.values():
            copies.setdefault(entry.blob_id, []).append((pack, entry))
    readable = {blob_id: list(found) for blob_id, found in copies.items()}
    for pack, entries in marked.items():
        for entry in entries.values():
            readable.setdefault(entry.blob_id, []).append((pack, entry))

    used, snapshot_ids = _used_blobs(repo, snapshots, readable)
    revive = {
        pack: list(entries.values())
        for pack, entries in marked.items()
        if any(blob_id in used and blob_id not in copies for blob_id in entries)
    }
    for pack, revived in revive.items():  # a snapshot written since the mark needs them
        for entry in revived:
            copies.setdefault(entry.blob_id, []).append((pack, entry))
        present[pack] = {entry.blob_id: entry for entry in revived}
    chosen = _choose_copies(present, copies, used)

    plan = PrunePlan(
        keep={},
        repack={},
        delete=[],
        orphans=sorted(set(sizes) - set(packs) - {p for m in marks for p in m.packs}),
        missing=missing,
        index_files=[],
        pack_sizes=sizes,
        max_unused_fraction=max_unused_fraction,
        grace_s=grace,
        revive=revive,
        snapshots=snapshot_ids,
        used_blobs=len(used),
    )
    _plan_sweep(plan, marks, packs, revive, others, now)
    due = set(plan.due_marks)
    waiting = {m.file for m in marks if m.file not in due}
    plan.index_files = [name for name in index_files if name not in waiting]

    partly: list[tuple[str, int, int]] = []  # (pack, used bytes, unused bytes)
    for pack, entries in sorted(present.items()):
        total = sum(e.length for e in entries.values())
        in_use = sum(e.length for e in entries.values() if chosen.get(e.blob_id) == pack)
        plan.used_bytes += in_use
        plan.unused_bytes += total - in_use
        if in_use == 0:
            plan.delete.append(pack)
        elif in_use == total:
            plan.keep[pack] = list(entries.values())
        else:
            partly.append((pack, in_use, total - in_use))

    limit = math.inf
    if max_unused_fraction < 1:
        limit = plan.used_bytes * max_unused_fraction / (1 - max_unused_fraction)
    unused_left = plan.unused_bytes - sum(
        sum(e.length for e in present[p].values()) for p in plan.delete
    )
    # Largest unused share first: each repacked pack frees the most space per byte copied.
    partly.sort(key=lambda t: (-t[2] / (t[1] + t[2]), t[0]))
    for pack, _in_use, unused in partly:
        entries = present[pack]
        if unused_left > limit:
            plan.repack[pack] = [e for e in entries.values() if chosen.get(e.blob_id) == pack]
            unused_left -= unused
        else:
            plan.keep[pack] = list(entries.values())
    plan.unused_after = unused_left
    plan.marked_entries = {
        pack: list(present[pack].values()) for pack in [*plan.delete, *plan.repack]
    }
    plan.sweep_now = grace == 0 and not [lock for lock in others if not lock.is_stale(now)]

    old_ids = {blob_id for entries in packs.values() for blob_id in entries}
    new_ids = {e.blob_id for entries in plan.keep.values() for e in entries}
    new_ids.update(e.blob_id for entries in plan.repack.values() for e in entries)
    plan.blobs_removed = len(old_ids - new_ids)
    return plan


def _plan_sweep(  # noqa: PLR0917 (one caller, each argument named there)
    plan: PrunePlan,
    marks: list[Mark],
    live: dict[str, dict[bytes, PackEntry]],
    revive: dict[str, list[PackEntry]],
    others: list[LockInfo],
    now: float,
) -> None:
    """Which earlier marks are due, and which of their packs go."""
    sweep: set[str] = set()
    for mark in marks:
        if now < mark.time + plan.grace_s:
            plan.pending += len(mark.packs)
            continue
        held = blockers(others, mark.time, now)
        if held:
            plan.pending += len(mark.packs)
            plan.blocked_by.extend(lock.describe() for lock in held)
            continue
        plan.due_marks.append(mark.file)
        for pack in mark.packs:
            if pack in live or pack in revive or pack not in plan.pack_sizes:
                continue  # named live again, needed again, or already gone
            sweep.add(pack)
    plan.sweep = sorted(sweep)
    plan.blocked_by = sorted(set(plan.blocked_by))


def _other_locks(repo: Repository, lock: RepositoryLock | None) -> list[LockInfo]:
    if lock is not None:
        return lock.others()
    return read_locks(repo)


def _read_indexes(
    repo: Repository, names: list[str]
) -> tuple[dict[str, dict[bytes, PackEntry]], list[Mark]]:
    """Every pack named live with its blobs (a pack named by several index files, left by an
    interrupted prune, is merged), and the marks."""
    packs: dict[str, dict[bytes, PackEntry]] = {}
    marks: list[Mark] = []
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        try:
            decoded = list(pool.map(repo.read_index_file_marks, names))
        except FreezeframeError as exc:
            raise IntegrityError(
                f"{exc}; prune changed nothing (it would lose what that index lists): run "
                "`freezeframe repair index` first"
            ) from exc
    for name, index_file in zip(names, decoded, strict=True):
        for pack, entries in index_file.packs.items():
            merged = packs.setdefault(pack, {})
            for entry in entries:
                merged.setdefault(entry.blob_id, entry)
        if index_file.mark_time is not None:
            marks.append(Mark(name, index_file.mark_time, index_file.marked))
    return packs, marks


def _snapshots(repo: Repository) -> list[Snapshot]:
    try:
        return list_snapshots(repo, strict=True)
    except FreezeframeError as exc:
        raise IntegrityError(
            f"{exc}; prune changed nothing (it cannot tell what that snapshot uses). "
            "`freezeframe repair snapshots --forget` removes unreadable snapshots"
        ) from exc


def _used_blobs(
    repo: Repository,
    snapshots: list[Snapshot],
    copies: dict[bytes, list[tuple[str, PackEntry]]],
) -> tuple[set[bytes], frozenset[str]]:
    """The blobs the snapshots use, and the snapshots' ids."""

    def load_tree(tree_id: bytes) -> list[Node]:
        problem = "is not in the index"
        for pack, entry in copies.get(tree_id, []):
            try:
                stored = repo.storage.get(Kind.DATA, pack, entry.offset, entry.length)
                return decode_tree(repo.open_blob(stored, BlobType.TREE, tree_id, entry.raw_length))
            except FreezeframeError as exc:
                problem = f"cannot be read ({exc})"
        raise IntegrityError(
            f"tree {tree_id.hex()[:16]} {problem}; prune changed nothing. Run `check`, then "
            "`freezeframe repair index` and `repair snapshots`"
        )

    trees, data = reachable_blobs((s.tree for s in snapshots), load_tree)
    used = trees | data
    ids = frozenset(s.id for s in snapshots)
    absent = [blob_id for blob_id in used if blob_id not in copies]
    if absent:
        raise IntegrityError(
            f"{len(absent)} blobs used by snapshots are in no index (first: "
            f"{absent[0].hex()[:16]}); prune changed nothing. Run `freezeframe repair index` "
            "(they may be in packs whose index was lost), then `check`"
        )
    return used, ids


def _choose_copies(
    packs: dict[str, dict[bytes, PackEntry]],
    copies: dict[bytes, list[tuple[str, PackEntry]]],
    used: set[bytes],
) -> dict[bytes, str]:
    """The pack whose copy of each used blob survives: the one with the largest used share
    (then most used bytes), so duplicates end up unused in packs that are mostly unused."""
    share: dict[str, tuple[float, int]] = {}
    for pack, entries in packs.items():
        total = sum(e.length for e in entries.values())
        in_use = sum(e.length for e in entries.values() if e.blob_id in used)
        share[pack] = (in_use / total if total else 0.0, in_use)
    chosen: dict[bytes, str] = {}
    for blob_id in used:
        candidates = [pack for pack, _entry in copies[blob_id]]
        chosen[blob_id] = max(candidates, key=lambda p: (*share[p], p))
    return chosen


# -- execution -------------------------------------------------------------------------------


def execute_prune(
    repo: Repository,
    plan: PrunePlan,
    progress: Progress | None = None,
    lock: RepositoryLock | None = None,
) -> PruneStats:
    """Carry out ``plan`` in the crash-safe order of the module docstring."""
    report = progress or _no_progress
    if not repo.storage.capabilities.deletes:
        # Refused before anything is written: its new index files would be left beside the
        # old ones it could not delete.
        raise StorageError(
            f"cannot prune {repo.storage.location}: this account may not delete (append-only "
            "or read-only); prune with an account of the full role"
        )
    stats = PruneStats(packs_kept=len(plan.keep), blobs_removed=plan.blobs_removed)
    if not [other for other in _other_locks(repo, lock) if not other.is_stale(time.time())]:
        # Nobody else writes: temporaries are leftovers of crashes.
        repo.storage.remove_stale_temporaries()
    stats.marked_packs_waiting = plan.pending
    if plan.nothing_to_do:
        return stats
    current = set(repo.list_names(Kind.INDEX))
    if not set(plan.index_files) <= current:
        raise UsageError(
            "the repository changed since this prune was planned (did another prune run?); "
            "plan again"
        )

    # (1) copy the used blobs of the packs to repack into new packs.
    new_index = Index()
    packer = Packer(
        repo.storage, repo.cipher, new_index, repo.config.pack_size, lambda _entries: None
    )
    _repack(repo, plan, packer, report)
    packer.flush()
    stats.packs_repacked = len(plan.repack)
    stats.blobs_repacked = sum(len(entries) for entries in plan.repack.values())
    stats.packs_written = packer.packs_written
    stats.bytes_written = packer.bytes_written

    # (2) new indexes for everything kept, and the mark of this run's candidates.
    new_packs = {**plan.keep, **new_index.by_pack()}
    written = set(write_index_files(repo, new_packs))
    mark_file = _write_mark(repo, plan)
    if mark_file is not None:
        written.add(mark_file)
    stats.index_files_written = len(written)
    stats.packs_revived = len(plan.revive)

    # (3) the index files read to plan go (and the packer's own, superseded by step 2).
    due = set(plan.due_marks)
    old = [name for name in [*plan.index_files, *packer.index_files_written] if name not in due]
    stats.index_files_deleted = delete_index_files(repo, old, written, report)

    # (4) the due marks: their packs, then the mark files; and this run's own mark at once
    # when nothing else holds a lock now that the old index files are gone.
    doomed = list(plan.sweep)
    finished = list(plan.due_marks)
    if _still_due(repo, plan, lock):
        stats.marked_packs_deleted = len(plan.sweep)
    else:
        doomed, finished = [], []
        stats.marked_packs_waiting += len(plan.sweep)
    at_once = plan.sweep_now and mark_file is not None and _nobody_else(repo, plan, lock)
    if at_once:
        doomed += plan.candidates
        finished.append(str(mark_file))
        stats.packs_deleted = len(plan.delete) + len(plan.repack)
        stats.orphans_deleted = len(plan.orphans)
    else:
        stats.packs_marked = len(plan.candidates)
    for done, pack in enumerate(doomed, 1):
        repo.storage.delete(Kind.DATA, pack)
        stats.bytes_deleted += plan.pack_sizes.get(pack, 0)
        report("delete packs", done, len(doomed))
    stats.index_files_deleted += delete_index_files(repo, finished, set(), report)
    return stats


def _write_mark(repo: Repository, plan: PrunePlan) -> str | None:
    """The mark file of this run's candidates (indexed ones with their blobs)."""
    if not plan.candidates:
        return None
    marked = {pack: plan.marked_entries.get(pack, []) for pack in plan.candidates}
    data = encode_index({}, repo.cipher, marked=marked, mark_time=time.time())
    name = content_name(data)
    repo.storage.put(Kind.INDEX, name, data)
    return name


def _still_due(repo: Repository, plan: PrunePlan, lock: RepositoryLock | None) -> bool:
    """Whether the due marks may still be swept: a holder silent past the stale limit loses its
    lock here (it then fails before committing), and one that came back since blocks."""
    if not plan.due_marks:
        return True
    now = time.time()
    for other in _other_locks(repo, lock):
        if other.is_stale(now):
            repo.storage.delete(Kind.LOCKS, other.name)
    earliest = min(_mark_times(repo, plan.due_marks), default=now)
    return not blockers(_other_locks(repo, lock), earliest, time.time())


def _mark_times(repo: Repository, names: list[str]) -> list[float]:
    times = []
    for name in names:
        mark_time = repo.read_index_file_marks(name).mark_time
        if mark_time is not None:
            times.append(mark_time)
    return times


def _nobody_else(repo: Repository, plan: PrunePlan, lock: RepositoryLock | None) -> bool:
    """Whether no other lock is held now that the old index files are gone, and no snapshot
    was saved since planning: a backup that ran meanwhile may have used a candidate blob it
    found in the old index."""
    now = time.time()
    if [other for other in _other_locks(repo, lock) if not other.is_stale(now)]:
        return False
    return set(repo.list_names(Kind.SNAPSHOTS)) <= plan.snapshots


def _repack(repo: Repository, plan: PrunePlan, packer: Packer, report: Progress) -> None:
    def copy(pack: str) -> None:
        data = repo.storage.get(Kind.DATA, pack)
        for entry in plan.repack[pack]:
            stored = data[entry.offset : entry.offset + entry.length]
            try:
                repo.open_blob(stored, entry.blob_type, entry.blob_id, entry.raw_length)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"pack {pack}: blob {entry.blob_id.hex()[:16]} is damaged ({exc}); prune "
                    "stopped before deleting anything. Run `check --read-data`"
                ) from exc
            # Sealed bytes are bound to the blob's type and id, not to its pack: copy as-is.
            packer.add(entry.blob_type, entry.blob_id, stored, entry.raw_length)

    packs = sorted(plan.repack)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(copy, pack) for pack in packs]
        try:
            for done, future in enumerate(as_completed(futures), 1):
                future.result()
                report("repack", done, len(packs))
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    pass
