"""Pausing writers through the cgroup freezer (v2 and v1): they really stop, they run again
within a second when the pausing process is SIGKILLed, and cgroups holding freezeframe itself
are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroupfixtures import made_cgroup
from ffharness import is_root, privileged_required
from freezeframe.capture import pause
from freezeframe.errors import UsageError

ROOTS = {"v2": Path("/sys/fs/cgroup/unified"), "v1": Path("/sys/fs/cgroup/freezer")}


@pytest.fixture(params=["v2", "v1"])
def cgroup(request: pytest.FixtureRequest) -> Iterator[Path]:
    root = ROOTS[request.param]
    if not is_root():
        privileged_required("the cgroup freezer needs root")
    marker = "cgroup.freeze" if request.param == "v2" else "freezer.state"
    if not root.is_dir():
        privileged_required(f"no cgroup {request.param} freezer at {root}")
    with made_cgroup(root / f"ff-test-{os.getpid()}-{request.param}", marker) as path:
        yield path


def _writer(log: Path, cgroup: Path) -> subprocess.Popen[bytes]:
    """A process appending to ``log`` flat out, placed in the test's cgroup."""
    code = (
        "import sys\n"
        "with open(sys.argv[1], 'ab', 0) as f:\n"
        "    while True:\n"
        "        f.write(b'x')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(log)])
    (cgroup / "cgroup.procs").write_text(str(proc.pid))
    return proc


def _advancing(log: Path, seconds: float) -> bool:
    first = log.stat().st_size if log.exists() else 0
    time.sleep(seconds)
    return (log.stat().st_size if log.exists() else 0) != first


PAUSER = """
import sys, time
from freezeframe.capture import pause
from freezeframe.capture.watchdog import Watchdog
watchdog = Watchdog()
watchdog.arm_pause(sys.argv[1], 60)
pause.pause(sys.argv[1], protected_pids=(watchdog.pid,))
print("paused", flush=True)
time.sleep(60)
"""


def test_sigkill_of_the_pauser_resumes_writers_within_a_second(
    cgroup: Path, tmp_path: Path
) -> None:
    log = tmp_path / "writes.log"
    writer = _writer(log, cgroup)
    try:
        time.sleep(0.2)
        assert _advancing(log, 0.2)
        pauser = subprocess.Popen(
            [sys.executable, "-c", PAUSER, str(cgroup)], stdout=subprocess.PIPE, text=True
        )
        assert pauser.stdout is not None
        assert pauser.stdout.readline().strip() == "paused"
        assert not _advancing(log, 0.3)
        os.kill(pauser.pid, signal.SIGKILL)
        pauser.wait()
        killed = time.monotonic()
        while pause.is_paused(str(cgroup)) and time.monotonic() - killed < 2:
            time.sleep(0.005)
        assert time.monotonic() - killed < 1.0
        assert _advancing(log, 0.2)
    finally:
        writer.kill()


def test_a_cgroup_holding_freezeframe_is_refused(cgroup: Path) -> None:
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    try:
        with pytest.raises(UsageError, match="must keep running"):
            pause.pause(str(cgroup))
    finally:
        parent = cgroup.parent / "cgroup.procs"
        parent.write_text(str(os.getpid()))
