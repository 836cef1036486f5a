"""``freezeframe copy`` local -> local: the first copy of one snapshot of the mixed dataset
(MB/s of the snapshot's bytes) and the second copy, which finds it copied and adds nothing.

Usage: python bench/copy_repo.py [--size 200M] [--work DIR]
(run with the freezeframe under test on PYTHONPATH / in the venv)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dataset as ds_mod

DEFAULT_WORK = Path(__file__).resolve().parent / "work"
FAST_INIT = ["init", "--argon2-memory", "8", "--argon2-time", "1"]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ff(
    repo: Path, *args: str | Path, env: dict[str, str]
) -> tuple[dict[str, object], float, float]:
    """The command's JSON, its wall time and its CPU time (a shared machine's wall time
    varies with its load; the CPU time much less)."""
    argv = [sys.executable, "-m", "freezeframe", "--repo", str(repo), "--json", "--no-progress"]
    start, cpu = time.monotonic(), _cpu()
    done = subprocess.run(
        [*argv, *map(str, args)], env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"freezeframe {' '.join(map(str, args))}: {done.stderr.strip()}")
    return json.loads(done.stdout), elapsed, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="200M")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    ds = ds_mod.ensure_mixed(args.work, ds_mod.parse_size(args.size))
    place = args.work / "copy"
    shutil.rmtree(place, ignore_errors=True)
    place.mkdir(parents=True)
    env = {
        **os.environ,
        "FREEZEFRAME_PASSWORD": "bench",
        "FREEZEFRAME_FROM_PASSWORD": "bench-source",
        "XDG_CACHE_HOME": str(place / "cache"),
    }
    source_env = {**env, "FREEZEFRAME_PASSWORD": "bench-source"}
    source, target = place / "source", place / "target"
    _ff(source, *FAST_INIT, env=source_env)
    backup, backup_s, _ = _ff(source, "backup", ds.root, env=source_env)
    _ff(target, *FAST_INIT, "--copy-chunker-params", "--from-repo", source, env=env)
    os.sync()  # the backup's writes are not the copy's
    first, first_s, first_cpu = _ff(target, "copy", "--from-repo", source, env=env)
    second, second_s, second_cpu = _ff(target, "copy", "--from-repo", source, env=env)
    mb = ds.bytes / 1e6
    print(
        json.dumps(
            {
                "dataset_bytes": ds.bytes,
                "files": ds.files,
                "backup_s": round(backup_s, 2),
                "backup_MB_s": round(mb / backup_s, 1),
                "copy_s": round(first_s, 2),
                "copy_MB_s": round(mb / first_s, 1),
                "copy_cpu_s": round(first_cpu, 2),
                "copy_blobs_added": first["blobs_added"],
                "copy_bytes_written": first["bytes_written"],
                "second_copy_s": round(second_s, 2),
                "second_copy_cpu_s": round(second_cpu, 2),
                "second_copy_blobs_added": second["blobs_added"],
                "snapshot": backup["snapshot_id"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
