"""Prune: delete the packs that no snapshot needs and repack the partly used ones.

What happens to each pack (restic's ``--max-unused`` rule):

- every blob reachable from a snapshot is *used*. A blob stored in several packs is used in one
  copy only (the one in the pack with the largest share of used data), the others are unused;
- a pack with no used blob is deleted; a pack with only used blobs is kept;
- partly used packs are repacked, largest unused share first, until the unused bytes left in the
  repository are at most ``max_unused_fraction`` of its size after pruning (default 5 %); the
  others are kept with their unused blobs. Copying costs reads and writes while unused space
  only costs storage, so a little tolerance keeps a prune after every ``forget`` cheap;
  ``max_unused_fraction=0`` repacks every partly used pack;
- packs that no index names (left by an interrupted backup or prune) are deleted.

Why a crash never loses a snapshot: snapshots are not touched, so it is enough that at every
moment each used blob is named by some index file *and* stored in a pack that exists.

1. used blobs of the packs to repack are copied into new packs. Each is decrypted and verified
   first, so a damaged blob stops the prune instead of being copied. Old packs and indexes stay.
2. new index files are written, naming every blob of the kept packs and of the new packs; the
   old indexes still exist, so every blob is now named at least once by the new ones.
3. the old index files are deleted: the new ones already name every used blob.
4. the packs the new index does not name are deleted: by now no index names them.

A crash leaves at worst duplicate index entries (before step 4) or packs no index names (during
step 4); ``check`` reports the latter as warnings and the next prune removes both.

Planning and execution must run under one exclusive lock (see ``locks.py``): a running backup
has packs that no index names yet, and prune would take them for leftovers. After
``execute_prune`` the ``Repository`` object's in-memory index still names deleted packs: open the
repository again before using it further.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from freezeframe.errors import FreezeframeError, IntegrityError, UsageError
from freezeframe.repository.index import Index
from freezeframe.repository.indexfiles import delete_index_files, write_index_files
from freezeframe.repository.pack import BlobType, PackEntry
from freezeframe.repository.packer import Packer
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import list_snapshots
from freezeframe.repository.tree import Node, decode_tree
from freezeframe.repository.walk import reachable_blobs
from freezeframe.storage.base import Kind

Progress = Callable[[str, int, int], None]

WORKERS = 4


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
    pack_sizes: dict[str, int]
    max_unused_fraction: float
    used_blobs: int = 0
    used_bytes: int = 0
    unused_bytes: int = 0
    unused_after: int = 0
    blobs_removed: int = 0

    @property
    def repack_bytes(self) -> int:
        return sum(e.length for entries in self.repack.values() for e in entries)

    @property
    def bytes_to_delete(self) -> int:
        gone = [*self.delete, *self.repack, *self.orphans]
        return sum(self.pack_sizes.get(name, 0) for name in gone)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.repack or self.delete or self.orphans or self.missing)

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

    @property
    def bytes_freed(self) -> int:
        return self.bytes_deleted - self.bytes_written

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


# -- planning --------------------------------------------------------------------------------


def plan_prune(repo: Repository, *, max_unused_fraction: float = 0.05) -> PrunePlan:
    """Decide which packs to keep, repack and delete; reads indexes and trees, never packs.

    Raises IntegrityError, before anything is changed, when an index, snapshot or tree cannot
    be read or a used blob has no stored copy: deleting data then could lose what a damaged
    object refers to."""
    if not 0 <= max_unused_fraction <= 1:
        raise UsageError("the unused-space limit must be between 0 and 100 %")
    index_files = sorted(repo.list_names(Kind.INDEX))
    packs = _read_indexes(repo, index_files)
    sizes = {info.name: info.size for info in repo.storage.list(Kind.DATA)}
    missing = sorted(p for p in packs if p not in sizes)
    present = {p: entries for p, entries in packs.items() if p in sizes}

    copies: dict[bytes, list[tuple[str, PackEntry]]] = {}
    for pack, entries in present.items():
        for entry in entries.values():
            copies.setdefault(entry.blob_id, []).append((pack, entry))

    used = _used_blobs(repo, copies)
    chosen = _choose_copies(present, copies, used)

    plan = PrunePlan(
        keep={},
        repack={},
        delete=[],
        orphans=sorted(set(sizes) - set(packs)),
        missing=missing,
        index_files=index_files,
        pack_sizes=sizes,
        max_unused_fraction=max_unused_fraction,
        used_blobs=len(used),
    )
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

    old_ids = {blob_id for entries in packs.values() for blob_id in entries}
    new_ids = {e.blob_id for entries in plan.keep.values() for e in entries}
    new_ids.update(e.blob_id for entries in plan.repack.values() for e in entries)
    plan.blobs_removed = len(old_ids - new_ids)
    return plan


def _read_indexes(repo: Repository, names: list[str]) -> dict[str, dict[bytes, PackEntry]]:
    """Every indexed pack with its blobs; a pack named by several index files (left by an
    interrupted prune) is merged."""
    packs: dict[str, dict[bytes, PackEntry]] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        try:
            decoded = list(pool.map(repo.read_index_file, names))
        except FreezeframeError as exc:
            raise IntegrityError(
                f"{exc}; prune changed nothing (it would lose what that index lists): run "
                "`freezeframe repair index` first"
            ) from exc
    for index_file in decoded:
        for pack, entries in index_file.items():
            merged = packs.setdefault(pack, {})
            for entry in entries:
                merged.setdefault(entry.blob_id, entry)
    return packs


def _used_blobs(repo: Repository, copies: dict[bytes, list[tuple[str, PackEntry]]]) -> set[bytes]:
    try:
        snapshots = list_snapshots(repo, strict=True)
    except FreezeframeError as exc:
        raise IntegrityError(
            f"{exc}; prune changed nothing (it cannot tell what that snapshot uses). "
            "`freezeframe repair snapshots --forget` removes unreadable snapshots"
        ) from exc

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
    absent = [blob_id for blob_id in used if blob_id not in copies]
    if absent:
        raise IntegrityError(
            f"{len(absent)} blobs used by snapshots are in no index (first: "
            f"{absent[0].hex()[:16]}); prune changed nothing. Run `freezeframe repair index` "
            "(they may be in packs whose index was lost), then `check`"
        )
    return used


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
    repo: Repository, plan: PrunePlan, progress: Progress | None = None
) -> PruneStats:
    """Carry out ``plan`` in the crash-safe order of the module docstring."""
    report = progress or _no_progress
    stats = PruneStats(packs_kept=len(plan.keep), blobs_removed=plan.blobs_removed)
    # Under the exclusive lock no writer is running: temporaries are leftovers of crashes.
    repo.storage.remove_stale_temporaries()
    if plan.nothing_to_do:
        return stats
    if set(repo.list_names(Kind.INDEX)) != set(plan.index_files):
        raise UsageError(
            "the repository changed since this prune was planned (was it locked?); plan again"
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

    # (2) new indexes for everything kept. Listed first: the packer has written index files of
    # its own for the new packs, and those are superseded too.
    old_indexes = sorted(repo.list_names(Kind.INDEX))
    new_packs = {**plan.keep, **new_index.by_pack()}
    written = set(write_index_files(repo, new_packs))
    stats.index_files_written = len(written)

    # (3) old indexes go: the new ones name every used blob.
    stats.index_files_deleted = delete_index_files(repo, old_indexes, written, report)

    # (4) packs that no index names any more.
    doomed = [*plan.delete, *plan.repack, *plan.orphans]
    for done, pack in enumerate(doomed, 1):
        repo.storage.delete(Kind.DATA, pack)
        stats.bytes_deleted += plan.pack_sizes.get(pack, 0)
        report("delete packs", done, len(doomed))
    stats.packs_deleted = len(plan.delete) + len(plan.repack)
    stats.orphans_deleted = len(plan.orphans)
    return stats


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
