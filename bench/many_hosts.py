"""Many hosts beside a prune, at length: the trial of tests/system/test_many_hosts.py (two hosts
backing up into one bucket on SeaweedFS while a third forgets and prunes whenever a backup holds
its lock) with many rounds instead of CI's few, repeated, each trial's summary collected.

Usage: .venv/bin/python bench/many_hosts.py [--rounds 20] [--trials 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TEST = "tests/system/test_many_hosts.py::test_two_hosts_back_up_while_a_third_prunes"
SUMMARY = re.compile(
    r"many hosts: (?P<hosts>\d+) hosts x (?P<rounds>\d+) backups beside (?P<prunes>\d+) prunes; "
    r"packs marked (?P<marked>\d+), deleted (?P<deleted>\d+), named live again (?P<revived>\d+); "
    r"(?P<verified>\d+) snapshots restored byte-exact"
)


def _trial(rounds: int) -> dict[str, object]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"],
        cwd=PROJECT,
        env={**os.environ, "FREEZEFRAME_MANY_HOSTS_ROUNDS": str(rounds)},
        capture_output=True,
        text=True,
        check=False,
    )
    found = SUMMARY.search(proc.stdout + proc.stderr)
    result: dict[str, object] = {
        "ok": proc.returncode == 0 and found is not None,
        "seconds": round(time.monotonic() - started, 1),
    }
    if found is not None:
        result.update({key: int(value) for key, value in found.groupdict().items()})
    if not result["ok"]:
        result["output"] = (proc.stdout + proc.stderr)[-4000:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="backups per host (default 20)")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = []
    for number in range(1, args.trials + 1):
        result = _trial(args.rounds)
        results.append(result)
        print(f"trial {number}: {json.dumps({k: v for k, v in result.items() if k != 'output'})}")
        if not result["ok"]:
            print(result.get("output", ""), file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
