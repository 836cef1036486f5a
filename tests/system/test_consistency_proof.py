"""Proof under live writes, on a real loop btrfs: a writer appends records to a log, fsyncs it,
then atomically replaces a commit file with the log length it vouches for. Invariant of every
restore: the commit never points past the end of the log. At `crash` (btrfs snapshot) it must
hold in every trial; at `none` the same workload shows it can break, and such snapshots say
`none`. FREEZEFRAME_TORTURE_TRIALS sets the number of trials (default 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def _violations(cli: Cli, tmp_path: Path, source: Path, level: str) -> int:
    broken = 0
    for trial in range(TRIALS):
        result = cli("backup", source, "--consistency", level)
        assert result["consistency"]["achieved"] == level
        target = tmp_path / f"restore-{level}-{trial}"
        cli("restore", result["snapshot_id"][:12], "--target", target)
        restored = target / str(source).lstrip("/")
        log_size = (restored / "a.log").stat().st_size
        committed = int((restored / "b.commit").read_text())
        broken += committed > log_size
        subprocess.run(["rm", "-rf", str(target)], check=True)
    print(f"{level}: {broken} of {TRIALS} restores broke the invariant")
    return broken


def test_crash_level_keeps_the_commit_invariant_every_time(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs", size_mib=512) as mnt:
        (mnt / "db").mkdir()
        with _writer(mnt / "db"):
            assert _violations(cli, tmp_path, mnt / "db", "crash") == 0


def test_a_live_read_can_break_it_and_says_none(repo: Path, cli: Cli, tmp_path: Path) -> None:
    with loop_filesystem(tmp_path, "btrfs", size_mib=512) as mnt:
        (mnt / "db").mkdir()
        with _writer(mnt / "db"):
            assert _violations(cli, tmp_path, mnt / "db", "none") > 0
