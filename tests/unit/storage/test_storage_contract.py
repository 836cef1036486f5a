"""The Storage contract every backend must meet, and every wrapper stacked on one: each test runs
over every factory of ``tests/backends/registry.py`` (the local backend bare and under each
wrapper, and each remote backend against its real server). Tests that write skip the read-only
wrapper, whose own tests show that it refuses every write."""

from __future__ import annotations

import dataclasses
import os

import blake3
import pytest

from backends.base import Backend, Factory
from backends.registry import ALL
from freezeframe.errors import NotFound, StorageError
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.readonly import ReadOnlyStorage


@pytest.fixture(params=ALL, ids=lambda f: f.__name__)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    factory: Factory = request.param
    return factory(request, tmp_path_factory.mktemp("backend"))


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage


@pytest.fixture
def writable(storage: Storage) -> Storage:
    """The storage, for tests that write: the read-only wrapper is skipped."""
    if not storage.capabilities.writable:
        pytest.skip("writes are refused: see test_read_only_storage")
    return storage


def named(data: bytes) -> str:
    """The name the repository gives stored bytes (a cache keeps only objects so named)."""
    return blake3.blake3(data).hexdigest()


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


def test_objects_written_by_another_are_read(backend: Backend) -> None:
    storage, seed = backend.storage, backend.seed
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


def test_a_range_past_the_end_is_an_error(backend: Backend) -> None:
    storage, seed = backend.storage, backend.seed
    seed.put(Kind.DATA, named(b"short"), b"short")
    seed.put(Kind.INDEX, named(b"short"), b"short")
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


def test_a_put_leaves_no_temporary_and_overwrites_whole(
    writable: Storage, backend: Backend
) -> None:
    storage = writable
    storage.put(Kind.SNAPSHOTS, "s1", b"first version, long")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"first version, long"
    storage.put(Kind.SNAPSHOTS, "s1", b"second")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert [(i.name, i.size) for i in backend.seed.list(Kind.SNAPSHOTS)] == [("s1", 6)]
    assert backend.seed.remove_stale_temporaries() == 0  # nothing half-written is left


def test_temporaries_of_a_crashed_writer_are_invisible(backend: Backend) -> None:
    if backend.plant_temporary is None:
        pytest.skip("this backend's puts leave nothing half-written behind")
    backend.plant_temporary(Kind.INDEX)
    assert list(backend.storage.list(Kind.INDEX)) == []
    assert not backend.storage.exists(Kind.INDEX, "x")


def test_temporaries_of_a_crashed_writer_are_removable(writable: Storage, backend: Backend) -> None:
    if backend.plant_temporary is None:
        pytest.skip("this backend's puts leave nothing half-written behind")
    still_there = backend.plant_temporary(Kind.INDEX)
    assert still_there()
    assert writable.remove_stale_temporaries() == 1
    assert not still_there()


def test_capabilities_pass_through_the_wrappers(backend: Backend) -> None:
    storage = backend.storage
    assert storage.capabilities.local_modes == backend.seed.capabilities.local_modes
    assert storage.capabilities.local_directory == backend.seed.capabilities.local_directory
    assert storage.capabilities.writable is not isinstance(storage, ReadOnlyStorage)


def test_the_audit_passes_through_the_wrappers(backend: Backend) -> None:
    assert backend.storage.audit() == []
    if backend.loosen is None:
        return  # no modes to loosen: nothing else to audit
    expected = backend.loosen()
    assert backend.storage.audit() == [expected]


def test_the_location_is_the_backends(backend: Backend) -> None:
    assert backend.storage.location == backend.location
    backend.storage.close()


REMOTE_DETAILS = {
    "s3": {"endpoint", "bucket", "prefix", "credentials", "tls"},
    "rest": {"url", "credentials", "tls"},
    "sftp": {"host", "path", "credentials"},
}
"""What each remote backend's description names, at least."""


def test_the_description_passes_through_the_wrappers_and_names_no_secret(
    backend: Backend,
) -> None:
    """What ``doctor --repo`` shows: the backend and its place, room left where it can tell;
    the same through every wrapper, with no key of the client in it."""
    described = backend.storage.describe()
    # Free space moves while anything on this machine writes: the rest must be the same.
    unmoving = dataclasses.replace(described, free_bytes=None)
    assert unmoving == dataclasses.replace(backend.seed.describe(), free_bytes=None)
    scheme = backend.bare_location.partition(":")[0]
    assert described.backend == (scheme if scheme in REMOTE_DETAILS else "local")
    if described.backend == "local":
        assert described.details["directory"] == backend.storage.capabilities.local_directory
        assert described.filesystem and described.total_bytes
        assert (
            described.free_bytes is not None and 0 <= described.free_bytes <= described.total_bytes
        )
    else:
        assert described.filesystem is None
        assert set(described.details) >= REMOTE_DETAILS[described.backend]
    shown = repr(described)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(name)
        assert not value or value not in shown
