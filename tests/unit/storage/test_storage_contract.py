"""The Storage contract every backend must meet (run here against the local backend; a future
S3 backend is added to BACKENDS and must pass the same tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe.errors import NotFound, StorageError
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.local import LocalStorage


def _local(tmp_path: Path) -> Storage:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    return storage


BACKENDS: list[Callable[[Path], Storage]] = [_local]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.__name__.strip("_"))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    backend: Callable[[Path], Storage] = request.param
    return backend(tmp_path)


def test_put_get_list_delete(storage: Storage) -> None:
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


def test_missing_objects_are_not_found(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.get(Kind.SNAPSHOTS, "f" * 64)


def test_a_range_past_the_end_is_an_error(storage: Storage) -> None:
    storage.put(Kind.DATA, "cd" + "1" * 62, b"short")
    with pytest.raises(StorageError):
        storage.get(Kind.DATA, "cd" + "1" * 62, 2, 10)


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b"])
def test_names_cannot_escape(storage: Storage, name: str) -> None:
    with pytest.raises(StorageError):
        storage.put(Kind.INDEX, name, b"x")


def test_a_put_leaves_no_temporary_and_overwrites_whole(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    storage.put(Kind.SNAPSHOTS, "s1", b"first version, long")
    storage.put(Kind.SNAPSHOTS, "s1", b"second")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert [p.name for p in (tmp_path / "repo" / "snapshots").iterdir()] == ["s1"]


def test_temporaries_of_a_crashed_writer_are_invisible_and_removable(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    (tmp_path / "repo" / "index" / ".x.tmp-1-2").write_bytes(b"partial")
    assert list(storage.list(Kind.INDEX)) == []
    assert storage.remove_stale_temporaries() == 1
