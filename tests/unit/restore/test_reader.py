"""The restore's reader role: the repository's implementation (pack ranges read once, blobs
opened one by one, damage confined to the blob), and a restore run over a reader that is not a
repository at all (as a FUSE mount or ``dump`` will provide)."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from freezeframe.errors import IntegrityError, NotFound, StorageError
from freezeframe.repository import reader as reader_module
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.pack import BlobType
from freezeframe.repository.reader import RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node, encode_tree
from freezeframe.restore.reader import BlobGroup, FetchedBlobs, Snapshot, SnapshotReader
from freezeframe.restore.restorer import restore_snapshot
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repo = Repository.init(LocalStorage(tmp_path / "repository"), b"pw", KdfParams(1, 8192, 1))
    yield repo
    repo.close()


def _store(repo: Repository, *contents: bytes) -> list[bytes]:
    ids = [repo.save_blob(BlobType.DATA, data)[0] for data in contents]
    repo.flush()
    return ids


def _count_data_reads(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    get = repo.storage.get

    def counting(kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind == Kind.DATA:
            reads.append(name)
        return get(kind, name, offset, length)

    monkeypatch.setattr(repo.storage, "get", counting)
    return reads


# -- over a repository ------------------------------------------------------------------------


def test_blobs_of_one_pack_are_read_with_one_request(
    repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = [os.urandom(1000 + n) for n in range(5)]
    ids = _store(repository, *contents)
    reader = RepositoryReader(repository)
    reads = _count_data_reads(repository, monkeypatch)

    groups = reader.plan_reads(list(reversed(ids)))

    assert len(groups) == 1
    assert list(groups[0].blob_ids) == ids  # stored order, whatever the order asked
    fetched = groups[0].fetch()
    assert [fetched.open(blob_id) for blob_id in ids] == contents
    assert len(reads) == 1
    assert [reader.blob_size(blob_id) for blob_id in ids] == [len(c) for c in contents]


def test_blobs_farther_apart_than_a_run_are_read_separately(
    repository: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = [os.urandom(2000) for _ in range(3)]
    ids = _store(repository, *contents)
    monkeypatch.setattr(reader_module, "MAX_RUN", 1)

    groups = RepositoryReader(repository).plan_reads(ids)

    assert [list(group.blob_ids) for group in groups] == [[blob_id] for blob_id in ids]
    assert [group.fetch().open(group.blob_ids[0]) for group in groups] == contents


def test_a_damaged_blob_fails_alone(repository: Repository) -> None:
    contents = [os.urandom(3000) for _ in range(3)]
    ids = _store(repository, *contents)
    location = repository.index.lookup(ids[1])
    assert location is not None
    pack = repository.storage.path_of(Kind.DATA, location.pack)  # type: ignore[attr-defined]
    data = bytearray(pack.read_bytes())
    data[location.offset + location.length // 2] ^= 0xFF
    pack.write_bytes(bytes(data))

    (group,) = RepositoryReader(repository).plan_reads(ids)
    fetched = group.fetch()

    assert fetched.open(ids[0]) == contents[0]
    with pytest.raises(IntegrityError):
        fetched.open(ids[1])
    assert fetched.open(ids[2]) == contents[2]


def test_what_is_not_stored_as_content_is_missing(repository: Repository) -> None:
    (data_id,) = _store(repository, b"content")
    tree_id, _ = repository.save_blob(BlobType.TREE, encode_tree([]))
    repository.flush()
    unknown = b"\x07" * 32
    reader = RepositoryReader(repository)

    assert reader.blob_size(tree_id) is None
    assert reader.blob_size(unknown) is None
    groups = reader.plan_reads([data_id, unknown, tree_id])

    assert sorted(blob_id for group in groups for blob_id in group.blob_ids) == sorted(
        [data_id, unknown, tree_id]
    )
    for group in groups:
        if data_id in group.blob_ids:
            assert group.fetch().open(data_id) == b"content"
        else:
            with pytest.raises(NotFound):
                group.fetch()


def test_a_lost_pack_fails_its_group(repository: Repository) -> None:
    ids = _store(repository, b"one", b"two")
    location = repository.index.lookup(ids[0])
    assert location is not None
    repository.storage.path_of(Kind.DATA, location.pack).unlink()  # type: ignore[attr-defined]

    (group,) = RepositoryReader(repository).plan_reads(ids)

    with pytest.raises(NotFound):
        group.fetch()


# -- a restore over a reader that is no repository --------------------------------------------


class _Fetched:
    def __init__(self, blobs: dict[bytes, bytes], damaged: set[bytes]) -> None:
        self._blobs = blobs
        self._damaged = damaged

    def open(self, blob_id: bytes) -> bytes:
        if blob_id in self._damaged:
            raise IntegrityError(f"blob {blob_id.hex()[:8]} does not match its id")
        return self._blobs[blob_id]


class _Group:
    def __init__(self, reader: MemoryReader, blob_ids: tuple[bytes, ...]) -> None:
        self.blob_ids = blob_ids
        self._reader = reader

    def fetch(self) -> FetchedBlobs:
        if any(blob_id in self._reader.unreadable for blob_id in self.blob_ids):
            raise StorageError("the medium cannot be read there")
        return _Fetched(self._reader.blobs, self._reader.damaged)


class MemoryReader:
    """Trees and blobs held in memory; one group per blob."""

    fetch_threads = 1

    def __init__(self) -> None:
        self.trees: dict[bytes, list[Node]] = {}
        self.blobs: dict[bytes, bytes] = {}
        self.damaged: set[bytes] = set()
        self.unreadable: set[bytes] = set()

    def blob(self, data: bytes) -> bytes:
        blob_id = len(self.blobs).to_bytes(32, "big")
        self.blobs[blob_id] = data
        return blob_id

    def blob_size(self, blob_id: bytes) -> int | None:
        data = self.blobs.get(blob_id)
        return None if data is None else len(data)

    def plan_reads(self, blob_ids: Collection[bytes]) -> Sequence[BlobGroup]:
        return [_Group(self, (blob_id,)) for blob_id in sorted(blob_ids)]

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return sorted(self.trees[tree_id], key=lambda node: node.name)

    def find_node(self, tree_id: bytes, components: Sequence[bytes]) -> Node | None:
        found: Node | None = None
        current: bytes | None = tree_id
        for name in components:
            if current is None:
                return None
            found = next((n for n in self.load_tree(current) if n.name == name), None)
            if found is None:
                return None
            current = found.subtree
        return found

    def walk_tree(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        for node in self.load_tree(tree_id):
            yield prefix + b"/" + node.name, node
            if node.subtree is not None:
                yield from self.walk_tree(node.subtree, prefix + b"/" + node.name)


def _file(name: bytes, reader: MemoryReader, *chunks: bytes) -> Node:
    content = [reader.blob(chunk) for chunk in chunks]
    size = sum(len(chunk) for chunk in chunks)
    return Node(name, "file", 0o644, os.geteuid(), os.getegid(), 10**18, size=size, content=content)


def _memory_snapshot() -> tuple[MemoryReader, Snapshot]:
    reader = MemoryReader()
    files = [
        _file(b"whole", reader, b"a" * 5000, b"b" * 300),
        _file(b"damaged", reader, b"c" * 4000, b"d" * 700, b"e" * 10),
        _file(b"unreadable", reader, b"f" * 900),
    ]
    reader.damaged.add(files[1].content[1])
    reader.unreadable.add(files[2].content[0])
    reader.trees[b"sub"] = files
    sub = Node(b"d", "dir", 0o755, os.geteuid(), os.getegid(), 10**18, subtree=b"sub")
    reader.trees[b"root"] = [sub]
    snapshot = Snapshot(datetime.now(UTC), "h", "u", ["/d"], b"root", "t")
    return reader, snapshot


def test_a_restore_reads_through_any_reader(tmp_path: Path) -> None:
    reader, snapshot = _memory_snapshot()
    typed: SnapshotReader = reader  # the role, structurally

    result = restore_snapshot(typed, snapshot, tmp_path / "target")

    restored = tmp_path / "target" / "d"
    assert (restored / "whole").read_bytes() == b"a" * 5000 + b"b" * 300
    assert sorted(os.listdir(restored)) == ["whole"]  # damaged files are removed
    assert [(d.path, d.ranges) for d in result.damaged] == [
        ("/d/damaged", ((4000, 4700),)),
        ("/d/unreadable", ((0, 900),)),
    ]
    assert "does not match its id" in result.damaged[0].message
    assert "cannot be read" in result.damaged[1].message
    assert result.files == 1


def test_includes_are_found_through_the_reader(tmp_path: Path) -> None:
    reader, snapshot = _memory_snapshot()

    result = restore_snapshot(reader, snapshot, tmp_path / "target", includes=["/d/whole"])

    assert os.listdir(tmp_path / "target" / "d") == ["whole"]
    assert result.damaged == []
    with pytest.raises(NotFound):
        restore_snapshot(reader, snapshot, tmp_path / "other", includes=["/d/nothing"])
