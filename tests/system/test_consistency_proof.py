"""Proof under live writes, on a real loop btrfs: a writer appends records to a log, fsyncs it,
then atomically replaces a commit file with the log length it vouches for. Invariant of every
restore: the commit never points past the end of the log. At `crash` (btrfs snapshot) it must
hold in every trial; at `none` the same workload shows it can break, and such snapshots say
`none`. FREEZEFRAME_TORTURE_TRIALS sets the number of trials (default 20)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ffharness import Cli
from fsfixtures import loop_filesystem

TRIALS = int(os.environ.get("FREEZEFRAME_TORTURE_TRIALS", "20"))
RECORD = 64

# Names chosen so a live read takes the log first and the commit afterwards: the order in which
# a file-by-file copy can catch a commit that points past the log it already read.
WRITER = f"""
import os, sys
d = sys.argv[1]
log = os.open(os.path.join(d, "a.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
size = os.fstat(log).st_size
n = 0
while True:
    n += 1
    record = (b"%063d" % n)[:{RECORD} - 1] + b"\\n"
    os.write(log, record)
    os.fsync(log)
    size += len(record)
    tmp = os.path.join(d, ".commit.tmp")
    with open(tmp, "w") as f:
        f.write(str(size))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(d, "b.commit"))
"""


@contextmanager
def _writer(directory: Path) -> Iterator[None]:
    # A head start of 32 MiB of records, so reading the log takes a while.
    (directory / "a.log").write_bytes((b"x" * (RECORD - 1) + b"\n") * (32 * 1024 * 1024 // RECORD))
    (directory / "b.commit").write_text(str((directory / "a.log").stat().st_size))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


# Workload (c): a large file rewritten in place, block after block, each block stamped with the
# pass number. A single instant shows passes g+1 then g (one boundary at most); a writer faster
# than a live reader laps it, so the reader sees later blocks newer than earlier ones.
BLOCK = 4096
BLOCKS = 32768  # 128 MiB: a live read takes several segments, the writer moves between them
REWRITER = f"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
generation = 0
while True:
    generation += 1
    run = (b"%016d" % generation) * ({BLOCK} // 16) * 64  # 64 blocks per call: fast passes
    for i in range(0, {BLOCKS}, 64):
        os.pwrite(fd, run, i * {BLOCK})
"""


def _stamps_consistent(data: bytes) -> bool:
    stamps = [int(data[i : i + 16]) for i in range(0, len(data), BLOCK)]
    steps = [a - b for a, b in itertools.pairwise(stamps)]
    return all(step >= 0 for step in steps) and max(stamps) - min(stamps) <= 1


@contextmanager
def _rewriter(directory: Path) -> Iterator[None]:
    (directory / "big").write_bytes((b"%016d" % 0) * (BLOCK // 16) * BLOCKS)
    proc = subprocess.Popen([sys.executable, "-c", REWRITER, str(directory / "big")])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _commit_holds(restored: Path) -> bool:
    """The commit file never vouches for more log than there is."""
    return int((restored / "b.commit").read_text()) <= (restored / "a.log").stat().st_size


def _stamps_hold(restored: Path) -> bool:
    return _stamps_consistent((restored / "big").read_bytes())


WORKLOADS = {
    "log+commit": (_writer, _commit_holds),
    "in-place rewrite": (_rewriter, _stamps_hold),
}


def _violations(
    cli: Cli, tmp_path: Path, source: Path, level: str, holds: Callable[[Path], bool]
) -> int:
    """Back up ``source`` TRIALS times at ``level``; count restores breaking the invariant."""
    broken = 0
    for trial in range(TRIALS):
        result = cli("backup", source, "--consistency", level)
        assert result["consistency"]["achieved"] == level
        target = tmp_path / f"restore-{level}-{trial}"
        cli("restore", result["snapshot_id"][:12], "--target", target)
        broken += not holds(target / str(source).lstrip("/"))
        subprocess.run(["rm", "-rf", str(target)], check=True)
    return broken


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("level", ["crash", "none"])
def test_invariants_hold_at_crash_and_can_break_when_read_live(
    repo: Path, cli: Cli, tmp_path: Path, workload: str, level: str
) -> None:
    """At `crash` every restore keeps the invariant; read live (`none`, and recorded so), the
    same workload breaks it."""
    start_workload, holds = WORKLOADS[workload]
    with loop_filesystem(tmp_path, "btrfs", size_mib=512) as mnt:
        (mnt / "db").mkdir()
        with start_workload(mnt / "db"):
            broken = _violations(cli, tmp_path, mnt / "db", level, holds)
    print(f"{workload}, {level}: {broken} of {TRIALS} restores broke the invariant")
    if level == "crash":
        assert broken == 0
    else:
        assert broken > 0
