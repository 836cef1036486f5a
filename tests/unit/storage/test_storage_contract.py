"""The Storage contract every backend must meet, and every wrapper stacked on one: each test runs
over the local backend bare and under each wrapper (a future S3 backend is added to BACKENDS
and must pass the same tests). Tests that write skip the read-only wrapper, whose own tests
show that it refuses every write."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from freezeframe.errors import NotFound, StorageError
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.faults import FaultyStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits
from freezeframe.storage.readonly import ReadOnlyStorage
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy


def _local(tmp_path: Path) -> Storage:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    return storage


def _retrying(tmp_path: Path) -> Storage:
    return RetryingStorage(_local(tmp_path), RetryPolicy(attempts=3), sleep=lambda _s: None)


def _read_only(tmp_path: Path) -> Storage:
    return ReadOnlyStorage(_local(tmp_path))


def _caching(tmp_path: Path) -> Storage:
    return CachingStorage(_local(tmp_path), tmp_path / "cache")


def _rate_limited(tmp_path: Path) -> Storage:
    return RateLimitedStorage(_local(tmp_path), RateLimits(upload=1e12, download=1e12))


def _faulty_without_faults(tmp_path: Path) -> Storage:
    return FaultyStorage(_local(tmp_path))


def _stacked(tmp_path: Path) -> Storage:
    _local(tmp_path)
    return open_storage(
        f"local:{tmp_path / 'repo'}",
        retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
        cache_dir=tmp_path / "cache",
        limits=RateLimits(upload=1e12, download=1e12),
    )


BACKENDS: list[Callable[[Path], Storage]] = [
    _local,
    _retrying,
    _read_only,
    _caching,
    _rate_limited,
    _faulty_without_faults,
    _stacked,
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.__name__.strip("_"))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    backend: Callable[[Path], Storage] = request.param
    return backend(tmp_path)


@pytest.fixture
def writable(storage: Storage) -> Storage:
    """The storage, for tests that write: the read-only wrapper is skipped."""
    if not storage.capabilities.writable:
        pytest.skip("writes are refused: see test_read_only_storage")
    return storage


def named(data: bytes) -> str:
    """The name the repository gives stored bytes (a cache keeps only objects so named)."""
    return blake3.blake3(data).hexdigest()


def _seed(tmp_path: Path) -> LocalStorage:
    """The same repository, bare: it writes what read tests read through any wrapper."""
    return LocalStorage(tmp_path / "repo")


def test_put_get_list_delete(writable: Storage) -> None:
    storage = writable
    name = "ab" + "0" * 62
    storage.put(Kind.DATA, name, b"0123456789")
    assert storage.exists(Kind.DATA, name)
    assert storage.get(Kind.DATA, name) == b"0123456789"
    assert storage.get(Kind.DATA, name, 3, 4) == b"3456"
    assert [(i.name, i.size) for i in storage.list(Kind.DATA)] == [(name, 10)]
    storage.delete(Kind.DATA, name)
    storage.delete(Kind.DATA, name)  # deleting twice is not an error
    assert not storage.exists(Kind.DATA, name)
    assert list(storage.list(Kind.DATA)) == []


@pytest.mark.parametrize("kind", [Kind.INDEX, Kind.SNAPSHOTS, Kind.KEYS, Kind.LOCKS])
def test_small_objects_round_trip_and_go(writable: Storage, kind: Kind) -> None:
    storage = writable
    name = named(b"sealed bytes")
    storage.put(kind, name, b"sealed bytes")
    assert storage.get(kind, name) == b"sealed bytes"
    assert storage.get(kind, name) == b"sealed bytes"  # a cached copy is the same
    assert storage.get(kind, name, 7, 5) == b"bytes"
    storage.delete(kind, name)
    assert not storage.exists(kind, name)
    with pytest.raises(NotFound):
        storage.get(kind, name)
    assert list(storage.list(kind)) == []


def test_the_config_is_a_single_object(writable: Storage) -> None:
    storage = writable
    assert list(storage.list(Kind.CONFIG)) == []
    storage.put(Kind.CONFIG, "config", b"{}")
    assert [(i.name, i.size) for i in storage.list(Kind.CONFIG)] == [("config", 2)]
    assert storage.get(Kind.CONFIG, "config") == b"{}"


def test_missing_objects_are_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.get(Kind.SNAPSHOTS, "f" * 64)
    with pytest.raises(NotFound):
        storage.get(Kind.DATA, "f" * 64, 0, 10)
    assert not storage.exists(Kind.INDEX, "f" * 64)


def test_objects_written_by_another_are_read(storage: Storage, tmp_path: Path) -> None:
    seed = _seed(tmp_path)
    pack, index, snapshot = named(b"pack bytes"), named(b"index bytes"), named(b"snapshot bytes")
    seed.put(Kind.DATA, pack, b"pack bytes")
    seed.put(Kind.INDEX, index, b"index bytes")
    seed.put(Kind.SNAPSHOTS, snapshot, b"snapshot bytes")
    for _ in range(2):  # the second from a cache, if there is one
        assert storage.get(Kind.DATA, pack, 5, 5) == b"bytes"
        assert storage.get(Kind.INDEX, index) == b"index bytes"
        assert storage.get(Kind.SNAPSHOTS, snapshot) == b"snapshot bytes"
        assert storage.get(Kind.SNAPSHOTS, snapshot, 9) == b"bytes"
    assert storage.exists(Kind.SNAPSHOTS, snapshot)
    assert [(i.name, i.size) for i in storage.list(Kind.SNAPSHOTS)] == [(snapshot, 14)]
    seed.delete(Kind.SNAPSHOTS, snapshot)  # by another client: no copy is listed or found
    assert list(storage.list(Kind.SNAPSHOTS)) == []
    assert not storage.exists(Kind.SNAPSHOTS, snapshot)


def test_a_range_past_the_end_is_an_error(storage: Storage, tmp_path: Path) -> None:
    _seed(tmp_path).put(Kind.DATA, named(b"short"), b"short")
    _seed(tmp_path).put(Kind.INDEX, named(b"short"), b"short")
    storage.get(Kind.INDEX, named(b"short"))  # a cache has it whole now
    with pytest.raises(StorageError):
        storage.get(Kind.DATA, named(b"short"), 2, 10)
    with pytest.raises(StorageError):
        storage.get(Kind.INDEX, named(b"short"), 2, 10)


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b"])
def test_names_cannot_escape(storage: Storage, name: str) -> None:
    with pytest.raises(StorageError):
        storage.put(Kind.INDEX, name, b"x")
    with pytest.raises(StorageError):
        storage.get(Kind.SNAPSHOTS, name)


def test_a_put_leaves_no_temporary_and_overwrites_whole(writable: Storage, tmp_path: Path) -> None:
    storage = writable
    storage.put(Kind.SNAPSHOTS, "s1", b"first version, long")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"first version, long"
    storage.put(Kind.SNAPSHOTS, "s1", b"second")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert [p.name for p in (tmp_path / "repo" / "snapshots").iterdir()] == ["s1"]


def test_temporaries_of_a_crashed_writer_are_invisible(storage: Storage, tmp_path: Path) -> None:
    (tmp_path / "repo" / "index" / ".x.tmp-1-2").write_bytes(b"partial")
    assert list(storage.list(Kind.INDEX)) == []


def test_temporaries_of_a_crashed_writer_are_removable(writable: Storage, tmp_path: Path) -> None:
    (tmp_path / "repo" / "index" / ".x.tmp-1-2").write_bytes(b"partial")
    assert writable.remove_stale_temporaries() == 1
    assert not (tmp_path / "repo" / "index" / ".x.tmp-1-2").exists()


def test_capabilities_pass_through_the_wrappers(storage: Storage) -> None:
    assert storage.capabilities.local_modes  # all stand on a local directory
    assert storage.capabilities.writable is not isinstance(storage, ReadOnlyStorage)


def test_the_audit_passes_through_the_wrappers(storage: Storage, tmp_path: Path) -> None:
    assert storage.audit() == []
    os.chmod(tmp_path / "repo" / "index", 0o755)
    assert storage.audit() == [
        f"{tmp_path / 'repo' / 'index'} is mode 0755 (a repository's is 0700)"
    ]


def test_the_location_is_the_backends(storage: Storage, tmp_path: Path) -> None:
    assert storage.location == str(tmp_path / "repo")
    storage.close()
