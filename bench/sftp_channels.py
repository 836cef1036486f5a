"""How many SFTP channels the backend's pool should hold, measured: puts and then gets of
LARGE objects of 16 MiB (a pack's default size) and SMALL objects of 4 KiB through one
``SftpStorage`` from THREADS threads at once (as the repository's uploaders and readers call
it), for each pool size, against the test suite's sshd on loopback (tests/servers/sshd.py).
And a whole backup through the CLI of about 200 MB of mixed data (``--backup``): random
files, text that compresses, and duplicates that deduplicate.

Per pool size and phase: the median of ROUNDS rounds in MB/s (10^6 bytes) or objects/s, and
this process's CPU per MB (the client's cost: sshd runs on the same two cores).

Usage: python bench/sftp_channels.py [--threads 4] [--rounds 3] [--channels 1,2,4,8]
                                     [--large 12] [--small 400] [--backup] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the test suite's servers

from freezeframe.storage.base import Kind  # noqa: E402
from freezeframe.storage.sftp import SftpStorage  # noqa: E402
from servers.sshd import SshServer, sshd  # noqa: E402

KiB, MiB = 1024, 1024 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(threads: int, items: list[str], fn: Callable[[str], Any]) -> tuple[float, float]:
    cpu, start = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - start, _cpu() - cpu


def measure_pool(
    server: SshServer, work: Path, *, channels: int, threads: int, large: int, small: int
) -> dict[str, float]:
    root = work / f"repo-{channels}-{random.getrandbits(32):08x}"
    storage = SftpStorage(server.location(root), env=server.env(), channels=channels)
    storage.create_layout()
    pack = os.urandom(16 * MiB)
    big = [f"{i:02x}{os.urandom(31).hex()}" for i in range(large)]
    tiny = [f"{i % 256:02x}{os.urandom(31).hex()}" for i in range(small)]
    little = os.urandom(4 * KiB)
    result: dict[str, float] = {}
    seconds, cpu = _timed(threads, big, lambda n: storage.put(Kind.DATA, n, pack))
    mb = large * len(pack) / 1e6
    result |= {"put_MBps": mb / seconds, "put_cpu_s_per_MB": cpu / mb}
    seconds, cpu = _timed(threads, big, lambda n: storage.get(Kind.DATA, n))
    result |= {"get_MBps": mb / seconds, "get_cpu_s_per_MB": cpu / mb}
    seconds, _cpu_s = _timed(threads, tiny, lambda n: storage.put(Kind.DATA, n, little))
    result["small_put_per_s"] = small / seconds
    seconds, _cpu_s = _timed(threads, tiny, lambda n: storage.get(Kind.DATA, n, 100, 1000))
    result["small_ranged_get_per_s"] = small / seconds
    storage.close()
    shutil.rmtree(root)
    return result


def mixed_tree(root: Path, total: int) -> int:
    """About ``total`` bytes: 50% random, 35% text-like that compresses, 15% copies."""
    rng = random.Random(7)
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)
    ]
    written, i = 0, 0
    copies: list[bytes] = []
    while written < total:
        kind = i % 20
        if kind < 10:
            data = os.urandom(rng.randint(64 * KiB, 8 * MiB))
            if len(copies) < 8:
                copies.append(data)
        elif kind < 17:
            data = b" ".join(rng.choices(words, k=rng.randint(10_000, 400_000)))
        else:
            data = rng.choice(copies)
        path = root / f"d{i % 17}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
        i += 1
    return written


def measure_backup(server: SshServer, work: Path, total: int) -> dict[str, float]:
    """One backup of a fresh mixed tree to the server, and of the same tree to a local
    directory for comparison (the same machine, the same CPU spent on chunking and sealing)."""
    source = work / "source"
    size = mixed_tree(source, total)
    result = {"source_MB": size / 1e6}
    for name, root, location in [
        ("sftp", work / "backup-sftp", server.location(work / "backup-sftp")),
        ("local", work / "backup-local", str(work / "backup-local")),
    ]:
        env = {
            **os.environ,
            **server.env(),
            "FREEZEFRAME_REPOSITORY": location,
            "FREEZEFRAME_PASSWORD": "bench",
        }
        exe = str(Path(sys.executable).parent / "freezeframe")
        init = [exe, "--no-progress", "init", "--argon2-memory", "8", "--argon2-time", "1"]
        subprocess.run(init, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        backup = [exe, "--no-progress", "backup", str(source)]
        subprocess.run(backup, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in (root / "data").glob("*/*"))
        result |= {
            f"{name}_stored_MB": stored / 1e6,
            f"{name}_seconds": seconds,
            f"{name}_MBps": size / 1e6 / seconds,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", default="1,2,4,8")
    parser.add_argument("--large", type=int, default=12)
    parser.add_argument("--small", type=int, default=400)
    parser.add_argument("--backup", action="store_true")
    parser.add_argument("--backup-mb", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict[str, Any] = {"threads": args.threads, "pools": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "sshd").mkdir()
        with sshd(work / "sshd") as server:
            run(server, work, args, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def run(server: SshServer, work: Path, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Each pool size's medians, then the backup if asked; printed as they come."""
    for channels in [int(c) for c in args.channels.split(",")]:
        rounds = [
            measure_pool(
                server,
                work,
                channels=channels,
                threads=args.threads,
                large=args.large,
                small=args.small,
            )
            for _ in range(args.rounds)
        ]
        median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        report["pools"][channels] = median
        print(f"channels={channels}: " + ", ".join(f"{k}={v:.4g}" for k, v in median.items()))
    if args.backup:
        report["backup"] = measure_backup(server, work, args.backup_mb * 1_000_000)
        print("backup: " + ", ".join(f"{k}={v:.4g}" for k, v in report["backup"].items()))


if __name__ == "__main__":
    main()
