"""Restoring from a real S3 server (SeaweedFS on loopback), where the reader reads ahead: pack
windows, several requests in flight, trees loaded ahead of the walk. Across many small packs
the restore is byte-exact and needs far fewer requests than one per run of blobs; a blob
damaged in the middle of a window fails exactly the files that hold it, the rest come back
byte for byte."""

from __future__ import annotations

import dataclasses
import os
import random
import threading
from pathlib import Path

import pytest

from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.pack import BlobType
from freezeframe.repository.reader import RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot
from freezeframe.repository.walk import walk_tree
from freezeframe.restore.restorer import RestoreResult, restore_snapshot
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.s3 import S3Storage
from freezeframe.storage.wrapper import StorageWrapper
from servers.base import S3Server

PASSWORD = b"pw"
KiB = 1024
PACK_SIZE = 256 * KiB


class CountingStorage(StorageWrapper):
    """Counts the reads of pack data that reach the server."""

    def __init__(self, inner: S3Storage) -> None:
        super().__init__(inner)
        self.data_gets = 0
        self._lock = threading.Lock()

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind == Kind.DATA:
            with self._lock:
                self.data_gets += 1
        return self.inner.get(kind, name, offset, length)


Files = dict[str, bytes]


def _write_tree(root: Path) -> Files:
    """Hundreds of small files in many directories and a few large ones: many packs."""
    rng = random.Random(7)
    files: Files = {}
    for i in range(400):
        name = f"d{i % 20}/e{i % 3}/f{i}.bin"
        files[name] = rng.randbytes(rng.randint(200, 24 * KiB))
    for i in range(3):
        files[f"big/b{i}.bin"] = rng.randbytes(700 * KiB + i)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _read_tree(root: Path) -> Files:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@dataclasses.dataclass
class Remote:
    storage: S3Storage
    source: Path
    files: Files
    snapshot: Snapshot


@pytest.fixture
def remote(seaweedfs_server: S3Server, tmp_path: Path) -> Remote:
    storage = S3Storage(seaweedfs_server.fresh_place().location, env=seaweedfs_server.env())
    repo = Repository.init(storage, PASSWORD, KdfParams(1, 8192, 1))
    small = dataclasses.replace(repo.config, pack_size=PACK_SIZE)
    storage.put(
        Kind.CONFIG, "config", small.sealed(config_mac_key(repo.master.encryption_key)).to_bytes()
    )
    repo.close()
    source = tmp_path / "source"
    files = _write_tree(source)
    repo = Repository.open(storage, PASSWORD)
    path = os.fsencode(source)
    options = BackupOptions(sources=[SourcePath(path, path)])
    snapshot = Archiver(repo, options, FilesCache(tmp_path / "fc"), workers=2).run().snapshot
    return Remote(storage, source, files, snapshot)


def _restore(
    remote: Remote, target: Path, *, read_ahead: bool | None = None
) -> tuple[RestoreResult, int]:
    counting = CountingStorage(remote.storage)
    repo = Repository.open(counting, PASSWORD)
    reader = RepositoryReader(repo, read_ahead=read_ahead)
    counting.data_gets = 0  # the restore's reads only
    result = restore_snapshot(reader, remote.snapshot, target)
    return result, counting.data_gets


def test_a_restore_from_s3_reads_ahead_byte_exact_with_few_requests(
    remote: Remote, tmp_path: Path
) -> None:
    repo = Repository.open(remote.storage, PASSWORD)
    packs = {e.blob_type for entries in repo.index.by_pack().values() for e in entries}
    assert len(repo.index.by_pack()) >= 10 and BlobType.DATA in packs  # many packs
    assert RepositoryReader(repo).fetch_threads > 1  # a remote storage: read-ahead is on
    local = Repository.init(LocalStorage(tmp_path / "local"), PASSWORD, KdfParams(1, 8192, 1))
    assert RepositoryReader(local).fetch_threads == 1  # a local one: reads as before

    ahead, ahead_gets = _restore(remote, tmp_path / "ahead")
    plain, plain_gets = _restore(remote, tmp_path / "plain", read_ahead=False)
    for result, target in ((ahead, tmp_path / "ahead"), (plain, tmp_path / "plain")):
        assert (result.errors, result.damaged) == ([], [])
        assert _read_tree(target / str(remote.source).lstrip("/")) == remote.files
    # One request serves the runs of many batches: at most about one per pack window.
    assert ahead_gets * 3 <= plain_gets, (ahead_gets, plain_gets)


def test_a_blob_damaged_mid_window_fails_exactly_its_files(remote: Remote, tmp_path: Path) -> None:
    repo = Repository.open(remote.storage, PASSWORD)
    # A pack of many small data blobs; damage one in its middle, so a window covers it and
    # the intact blobs around it.
    pack, entries = max(
        (
            (p, [e for e in es if e.blob_type == BlobType.DATA])
            for p, es in repo.index.by_pack().items()
        ),
        key=lambda item: len(item[1]),
    )
    assert len(entries) >= 5
    victim = entries[len(entries) // 2]
    stored = bytearray(remote.storage.get(Kind.DATA, pack))
    stored[victim.offset + victim.length // 2] ^= 0xFF
    remote.storage.put(Kind.DATA, pack, bytes(stored))
    prefix = str(remote.source).lstrip("/")
    holders = {
        os.fsdecode(path)
        for path, node in walk_tree(repo, remote.snapshot.tree)
        if node.type == "file" and victim.blob_id in node.content
    }
    assert holders

    result, _ = _restore(remote, tmp_path / "target", read_ahead=True)
    assert {d.path for d in result.damaged} == holders
    restored = _read_tree(tmp_path / "target" / prefix)
    lost = {name for name in remote.files if f"/{prefix}/{name}" in holders}
    assert set(restored) == set(remote.files) - lost
    assert all(restored[name] == remote.files[name] for name in restored)
