"""check finds every flipped byte and names what it damages; prune frees space without ever
losing a snapshot, even when it crashes; diff and stats describe snapshots correctly.

Driven through the Python API on small repositories whose packs hold a few blobs each, so that
packs are shared between files and snapshots the way they are in a real repository.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from pathlib import Path

import pytest

from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.errors import IntegrityError, StorageError, UsageError
from freezeframe.repository.check import CheckResult, DamagedFile, check_repository
from freezeframe.repository.compression import compress
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.diff import diff_snapshots
from freezeframe.repository.index import Index
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.pack import BlobType, blob_aad
from freezeframe.repository.packer import Packer
from freezeframe.repository.prune import execute_prune, plan_prune
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, delete_snapshot, list_snapshots
from freezeframe.repository.stats import repository_stats, restore_size
from freezeframe.repository.tree import Node
from freezeframe.repository.walk import find_node, walk_tree
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(120)

PASSWORD = b"pw"
KiB = 1024
# Small packs: a 40 KiB file shares its pack with two others, a 150 KiB file has one alone.
PACK_SIZE = 96 * KiB


class Fixture:
    """A repository in ``tmp/repo`` and a source tree in ``tmp/src`` backed up into it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.path = tmp / "repo"
        self.src = tmp / "src"
        self.src.mkdir()
        self.runs = 0
        storage = LocalStorage(self.path)
        repo = Repository.init(storage, PASSWORD, KdfParams(1, 8192, 1))
        small = dataclasses.replace(repo.config, pack_size=PACK_SIZE)
        sealed = small.sealed(config_mac_key(repo.master.encryption_key))
        storage.put(Kind.CONFIG, "config", sealed.to_bytes())
        repo.close()

    def open(self) -> Repository:
        return Repository.open(LocalStorage(self.path), PASSWORD)

    def write(self, name: str, data: bytes) -> Path:
        path = self.src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def backup(self) -> tuple[Snapshot, dict[str, bytes]]:
        """A snapshot of ``src`` and the content of each of its files, by absolute path."""
        self.runs += 1
        source = os.fsencode(self.src)
        repo = self.open()
        try:
            # One worker stores blobs in file order, so packs group files predictably.
            archiver = Archiver(
                repo,
                BackupOptions(sources=[SourcePath(source, source)]),
                FilesCache(self.tmp / f"fc{self.runs}"),
                workers=1,
            )
            snapshot = archiver.run().snapshot
        finally:
            repo.close()
        expected = {str(p): p.read_bytes() for p in sorted(self.src.rglob("*")) if p.is_file()}
        return snapshot, expected

    def check(self, **options: object) -> CheckResult:
        repo = self.open()
        try:
            return check_repository(repo, **options)  # type: ignore[arg-type]
        finally:
            repo.close()

    def pack_file(self, pack: str) -> Path:
        return self.path / "data" / pack[:2] / pack

    def pack_bytes(self) -> int:
        return sum(info.size for info in LocalStorage(self.path).list(Kind.DATA))

    def node(self, snapshot: Snapshot, path: Path) -> Node:
        repo = self.open()
        try:
            node = find_node(repo, snapshot.tree, os.fsencode(path).split(b"/")[1:])
        finally:
            repo.close()
        assert node is not None
        return node

    def flip(self, blob_id: bytes, where: float = 0.5) -> str:
        """Flip one bit inside a stored blob; returns its pack."""
        repo = self.open()
        location = repo.index.lookup(blob_id)
        repo.close()
        assert location is not None
        target = self.pack_file(location.pack)
        data = bytearray(target.read_bytes())
        data[location.offset + int(location.length * where)] ^= 0x10
        target.write_bytes(bytes(data))
        return location.pack


def restored(repo: Repository, snapshot: Snapshot, under: Path) -> dict[str, bytes]:
    """Every file of a snapshot below ``under``, read back blob by blob."""
    files = {}
    for path, node in walk_tree(repo, snapshot.tree):
        name = os.fsdecode(path)
        if node.type == "file" and name.startswith(f"{under}/"):
            files[name] = b"".join(repo.load_blob(c, BlobType.DATA) for c in node.content)
    return files


def assert_restorable(fx: Fixture, expected: list[tuple[Snapshot, dict[str, bytes]]]) -> None:
    repo = fx.open()
    try:
        for snapshot, files in expected:
            assert restored(repo, snapshot, fx.src) == files
    finally:
        repo.close()


def rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


@pytest.fixture
def history(fx: Fixture) -> list[tuple[Snapshot, dict[str, bytes]]]:
    """Three snapshots: files come, change and go, so packs end up partly used."""
    for i in range(6):
        fx.write(f"small{i}.bin", rand(i, 40 * KiB))
    fx.write("big.bin", rand(100, 150 * KiB))
    fx.write("sub/deep.bin", rand(101, 40 * KiB))
    first = fx.backup()
    for i in (1, 2, 4):
        (fx.src / f"small{i}.bin").unlink()
    (fx.src / "big.bin").unlink()
    fx.write("small3.bin", rand(200, 40 * KiB))
    second = fx.backup()
    fx.write("late.bin", rand(300, 150 * KiB))
    third = fx.backup()
    return [first, second, third]


# -- check -----------------------------------------------------------------------------------


def test_a_clean_repository_checks_clean(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    packs = len(list(LocalStorage(fx.path).list(Kind.DATA)))
    result = fx.check()
    assert (result.errors, result.warnings, result.damaged) == ([], [], [])
    assert result.snapshots_checked == 3
    assert result.packs_checked == packs
    assert result.trees_checked >= 3
    assert result.packs_read == 0

    full = fx.check(read_data=True)
    assert full.ok and not full.warnings and not full.damaged
    assert full.packs_read == packs
    repo = fx.open()
    assert full.blobs_verified == len(repo.index)
    repo.close()

    phases: set[str] = set()
    fx.check(read_data=True, progress=lambda phase, _done, _total: phases.add(phase))
    assert phases == {"index", "packs", "snapshots", "trees"}

    half = fx.check(read_data_subset=50)
    assert half.ok
    assert half.packs_read == math.ceil(packs / 2)
    assert half.subset_seed is not None
    with pytest.raises(UsageError):
        fx.check(read_data_subset=0)
    with pytest.raises(UsageError):
        fx.check(read_data_subset=150)


def test_a_flipped_data_byte_names_every_snapshot_and_file_it_damages(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    (first, _), (second, _), (third, _) = history
    shared = fx.src / "small0.bin"  # in all three snapshots
    only_first = fx.src / "big.bin"
    blob_shared = fx.node(first, shared).content[0]
    blob_first = fx.node(first, only_first).content[0]
    pack_shared = fx.flip(blob_shared)
    fx.flip(blob_first, where=0.9)

    structure = fx.check()
    assert structure.ok, structure.errors  # data is not read: nothing to see

    result = fx.check(read_data=True)
    assert not result.ok
    assert any(pack_shared in e and blob_shared.hex() in e for e in result.errors), result.errors
    assert result.damaged == sorted(
        [
            DamagedFile(first.id, str(shared)),
            DamagedFile(second.id, str(shared)),
            DamagedFile(third.id, str(shared)),
            DamagedFile(first.id, str(only_first)),
        ]
    )
    assert result.damaged_snapshots() == sorted([first.id, second.id, third.id])


def test_a_flipped_tree_byte_names_the_snapshot_and_directory(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    (first, _), (second, _), (third, _) = history
    sub = fx.src / "sub"
    subtree = fx.node(first, sub).subtree
    assert subtree is not None
    pack = fx.flip(subtree)

    # Reading a file may update its atime, so later snapshots may hold another tree for sub.
    sharing = [s for s in (first, second, third) if fx.node(s, sub).subtree == subtree]
    expected = sorted(DamagedFile(s.id, str(sub)) for s in sharing)
    structure = fx.check()  # trees are read even without --read-data
    assert not structure.ok
    assert structure.damaged == expected

    result = fx.check(read_data=True)
    assert any(pack in e and subtree.hex() in e for e in result.errors), result.errors
    assert result.damaged == expected


def test_a_missing_pack_is_an_error_naming_the_files(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    (_first, _), (_second, _), (third, _) = history
    late = fx.src / "late.bin"
    repo = fx.open()
    location = repo.index.lookup(fx.node(third, late).content[0])
    repo.close()
    assert location is not None
    fx.pack_file(location.pack).unlink()

    result = fx.check()
    assert any(location.pack in e and "missing" in e for e in result.errors), result.errors
    assert result.damaged == [DamagedFile(third.id, str(late))]


def test_a_truncated_pack_is_an_error(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    target = sorted(p for p in (fx.path / "data").rglob("*") if p.is_file())[0]
    target.write_bytes(target.read_bytes()[:-10])
    result = fx.check()
    assert any(target.name in e and "bytes" in e for e in result.errors), result.errors


# -- prune -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_unused", [0.0, 0.05, 1.0])
def test_forget_then_prune_shrinks_and_keeps_the_rest_whole(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]], max_unused: float
) -> None:
    (first, _), second, third = history
    big_blob = fx.node(first, fx.src / "big.bin").content[0]
    repo = fx.open()
    delete_snapshot(repo, first.id)
    before_files = sorted(p.name for p in fx.path.rglob("*") if p.is_file())
    before = fx.pack_bytes()

    plan = plan_prune(repo, max_unused_fraction=max_unused)
    assert sorted(p.name for p in fx.path.rglob("*") if p.is_file()) == before_files  # dry run
    assert plan.delete, "the pack of big.bin is no longer used"
    assert plan.unused_after <= plan.unused_bytes
    if max_unused == 0:
        assert plan.repack and plan.unused_after == 0
    if max_unused == 1:
        assert not plan.repack
    stats = execute_prune(repo, plan)
    repo.close()

    assert stats.packs_deleted == len(plan.delete) + len(plan.repack)
    assert plan.to_json()["packs_to_delete"] == len(plan.delete)
    assert stats.to_json()["bytes_freed"] == stats.bytes_freed
    assert stats.bytes_freed > 0
    assert fx.pack_bytes() < before
    assert fx.pack_bytes() == before - stats.bytes_freed
    result = fx.check(read_data=True)
    assert (result.errors, result.warnings, result.damaged) == ([], [], [])
    assert result.snapshots_checked == 2
    assert_restorable(fx, [second, third])

    repo = fx.open()
    assert big_blob not in repo.index
    assert plan_prune(repo, max_unused_fraction=max_unused).nothing_to_do
    repo.close()


def test_forgetting_everything_empties_the_repository(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    repo = fx.open()
    for snapshot, _files in history:
        delete_snapshot(repo, snapshot.id)
    execute_prune(repo, plan_prune(repo))
    repo.close()
    assert fx.pack_bytes() == 0
    assert not list(LocalStorage(fx.path).list(Kind.INDEX))
    result = fx.check(read_data=True)
    assert (result.errors, result.warnings, result.snapshots_checked) == ([], [], 0)


def test_a_backup_saved_while_pruning_defers_the_deletion(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    """A backup that ran between the plan and its execution may have used a blob the plan
    took for unused (it found it in the old index): the candidates stay marked, nothing is
    deleted at once; the next prune, seeing that snapshot, deletes what it does not use."""
    repo = fx.open()
    delete_snapshot(repo, history[0][0].id)
    plan = plan_prune(repo)
    assert plan.sweep_now and plan.candidates
    repo.close()
    fx.write("meanwhile.bin", rand(400, 40 * KiB))
    latest = fx.backup()
    repo = fx.open()
    stats = execute_prune(repo, plan)
    repo.close()
    assert (stats.packs_deleted, stats.packs_marked) == (0, len(plan.candidates))
    assert set(plan.candidates) <= set(fx.open().list_names(Kind.DATA))
    assert_restorable(fx, [*history[1:], latest])
    repo = fx.open()
    again = execute_prune(repo, plan_prune(repo))
    repo.close()
    assert again.marked_packs_deleted > 0
    assert_restorable(fx, [*history[1:], latest])
    assert check_repository(fx.open(), read_data=True).errors == []


def test_prune_deletes_packs_no_index_names(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    repo = fx.open()
    data = b"left behind by an interrupted backup"
    blob_id = repo.blob_id(data)
    sealed = repo.cipher.encrypt(compress(data), blob_aad(BlobType.DATA, blob_id))
    # A pack size of one byte writes the pack at once; its index would come later.
    Packer(repo.storage, repo.cipher, Index(), 1, lambda _e: None).add(
        BlobType.DATA, blob_id, sealed, len(data)
    )
    orphans = [p.name for p in (fx.path / "data").rglob("*") if p.is_file()]
    repo.close()

    result = fx.check(read_data=True)
    assert result.ok and len(result.warnings) == 1
    assert "prune" in result.warnings[0]

    repo = fx.open()
    plan = plan_prune(repo)
    assert len(plan.orphans) == 1 and plan.orphans[0] in orphans
    stats = execute_prune(repo, plan)
    repo.close()
    assert stats.orphans_deleted == 1
    assert not fx.pack_file(plan.orphans[0]).exists()
    result = fx.check(read_data=True)
    assert (result.errors, result.warnings) == ([], [])
    assert_restorable(fx, history)


def test_prune_keeps_one_copy_of_a_duplicated_blob(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    first, _expected = history[0]
    path = fx.src / "small0.bin"
    blob_id = fx.node(first, path).content[0]
    repo = fx.open()
    data = repo.load_blob(blob_id)
    sealed = repo.cipher.encrypt(compress(data), blob_aad(BlobType.DATA, blob_id))
    packer = Packer(repo.storage, repo.cipher, Index(), PACK_SIZE, lambda _e: None)
    packer.add(BlobType.DATA, blob_id, sealed, len(data))
    packer.flush()  # writes the pack and an index naming it: a second, indexed copy
    repo.close()

    def copies() -> int:
        repo = fx.open()
        try:
            return sum(
                blob_id in {e.blob_id for e in entries}
                for name in repo.list_names(Kind.INDEX)
                for entries in repo.read_index_file(name).values()
            )
        finally:
            repo.close()

    assert copies() == 2
    repo = fx.open()
    plan = plan_prune(repo)
    assert len(plan.delete) == 1  # the pack holding only the duplicate
    execute_prune(repo, plan)
    repo.close()
    assert copies() == 1
    result = fx.check(read_data=True)
    assert (result.errors, result.warnings) == ([], [])
    assert_restorable(fx, history)


@pytest.mark.parametrize(
    ("operation", "after"),
    [
        ("delete", 0),
        ("delete", 1),
        ("delete", 3),
        ("delete", 6),
        ("put", 0),
        ("put", 1),
        ("put", 2),
    ],
)
def test_a_crash_during_prune_loses_no_snapshot(
    fx: Fixture,
    history: list[tuple[Snapshot, dict[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
    after: int,
) -> None:
    """``delete`` crashes after the new index is written (steps 3-4), ``put`` while new packs
    and indexes are written (steps 1-2)."""
    (first, _), second, third = history
    repo = fx.open()
    delete_snapshot(repo, first.id)
    plan = plan_prune(repo, max_unused_fraction=0)
    assert plan.repack and plan.delete

    calls = 0
    real = getattr(LocalStorage, operation)

    def crashing(self: LocalStorage, kind: Kind, name: str, *args: object) -> None:
        nonlocal calls
        if kind in (Kind.DATA, Kind.INDEX):
            if calls >= after:
                raise StorageError("simulated crash")
            calls += 1
        real(self, kind, name, *args)

    monkeypatch.setattr(LocalStorage, operation, crashing)
    with pytest.raises(StorageError):
        execute_prune(repo, plan)
    monkeypatch.undo()
    repo.close()

    result = fx.check(read_data=True)
    assert (result.errors, result.damaged) == ([], []), result.errors
    assert all("prune" in w for w in result.warnings)
    assert_restorable(fx, [second, third])

    repo = fx.open()
    execute_prune(repo, plan_prune(repo, max_unused_fraction=0))
    repo.close()
    result = fx.check(read_data=True)
    assert (result.errors, result.warnings, result.damaged) == ([], [], [])
    assert_restorable(fx, [second, third])


def test_prune_never_copies_a_damaged_blob(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    first, second, third = history
    repo = fx.open()
    delete_snapshot(repo, first[0].id)
    plan = plan_prune(repo, max_unused_fraction=0)
    pack, entries = sorted(plan.repack.items())[0]
    repo.close()
    fx.flip(entries[0].blob_id)
    packs_before = {p.name for p in (fx.path / "data").rglob("*") if p.is_file()}

    repo = fx.open()
    with pytest.raises(IntegrityError, match=pack):
        execute_prune(repo, plan)
    repo.close()
    assert packs_before <= {p.name for p in (fx.path / "data").rglob("*") if p.is_file()}
    result = fx.check(read_data=True)
    assert any(pack in e for e in result.errors)
    assert result.damaged and {d.snapshot_id for d in result.damaged} <= {second[0].id, third[0].id}


def test_prune_refuses_to_run_on_an_unreadable_tree(
    fx: Fixture, history: list[tuple[Snapshot, dict[str, bytes]]]
) -> None:
    first, _expected = history[0]
    subtree = fx.node(first, fx.src / "sub").subtree
    assert subtree is not None
    fx.flip(subtree)
    repo = fx.open()
    with pytest.raises(IntegrityError, match="prune changed nothing"):
        plan_prune(repo)
    repo.close()


# -- diff and stats ---------------------------------------------------------------------------


def test_diff_reports_each_kind_of_change(fx: Fixture) -> None:
    fx.write("same.txt", b"unchanged")
    fx.write("edit.txt", b"before")
    fx.write("gone.txt", b"bye")
    fx.write("chmod.txt", b"mode changes")
    fx.write("shape", b"a file, then a directory")
    fx.write("quiet/inner.txt", b"a directory nothing changes in")
    (fx.src / "chmod.txt").chmod(0o644)
    first, _ = fx.backup()

    fx.write("edit.txt", b"after!")
    (fx.src / "gone.txt").unlink()
    fx.write("new/file.txt", b"hello")
    (fx.src / "chmod.txt").chmod(0o600)
    (fx.src / "shape").unlink()
    fx.write("shape/inside.txt", b"now a directory")
    second, _ = fx.backup()

    repo = fx.open()
    try:
        changes = {c.path: c.change for c in diff_snapshots(repo, first, second)}
        reverse = {c.path: c.change for c in diff_snapshots(repo, second, first)}
        assert diff_snapshots(repo, first, first) == []
    finally:
        repo.close()
    at = {name: str(fx.src / name) for name in ("edit.txt", "gone.txt", "chmod.txt", "shape")}
    assert changes[at["edit.txt"]] == "modified"
    assert changes[at["gone.txt"]] == "removed"
    assert changes[str(fx.src / "new")] == "added"
    assert changes[str(fx.src / "new" / "file.txt")] == "added"
    assert changes[at["chmod.txt"]] == "metadata"
    assert changes[at["shape"]] == "type"
    assert changes[str(fx.src / "shape" / "inside.txt")] == "added"
    assert str(fx.src / "same.txt") not in changes
    assert not any("quiet" in path for path in changes)
    assert changes.get(str(fx.src)) == "metadata"  # its mtime changed with its entries
    assert reverse[at["gone.txt"]] == "added"
    assert reverse[str(fx.src / "new" / "file.txt")] == "removed"
    assert list(changes) == sorted(changes, key=lambda p: p.split("/"))


def test_stats_are_consistent(fx: Fixture) -> None:
    text = b"the same line again and again, which compresses very well\n" * 4000
    fx.write("text.txt", text)
    fx.write("copy.txt", text)  # deduplicated: stored once
    fx.write("noise.bin", rand(7, 100 * KiB))
    snapshot, files = fx.backup()

    repo = fx.open()
    try:
        stats = repository_stats(repo)
        size = restore_size(repo, [snapshot])
        sizes_twice = restore_size(repo, list_snapshots(repo) * 2)
        assert stats["blobs"] == len(repo.index)
    finally:
        repo.close()
    assert stats["snapshots"] == 1
    assert stats["data_blobs"] == 2 and stats["tree_blobs"] >= 2
    assert stats["blobs"] == stats["data_blobs"] + stats["tree_blobs"]
    assert stats["referenced_blobs"] == stats["blobs"]
    assert stats["stored_bytes"] == fx.pack_bytes() >= stats["blob_stored_bytes"]
    assert stats["raw_bytes"] > stats["blob_stored_bytes"]
    assert stats["compression_ratio"] > 1
    assert stats["unique_data_bytes"] == len(text) + 100 * KiB

    assert size["bytes"] == sum(len(data) for data in files.values())
    assert size["regular_files"] == 3
    assert size["files"] >= size["regular_files"] + size["dirs"]
    assert sizes_twice["bytes"] == 2 * size["bytes"] and sizes_twice["snapshots"] == 2
