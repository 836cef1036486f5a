"""A throwaway Redis for tests and benchmarks: ``redis-server`` on a data directory the caller
chooses (a loop volume), on a short unix socket only, no TCP; and the money-transfer workload
(MULTI/EXEC transfers between ``ACCOUNTS`` keys, counted in the key ``transfers``) running flat
out. Shared by tests/system/test_application_redis.py and bench/freeze_window.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from ffharness import privileged_required

ACCOUNTS = 1000
TOTAL = ACCOUNTS * 1000

TRANSFERS = f"""
import random, redis, sys
r = redis.Redis(unix_socket_path=sys.argv[1])
while True:
    a, b = random.sample(range({ACCOUNTS}), 2)
    x = random.randint(1, 100)
    p = r.pipeline(transaction=True)
    p.decrby(f"acct:{{a}}", x)
    p.incrby(f"acct:{{b}}", x)
    p.incr("transfers")
    p.execute()
"""


@contextmanager
def redis_server(data_dir: Path, appendonly: bool) -> Iterator[Path]:
    """A redis-server on ``data_dir``, listening on a unix socket only; yields the socket."""
    if shutil.which("redis-server") is None:
        privileged_required("redis-server is not installed (make setup installs it)")
    sockets = Path(tempfile.mkdtemp(prefix="ffr", dir="/tmp"))  # socket paths must be short
    socket = sockets / "redis.sock"
    argv = [
        "redis-server", "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--dir", str(data_dir), "--save", "", "--appendonly", "yes" if appendonly else "no",
        "--logfile", str(sockets / "log"),
    ]  # fmt: skip
    server = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert server.poll() is None, (sockets / "log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.01)
        client = redis.Redis(unix_socket_path=str(socket))
        while True:  # the socket exists before the server listens, and loads before it serves
            try:
                if client.ping():
                    break
            except (redis.BusyLoadingError, redis.ConnectionError):
                assert server.poll() is None, (sockets / "log").read_text()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.01)
        client.close()
        yield socket
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(sockets, ignore_errors=True)


@contextmanager
def transfer_workload(socket: Path) -> Iterator[None]:
    """The TRANSFERS workload against the server on ``socket`` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", TRANSFERS, str(socket)])
    try:
        time.sleep(0.3)
        yield
        assert proc.poll() is None, "the workload died"
    finally:
        proc.kill()
        proc.wait()
