"""Check: is every snapshot complete, and is every stored byte intact?

The structure check reads indexes, snapshots and trees, never file data: every index decodes,
every pack an index names exists with the size the index implies, every snapshot decodes, every
tree reachable from a snapshot loads (each once), and every data blob a file refers to is indexed.

With ``read_data`` every pack, or a random ``read_data_subset`` percent of them, is read whole:
its name must be the BLAKE3 of its bytes, its header must agree with the index, and every blob
must decrypt and match its id. Damaged and missing blobs are then traced to the files and
directories of each snapshot that refer to them (``CheckResult.damaged``), so the user learns
what is lost, not only which pack is bad.

Packs that no index names are warnings, not errors: an interrupted backup leaves them, they harm
nothing, and ``prune`` removes them.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound, UsageError
from freezeframe.repository.crypto import content_name
from freezeframe.repository.index import IndexFile, decode_index_file
from freezeframe.repository.keys import KeyFile
from freezeframe.repository.pack import BlobType, PackEntry, read_header, stored_header_size
from freezeframe.repository.packverify import PackReport, verify_pack
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, load_snapshot
from freezeframe.repository.tree import decode_tree
from freezeframe.storage.base import Kind

Progress = Callable[[str, int, int], None]

_REPAIR_INDEX = "`freezeframe repair index` rewrites the index from the packs"

TREE_WORKERS = 4
PACK_WORKERS = 3


@dataclass(frozen=True, order=True)
class DamagedFile:
    """A path of a snapshot that cannot be restored intact (a directory: its listing is lost)."""

    snapshot_id: str
    path: str


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged: list[DamagedFile] = field(default_factory=list)
    index_files_checked: int = 0
    packs_checked: int = 0
    """Indexed packs whose presence and size were checked."""
    packs_read: int = 0
    """Packs read whole and verified (``read_data``)."""
    bytes_read: int = 0
    blobs_verified: int = 0
    snapshots_checked: int = 0
    trees_checked: int = 0
    subset_seed: int | None = None
    """The seed that picked the ``read_data_subset`` packs, to repeat a run exactly."""

    @property
    def ok(self) -> bool:
        return not self.errors

    def damaged_snapshots(self) -> list[str]:
        return sorted({d.snapshot_id for d in self.damaged})


@dataclass
class _TreeInfo:
    readable: bool
    dirs: list[tuple[bytes, bytes]] = field(default_factory=list)
    bad_entries: list[bytes] = field(default_factory=list)


def check_repository(
    repo: Repository,
    *,
    read_data: bool = False,
    read_data_subset: float | None = None,
    progress: Progress | None = None,
    seed: int | None = None,
) -> CheckResult:
    """Check structure, and with ``read_data`` (implied by ``read_data_subset``, a percentage
    in (0, 100]) the data too. Problems are collected, never raised: a check reports them all."""
    if read_data_subset is not None:
        if not 0 < read_data_subset <= 100:
            raise UsageError("the read-data subset must be a percentage in (0, 100]")
        read_data = True
    checker = _Checker(repo, progress or _no_progress)
    checker.check_storage()
    checker.check_keys()
    checker.check_indexes()
    checker.check_packs()
    checker.index_unindexed_packs()
    if read_data:
        checker.read_packs(read_data_subset, seed)
    checker.find_damaged_blobs()
    checker.check_snapshots()
    checker.check_trees()
    return checker.finish()


class _Checker:
    def __init__(self, repo: Repository, progress: Progress) -> None:
        self.repo = repo
        self.progress = progress
        self.result = CheckResult()
        self.packs: dict[str, dict[bytes, PackEntry]] = {}
        self.copies: dict[bytes, list[tuple[str, PackEntry]]] = {}
        self.stored: dict[str, int] = {}
        self.missing: set[str] = set()
        self.bad_copies: set[tuple[str, bytes]] = set()
        self.damaged_blobs: set[bytes] = set()
        self.snapshots: list[Snapshot] = []
        self.trees: dict[bytes, _TreeInfo] = {}
        self.marked: dict[str, dict[bytes, PackEntry]] = {}  # marked for deletion by a prune
        self.unindexed: set[str] = set()  # packs described only by their headers
        self.needed_unindexed: set[str] = set()  # ... that hold blobs snapshots use

    def error(self, message: str) -> None:
        self.result.errors.append(message)

    # -- the storage and the keys ----------------------------------------------------------

    def check_storage(self) -> None:
        self.result.warnings += self.repo.storage.audit()

    def check_keys(self) -> None:
        """Every key file must match its name and parse; a damaged one may be a password's
        only way in, so it is an error even when another key opened the repository."""
        for name in sorted(self.repo.list_names(Kind.KEYS)):
            try:
                data = self.repo.storage.get(Kind.KEYS, name)
                if content_name(data) != name:
                    raise IntegrityError(f"key {name[:8]}: its content does not match its name")
                KeyFile.from_bytes(data, name)
            except NotFound:
                continue
            except FreezeframeError as exc:
                self.error(
                    f"{exc}; if it still opens with its password, `key passwd` writes it again, "
                    f"else `freezeframe key remove {name[:8]}`"
                )

    # -- indexes and packs -----------------------------------------------------------------

    def check_indexes(self) -> None:
        names = sorted(self.repo.list_names(Kind.INDEX))
        with ThreadPoolExecutor(max_workers=TREE_WORKERS) as pool:
            outcomes = pool.map(self._read_index, names)
            for done, (name, outcome) in enumerate(zip(names, outcomes, strict=True), 1):
                self.progress("index", done, len(names))
                if isinstance(outcome, str):
                    self.error(outcome)
                    continue
                for pack, entries in outcome.packs.items():
                    merged = self.packs.setdefault(pack, {})
                    for entry in entries:
                        if merged.setdefault(entry.blob_id, entry) != entry:
                            self.error(
                                f"index {name} places blob {entry.blob_id.hex()[:16]} of pack "
                                f"{pack} differently from another index"
                            )
                for pack, entries in outcome.marked.items():
                    found = self.marked.setdefault(pack, {})
                    found.update((entry.blob_id, entry) for entry in entries)
        self.result.index_files_checked = len(names)

    def _read_index(self, name: str) -> IndexFile | str:
        try:
            data = self.repo.storage.get(Kind.INDEX, name)
            if content_name(data) != name:
                return f"index {name}: its content does not match its name; {_REPAIR_INDEX}"
            return decode_index_file(data, self.repo.cipher, name)
        except NotFound:
            return IndexFile({}, {})
        except FreezeframeError as exc:
            return f"{exc}; {_REPAIR_INDEX}"

    def check_packs(self) -> None:
        self.stored = {info.name: info.size for info in self.repo.storage.list(Kind.DATA)}
        for pack, blobs in self.marked.items():
            # A marked pack a prune has deleted meanwhile is no error; one still stored is
            # checked like any other (a snapshot may read it until the mark is swept).
            if pack not in self.packs and pack in self.stored and blobs:
                self.packs[pack] = blobs
        for pack, blobs in sorted(self.packs.items()):
            self.result.packs_checked += 1
            if pack not in self.stored:
                self.error(f"pack {pack} is named by the index but missing from storage")
                self.missing.add(pack)
                continue
            entries = sorted(blobs.values(), key=lambda e: e.offset)
            offset = 0
            for entry in entries:
                if entry.offset != offset:
                    self.error(f"pack {pack}: the index places its blobs with gaps or overlaps")
                    break
                offset += entry.length
            else:
                expected = offset + stored_header_size(len(entries))
                if self.stored[pack] != expected:
                    self.error(
                        f"pack {pack} is {self.stored[pack]} bytes but the index implies {expected}"
                    )

    def index_unindexed_packs(self) -> None:
        """Packs no index names are read by their headers, so their blobs are found (a lost
        index file must not make intact data look lost); whether that is an error depends on
        whether snapshots use them (see ``finish``)."""
        unindexed = sorted(set(self.stored) - set(self.packs))
        with ThreadPoolExecutor(max_workers=TREE_WORKERS) as pool:
            outcomes = pool.map(self._read_header, unindexed)
            for pack, outcome in zip(unindexed, outcomes, strict=True):
                if isinstance(outcome, str):
                    self.result.warnings.append(
                        f"pack {pack} is not named by any index and its header cannot be read "
                        f"({outcome}); `freezeframe repair packs {pack[:8]}` removes it"
                    )
                    continue
                self.packs[pack] = {entry.blob_id: entry for entry in outcome}
                self.unindexed.add(pack)
        for pack, blobs in self.packs.items():
            for entry in blobs.values():
                self.copies.setdefault(entry.blob_id, []).append((pack, entry))

    def _read_header(self, pack: str) -> list[PackEntry] | str:
        try:
            return read_header(self.repo.storage, self.repo.cipher, pack, self.stored[pack])
        except NotFound:
            return []
        except FreezeframeError as exc:
            return str(exc)

    def read_packs(self, subset: float | None, seed: int | None) -> None:
        packs = sorted(p for p in self.packs if p not in self.missing)
        if subset is not None:
            if seed is None:
                seed = random.SystemRandom().getrandbits(63)
            self.result.subset_seed = seed
            count = min(len(packs), math.ceil(len(packs) * subset / 100))
            packs = sorted(random.Random(seed).sample(packs, count))
        with ThreadPoolExecutor(max_workers=PACK_WORKERS) as pool:
            futures = {pool.submit(self._read_pack, pack): pack for pack in packs}
            for done, future in enumerate(as_completed(futures), 1):
                pack, report = futures[future], future.result()
                self.result.errors.extend(report.errors)
                self.bad_copies.update((pack, blob_id) for blob_id in report.bad_blobs)
                self.result.packs_read += 1
                self.result.bytes_read += report.size
                self.result.blobs_verified += len(report.intact)
                self.progress("packs", done, len(packs))

    def _read_pack(self, pack: str) -> PackReport:
        return verify_pack(self.repo, pack, self.packs[pack])

    def find_damaged_blobs(self) -> None:
        """A blob is lost when every copy of it is in a missing pack or failed verification."""
        for blob_id, copies in self.copies.items():
            if all(p in self.missing or (p, blob_id) in self.bad_copies for p, _e in copies):
                self.damaged_blobs.add(blob_id)

    # -- snapshots and trees ---------------------------------------------------------------

    def check_snapshots(self) -> None:
        names = sorted(self.repo.list_names(Kind.SNAPSHOTS))
        for done, name in enumerate(names, 1):
            try:
                self.snapshots.append(load_snapshot(self.repo, name))
            except FreezeframeError as exc:
                self.error(f"snapshot {name}: {exc}")
            self.progress("snapshots", done, len(names))
        self.result.snapshots_checked = len(names)

    def check_trees(self) -> None:
        """Load every reachable tree once, breadth first, a level at a time in parallel."""
        frontier = list(dict.fromkeys(s.tree for s in self.snapshots))
        seen = set(frontier)
        with ThreadPoolExecutor(max_workers=TREE_WORKERS) as pool:
            while frontier:
                next_frontier: list[bytes] = []
                outcomes = pool.map(self._load_tree, frontier)
                for tree_id, (info, errors) in zip(frontier, outcomes, strict=True):
                    self.trees[tree_id] = info
                    self.result.errors.extend(errors)
                    for _name, subtree in info.dirs:
                        if subtree not in seen:
                            seen.add(subtree)
                            next_frontier.append(subtree)
                self.progress("trees", len(self.trees), len(seen))
                frontier = next_frontier
        self.result.trees_checked = len(self.trees)

    def _load_tree(self, tree_id: bytes) -> tuple[_TreeInfo, list[str]]:
        errors: list[str] = []
        name = tree_id.hex()[:16]
        copies = self.copies.get(tree_id)
        if not copies:
            return _TreeInfo(readable=False), [f"tree {name} is not in the index"]
        self._note_use(copies)
        if tree_id in self.damaged_blobs:
            return _TreeInfo(readable=False), []  # reported with its pack already
        for pack, entry in copies:
            if pack in self.missing or (pack, tree_id) in self.bad_copies:
                continue
            if entry.blob_type != BlobType.TREE:
                errors.append(f"blob {name} is used as a tree but stored as data")
                continue
            try:
                stored = self.repo.storage.get(Kind.DATA, pack, entry.offset, entry.length)
                data = self.repo.open_blob(stored, BlobType.TREE, tree_id, entry.raw_length)
                nodes = decode_tree(data)
            except FreezeframeError as exc:
                errors.append(f"tree {name} in pack {pack}: {exc}")
                continue
            info = _TreeInfo(readable=True)
            for node in nodes:
                if node.type == "dir":
                    if node.subtree is None:
                        errors.append(f"tree {name}: directory {node.display_name} has no subtree")
                        info.bad_entries.append(node.name)
                    else:
                        info.dirs.append((node.name, node.subtree))
                elif node.type == "file":
                    intact = [self._data_intact(blob_id, errors) for blob_id in node.content]
                    if not all(intact):
                        info.bad_entries.append(node.name)
            return info, errors
        return _TreeInfo(readable=False), errors

    def _data_intact(self, blob_id: bytes, errors: list[str]) -> bool:
        copies = self.copies.get(blob_id)
        if not copies:
            errors.append(f"data blob {blob_id.hex()[:16]} is not in the index")
            return False
        if any(entry.blob_type != BlobType.DATA for _pack, entry in copies):
            errors.append(f"blob {blob_id.hex()[:16]} is used as data but stored as a tree")
            return False
        self._note_use(copies)
        return blob_id not in self.damaged_blobs

    def _note_use(self, copies: list[tuple[str, PackEntry]]) -> None:
        """A used blob found only in packs no index names: the index must be repaired."""
        if all(pack in self.unindexed for pack, _entry in copies):
            self.needed_unindexed.add(copies[0][0])

    # -- what the damage means -------------------------------------------------------------

    def finish(self) -> CheckResult:
        memo: dict[bytes, list[bytes]] = {}
        damaged: set[DamagedFile] = set()
        for snapshot in self.snapshots:
            for relative in self._damaged_paths(snapshot.tree, memo):
                damaged.add(DamagedFile(snapshot.id, os.fsdecode(b"/" + relative)))
        result = self.result
        for pack in sorted(self.unindexed):
            if pack in self.marked and pack not in self.needed_unindexed:
                continue  # left by an interrupted backup, marked: the next prune deletes it
            if pack in self.needed_unindexed:
                self.error(
                    f"pack {pack} holds blobs that snapshots use, but no index names it (an "
                    f"index file was lost or damaged); {_REPAIR_INDEX}"
                )
            else:
                result.warnings.append(
                    f"pack {pack} is not named by any index (left by an interrupted backup?); "
                    "`prune` removes it"
                )
        result.damaged = sorted(damaged)
        result.errors = list(dict.fromkeys(result.errors))  # several files may share a blob
        return result

    def _damaged_paths(self, root: bytes, memo: dict[bytes, list[bytes]]) -> list[bytes]:
        """Paths below a tree, relative to it, that are damaged (``b""``: the tree itself).
        Iterative post-order with a memo per tree id: shared subtrees are resolved once, and
        deep directories cannot exhaust the stack."""
        stack = [(root, False)]
        active: set[bytes] = set()
        while stack:
            tree_id, children_done = stack.pop()
            if tree_id in memo:
                continue
            info = self.trees.get(tree_id)
            if info is None or not info.readable:
                memo[tree_id] = [b""]
                continue
            if not children_done:
                active.add(tree_id)
                stack.append((tree_id, True))
                stack.extend(
                    (sub, False) for _n, sub in info.dirs if sub not in memo and sub not in active
                )
                continue
            active.discard(tree_id)
            paths = list(info.bad_entries)
            for name, sub in info.dirs:
                paths.extend(name + b"/" + rel if rel else name for rel in memo.get(sub, []))
            memo[tree_id] = paths
        return memo[root]


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    pass
