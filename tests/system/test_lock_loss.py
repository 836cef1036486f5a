"""A backup that lost its lock (removed as stale while the process was suspended) must not
commit a snapshot: a prune may have deleted data its index still lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.errors import RepositoryLocked
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.locks import RepositoryLock, remove_locks
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import list_snapshots
from freezeframe.storage.local import LocalStorage


def _repository_and_archiver(tmp_path: Path) -> tuple[Repository, Archiver]:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), b"pw", KdfParams(1, 8192, 1))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    source = SourcePath(bytes(src), bytes(src))
    return repo, Archiver(repo, BackupOptions(sources=[source]), FilesCache(tmp_path / "fc"))


def test_backup_without_its_lock_commits_nothing(tmp_path: Path) -> None:
    repo, archiver = _repository_and_archiver(tmp_path)
    with RepositoryLock(repo, exclusive=False) as lock:

        def lose_lock_then_verify() -> None:
            remove_locks(repo, include_live=True)  # what `unlock --remove-all` would do
            lock.ensure_held()

        with pytest.raises(RepositoryLocked, match="lost its repository lock"):
            archiver.run(before_commit=lose_lock_then_verify)
    assert list_snapshots(repo) == []


def test_backup_with_its_lock_commits(tmp_path: Path) -> None:
    repo, archiver = _repository_and_archiver(tmp_path)
    with RepositoryLock(repo, exclusive=False) as lock:
        archiver.run(before_commit=lock.ensure_held)
    assert len(list_snapshots(repo)) == 1
