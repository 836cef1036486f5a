"""Service pause through `backup --quiesce cgroup:PATH` and `--quiesce pid:N` on a real loop
btrfs: the service's processes stay paused across the snapshots and run again after; a SIGKILL
of the backup while they are held resumes them within a second; freezeframe never pauses itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from cgroupfixtures import own_cgroup
from ffharness import Cli, spawn_freezeframe
from fsfixtures import loop_filesystem

APPENDER = """
import sys
with open(sys.argv[1], "ab", 0) as f:
    while True:
        f.write(b"x")
"""


@contextmanager
def _service(log: Path, cgroup: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(log)])
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
    try:
        while not (log.exists() and log.stat().st_size):
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _held(proc: subprocess.Popen[bytes], cgroup: Path | None) -> bool:
    if cgroup is not None:
        return "frozen 1" in (cgroup / "cgroup.events").read_text().splitlines()
    text = Path(f"/proc/{proc.pid}/stat").read_text()
    return text[text.rindex(")") + 2] in "Tt"


def _advancing(log: Path) -> bool:
    first = log.stat().st_size
    time.sleep(0.2)
    return log.stat().st_size != first


@pytest.mark.parametrize("how", ["cgroup", "pid"])
def test_a_paused_service_is_held_across_the_snapshots_and_resumed_after_a_sigkill(
    repo: Path, cli: Cli, tmp_path: Path, how: str
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt, ExitStack() as stack:
        cgroup = stack.enter_context(own_cgroup("service")) if how == "cgroup" else None
        service = stack.enter_context(_service(mnt / "log", cgroup))
        spec = f"cgroup:{cgroup}" if cgroup is not None else f"pid:{service.pid}"
        result = cli("backup", mnt, "--quiesce", spec)
        record = result["consistency"]
        assert record["achieved"] == "application"
        (held,) = record["quiesce"]["quiescers"]
        assert (held["kind"], held["result"]) == (how, "ok")
        assert _advancing(mnt / "log")  # running again after the backup
        backup = spawn_freezeframe(
            "backup",
            mnt,
            "--quiesce",
            spec,
            repo=repo,
            env={"FREEZEFRAME_TEST_HOLD_APPLICATION_S": "30"},
        )
        deadline = time.monotonic() + 30
        while not _held(service, cgroup):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the service was never paused"
            time.sleep(0.005)
        assert not _advancing(mnt / "log")
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        while _held(service, cgroup) and time.monotonic() - killed < 3:
            time.sleep(0.005)
        assert time.monotonic() - killed < 1.0
        assert _advancing(mnt / "log")


def test_freezeframe_refuses_to_pause_itself(repo: Path, cli: Cli, tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        failed = cli("backup", mnt, "--quiesce", f"pid:{os.getpid()}", expect=1)
        assert "is freezeframe" in failed["error"]["message"]
