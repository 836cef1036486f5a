"""A writer process appending to a file flat out, for tests that pause writers: started
(optionally inside a cgroup), checked for being paused, and watched for progress."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

APPENDER = """
import sys
with open(sys.argv[1], "ab", 0) as f:
    while True:
        f.write(b"x")
"""


@contextmanager
def appender(log: Path, cgroup: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    """The writer, placed in ``cgroup`` when given; yielded once it has written."""
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(log)])
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
    try:
        deadline = time.monotonic() + 5
        while not (log.exists() and log.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def is_paused(proc: subprocess.Popen[bytes], cgroup: Path | None) -> bool:
    """Frozen with its cgroup, or stopped by a signal when it has no cgroup of its own."""
    if cgroup is not None:
        return "frozen 1" in (cgroup / "cgroup.events").read_text().splitlines()
    text = Path(f"/proc/{proc.pid}/stat").read_text()
    return text[text.rindex(")") + 2] in "Tt"


def advancing(log: Path, seconds: float = 0.2) -> bool:
    first = log.stat().st_size
    time.sleep(seconds)
    return log.stat().st_size != first
