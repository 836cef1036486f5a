"""Deadlines that survive a crash: a frozen file system is thawed within a second when the
process that froze it is SIGKILLed, or when the freeze outlives its deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freezeframe.capture import fsfreeze
from freezeframe.capture.watchdog import Watchdog
from freezeframe.errors import UsageError
from fsfixtures import loop_filesystem, writable_within

FREEZER = """
import sys, time
from freezeframe.capture import fsfreeze
from freezeframe.capture.watchdog import Watchdog
watchdog = Watchdog()
watchdog.arm_freeze(sys.argv[1], 60)
fsfreeze.freeze(sys.argv[1])
print("frozen", flush=True)
time.sleep(60)
"""


def test_sigkill_of_the_freezer_thaws_within_a_second(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt:
        freezer = subprocess.Popen(
            [sys.executable, "-c", FREEZER, str(mnt)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert freezer.stdout is not None
            assert freezer.stdout.readline().strip() == "frozen"
            assert not writable_within(mnt, 0.5)  # really frozen
            os.kill(freezer.pid, signal.SIGKILL)
            freezer.wait()
            killed = time.monotonic()
            assert writable_within(mnt, 1.0)
            assert time.monotonic() - killed < 1.0
        finally:
            freezer.kill()
            fsfreeze.thaw(str(mnt))


def test_the_deadline_thaws_and_the_run_learns_it(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt, Watchdog() as watchdog:
        token = watchdog.arm_freeze(str(mnt), 0.3)
        fsfreeze.freeze(str(mnt))
        started = time.monotonic()
        assert writable_within(mnt, 1.5)
        assert time.monotonic() - started < 1.3
        assert watchdog.disarm(token) is False  # expired: the run must fail or degrade
        assert fsfreeze.thaw(str(mnt)) is False  # already thawed


def test_a_freeze_released_in_time_is_reported_in_time(tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "ext4", size_mib=64) as mnt, Watchdog() as watchdog:
        token = watchdog.arm_freeze(str(mnt), 30)
        fsfreeze.freeze(str(mnt))
        assert fsfreeze.thaw(str(mnt)) is True
        assert watchdog.disarm(token) is True
        assert writable_within(mnt, 2.0)


def test_the_root_file_system_is_never_frozen_unless_asked() -> None:
    with pytest.raises(UsageError):
        fsfreeze.freeze("/")
