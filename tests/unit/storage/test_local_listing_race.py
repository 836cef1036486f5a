"""Listing while another process removes objects (locks come and go all the time when several
plans share a repository): an object removed between reading the directory and looking at it is
left out, not an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage


def test_an_object_removed_while_listing_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(str(tmp_path / "repo"))
    storage.create_layout()
    for name in ("a" * 64, "b" * 64):
        storage.put(Kind.LOCKS, name, b"x")
    real_scandir = os.scandir

    def scandir_then_remove(path: object) -> list[os.DirEntry[str]]:
        entries = list(real_scandir(path))  # type: ignore[call-overload]
        (tmp_path / "repo" / "locks" / ("a" * 64)).unlink()  # gone before its stat
        return entries

    monkeypatch.setattr(os, "scandir", scandir_then_remove)
    assert [info.name for info in storage.list(Kind.LOCKS)] == ["b" * 64]
