"""The files cache decides which files a backup may skip reading: a wrong "unchanged" answer
would silently keep stale data, so every field must count."""

from __future__ import annotations

import os
from pathlib import Path

from freezeframe.backup.files_cache import MAX_AGE, FilesCache

IDS = [os.urandom(32), os.urandom(32)]


def _stat(tmp_path: Path, name: str = "f", data: bytes = b"data") -> tuple[bytes, os.stat_result]:
    path = tmp_path / name
    path.write_bytes(data)
    return os.fsencode(path), os.stat(path)


def test_entries_survive_a_save_and_load(tmp_path: Path) -> None:
    path, st = _stat(tmp_path)
    cache = FilesCache(tmp_path / "cache" / "files")
    cache.remember(path, st, IDS, False)
    cache.save()
    loaded = FilesCache(tmp_path / "cache" / "files")
    loaded.load()
    entry = loaded.lookup(path, st)
    assert entry is not None and list(entry.content) == IDS
    assert loaded.knows(path) and not loaded.knows(path + b"x")


def test_any_changed_field_is_a_miss(tmp_path: Path) -> None:
    path, st = _stat(tmp_path)
    cache = FilesCache(tmp_path / "files")
    cache.remember(path, st, IDS, False)
    cache.save()
    cache.load()
    fields = ["st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns"]
    for field in fields:
        values = {f: getattr(st, f) for f in fields}
        values[field] += 1
        changed = _FakeStat(**values)
        assert cache.lookup(path, changed) is None, field  # type: ignore[arg-type]
    moved_device = _FakeStat(**{f: getattr(st, f) for f in fields} | {"st_dev": st.st_dev + 1})
    assert cache.lookup(path, moved_device, check_device=False) is not None  # type: ignore[arg-type]


def test_unseen_entries_age_out(tmp_path: Path) -> None:
    path, st = _stat(tmp_path)
    cache = FilesCache(tmp_path / "files")
    cache.remember(path, st, IDS, False)
    cache.save()
    for _ in range(MAX_AGE):
        cache = FilesCache(tmp_path / "files")
        cache.load()
        assert cache.lookup(path, st) is not None
        cache.save()
    cache = FilesCache(tmp_path / "files")
    cache.load()
    assert cache.lookup(path, st) is None


def test_garbage_is_an_empty_cache(tmp_path: Path) -> None:
    (tmp_path / "files").write_bytes(b"not a cache")
    cache = FilesCache(tmp_path / "files")
    cache.load()
    assert len(cache) == 0


class _FakeStat:
    def __init__(self, **fields: int) -> None:
        self.__dict__.update(fields)
