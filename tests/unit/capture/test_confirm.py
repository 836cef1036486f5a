"""Capture.confirm, the last word before a backup commits what it read from its snapshots: a
snapshot whose device failed reads (EIO) is damaged, and the backup must not keep a partial
copy of it as a snapshot of that instant; on a live source (no snapshot) such errors stay the
files' own, reported like any unreadable file."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe import hooks
from freezeframe.capture.providers.base import ReadOnlyView
from freezeframe.capture.session import Capture
from freezeframe.capture.volumes import resolve_volume
from freezeframe.errors import SnapshotDamaged


def _with_view(path: Path) -> Capture:
    capture = Capture([str(path)])
    volume = resolve_volume(str(path))
    capture.views.append(
        ReadOnlyView("loop-clone", volume, volume.mount.mount_point, str(path), 0, 1.0)
    )
    return capture


def test_device_errors_while_a_snapshot_was_read_damage_it(tmp_path: Path) -> None:
    capture = _with_view(tmp_path)
    with pytest.raises(SnapshotDamaged) as caught:
        capture.confirm([f"{tmp_path}/a", f"{tmp_path}/b"])
    message = str(caught.value)
    assert "I/O errors on 2 path(s)" in message and f"first {tmp_path}/a" in message
    assert "nothing read from them is kept" in message and "\n" not in message


def test_device_errors_on_a_live_source_are_the_files_own(tmp_path: Path) -> None:
    Capture([str(tmp_path)]).confirm([f"{tmp_path}/a"])  # no snapshot: nothing to damage


def test_confirm_is_a_point_tests_can_hold(tmp_path: Path) -> None:
    seen: list[hooks.Point] = []
    hooks.install(hooks.Point.SNAPSHOTS_READ, seen.append)
    try:
        Capture([str(tmp_path)]).confirm()
    finally:
        hooks.remove(hooks.Point.SNAPSHOTS_READ)
    assert seen == [hooks.Point.SNAPSHOTS_READ]
