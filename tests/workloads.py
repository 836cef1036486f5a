"""The proof workloads, shared by the test suite (tests/system/test_consistency_proof.py) and
bench/consistency.py: writer processes that run flat out on the directories they are given, and
for each an invariant that every restore of a consistent image keeps.

(a) a writer appends records to a log, fsyncs it, then atomically replaces a commit file with the
log length it vouches for; invariant: the commit never points past the end of the log. (b) the
same with the log and the commit on two different file systems, so only a capture that pauses
the writer around both snapshots keeps it. (c) a large file rewritten in place at scattered
positions, each write made durable before the next; invariant: the file is the state after some
write K (the last one possibly half done), never a mix of moments. (d) the same file rewritten
with no sync at all; invariant: the page cache of one instant, which only `filesystem` promises.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

RECORD = 64

# Names chosen so a live read takes the log first and the commit afterwards: the order in which
# a file-by-file copy can catch a commit that points past the log it already read.
WRITER = f"""
import os, sys
d, c = sys.argv[1], sys.argv[2]  # the log's directory and the commit's (maybe another volume)
log = os.open(os.path.join(d, "a.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
size = os.fstat(log).st_size
n = 0
while True:
    n += 1
    record = (b"%063d" % n)[:{RECORD} - 1] + b"\\n"
    os.write(log, record)
    os.fsync(log)
    size += len(record)
    tmp = os.path.join(c, ".commit.tmp")
    with open(tmp, "w") as f:
        f.write(str(size))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(c, "b.commit"))
"""


@contextmanager
def _spawn(argv: list[str], cgroup: Path | None) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", *argv])
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
    try:
        yield
        # A writer that died mid-test would make every later trial a static copy.
        assert proc.poll() is None, f"the writer exited early ({proc.returncode})"
    finally:
        proc.kill()
        proc.wait()


def _start_log_and_commit(dirs: list[Path], cgroup: Path | None) -> AbstractContextManager[None]:
    log_dir, commit_dir = dirs[0], dirs[-1]
    # A head start of 32 MiB of records, so reading the log takes a while.
    (log_dir / "a.log").write_bytes((b"x" * (RECORD - 1) + b"\n") * (32 * 1024 * 1024 // RECORD))
    (commit_dir / "b.commit").write_text(str((log_dir / "a.log").stat().st_size))
    return _spawn([WRITER, str(log_dir), str(commit_dir)], cgroup)


def _commit_holds(restored: list[Path]) -> bool:
    """The commit file never vouches for more log than there is."""
    log_dir, commit_dir = restored[0], restored[-1]
    commit, log = commit_dir / "b.commit", log_dir / "a.log"
    if not (commit.exists() and log.exists()):
        return False  # a copy that lost one of them lost the data
    return int(commit.read_text()) <= log.stat().st_size


# Workload (c): a large file rewritten in place like a database's page file: write n stamps a
# run of RUN blocks at run position (n * STRIDE) % RUNS, scattered over the file, and is made
# durable (fdatasync) before write n + 1 begins. A crash-consistent image therefore holds every
# write up to some n = K and at most part of write K: each run's stamp is the last write to it
# at or before K. A live read of a file being rewritten everywhere mixes several moments.
BLOCK = 4096
RUN = 16
RUNS = 2048  # 2048 runs of 16 blocks: 128 MiB
STRIDE = 1237  # odd, so RUNS consecutive writes touch every run once
REWRITER = f"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
n = 0
while True:
    n += 1
    os.pwrite(fd, (b"%016d" % n) * ({BLOCK} // 16) * {RUN}, (n * {STRIDE}) % {RUNS} * {RUN * BLOCK})
    os.fdatasync(fd)
"""


def _last_write(run: int, upto: int) -> int:
    """The last write at or before ``upto`` that stamped ``run`` (0: the initial content)."""
    first = run * pow(STRIDE, -1, RUNS) % RUNS
    last = upto - (upto - first) % RUNS
    return max(last, 0)


def _stamps_consistent(data: bytes) -> bool:
    stamps = [int(data[i : i + 16]) for i in range(0, len(data), BLOCK)]
    newest = max(stamps)
    partial = newest * STRIDE % RUNS  # the run of the newest write may be half written
    for run in range(RUNS):
        found = set(stamps[run * RUN : (run + 1) * RUN])
        allowed = {_last_write(run, newest)}
        if run == partial:
            allowed.add(_last_write(run, newest - 1))
        if not found <= allowed:
            return False
    return True


def _start_on_big_file(
    script: str, dirs: list[Path], cgroup: Path | None
) -> AbstractContextManager[None]:
    """A 128 MiB file stamped 0 throughout, then ``script`` rewriting it (workloads c and d)."""
    (dirs[0] / "big").write_bytes((b"%016d" % 0) * (BLOCK // 16) * RUN * RUNS)
    return _spawn([script, str(dirs[0] / "big")], cgroup)


def _big_file_holds(check: Callable[[bytes], bool], restored: list[Path]) -> bool:
    big = restored[0] / "big"
    return big.exists() and check(big.read_bytes())


# Workload (d): the same file rewritten pass after pass, backward from the last run to the first,
# with no fsync at all: what a program that leaves write-back to the kernel does. The page
# cache at any instant shows pass g+1 from some run boundary to the end and pass g before it.
# Only a capture that stops the writer while the snapshot flushes (`filesystem`) is promised
# that image; a snapshot alone (`crash`) may catch pages written back at different moments,
# exactly as a power cut may.
UNSYNCED_RUN = 64
UNSYNCED_REWRITER = f"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
generation = 0
while True:
    generation += 1
    run = (b"%016d" % generation) * ({BLOCK} // 16) * {UNSYNCED_RUN}
    for i in range({RUN * RUNS} - {UNSYNCED_RUN}, -1, -{UNSYNCED_RUN}):
        os.pwrite(fd, run, i * {BLOCK})
"""


def _one_pass_boundary(data: bytes) -> bool:
    """Pass g, then pass g+1 from one run boundary on: one instant of the backward writer."""
    stamps = [int(data[i : i + 16]) for i in range(0, len(data), BLOCK)]
    changes = [i for i in range(1, len(stamps)) if stamps[i] != stamps[i - 1]]
    if not changes:
        return True
    (boundary,) = changes if len(changes) == 1 else (None,)
    return (
        boundary is not None
        and stamps[boundary] == stamps[boundary - 1] + 1
        and boundary % UNSYNCED_RUN == 0
    )


@dataclass(frozen=True)
class Workload:
    start: Callable[[list[Path], Path | None], AbstractContextManager[None]]
    holds: Callable[[list[Path]], bool]
    volumes: int


WORKLOADS = {
    "a: log+commit": Workload(_start_log_and_commit, _commit_holds, volumes=1),
    "b: log+commit on two volumes": Workload(_start_log_and_commit, _commit_holds, volumes=2),
    "c: in-place rewrite": Workload(
        partial(_start_on_big_file, REWRITER),
        partial(_big_file_holds, _stamps_consistent),
        volumes=1,
    ),
    "d: in-place rewrite, never synced": Workload(
        partial(_start_on_big_file, UNSYNCED_REWRITER),
        partial(_big_file_holds, _one_pass_boundary),
        volumes=1,
    ),
}
