"""Prune in two phases beside running backups (``repository/prune.py``): what it marks, when it
deletes, and that a backup on another host never loses a blob to it, in every order of events
that matters: the backup loaded the index before the mark and uses a candidate blob; a lock held
since before the mark; a holder gone silent; the grace period; a backup saved between a prune's
plan and its execution."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from ffharness import FAST_INIT, run_freezeframe
from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.errors import RepositoryLocked
from freezeframe.repository.check import check_repository
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.locks import LOCK_AAD, RepositoryLock
from freezeframe.repository.pack import BlobType
from freezeframe.repository.prune import (
    REMOTE_GRACE_S,
    PruneStats,
    default_grace,
    execute_prune,
    plan_prune,
)
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, delete_snapshot
from freezeframe.repository.walk import walk_tree
from freezeframe.storage.base import Capabilities, Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.wrapper import StorageWrapper

pytestmark = pytest.mark.timeout(120)

PASSWORD = b"pw"


class Host:
    """A repository and a source tree of one host (several share the repository)."""

    def __init__(self, tmp: Path, repo_path: Path, name: str) -> None:
        self.repo_path = repo_path
        self.src = tmp / name
        self.src.mkdir()
        self.cache = tmp / f"{name}.fc"
        self.name = name

    def open(self) -> Repository:
        return Repository.open(LocalStorage(self.repo_path), PASSWORD)

    def archiver(self, repo: Repository) -> Archiver:
        source = SourcePath(os.fsencode(self.src), os.fsencode(self.src))
        options = BackupOptions(sources=[source], host=self.name)
        return Archiver(repo, options, FilesCache(self.cache), workers=1)

    def backup(self) -> Snapshot:
        repo = self.open()
        try:
            with RepositoryLock(repo, exclusive=False) as lock:
                return self.archiver(repo).run(before_commit=lock.ensure_held).snapshot
        finally:
            repo.close()

    def files(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(self.src.rglob("*")) if p.is_file()}


def _prune(repo_path: Path, grace_s: float | None = 0.0) -> PruneStats:
    """As ``freezeframe prune --grace ...`` does it: under the maintenance lock."""
    repo = Repository.open(LocalStorage(repo_path), PASSWORD, load_index=False)
    try:
        with RepositoryLock(repo, exclusive=False, maintenance=True) as lock:
            plan = plan_prune(repo, max_unused_fraction=0.0, grace_s=grace_s, lock=lock)
            return execute_prune(repo, plan, lock=lock)
    finally:
        repo.close()


def _restored(repo_path: Path, snapshot: Snapshot) -> dict[str, bytes]:
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    try:
        return {
            os.fsdecode(path): b"".join(repo.load_blob(c, BlobType.DATA) for c in node.content)
            for path, node in walk_tree(repo, snapshot.tree)
            if node.type == "file"
        }
    finally:
        repo.close()


def _clean(repo_path: Path) -> None:
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    try:
        result = check_repository(repo, read_data=True)
    finally:
        repo.close()
    assert (result.errors, result.warnings) == ([], [])


def _packs(repo_path: Path) -> set[str]:
    return {info.name for info in LocalStorage(repo_path).list(Kind.DATA)}


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    Repository.init(LocalStorage(path), PASSWORD, KdfParams(1, 8192, 1)).close()
    return path


def _forgotten_host(tmp_path: Path, repo_path: Path) -> bytes:
    """A host whose only snapshot (of one file) is forgotten: its two packs (the file's data,
    the tree) are prune's candidates. Returns the file's content."""
    host = Host(tmp_path, repo_path, "alpha")
    content = os.urandom(300_000)
    (host.src / "a.bin").write_bytes(content)
    snapshot = host.backup()
    repo = host.open()
    delete_snapshot(repo, snapshot.id)
    repo.close()
    assert len(_packs(repo_path)) == FORGOTTEN_PACKS
    return content


FORGOTTEN_PACKS = 2


def test_a_backup_that_loaded_the_index_before_the_mark_keeps_what_it_used(
    tmp_path: Path, repo_path: Path
) -> None:
    """The worst order: a backup on another host loads the index, a prune marks the data of a
    forgotten snapshot, the backup deduplicates against that data and commits. Its snapshot
    restores at once (marked blobs stay readable), and the next prune names the pack live
    again instead of deleting it."""
    content = _forgotten_host(tmp_path, repo_path)
    other = Host(tmp_path, repo_path, "beta")
    (other.src / "same.bin").write_bytes(content)  # the same data on another host
    repo = other.open()
    with RepositoryLock(repo, exclusive=False) as lock:
        archiver = other.archiver(repo)  # the index is loaded: the candidate is live in it
        stats = _prune(repo_path)
        assert (stats.packs_marked, stats.packs_deleted) == (FORGOTTEN_PACKS, 0)
        result = archiver.run(before_commit=lock.ensure_held)
    repo.close()
    assert repo.bytes_added_raw < len(content), "only trees are new: the data was deduplicated"
    assert _restored(repo_path, result.snapshot) == other.files()

    again = _prune(repo_path)  # the data pack is live again, the old tree's pack goes
    assert (again.packs_revived, again.marked_packs_deleted) == (1, FORGOTTEN_PACKS - 1)
    assert _restored(repo_path, result.snapshot) == other.files()
    _clean(repo_path)
    assert _prune(repo_path).packs_deleted == 0
    assert _restored(repo_path, result.snapshot) == other.files()


def test_a_backup_that_begins_after_the_mark_stores_its_own_copy(
    tmp_path: Path, repo_path: Path
) -> None:
    """Marked blobs are never offered for deduplication: a backup that loads the index after
    the mark stores the data again, so the sweep can delete the marked pack."""
    content = _forgotten_host(tmp_path, repo_path)
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    with RepositoryLock(repo, exclusive=False):  # a backup elsewhere blocks the sweep
        assert _prune(repo_path).packs_marked == FORGOTTEN_PACKS
    repo.close()
    other = Host(tmp_path, repo_path, "beta")
    (other.src / "same.bin").write_bytes(content)
    repo = other.open()
    with RepositoryLock(repo, exclusive=False) as lock:
        snapshot = other.archiver(repo).run(before_commit=lock.ensure_held).snapshot
    repo.close()
    assert repo.bytes_added_raw > len(content), "the data was stored again, beside the trees"
    swept = _prune(repo_path)
    assert (swept.marked_packs_deleted, swept.packs_revived) == (FORGOTTEN_PACKS, 0)
    assert _restored(repo_path, snapshot) == other.files()
    _clean(repo_path)


def test_a_lock_held_since_before_the_mark_blocks_the_sweep(
    tmp_path: Path, repo_path: Path
) -> None:
    """While a lock taken before the mark is held, the marked packs stay, however often prune
    runs; the first prune after it is released deletes them."""
    _forgotten_host(tmp_path, repo_path)
    before = _packs(repo_path)
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    with RepositoryLock(repo, exclusive=False):
        assert _prune(repo_path).packs_marked == FORGOTTEN_PACKS
        for _ in range(2):
            held = _prune(repo_path)
            assert (held.marked_packs_deleted, held.marked_packs_waiting) == (0, FORGOTTEN_PACKS)
        assert _packs(repo_path) == before
    repo.close()
    assert _prune(repo_path).marked_packs_deleted == FORGOTTEN_PACKS
    assert _packs(repo_path) == set()
    _clean(repo_path)


def test_a_holder_gone_silent_loses_its_lock_to_the_sweep(tmp_path: Path, repo_path: Path) -> None:
    """A lock not refreshed for the stale limit (a suspended or vanished host) does not block
    the sweep for ever: prune removes it and deletes. Its holder, if it comes back, finds its
    lock gone and commits nothing (``test_lock_loss.py``)."""
    _forgotten_host(tmp_path, repo_path)
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    with RepositoryLock(repo, exclusive=False):
        assert _prune(repo_path).packs_marked == FORGOTTEN_PACKS
    silent = time.time() - 3600
    doc = {
        "time": silent,
        "since": silent - 60,
        "exclusive": False,
        "host": "elsewhere.invalid",
        "pid": 4242,
        "user": "backup",
        "holder": "silent",
    }
    repo.save_file(Kind.LOCKS, json.dumps(doc).encode(), LOCK_AAD)
    repo.close()
    assert _prune(repo_path).marked_packs_deleted == FORGOTTEN_PACKS
    assert list(LocalStorage(repo_path).list(Kind.LOCKS)) == []
    _clean(repo_path)


def test_the_grace_period_keeps_marked_packs(tmp_path: Path, repo_path: Path) -> None:
    """A mark younger than the grace period is not swept; a shorter grace sweeps it."""
    _forgotten_host(tmp_path, repo_path)
    marked = _prune(repo_path, grace_s=3600)
    assert (marked.packs_marked, marked.packs_deleted) == (FORGOTTEN_PACKS, 0)
    waiting = _prune(repo_path, grace_s=3600)
    assert (waiting.marked_packs_deleted, waiting.marked_packs_waiting) == (0, FORGOTTEN_PACKS)
    _clean(repo_path)
    assert _prune(repo_path, grace_s=0).marked_packs_deleted == FORGOTTEN_PACKS
    _clean(repo_path)


def test_a_local_directory_deletes_at_once_and_other_storage_waits(repo_path: Path) -> None:
    """The default grace period: none on a local directory (its listing is exact), an hour on
    storage elsewhere, whose listing may lag behind its writes."""

    class Remote(StorageWrapper):
        @property
        def capabilities(self) -> Capabilities:
            return Capabilities()

    assert default_grace(LocalStorage(repo_path)) == 0
    assert default_grace(Remote(LocalStorage(repo_path))) == REMOTE_GRACE_S


def test_backups_never_wait_for_a_prune(repo_path: Path) -> None:
    """The maintenance lock excludes another prune or forget and the exclusive commands, never
    a backup, a restore or a check."""
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    with RepositoryLock(repo, exclusive=False, maintenance=True):
        with RepositoryLock(repo, exclusive=False):
            pass
        with pytest.raises(RepositoryLocked, match="a maintenance lock by PID"):
            RepositoryLock(repo, exclusive=False, maintenance=True).__enter__()
        with pytest.raises(RepositoryLocked):
            RepositoryLock(repo, exclusive=True).__enter__()
    with (
        RepositoryLock(repo, exclusive=False),
        RepositoryLock(repo, exclusive=False, maintenance=True),
    ):
        pass
    repo.close()
    assert socket.gethostname()  # the locks above name this host


def test_a_lock_keeps_when_it_began_across_refreshes(repo_path: Path) -> None:
    """A refresh renames the lock; when its holder began (what a sweep compares with the mark)
    and who holds it stay."""
    repo = Repository.open(LocalStorage(repo_path), PASSWORD)
    with RepositoryLock(repo, exclusive=False) as lock:
        first = RepositoryLock(repo, exclusive=False, maintenance=True)
        with first:
            (before,) = first.others()
            lock._refresh()  # what the refresher thread does every few minutes
            (after,) = first.others()
    repo.close()
    assert before.name != after.name
    assert (before.since, before.holder) == (after.since, after.holder) == (lock.since, lock.holder)


def test_the_cli_marks_with_a_grace_period_and_deletes_without(tmp_path: Path) -> None:
    """``prune --grace 1h`` marks and keeps; a plain ``prune`` on a local directory (no grace)
    deletes what is marked; ``forget --prune`` takes ``--grace`` too; a bad duration is a usage
    error."""
    repo = tmp_path / "repo"
    source = tmp_path / "src"
    source.mkdir()
    assert run_freezeframe(*FAST_INIT, repo=repo).returncode == 0
    for number in range(2):
        (source / "f").write_bytes(os.urandom(200_000 + number))
        assert run_freezeframe("backup", source, repo=repo).returncode == 0
    forget = run_freezeframe(
        "forget", "--keep-last", "1", "--prune", "--grace", "1h", repo=repo, json=True
    )
    assert forget.returncode == 0, forget.stderr
    stats = json.loads(forget.stdout)["prune"]
    assert (stats["packs_marked"], stats["packs_deleted"]) == (FORGOTTEN_PACKS, 0)
    waiting = json.loads(run_freezeframe("prune", "--grace", "1h", repo=repo, json=True).stdout)
    assert waiting["marked_packs_waiting"] == FORGOTTEN_PACKS
    swept = json.loads(run_freezeframe("prune", repo=repo, json=True).stdout)
    assert swept["marked_packs_deleted"] == FORGOTTEN_PACKS
    bad = run_freezeframe("prune", "--grace", "soon", repo=repo)
    assert bad.returncode == 2 and "no duration" in bad.stderr
    assert run_freezeframe("check", "--read-data", repo=repo).returncode == 0
