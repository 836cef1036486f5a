"""A repository on a full file system: the backup fails with one clear line, leaves no partial
objects behind, and the repository stays valid and usable once space is freed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import FAST_INIT, run_freezeframe
from fsfixtures import small_tmpfs


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_full_disk_fails_cleanly_and_loses_nothing(small_fs: Path, tmp_path: Path) -> None:
    repo = small_fs / "repo"
    assert run_freezeframe(*FAST_INIT, repo=repo).returncode == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "fits.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    assert run_freezeframe("backup", src, repo=repo).returncode == 0
    (src / "too-big.bin").write_bytes(os.urandom(40 * 1024 * 1024))

    failed = run_freezeframe("backup", src, repo=repo)
    assert failed.returncode == 1
    assert "No space left" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1
    leftovers = [p for p in repo.rglob(".*") if ".tmp-" in p.name]
    assert leftovers == []
    assert not list((repo / "locks").iterdir())  # the lock was released

    (src / "too-big.bin").unlink()
    check = run_freezeframe("check", "--read-data", repo=repo)
    assert check.returncode == 0, check.stderr
    again = run_freezeframe("backup", src, repo=repo)
    assert again.returncode == 0, again.stderr
    snapshots = run_freezeframe("snapshots", repo=repo, json=True)
    assert snapshots.stdout.count('"short_id"') == 2
