"""The cache of index files and snapshots: a second get is served locally, deletes evict,
listings come from the storage, a damaged entry or a short read is never served from it, and
its modes are private."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from freezeframe.errors import StorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.faults import Effect, Fault, FaultyStorage
from freezeframe.storage.local import LocalStorage


def named(data: bytes) -> str:
    """The name the repository gives stored bytes (``content_name``)."""
    return blake3.blake3(data).hexdigest()


INDEX_BYTES, SNAPSHOT_BYTES, PACK_BYTES = b"index bytes", b"snapshot bytes", b"pack bytes"
INDEX, SNAPSHOT, PACK = named(INDEX_BYTES), named(SNAPSHOT_BYTES), named(PACK_BYTES)


def _stack(tmp_path: Path, plan: list[Fault] | None = None) -> tuple[CachingStorage, FaultyStorage]:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.put(Kind.INDEX, INDEX, INDEX_BYTES)
    local.put(Kind.SNAPSHOTS, SNAPSHOT, SNAPSHOT_BYTES)
    local.put(Kind.DATA, PACK, PACK_BYTES)
    faulty = FaultyStorage(local, plan or [])
    return CachingStorage(faulty, tmp_path / "cache"), faulty


def test_a_second_get_is_served_from_the_cache(tmp_path: Path) -> None:
    storage, inner = _stack(tmp_path)
    for _ in range(3):
        assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES
        assert storage.get(Kind.SNAPSHOTS, SNAPSHOT) == SNAPSHOT_BYTES
    assert storage.get(Kind.SNAPSHOTS, SNAPSHOT, 9, 5) == b"bytes"
    assert inner.calls["get"] == 2


def test_what_is_put_is_cached_and_packs_are_not(tmp_path: Path) -> None:
    storage, inner = _stack(tmp_path)
    storage.put(Kind.INDEX, named(b"new index"), b"new index")
    assert storage.get(Kind.INDEX, named(b"new index")) == b"new index"
    assert inner.calls["get"] == 0
    storage.get(Kind.DATA, PACK)
    storage.get(Kind.DATA, PACK)
    assert inner.calls["get"] == 2
    assert not (tmp_path / "cache" / "data").exists()


def test_objects_not_named_by_their_hash_are_not_cached(tmp_path: Path) -> None:
    storage, inner = _stack(tmp_path)
    storage.put(Kind.SNAPSHOTS, "s1", b"first")
    storage.put(Kind.SNAPSHOTS, "s1", b"second")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert inner.calls["get"] == 2
    assert os.listdir(tmp_path / "cache" / "snapshots") == []


def test_a_delete_evicts(tmp_path: Path) -> None:
    storage, _ = _stack(tmp_path)
    storage.get(Kind.SNAPSHOTS, SNAPSHOT)
    assert (tmp_path / "cache" / "snapshots" / SNAPSHOT).exists()
    storage.delete(Kind.SNAPSHOTS, SNAPSHOT)
    assert not (tmp_path / "cache" / "snapshots" / SNAPSHOT).exists()
    assert not storage.exists(Kind.SNAPSHOTS, SNAPSHOT)


def test_listings_come_from_the_storage_and_drop_copies_of_what_went(tmp_path: Path) -> None:
    storage, inner = _stack(tmp_path)
    storage.get(Kind.INDEX, INDEX)
    LocalStorage(tmp_path / "repo").delete(Kind.INDEX, INDEX)  # by another client
    assert list(storage.list(Kind.INDEX)) == []
    assert inner.calls["list"] == 1
    assert not (tmp_path / "cache" / "index" / INDEX).exists()


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "short": lambda b: b[:-3],
    "flipped": lambda b: b[:-1] + bytes([b[-1] ^ 1]),
    "empty": lambda b: b"",
    "longer": lambda b: b + b"\0",
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_entry_is_fetched_again(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    storage, inner = _stack(tmp_path)
    storage.get(Kind.INDEX, INDEX)
    entry = tmp_path / "cache" / "index" / INDEX
    entry.write_bytes(damage(entry.read_bytes()))
    assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES
    assert inner.calls["get"] == 2
    assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES  # and kept again, whole
    assert inner.calls["get"] == 2


def test_a_short_read_is_passed_on_but_never_kept(tmp_path: Path) -> None:
    storage, inner = _stack(tmp_path, [Fault("get", Effect.TRUNCATE, kind=Kind.INDEX)])
    assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES[: len(INDEX_BYTES) // 2]
    assert not (tmp_path / "cache" / "index" / INDEX).exists()
    assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES
    assert storage.get(Kind.INDEX, INDEX) == INDEX_BYTES
    assert inner.calls["get"] == 2


def test_a_failed_put_leaves_no_older_copy(tmp_path: Path) -> None:
    storage, _ = _stack(tmp_path, [Fault("put", Effect.ERROR)])
    storage.get(Kind.SNAPSHOTS, SNAPSHOT)
    with pytest.raises(StorageError):
        storage.put(Kind.SNAPSHOTS, SNAPSHOT, SNAPSHOT_BYTES)
    assert not (tmp_path / "cache" / "snapshots" / SNAPSHOT).exists()


def test_the_cache_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        storage, _ = _stack(tmp_path)
        storage.get(Kind.INDEX, INDEX)
        storage.put(Kind.SNAPSHOTS, named(b"x"), b"x")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]
    }
    assert modes == {
        "cache": 0o700,
        "cache/index": 0o700,
        "cache/snapshots": 0o700,
        f"cache/index/{INDEX}": 0o600,
        f"cache/snapshots/{named(b'x')}": 0o600,
    }


def test_a_loose_existing_cache_directory_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    os.chmod(tmp_path / "cache", 0o777)
    _stack(tmp_path)
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_an_unusable_cache_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "cache").write_bytes(b"a file, not a directory")
    with pytest.raises(StorageError, match=r"cannot use .* as a cache") as raised:
        _stack(tmp_path)
    assert "\n" not in str(raised.value)
