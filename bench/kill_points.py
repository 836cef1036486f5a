"""Kill freezeframe at every repository event of each operation and prove the repository intact.

Usage: .venv/bin/python bench/kill_points.py [--ops backup-initial,prune ...] [--every | --sample K]
                                             [--work DIR] [--json OUT]

Per operation of the kill harness's table (tests/killharness.py: backup initial and incremental,
prune, forget, forget --prune, key passwd): one complete run counts the repository events
(completed writes, renames into place, deletes, temporaries included) as N_total; then, for every
N in 1..N_total (or K of them spread evenly with --sample), a fresh copy of the same starting
repository, the operation SIGKILLed the moment event N is read, `check --read-data`, and every
snapshot restored and compared byte-exact with its source. Failing trials are kept under the work
directory. Results go to bench/results/kill_points-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the kill harness the tests use

from ffharness import freezeframe_executable  # noqa: E402
from killharness import OPERATIONS, OperationReport, run_operation  # noqa: E402


def _table(reports: list[OperationReport]) -> str:
    lines = [
        "| operation | N_total | kill points | landed | check failures | restore mismatches "
        "| events past the kill (max) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        overshoot = max((t.run.events_after_kill for t in r.trials), default=0)
        lines.append(
            f"| {r.name} | {r.n_total} | {len(r.trials)} | {r.landed} | {r.check_failures} "
            f"| {r.restore_mismatches} | {overshoot} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def _version() -> str:
    done = subprocess.run(
        [freezeframe_executable(), "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops",
        nargs="+",
        default=list(OPERATIONS),
        metavar="OP",
        help=f"operations (space- or comma-separated; default all: {', '.join(OPERATIONS)})",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--every", action="store_true", help="every kill point (the default)")
    which.add_argument("--sample", type=int, metavar="K", help="K kill points per operation")
    parser.add_argument("--work", type=Path, default=PROJECT / "bench" / "work" / "kill_points")
    parser.add_argument("--json", type=Path, help="default bench/results/kill_points-<time>.json")
    args = parser.parse_args()
    names = [name for item in args.ops for name in item.split(",") if name]
    if unknown := [n for n in names if n not in OPERATIONS]:
        sys.exit(f"unknown operation(s): {', '.join(unknown)} (from {', '.join(OPERATIONS)})")
    if args.sample is not None and args.sample < 1:
        sys.exit("--sample needs at least 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"kill_points-{stamp}.json"
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)

    reports = []
    for name in names:
        print(f"{name}: {' '.join(OPERATIONS[name].argv)}", flush=True)
        report = run_operation(
            OPERATIONS[name],
            args.work / name,
            sample=args.sample,
            progress=lambda line: print(line, flush=True),
        )
        reports.append(report)
        for failure in report.failures():
            print(f"!!! {failure}", file=sys.stderr, flush=True)
        if not report.failures():  # keep only what reproduces a failure
            shutil.rmtree(args.work / name)

    table = _table(reports)
    print("\n" + table)
    failures = [f for r in reports for f in r.failures()]
    doc = {
        "started": stamp,
        "command": sys.argv,
        "freezeframe": _version(),
        "cpus": os.cpu_count(),
        "settings": {"operations": names, "sample": args.sample, "work": str(args.work)},
        "results": [r.to_json() for r in reports],
        "failures": failures,
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwritten to {out}")
    if failures:
        print(f"{len(failures)} trials left a damaged repository (kept under {args.work})")
    else:
        args.work.rmdir()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
