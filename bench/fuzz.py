"""Run the parser fuzz tests (tests/unit/fuzz) with many more examples than CI does.

Usage: python bench/fuzz.py [--examples 20000] [--jobs N] [-k EXPR] [--json OUT]
                            [--memory-limit-gib 8] [--timeout-s 3600]

Each fuzz test runs in its own pytest process (``--jobs`` at a time) with
FREEZEFRAME_FUZZ_COLLECT=1, so an undocumented exception is recorded and the run goes on instead
of stopping at the first one. The address space of each process is limited, so an input that
makes a parser allocate a huge buffer shows up as a MemoryError rather than as the OOM killer.
Writes executions, outcomes and failures per parser to bench/results/fuzz-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "tests" / "unit" / "fuzz" / "test_fuzz_parsers.py"
RESULTS = ROOT / "bench" / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--examples", type=int, default=20_000, help="examples per fuzz test")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("-k", dest="select", default="", help="pytest -k expression")
    p.add_argument("--json", type=Path, help="default bench/results/fuzz-<date>.json")
    p.add_argument("--memory-limit-gib", type=float, default=8.0, help="per process; 0: none")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per fuzz test")
    return p.parse_args(argv)


def fuzz_tests(select: str) -> list[str]:
    """The node ids of the fuzz tests (marked ``fuzz``)."""
    argv = [sys.executable, "-m", "pytest", str(MODULE), "--collect-only", "-q", "-m", "fuzz"]
    argv += ["-p", "no:cacheprovider"] + (["-k", select] if select else [])
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "::" in line]


def _limit_memory(gib: float) -> Callable[[], None] | None:
    if gib <= 0:
        return None
    limit = int(gib * 2**30)
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_one(node: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One fuzz test in its own process; its tally, exit status and duration."""
    report = work / (node.rsplit("::", 1)[-1] + ".json")
    env = dict(os.environ)
    env.update(
        FREEZEFRAME_FUZZ_EXAMPLES=str(args.examples),
        FREEZEFRAME_FUZZ_COLLECT="1",
        FREEZEFRAME_FUZZ_REPORT=str(report),
    )
    argv = [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider"]
    argv += ["-o", f"timeout={int(args.timeout_s)}"]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory(args.memory_limit_gib),  # setrlimit only: safe with threads
        check=False,
    )
    took = time.monotonic() - started
    tally = json.loads(report.read_text()) if report.exists() else {}
    state = "ok" if proc.returncode == 0 else f"pytest exited {proc.returncode}"
    print(f"  {node.rsplit('::', 1)[-1]:<40} {took:7.1f} s  {state}", flush=True)
    return {
        "test": node,
        "exit_code": proc.returncode,
        "seconds": round(took, 1),
        "parsers": tally,
        "output_tail": proc.stdout.splitlines()[-15:] if proc.returncode else [],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    nodes = fuzz_tests(args.select)
    print(f"{len(nodes)} fuzz tests, {args.examples} examples each, {args.jobs} at a time")
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="freezeframe-fuzz-") as tmp,
        ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool,
    ):
        runs = list(pool.map(lambda n: run_one(n, args, Path(tmp)), nodes))
    parsers: dict[str, Any] = {}
    for run in runs:
        parsers.update(run["parsers"])
    import hypothesis

    doc = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "examples_per_test": args.examples,
            "jobs": args.jobs,
            "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_limit_gib": args.memory_limit_gib,
            "python": platform.python_version(),
            "hypothesis": hypothesis.__version__,
            "seconds": round(time.monotonic() - started, 1),
        },
        "parsers": dict(sorted(parsers.items())),
        "tests": [{k: v for k, v in r.items() if k != "parsers"} for r in runs],
    }
    out = args.json or RESULTS / f"fuzz-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\n{'parser':<36} {'executions':>10} {'rejected':>9} {'accepted':>9} {'failures':>8}")
    for name, t in doc["parsers"].items():
        failed = sum(f["count"] for f in t["failures"].values())
        print(f"{name:<36} {t['executions']:>10} {t['rejected']:>9} {t['accepted']:>9} {failed:>8}")
        for sig, f in t["failures"].items():
            print(f"    FAILURE {sig} x{f['count']}: {f['exception'][:100]}")
            print(f"      e.g. {f['sample'][:160]}")
    print(f"\nJSON written to {out} ({doc['meta']['seconds']} s)")
    failed = any(t["failures"] for t in parsers.values()) or any(r["exit_code"] for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
