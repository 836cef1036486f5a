"""A cgroup v2 group of the test's own, to put writer processes in so they can be paused by
the cgroup freezer in place; removed afterwards with every process still in it killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ffharness import is_root, privileged_required
from freezeframe.capture import pause


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return Path(fields[0].split()[4])
    return None


@contextmanager
def made_cgroup(path: Path, marker: str) -> Iterator[Path]:
    """Create the cgroup ``path`` (skipping, or failing under FREEZEFRAME_TEST_PRIVILEGED, when
    it has no ``marker`` freezer file); afterwards resume it, kill what is left in it, remove it."""
    path.mkdir()
    if not (path / marker).exists():
        path.rmdir()
        privileged_required(f"{path} has no {marker}")
    try:
        yield path
    finally:
        pause.resume(str(path))
        for pid in (path / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (path / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        path.rmdir()


@contextmanager
def own_cgroup(label: str) -> Iterator[Path]:
    if not is_root():
        privileged_required("creating a cgroup needs root")
    root = cgroup2_root()
    if root is None:
        privileged_required("no cgroup v2 hierarchy is mounted")
    assert root is not None
    with made_cgroup(root / f"ff-test-{label}-{os.getpid()}", "cgroup.freeze") as path:
        yield path
