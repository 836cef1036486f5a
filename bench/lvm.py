"""LVM snapshots under live writes, in the VM lab's guest (tests/vmlvmlab.py: Debian's kernel
with device-mapper under TCG, the host's userland over 9p): what the windows cost and whether
every restore keeps the dependent-write invariant.

Usage (root): python bench/lvm.py [--trials 20] [--work DIR] [--json OUT]

The workload (DEPENDENT_WRITES: a log on the thick ext4 LV, its commit record on the thin XFS
LV, written flat out) runs throughout. Rows:

1. both LVs at `crash`, then at `filesystem`: TRIALS backups each, every one restored and checked
   (commit never ahead of the log); the window is the writers' pause (two volumes);
2. the thin XFS LV alone at `filesystem`: TRIALS backups, restored and checked the same way
   for the commit file; the window is the origin's device-mapper suspend (its file system frozen
   by lvcreate's lockfs), sampled every 0.5 ms, and lvcreate's whole time beside it;
3. a thick snapshot with a 4 MiB store while 16 MiB are written to its origin during the read:
   how many of max(3, TRIALS // 4) backups fail with snapshot_damaged and save nothing.

Each row's backups run in one process in the guest (the lab driver's ``trials``: under TCG
an interpreter start costs more than a backup); restores and checks run there too.
The windows are measured under TCG emulation (every instruction emulated), so they are far
longer than on a real host; compare them with bench/consistency.py's btrfs windows as orders of
magnitude, not ratios. Results go to bench/results/lvm-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import percentiles

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the VM lab the tests use

from vmfixtures import Vm  # noqa: E402
from vmlvmlab import (  # noqa: E402
    committed,
    guest_freezeframe,
    guest_trials,
    init_repository,
    lvm_lab,
    must,
    start_dependent_writes,
    stop_dependent_writes,
)

LOG_LV, COMMIT_LV = "thick-ext4", "thin-xfs"
TCG_CAPS = ("--pause-cap", "120", "--freeze-cap", "120")  # lvcreate takes seconds under TCG


def _both(vm: Vm, level: str, trials: int) -> dict[str, Any]:
    lvs = (f"/mnt/lv/{LOG_LV}", f"/mnt/lv/{COMMIT_LV}")
    results = guest_trials(vm, trials, *lvs, "--consistency", level, *TCG_CAPS, check=lvs)
    windows, violations = [], []
    for result in results:
        if result["status"] != 0:
            raise RuntimeError(f"backup at {level} failed: {result['doc']}")
        windows.append(result["doc"]["consistency"]["pause"]["window_ms"])
        if not result["holds"]:
            violations.append(f"trial {result['trial']}: {result['why']}")
        print(f"lvm: both LVs at {level}, trial {result['trial']}: paused {windows[-1]:.0f} ms, "
              f"{result['why']}")  # fmt: skip
    return {"row": f"log + commit on two LVs, {level}", "trials": len(results),
            "violations": violations, "window": "writers paused",
            "window_ms": percentiles(windows)}  # fmt: skip


def _alone(vm: Vm, trials: int) -> dict[str, Any]:
    lv = f"/mnt/lv/{COMMIT_LV}"
    suspends, lvcreates = [], []
    for result in guest_trials(vm, trials, lv, "--consistency", "filesystem", *TCG_CAPS):
        if result["status"] != 0:
            raise RuntimeError(f"backup of {COMMIT_LV} failed: {result['doc']}")
        (volume,) = result["doc"]["consistency"]["volumes"]
        suspends.append(volume["freeze_ms"])
        lvcreates.append(volume["snapshot_ms"])
        print(f"lvm: {COMMIT_LV} alone, trial {result['trial']}: suspended "
              f"{suspends[-1]:.1f} ms, lvcreate {lvcreates[-1]:.0f} ms")  # fmt: skip
    return {"row": f"{COMMIT_LV} alone, filesystem", "trials": len(suspends), "violations": [],
            "window": "origin suspended (lockfs)", "window_ms": percentiles(suspends),
            "lvcreate_ms": percentiles(lvcreates)}  # fmt: skip


def _overflow(vm: Vm, trials: int) -> dict[str, Any]:
    caught = 0
    mount = f"/mnt/lv/{LOG_LV}"
    for _trial in range(trials):
        before = len(guest_freezeframe(vm, "snapshots")[1])
        status, doc, _err = guest_freezeframe(
            vm, "backup", mount, "--snapshot-size", "4M",
            driver=("--scribble", f"{mount}/scribble:16"),
        )  # fmt: skip
        saved = len(guest_freezeframe(vm, "snapshots")[1]) - before
        ok = status == 1 and doc["error"]["code"] == "snapshot_damaged" and saved == 0
        caught += ok
        must(vm, f"rm -f {mount}/scribble && sync")
    return {"row": "thick snapshot overflowing while read", "trials": trials,
            "caught": caught}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path, help="default bench/results/lvm-<time>.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-lvm-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = []
    with lvm_lab(work / "vm") as vm:
        init_repository(vm)
        start_dependent_writes(vm, LOG_LV, COMMIT_LV)
        while committed(vm, COMMIT_LV) < 64 * 5:
            time.sleep(0.5)
        for level in ("crash", "filesystem"):
            rows.append(_both(vm, level, args.trials))
        rows.append(_alone(vm, args.trials))
        stop_dependent_writes(vm)
        rows.append(_overflow(vm, max(3, args.trials // 4)))
    print("\n| row | trials | invariant violations | window | p50 / p95 / max ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        window = row.get("window_ms")
        text = f"{window['p50']} / {window['p95']} / {window['max']}" if window else "-"
        broken = len(row["violations"]) if "violations" in row else f"caught {row['caught']}"
        print(f"| {row['row']} | {row['trials']} | {broken} | {row.get('window', '-')} | {text} |")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"lvm-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "seconds": time.monotonic() - started}, indent=2))
    print(f"\nresults: {out}")
    return 0 if all(not row.get("violations") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
