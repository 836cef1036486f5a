"""Writers paused across volumes, through `freezeframe backup` on two real loop btrfs file
systems: the pause is recorded, a SIGKILL of the backup inside the pause resumes the writers
within a second (cgroup freezer and SIGSTOP alike), an overrun of the cap fails or degrades
the run, and freezeframe never pauses itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from cgroupfixtures import own_cgroup
from ffharness import FAST_INIT, Cli, hold_env, spawn_freezeframe
from freezeframe.capture.providers.btrfs import SNAPSHOT_DIR
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem
from writerfixtures import advancing, appender, is_paused


@contextmanager
def _two_volumes(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with ExitStack() as stack:
        first = stack.enter_context(loop_filesystem(tmp_path, "btrfs", name="vol0"))
        second = stack.enter_context(loop_filesystem(tmp_path, "btrfs", name="vol1"))
        yield first, second


@pytest.mark.parametrize("how", ["cgroup", "sigstop"])
def test_sigkill_of_the_backup_while_writers_are_paused_resumes_them_within_a_second(
    repo: Path, cli: Cli, tmp_path: Path, how: str
) -> None:
    with _two_volumes(tmp_path) as (first, second), ExitStack() as stack:
        cgroup = stack.enter_context(own_cgroup("kill")) if how == "cgroup" else None
        writer = stack.enter_context(appender(first / "log", cgroup))
        (second / "f").write_bytes(b"x")
        backup = spawn_freezeframe(
            "backup", first, second, repo=repo, env=hold_env(Point.PAUSED, 30)
        )
        deadline = time.monotonic() + 30
        while not is_paused(writer, cgroup):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the writer was never paused"
            time.sleep(0.005)
        assert not advancing(first / "log")
        # Snapshots are taken by now, inside the pause; the kill lands while it lasts.
        while not os.listdir(second / SNAPSHOT_DIR):
            time.sleep(0.005)
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        while is_paused(writer, cgroup) and time.monotonic() - killed < 3:
            time.sleep(0.005)
        assert time.monotonic() - killed < 1.0
        assert advancing(first / "log")
        # The next run removes the dead run's snapshots and captures normally.
        cli("unlock")
        result = cli("backup", first, second, "--consistency", "crash")
        assert result["consistency"]["achieved"] == "crash"
        assert os.listdir(first / SNAPSHOT_DIR) == [] and os.listdir(second / SNAPSHOT_DIR) == []


def test_a_pause_recorded_with_its_writers_and_window(repo: Path, cli: Cli, tmp_path: Path) -> None:
    with _two_volumes(tmp_path) as (first, second), own_cgroup("record") as cgroup:
        with appender(first / "log", cgroup) as writer:
            result = cli("backup", first, second, "--consistency", "crash")
            assert advancing(first / "log")  # running again after the backup
        pause = result["consistency"]["pause"]
        assert [(w["pid"], w["how"], w["cgroup"]) for w in pause["writers"]] == [
            (writer.pid, "cgroup", str(cgroup))
        ]
        assert 0 < pause["window_ms"] < pause["cap_s"] * 1000
        assert {v["pause_ms"] for v in result["consistency"]["volumes"]} == {pause["window_ms"]}


def test_an_overrun_of_the_pause_cap_fails_or_degrades_and_resumes_the_writers(
    repo: Path, cli: Cli, tmp_path: Path, hold: Callable[[Point, float], None]
) -> None:
    hold(Point.PAUSED, 1.5)
    with _two_volumes(tmp_path) as (first, second), appender(first / "log", None) as writer:
        failed = cli("backup", first, second, "--pause-cap", "0.3", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert "overran its 0.3 s cap" in failed["error"]["message"]
        assert cli("snapshots") == []
        assert os.listdir(first / SNAPSHOT_DIR) == []
        degraded = cli("backup", first, second, "--pause-cap", "0.3", "--fallback", "degrade")
        assert degraded["consistency"]["achieved"] == "none"
        assert "degraded to none" in cli.stderr
        assert not is_paused(writer, None) and advancing(first / "log")


def test_freezeframe_never_pauses_itself_even_when_it_writes_to_a_captured_volume(
    make_cli: Callable[[Path], Cli], tmp_path: Path
) -> None:
    """Its own repository may lie on a captured volume: it holds files there open for writing,
    and still never stops itself (nor its watchdog)."""
    with _two_volumes(tmp_path) as (first, second):
        (first / "data").mkdir()
        (second / "f").write_bytes(b"x")
        in_volume = make_cli(first / "repo")
        in_volume(*FAST_INIT)
        result = in_volume("backup", first / "data", second, "--consistency", "crash")
        assert result["consistency"]["achieved"] == "crash"
        assert os.getpid() not in {w["pid"] for w in result["consistency"]["pause"]["writers"]}


def test_backup_output_names_the_pause(repo: Path, cli: Cli, tmp_path: Path) -> None:
    with _two_volumes(tmp_path) as (first, second), appender(first / "log", None):
        text = cli("backup", first, second, json=False)
        assert "Consistency: filesystem (2 volumes snapshotted, 1 writer paused for" in text


def test_filesystem_level_pauses_the_writers_of_a_single_volume_and_an_overrun_degrades_to_crash(
    repo: Path, cli: Cli, tmp_path: Path, hold: Callable[[Point, float], None]
) -> None:
    """At `filesystem` nothing may be written while the snapshot flushes, one volume or many;
    past the cap the single snapshot is still atomic, so `--fallback degrade` keeps it as
    `crash`. At `crash`, one volume needs no pause at all."""
    with loop_filesystem(tmp_path, "btrfs") as mnt, appender(mnt / "log", None) as writer:
        record = cli("backup", mnt, "--consistency", "filesystem")["consistency"]
        assert [w["pid"] for w in record["pause"]["writers"]] == [writer.pid]
        assert cli("backup", mnt, "--consistency", "crash")["consistency"]["pause"] == {}
        hold(Point.PAUSED, 1.5)
        failed = cli("backup", mnt, "--consistency", "filesystem", "--pause-cap", "0.3", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert os.listdir(mnt / SNAPSHOT_DIR) == []
        degraded = cli(
            "backup",
            mnt,
            "--consistency",
            "filesystem",
            "--pause-cap",
            "0.3",
            "--fallback",
            "degrade",
        )
        assert degraded["consistency"]["achieved"] == "crash"
        assert "degraded to crash" in cli.stderr
        assert advancing(mnt / "log")
