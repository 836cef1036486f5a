"""Backups through the capture layer on a real loop btrfs: the level reached is recorded, the
data comes from the snapshot, snapshots never outlive the run, and unreachable levels fail
loudly or degrade when asked."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ffharness import Cli
from freezeframe.capture.providers.btrfs import SNAPSHOT_DIR, BtrfsProvider
from freezeframe.capture.volumes import resolve_volume
from fsfixtures import loop_filesystem


def _snapshots_left(subvolume: Path) -> list[str]:
    directory = subvolume / SNAPSHOT_DIR
    return os.listdir(directory) if directory.exists() else []


def test_btrfs_backup_reaches_filesystem_and_records_the_volume(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "data").mkdir()
        (mnt / "data" / "log").write_bytes(b"line\n" * 1000)
        result = cli("backup", mnt / "data")
        record = result["consistency"]
        assert (record["requested"], record["achieved"]) == ("auto", "filesystem")
        (volume,) = record["volumes"]
        assert volume["provider"] == "btrfs"
        assert volume["fs_type"] == "btrfs"
        assert volume["snapshot_ms"] >= 0
        assert _snapshots_left(mnt) == []  # removed after the run
        listed = {n["path"] for n in cli("ls", "latest")["nodes"]}
        assert str(mnt / "data" / "log") in listed  # original paths, not the snapshot's
        assert not [p for p in listed if SNAPSHOT_DIR in p]
        cli("restore", "latest", "--target", tmp_path / "out")
        restored = tmp_path / "out" / str(mnt / "data" / "log").lstrip("/")
        assert restored.read_bytes() == b"line\n" * 1000
        (snap,) = cli("snapshots")
        assert snap["consistency"]["achieved"] == "filesystem"


def test_crash_requested_on_btrfs_is_recorded_as_crash(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        record = cli("backup", mnt, "--consistency", "crash")["consistency"]
        assert (record["requested"], record["achieved"]) == ("crash", "crash")


def test_an_unreachable_level_fails_or_degrades_loudly(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt:
        (mnt / "f").write_bytes(b"x")
        failed = cli("backup", mnt, "--consistency", "crash", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert "no snapshot provider for ext4" in failed["error"]["message"]
        assert cli("snapshots") == []
        degraded = cli("backup", mnt, "--consistency", "crash", "--fallback", "degrade")
        assert degraded["consistency"]["achieved"] == "none"
        assert "degraded to none" in cli.stderr


def test_a_nested_subvolume_is_captured_as_a_volume_of_its_own(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A snapshot of the parent shows a nested subvolume as an empty directory; the backup
    snapshots it too and reads its content there, recorded under the original path."""
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "d").mkdir()
        subprocess.run(
            ["btrfs", "subvolume", "create", str(mnt / "d" / "inner")],
            check=True,
            capture_output=True,
        )
        (mnt / "d" / "inner" / "f").write_bytes(b"inside")
        os.chmod(mnt / "d" / "inner", 0o750)
        result = cli("backup", mnt, "--consistency", "crash")
        record = result["consistency"]
        assert record["achieved"] == "crash"
        assert sorted(v["subvolume"] for v in record["volumes"]) == [
            str(mnt),
            str(mnt / "d" / "inner"),
        ]
        assert _snapshots_left(mnt) == [] and _snapshots_left(mnt / "d" / "inner") == []
        nodes = {n["path"]: n for n in cli("ls", "latest")["nodes"]}
        assert str(mnt / "d" / "inner" / "f") in nodes
        assert not [p for p in nodes if SNAPSHOT_DIR in p]
        cli("restore", "latest", "--target", tmp_path / "out")
        inner = tmp_path / "out" / str(mnt / "d" / "inner").lstrip("/")
        assert (inner / "f").read_bytes() == b"inside"
        assert inner.stat().st_mode & 0o777 == 0o750  # the subvolume root's own metadata


def test_one_file_system_leaves_nested_subvolumes_out_as_restic_does(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        subprocess.run(
            ["btrfs", "subvolume", "create", str(mnt / "inner")], check=True, capture_output=True
        )
        (mnt / "inner" / "f").write_bytes(b"inside")
        record = cli("backup", mnt, "-x")["consistency"]
        assert len(record["volumes"]) == 1
        listed = {n["path"] for n in cli("ls", "latest")["nodes"]}
        assert str(mnt / "inner") in listed and str(mnt / "inner" / "f") not in listed


def test_a_mount_below_a_source_without_a_provider_limits_the_level(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Another file system mounted inside a btrfs source would be an empty directory in the
    snapshot: it is a volume of the backup, so the level is what it can reach, and it says why."""
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "ext").mkdir()
        # Its image lies on the test's own file system (no clones), so no provider serves it.
        with loop_filesystem(
            mnt / "ext", "ext4", size_mib=64, name="inner", image_dir=tmp_path
        ) as inner:
            (inner / "f").write_bytes(b"on ext4")
            failed = cli("backup", mnt, "--consistency", "crash", expect=1)
            assert "no snapshot provider for ext4" in failed["error"]["message"]
            auto = cli("backup", mnt)
            assert auto["consistency"]["achieved"] == "none"
            assert "ext4" in auto["consistency"]["reason"]
            assert str(inner / "f") in {n["path"] for n in cli("ls", "latest")["nodes"]}


def test_leftover_snapshots_of_a_dead_run_are_removed_by_the_next(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        child = subprocess.Popen(["true"])
        child.wait()
        BtrfsProvider().take(resolve_volume(mnt), f"20260101T000000-{child.pid}-abcdef")
        assert len(_snapshots_left(mnt)) == 1
        cli("backup", mnt)
        assert _snapshots_left(mnt) == []


def test_an_ext4_image_volume_below_a_btrfs_source_is_cloned_and_grafted(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Its image lies on the btrfs, so the loop-clone provider serves it: two volumes, two
    providers, one instant, the ext4 content read from its clone under the original path."""
    with loop_filesystem(tmp_path, "btrfs", size_mib=1024) as mnt:
        (mnt / "ext").mkdir()
        with loop_filesystem(mnt / "ext", "ext4", size_mib=128, name="inner") as inner:
            (inner / "f").write_bytes(b"on ext4")
            record = cli("backup", mnt, "--consistency", "filesystem")["consistency"]
            assert record["achieved"] == "filesystem"
            assert sorted(v["provider"] for v in record["volumes"]) == ["btrfs", "loop-clone"]
            nodes = {n["path"] for n in cli("ls", "latest")["nodes"]}
            assert str(inner / "f") in nodes
            assert not [p for p in nodes if ".freezeframe-snapshots" in p]
            cli("restore", "latest", "--target", tmp_path / "out")
            restored = tmp_path / "out" / str(inner / "f").lstrip("/")
            assert restored.read_bytes() == b"on ext4"
