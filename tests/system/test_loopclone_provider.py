"""The loop-clone provider on real file systems: ext4 and xfs on a loop device whose image lies
on a btrfs. `filesystem` freezes the file system around a reflink clone of its image (the freeze
recorded in ms), `crash` clones without freezing and the journal is replayed on mount; clones and
their mounts never outlive the run; a SIGKILL while frozen thaws within a second; the file system
holding the repository is never frozen."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from ffharness import FAST_INIT, Cli, hold_env, spawn_freezeframe
from freezeframe.capture.providers.base import new_run_id
from freezeframe.capture.providers.loopclone import CLONE_DIR, MOUNT_ROOT, LoopCloneProvider
from freezeframe.capture.volumes import resolve_volume
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem, writable_within
from workloads import WORKLOADS

TRIALS = int(os.environ.get("FREEZEFRAME_TORTURE_TRIALS", "20"))


@contextmanager
def _image_volume(tmp_path: Path, fs_type: str) -> Iterator[tuple[Path, Path]]:
    """(host, mount): a ``fs_type`` file system whose image file lies on a btrfs ``host``."""
    with ExitStack() as stack:
        host = stack.enter_context(loop_filesystem(tmp_path, "btrfs", size_mib=2048, name="host"))
        mount = stack.enter_context(loop_filesystem(host, fs_type, size_mib=512, name="inner"))
        yield host, mount


def _ours_left(host: Path) -> list[str]:
    clones = os.listdir(host / CLONE_DIR) if (host / CLONE_DIR).exists() else []
    mounts = os.listdir(MOUNT_ROOT) if os.path.isdir(MOUNT_ROOT) else []
    attached = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return clones + mounts + [line for line in attached.splitlines() if CLONE_DIR in line]


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
def test_filesystem_level_freezes_around_a_clone_and_leaves_nothing_behind(
    repo: Path, cli: Cli, tmp_path: Path, fs_type: str
) -> None:
    with _image_volume(tmp_path, fs_type) as (host, mnt):
        (mnt / "data").mkdir()
        (mnt / "data" / "f").write_bytes(b"on the image" * 1000)
        record = cli("backup", mnt / "data")["consistency"]
        assert record["achieved"] == "filesystem"
        (volume,) = record["volumes"]
        assert (volume["provider"], volume["fs_type"]) == ("loop-clone", fs_type)
        assert volume["freeze_ms"] > 0 and volume["pause_ms"] == 0
        assert record["pause"] == {}  # the freeze holds the writes; no process is paused
        crash = cli("backup", mnt / "data", "--consistency", "crash")["consistency"]
        assert crash["volumes"][0]["freeze_ms"] == 0
        assert _ours_left(host) == []
        for snapshot in ("latest", cli("snapshots")[0]["id"][:12]):
            target = tmp_path / f"out-{snapshot}"
            cli("restore", snapshot, "--target", target)
            restored = target / str(mnt / "data" / "f").lstrip("/")
            assert restored.read_bytes() == b"on the image" * 1000


@pytest.mark.parametrize("level", ["filesystem", "crash"])
def test_log_and_commit_hold_on_a_cloned_ext4_under_live_writes(
    repo: Path, cli: Cli, tmp_path: Path, level: str
) -> None:
    """At `crash` the clone needs its journal replayed on mount; the invariant holds anyway."""
    work = WORKLOADS["a: log+commit"]
    with _image_volume(tmp_path, "ext4") as (_host, mnt):
        (mnt / "db").mkdir()
        with work.start([mnt / "db"], None):
            broken = 0
            for trial in range(TRIALS):
                result = cli("backup", mnt / "db", "--consistency", level)
                assert result["consistency"]["achieved"] == level
                target = tmp_path / f"restore-{trial}"
                cli("restore", result["snapshot_id"][:12], "--target", target)
                broken += not work.holds([target / str(mnt / "db").lstrip("/")])
                subprocess.run(["rm", "-rf", str(target)], check=True)
    print(f"loop-clone ext4, {level}: {broken} of {TRIALS} restores broke the invariant")
    assert broken == 0


def test_sigkill_of_the_backup_while_frozen_thaws_within_a_second(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with _image_volume(tmp_path, "ext4") as (host, mnt):
        (mnt / "f").write_bytes(b"x")
        backup = spawn_freezeframe("backup", mnt, repo=repo, env=hold_env(Point.FROZEN, 30))
        deadline = time.monotonic() + 30
        while not (host / CLONE_DIR).exists() or not os.listdir(host / CLONE_DIR):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the clone was never taken"
            time.sleep(0.005)
        assert not writable_within(mnt, 0.3)  # frozen: the write waits
        backup.kill()
        backup.wait()
        assert writable_within(mnt, 1.0)
        cli("unlock")
        assert cli("backup", mnt)["consistency"]["achieved"] == "filesystem"
        assert _ours_left(host) == []  # the dead run's clone went with the next run


def test_a_mounted_clone_of_a_dead_run_is_removed_by_the_next(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with _image_volume(tmp_path, "ext4") as (host, mnt):
        (mnt / "f").write_bytes(b"x")
        provider = LoopCloneProvider()
        child = subprocess.Popen(["true"])
        child.wait()
        dead = provider.take(resolve_volume(mnt), f"20260101T000000-{child.pid}-abcdef")
        provider.expose(dead)
        assert os.path.ismount(dead.root)
        live = provider.take(resolve_volume(mnt), new_run_id())  # ours: must stay
        try:
            cli("backup", mnt)
            assert not os.path.exists(dead.root) and not os.path.exists(dead.handle)
            assert os.path.exists(live.handle)
        finally:
            provider.remove(live)
        assert _ours_left(host) == []


def test_the_file_system_holding_the_repository_is_never_frozen(
    make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    with _image_volume(tmp_path, "ext4") as (_host, mnt):
        (mnt / "data").mkdir()
        in_volume = make_cli(mnt / "repo")
        in_volume(*FAST_INIT)
        auto = in_volume("backup", mnt / "data")["consistency"]
        assert auto["achieved"] == "crash"
        assert "holds the repository" in auto["reason"]
        failed = in_volume("backup", mnt / "data", "--consistency", "filesystem", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"


def test_a_freeze_overrun_fails_or_degrades_to_crash(
    repo: Path, cli: Cli, tmp_path: Path, hold: Callable[[Point, float], None]
) -> None:
    hold(Point.FROZEN, 1.5)
    with _image_volume(tmp_path, "ext4") as (host, mnt):
        (mnt / "f").write_bytes(b"x")
        failed = cli("backup", mnt, "--freeze-cap", "0.3", expect=1)
        assert "overran its 0.3 s cap" in failed["error"]["message"]
        assert writable_within(mnt, 1.0)
        degraded = cli("backup", mnt, "--freeze-cap", "0.3", "--fallback", "degrade")
        assert degraded["consistency"]["achieved"] == "crash"
        assert "degraded to crash" in cli.stderr
        assert _ours_left(host) == []
