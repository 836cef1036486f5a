"""Which client the S3 backend is built on, measured: boto3 (botocore) against obstore (Rust's
object_store), each putting and then getting 1,000 objects of 4 KiB and 20 objects of 16 MiB
(a pack's default size) on ``rclone serve s3`` over a temporary directory (the test suite's
server, tests/servers/rclone_s3.py), with THREADS requests in flight as the repository's
uploaders and readers keep them. Both are configured as the backend would ship them: one
single PUT per object (no multipart), boto3 with the backend's own client settings and
Content-MD5 (and once without it, to show what the digest costs); path-style requests; no
retries. obstore is not a dependency of freezeframe: `pip install obstore` to compare.

Per client and phase: the median of ROUNDS rounds in objects/s and MB/s (10^6 bytes), and the
CPU this process spent per object (the client's cost, since the server runs in another
process on the same two cores). Also what importing each client and making its first client
costs in a fresh interpreter (every command pays it once).

Usage: python bench/s3_clients.py [--threads 8] [--rounds 3] [--small 1000] [--large 20]
                                  [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
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

from servers.base import REGION, S3Server  # noqa: E402
from servers.rclone_s3 import rclone_s3  # noqa: E402

KiB, MiB = 1024, 1024 * 1024


class Client:
    """put and get of whole objects by key, in one bucket."""

    name = ""

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError


class Boto3(Client):
    """botocore configured as freezeframe.storage.s3 configures it, Content-MD5 included."""

    name = "boto3"

    def __init__(self, server: S3Server, bucket: str) -> None:
        from freezeframe.storage.s3 import S3Storage

        self.bucket = bucket
        self.client = S3Storage(f"{server.endpoint}/{bucket}", env=server.env())._client

    def put(self, key: str, data: bytes) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5)

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data


class Boto3NoMd5(Boto3):
    """The same client without Content-MD5: what the digest costs on puts."""

    name = "boto3-nomd5"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)


class Obstore(Client):
    """obstore's S3Store: plain HTTP allowed, a pool as large, no retries, single PUTs."""

    name = "obstore"

    def __init__(self, server: S3Server, bucket: str) -> None:
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        self.store = S3Store(
            bucket,
            endpoint=server.endpoint,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
            region=REGION,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "pool_max_idle_per_host": "32"},
            retry_config={"max_retries": 0},
        )

    def put(self, key: str, data: bytes) -> None:
        self.obstore.put(self.store, key, data, use_multipart=False)

    def get(self, key: str) -> bytes:
        return bytes(self.obstore.get(self.store, key).bytes())


CLIENTS: dict[str, Callable[[S3Server, str], Client]] = {
    "boto3": Boto3,
    "boto3-nomd5": Boto3NoMd5,
    "obstore": Obstore,
}

COLD = {
    "boto3-nomd5": "",
    "boto3": (
        "from freezeframe.storage.s3 import S3Storage; "
        "S3Storage('http://127.0.0.1:9/b', env={'AWS_ACCESS_KEY_ID': 'a', "
        "'AWS_SECRET_ACCESS_KEY': 'b'})"
    ),
    "obstore": (
        "from obstore.store import S3Store; S3Store('b', endpoint='http://127.0.0.1:9', "
        "access_key_id='a', secret_access_key='b', region='us-east-1', "
        "client_options={'allow_http': True})"
    ),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _phase(threads: int, fn: Callable[[int], Any], count: int, size: int) -> dict[str, float]:
    """``fn(i)`` for i < count on ``threads`` threads: rates and CPU per object."""
    cpu, start = _cpu(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, range(count)))
    wall, spent = time.perf_counter() - start, _cpu() - cpu
    return {
        "wall_s": wall,
        "objects_per_s": count / wall,
        "mb_per_s": count * size / wall / 1e6,
        "cpu_ms_per_object": spent * 1000 / count,
    }


def measure(client: Client, threads: int, count: int, size: int, rounds: int) -> dict[str, Any]:
    payloads = [os.urandom(size) for _ in range(count)]
    keys = [f"{size}/{i:05d}" for i in range(count)]
    results: dict[str, list[dict[str, float]]] = {"put": [], "get": []}
    for _ in range(rounds):
        results["put"].append(
            _phase(threads, lambda i: client.put(keys[i], payloads[i]), count, size)
        )

        def check(i: int) -> None:
            if client.get(keys[i]) != payloads[i]:
                raise AssertionError(f"{client.name}: {keys[i]} came back different")

        results["get"].append(_phase(threads, check, count, size))
    return {
        op: {
            field: statistics.median(r[field] for r in runs)
            for field in ("objects_per_s", "mb_per_s", "cpu_ms_per_object")
        }
        for op, runs in results.items()
    }


def cold_start(name: str) -> float | None:
    """Seconds to import the client and make one, in a fresh interpreter (best of three)."""
    if not COLD[name]:
        return None
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD[name]], check=True)
        best = min(best, time.perf_counter() - start)
    base = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        base = min(base, time.perf_counter() - start)
    return best - base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000, help="objects of 4 KiB")
    parser.add_argument("--large", type=int, default=20, help="objects of 16 MiB")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = [n for n in args.clients.split(",") if n]

    report: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "clients": {}}
    with tempfile.TemporaryDirectory(dir=args.work) as work, rclone_s3(Path(work)) as server:
        report["server"] = subprocess.run(
            [str(Path(sys.executable).parent / "rclone"), "version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()[0]
        for name in names:
            bucket = f"bench-{name}"
            server.client().create_bucket(Bucket=bucket)
            try:
                client = CLIENTS[name](server, bucket)
            except ImportError as exc:
                print(f"{name}: not measured ({exc})", file=sys.stderr)
                continue
            report["clients"][name] = {
                "cold_start_s": cold_start(name),
                "4KiB": measure(client, args.threads, args.small, 4 * KiB, args.rounds),
                "16MiB": measure(client, args.threads, args.large, 16 * MiB, args.rounds),
            }

    print(f"{report['server']}, {args.threads} threads, median of {args.rounds} rounds")
    print(f"{'client':11} {'objects':9} {'op':4} {'objects/s':>10} {'MB/s':>8} {'CPU ms/obj':>11}")
    for name, result in report["clients"].items():
        for size, count in (("4KiB", args.small), ("16MiB", args.large)):
            for op in ("put", "get"):
                r = result[size][op]
                print(
                    f"{name:11} {f'{count}x{size}':9} {op:4} {r['objects_per_s']:10.1f} "
                    f"{r['mb_per_s']:8.1f} {r['cpu_ms_per_object']:11.2f}"
                )
        if result["cold_start_s"] is not None:
            print(f"{name:11} import and first client: {result['cold_start_s'] * 1000:.0f} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
