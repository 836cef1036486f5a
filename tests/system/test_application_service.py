"""Service pause through `backup --quiesce cgroup:PATH` and `--quiesce pid:N` on a real loop
btrfs: the service's processes stay paused across the snapshots and run again after; a SIGKILL
of the backup while they are held resumes them within a second; freezeframe never pauses itself."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from cgroupfixtures import own_cgroup
from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem
from writerfixtures import advancing, appender, is_paused


@pytest.mark.parametrize("how", ["cgroup", "pid"])
def test_a_paused_service_is_held_across_the_snapshots_and_resumed_after_a_sigkill(
    repo: Path, cli: Cli, tmp_path: Path, how: str
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt, ExitStack() as stack:
        cgroup = stack.enter_context(own_cgroup("service")) if how == "cgroup" else None
        service = stack.enter_context(appender(mnt / "log", cgroup))
        spec = f"cgroup:{cgroup}" if cgroup is not None else f"pid:{service.pid}"
        result = cli("backup", mnt, "--quiesce", spec)
        record = result["consistency"]
        assert record["achieved"] == "application"
        (held,) = record["quiesce"]["quiescers"]
        assert (held["kind"], held["result"]) == (how, "ok")
        assert advancing(mnt / "log")  # running again after the backup
        backup = spawn_freezeframe(
            "backup",
            mnt,
            "--quiesce",
            spec,
            repo=repo,
            env=hold_env(Point.APPLICATIONS_HELD, 30),
        )
        deadline = time.monotonic() + 30
        while not is_paused(service, cgroup):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the service was never paused"
            time.sleep(0.005)
        assert not advancing(mnt / "log")
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        while is_paused(service, cgroup) and time.monotonic() - killed < 3:
            time.sleep(0.005)
        assert time.monotonic() - killed < 1.0
        assert advancing(mnt / "log")


def test_freezeframe_refuses_to_pause_itself(repo: Path, cli: Cli, tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        failed = cli("backup", mnt, "--quiesce", f"pid:{os.getpid()}", expect=1)
        assert "is freezeframe" in failed["error"]["message"]
