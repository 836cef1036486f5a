"""Volume resolution on real loop-backed file systems: the capture layer snapshots what this
returns, so a nested btrfs subvolume must resolve to itself, not to its parent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from freezeframe.capture.volumes import is_btrfs_subvolume_root, resolve_volume
from fsfixtures import loop_filesystem


def test_btrfs_paths_resolve_to_their_subvolume(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "plain" / "deep").mkdir(parents=True)
        (mnt / "plain" / "deep" / "f").write_bytes(b"x")
        subprocess.run(
            ["btrfs", "subvolume", "create", str(mnt / "db")], check=True, capture_output=True
        )
        (mnt / "db" / "pgdata").mkdir()
        os.symlink(mnt / "db" / "pgdata", tmp_path / "link")

        top = resolve_volume(mnt / "plain" / "deep" / "f")
        assert top.fs_type == "btrfs"
        assert top.mount.mount_point == str(mnt)
        assert top.subvolume == str(mnt)

        nested = resolve_volume(tmp_path / "link")  # symlinks are resolved first
        assert nested.path == str(mnt / "db" / "pgdata")
        assert nested.subvolume == str(mnt / "db")
        assert is_btrfs_subvolume_root(str(mnt / "db"))
        assert not is_btrfs_subvolume_root(str(mnt / "plain"))


def test_other_file_systems_have_no_subvolume(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt:
        (mnt / "f").write_bytes(b"x")
        volume = resolve_volume(mnt / "f")
        assert (volume.fs_type, volume.subvolume) == ("ext4", None)
        assert volume.mount.source.startswith("/dev/loop")
