"""What ``freezeframe serve`` costs a backup: the first backup of the mixed dataset (text, binary
and small files, duplicates; bench/dataset.py) into a local directory directly, then into a
local directory through ``freezeframe serve`` on loopback (the test suite's server,
tests/servers/rest.py, an ``append`` account), and ``check --read-data`` of each. Each is a fresh
repository; the files cache is cleared before every run, so both read and chunk everything.
Client and server share the machine's cores, as a server fronting a local disk would.

Usage: python bench/rest_server.py [--size 200M] [--rounds 2] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))
sys.path.insert(0, str(PROJECT / "bench"))

from dataset import ensure_mixed, parse_size  # noqa: E402
from servers.rest import rest_server  # noqa: E402

PASSWORD = "bench password"
FAST_INIT = ["init", "--argon2-memory", "8", "--argon2-time", "1"]


def _freezeframe() -> str:
    candidate = Path(sys.executable).parent / "freezeframe"
    return str(candidate) if candidate.exists() else "freezeframe"


def _run(location: str, args: list[str], env: dict[str, str], cache: Path) -> float:
    """Seconds one CLI run takes (it must succeed)."""
    shutil.rmtree(cache, ignore_errors=True)
    full = {
        **os.environ,
        **env,
        "FREEZEFRAME_REPOSITORY": location,
        "FREEZEFRAME_PASSWORD": PASSWORD,
        "XDG_CACHE_HOME": str(cache),
    }
    start = time.perf_counter()
    result = subprocess.run(
        [_freezeframe(), "--no-progress", *args],
        env=full,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"freezeframe {' '.join(args)} failed:\n{result.stderr}")
    return elapsed


def _round(kind: str, work: Path, source: Path) -> tuple[float, float]:
    """(backup seconds, check --read-data seconds) into a fresh repository."""
    place = work / f"repo-{kind}"
    shutil.rmtree(place, ignore_errors=True)
    cache = work / "cache"
    if kind == "local":
        location, env = str(place), {}
        _run(location, FAST_INIT, env, cache)
        return _run(location, ["backup", str(source)], env, cache), _run(
            location, ["check", "--read-data"], env, cache
        )
    served = work / "served"
    shutil.rmtree(served, ignore_errors=True)
    with rest_server(served, str(place)) as server:
        env = server.env("host")
        _run(server.location, FAST_INIT, env, cache)
        backup = _run(server.location, ["backup", str(source)], env, cache)
        check = _run(server.location, ["check", "--read-data"], env, cache)
    return backup, check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ff-bench-rest-"))
    dataset = ensure_mixed(work, parse_size(args.size))
    megabytes = dataset.bytes / 1e6
    results = {}
    for kind in ("local", "rest"):
        rounds = [_round(kind, work, dataset.root) for _ in range(args.rounds)]
        backup = statistics.median(r[0] for r in rounds)
        check = statistics.median(r[1] for r in rounds)
        results[kind] = {
            "backup_s": round(backup, 2),
            "backup_MBps": round(megabytes / backup, 1),
            "check_read_data_s": round(check, 2),
        }
        print(
            f"{kind:6} backup {backup:6.2f} s  {megabytes / backup:6.1f} MB/s   "
            f"check --read-data {check:6.2f} s",
            flush=True,
        )
    doc = {"dataset": {"files": dataset.files, "bytes": dataset.bytes}, **results}
    print(json.dumps(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
