"""`doctor` tells, per path, which levels are reachable and why the others are not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ffharness import Cli
from fsfixtures import loop_filesystem


def test_btrfs_reaches_snapshot_levels_and_ext4_says_why_not(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        loop_filesystem(tmp_path / "a", "btrfs") as btrfs,
        loop_filesystem(tmp_path / "b", "ext4", size_mib=64) as ext4,
    ):
        (btrfs / "data").mkdir()
        on_btrfs, on_ext4 = cli("doctor", btrfs / "data", ext4)
        assert on_btrfs["fs_type"] == "btrfs"
        assert on_btrfs["provider"] == "btrfs"
        assert [p["name"] for p in on_btrfs["providers"]] == ["btrfs", "lvm", "loop-clone"]
        assert on_btrfs["providers"][0]["why_not"] is None
        assert "not ext4 or xfs" in on_btrfs["providers"][1]["why_not"]
        assert "not ext4 or xfs" in on_btrfs["providers"][2]["why_not"]
        assert on_btrfs["subvolume"] == str(btrfs)
        assert set(on_btrfs["reachable"]) == {"filesystem", "crash", "none"}
        assert "application" in on_btrfs["unreachable"]
        assert on_ext4["provider"] == "none"
        assert on_ext4["reachable"] == ["none"]
        assert "no snapshot provider for ext4" in on_ext4["unreachable"]["crash"]
        # Every provider is asked, and the reason names each one's answer.
        btrfs_says, lvm_says, loop_says = (p["why_not"] for p in on_ext4["providers"])
        assert "is not on btrfs" in btrfs_says and "cannot clone files" in loop_says
        assert "is not an LVM logical volume" in lvm_says
        assert (
            f"btrfs: {btrfs_says}; lvm: {lvm_says}; loop-clone: {loop_says}"
            in on_ext4["unreachable"]["crash"]
        )
        assert "ext4 and XFS on LVM logical volumes" in on_ext4["unreachable"]["crash"]
        text = cli("doctor", ext4, json=False)
        assert "crash        not reachable: no snapshot provider for ext4" in text
        assert f"            btrfs       cannot: {btrfs_says}" in text
        assert f"            lvm         cannot: {lvm_says}" in text
        assert f"            loop-clone  cannot: {loop_says}" in text
        text = cli("doctor", btrfs / "data", json=False)
        assert "  provider: btrfs\n            btrfs       can snapshot it\n" in text


def test_a_missing_path_is_one_clear_error(cli: Cli, tmp_path: Path) -> None:
    out = cli("doctor", tmp_path / "nope", expect=1)
    assert out["error"]["code"] == "not_found"


def test_volumes_below_a_path_are_listed_and_limit_its_levels(cli: Cli, tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs") as btrfs:
        subprocess.run(
            ["btrfs", "subvolume", "create", str(btrfs / "nested")],
            check=True,
            capture_output=True,
        )
        (report,) = cli("doctor", btrfs)
        (below,) = report["volumes_below"]
        assert below == {
            "path": str(btrfs / "nested"),
            "fs_type": "btrfs",
            "provider": "btrfs",
            "why_not": None,
            "providers": [
                {"name": "btrfs", "why_not": None},
                {"name": "lvm", "why_not": "btrfs is not ext4 or xfs"},
                {"name": "loop-clone", "why_not": "btrfs is not ext4 or xfs"},
            ],
        }
        assert "crash" in report["reachable"]
        (btrfs / "mnt").mkdir()
        with loop_filesystem(btrfs / "mnt", "ext4", size_mib=64, name="ext", image_dir=tmp_path):
            (report,) = cli("doctor", btrfs)
            assert "crash" not in report["reachable"]
            assert "ext4" in report["unreachable"]["crash"]
            assert "below it" in report["unreachable"]["crash"]
