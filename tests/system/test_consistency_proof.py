"""Proof under live writes, on real loop btrfs file systems, with writers running flat out.

The workloads (tests/workloads.py): (a) a log and a commit file written after the log's fsync,
(b) the same with log and commit on two file systems, (c) a large file rewritten in place, each
write made durable before the next, (d) the same file rewritten with no sync at all.

At `crash` and `filesystem` the invariants must hold in every trial; at `none` the same workloads
show they can break, and such snapshots say `none`. FREEZEFRAME_TORTURE_TRIALS sets the number of
backups per case (default 20)."""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from cgroupfixtures import own_cgroup
from ffharness import Cli
from fsfixtures import loop_filesystem
from workloads import WORKLOADS, Workload

TRIALS = int(os.environ.get("FREEZEFRAME_TORTURE_TRIALS", "20"))


def _violations(cli: Cli, tmp_path: Path, sources: list[Path], level: str, work: Workload) -> int:
    """Back up ``sources`` TRIALS times at ``level``; count restores breaking the invariant."""
    broken = 0
    for trial in range(TRIALS):
        result = cli("backup", *sources, "--consistency", level)
        record = result["consistency"]
        assert record["achieved"] == level
        if level != "none" and len(sources) > 1:
            assert record["pause"]["writers"], "the writer was not paused"
        target = tmp_path / f"restore-{level}-{trial}"
        cli("restore", result["snapshot_id"][:12], "--target", target)
        broken += not work.holds([target / str(source).lstrip("/") for source in sources])
        subprocess.run(["rm", "-rf", str(target)], check=True)
    return broken


CASES = [
    # (workload, level, writer in a cgroup of its own: paused by the cgroup freezer, else SIGSTOP)
    ("a: log+commit", "filesystem", False),
    ("a: log+commit", "crash", False),
    ("a: log+commit", "none", False),
    ("b: log+commit on two volumes", "filesystem", False),
    ("b: log+commit on two volumes", "crash", True),
    ("b: log+commit on two volumes", "none", False),
    ("c: in-place rewrite", "filesystem", False),
    ("c: in-place rewrite", "crash", False),
    ("c: in-place rewrite", "none", False),
    # Never synced: only `filesystem` (writers paused while the snapshot flushes) promises the
    # image of one instant; `crash` promises what a power cut leaves, which is not (bench/).
    ("d: in-place rewrite, never synced", "filesystem", False),
    ("d: in-place rewrite, never synced", "none", False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def test_invariants_hold_at_crash_and_filesystem_and_can_break_when_read_live(
    repo: Path, cli: Cli, tmp_path: Path, case: tuple[str, str, bool]
) -> None:
    """At `crash` and `filesystem` every restore keeps the invariant, across two volumes too;
    read live (`none`, and recorded so), the same workload breaks it."""
    workload, level, in_cgroup = case
    work = WORKLOADS[workload]
    with ExitStack() as stack:
        sources = []
        for index in range(work.volumes):
            mnt = stack.enter_context(
                loop_filesystem(tmp_path, "btrfs", size_mib=8192, name=f"vol{index}")
            )
            (mnt / "db").mkdir()
            sources.append(mnt / "db")
        cgroup = stack.enter_context(own_cgroup("proof")) if in_cgroup else None
        stack.enter_context(work.start(sources, cgroup))
        broken = _violations(cli, tmp_path, sources, level, work)
    print(f"{workload}, {level}: {broken} of {TRIALS} restores broke the invariant")
    if level == "none":
        assert broken > 0
    else:
        assert broken == 0
