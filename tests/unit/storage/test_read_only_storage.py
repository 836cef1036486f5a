"""A repository opened read-only: every change is refused with one line, before anything
reaches the repository, whose bytes and modes stay as they were; reads pass through."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from freezeframe.errors import StorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.readonly import ReadOnlyStorage


def _state(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path below ``root`` with its mode and (for a file) its bytes."""
    state: dict[str, tuple[int, bytes | None]] = {}
    for directory, _dirs, files in os.walk(root):
        state[directory] = (os.lstat(directory).st_mode, None)
        for name in files:
            path = Path(directory) / name
            state[str(path)] = (path.lstat().st_mode, path.read_bytes())
    return state


WRITES: dict[str, Callable[[ReadOnlyStorage], object]] = {
    "put": lambda s: s.put(Kind.SNAPSHOTS, "a" * 64, b"new"),
    "overwrite": lambda s: s.put(Kind.CONFIG, "config", b"replaced"),
    "delete": lambda s: s.delete(Kind.DATA, "ab" + "0" * 62),
    "create_layout": lambda s: s.create_layout(group_readable=True),
    "remove_stale_temporaries": lambda s: s.remove_stale_temporaries(),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
def test_every_change_is_refused_in_one_line_and_changes_nothing(
    tmp_path: Path, write: Callable[[ReadOnlyStorage], object]
) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.put(Kind.CONFIG, "config", b"{}")
    local.put(Kind.DATA, "ab" + "0" * 62, b"pack")
    (tmp_path / "repo" / "index" / ".x.tmp-1-2").write_bytes(b"partial")
    before = _state(tmp_path / "repo")
    storage = ReadOnlyStorage(LocalStorage(tmp_path / "repo"))
    with pytest.raises(StorageError) as raised:
        write(storage)
    assert str(raised.value).startswith("the repository is opened read-only: ")
    assert "\n" not in str(raised.value)
    assert _state(tmp_path / "repo") == before


def test_a_new_repository_cannot_be_created(tmp_path: Path) -> None:
    storage = ReadOnlyStorage(LocalStorage(tmp_path / "repo"))
    with pytest.raises(StorageError, match="read-only"):
        storage.create_layout()
    assert not (tmp_path / "repo").exists()


def test_reads_pass_through_and_it_says_it_is_read_only(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "repo")
    local.create_layout()
    local.put(Kind.DATA, "ab" + "0" * 62, b"0123456789")
    storage = ReadOnlyStorage(local)
    assert storage.get(Kind.DATA, "ab" + "0" * 62, 2, 3) == b"234"
    assert storage.exists(Kind.DATA, "ab" + "0" * 62)
    assert [i.name for i in storage.list(Kind.DATA)] == ["ab" + "0" * 62]
    assert storage.audit() == []
    assert not storage.capabilities.writable
    assert storage.capabilities.local_modes
    assert local.capabilities.writable
