"""The btrfs provider on a real loop-backed btrfs: a snapshot shows the subvolume as it was at
one instant, is read-only, carries the run id, and is removed; crashed runs' leftovers are found."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from freezeframe.capture.providers.base import new_run_id
from freezeframe.capture.providers.btrfs import BtrfsProvider
from freezeframe.capture.volumes import resolve_volume
from fsfixtures import loop_filesystem


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_snapshot_is_point_in_time_read_only_and_removed(tmp_path: Path) -> None:
    provider = BtrfsProvider()
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "data").mkdir()
        (mnt / "data" / "log").write_bytes(b"before\n")
        volume = resolve_volume(mnt / "data")
        assert provider.unsupported_reason(volume) is None
        run_id = new_run_id()
        view = provider.take(volume, run_id)
        try:
            assert run_id in view.root
            with open(mnt / "data" / "log", "ab") as f:
                f.write(b"after\n")
            in_view = Path(view.read_path(str(mnt / "data" / "log")))
            assert in_view.read_bytes() == b"before\n"
            with pytest.raises(OSError) as raised:
                (in_view.parent / "new").write_bytes(b"x")
            assert raised.value.errno == errno.EROFS
            assert view.create_ms >= 0
        finally:
            provider.remove(view)
        assert not os.path.lexists(view.root)
        provider.remove(view)  # already gone: not an error


def test_nested_subvolumes_are_not_in_the_parent_snapshot(tmp_path: Path) -> None:
    """Why nested subvolumes must be volumes of their own: the parent's snapshot shows them as
    empty directories."""
    provider = BtrfsProvider()
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        subprocess.run(
            ["btrfs", "subvolume", "create", str(mnt / "inner")], check=True, capture_output=True
        )
        (mnt / "inner" / "f").write_bytes(b"x")
        view = provider.take(resolve_volume(mnt), new_run_id())
        try:
            assert os.listdir(view.read_path(str(mnt / "inner"))) == []
        finally:
            provider.remove(view)


def test_leftovers_of_dead_runs_are_found_and_live_ones_are_not(tmp_path: Path) -> None:
    provider = BtrfsProvider()
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        volume = resolve_volume(mnt)
        dead = provider.take(volume, f"20260101T000000-{_dead_pid()}-abcdef")
        live = provider.take(volume, new_run_id())
        try:
            assert provider.find_leftovers(volume) == [dead.root]
        finally:
            provider.remove(dead)
            provider.remove(live)
        assert provider.find_leftovers(volume) == []


def test_other_file_systems_say_why_not(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt:
        reason = BtrfsProvider().unsupported_reason(resolve_volume(mnt))
        assert reason is not None and "not on btrfs" in reason
