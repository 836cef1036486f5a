"""Application-aware backups of Redis on a real loop btrfs, with MULTI/EXEC transfers running
flat out: every restored instance loads every key, keeps the total, and holds at least the
writes made before the backup began; at `crash` an RDB-only instance restores stale (its last
save), for contrast. A SIGKILL while writes are paused releases them within a second.
FREEZEFRAME_APPLICATION_TRIALS sets the number of backups (default 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from ffharness import Cli, privileged_required, spawn_freezeframe
from fsfixtures import loop_filesystem

TRIALS = int(os.environ.get("FREEZEFRAME_APPLICATION_TRIALS", "10"))
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
def _redis_server(data_dir: Path, appendonly: bool) -> Iterator[Path]:
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
def _transfers(socket: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", TRANSFERS, str(socket)])
    try:
        time.sleep(0.3)
        yield
        assert proc.poll() is None, "the workload died"
    finally:
        proc.kill()
        proc.wait()


def _state(socket: Path) -> tuple[int, int, int]:
    client = redis.Redis(unix_socket_path=str(socket))
    try:
        keys = int(client.dbsize())
        total = sum(int(v) for v in client.mget([f"acct:{i}" for i in range(ACCOUNTS)]))
        return keys, total, int(client.get("transfers") or 0)
    finally:
        client.close()


@pytest.mark.parametrize("appendonly", [False, True], ids=["rdb", "aof"])
@pytest.mark.parametrize("level", ["application", "crash"])
def test_redis_restores_every_key_balanced_and_fresh(
    repo: Path, cli: Cli, tmp_path: Path, level: str, appendonly: bool
) -> None:
    with loop_filesystem(tmp_path, "btrfs", size_mib=1024) as mnt:
        (mnt / "redis").mkdir()
        with _redis_server(mnt / "redis", appendonly) as socket:
            setup = redis.Redis(unix_socket_path=str(socket))
            setup.mset({f"acct:{i}": 1000 for i in range(ACCOUNTS)} | {"transfers": 0})
            setup.save()
            stale = 0
            with _transfers(socket):
                for trial in range(TRIALS):
                    done_before = int(setup.get("transfers") or 0)
                    args = ["backup", mnt / "redis", "--consistency", level]
                    if level == "application":
                        args += ["--quiesce", f"redis:unix://{socket}"]
                    result = cli(*args)
                    assert result["consistency"]["achieved"] == level
                    target = tmp_path / f"restore-{trial}"
                    cli("restore", result["snapshot_id"][:12], "--target", target)
                    restored = target / str(mnt / "redis").lstrip("/")
                    with _redis_server(restored, appendonly) as restored_socket:
                        keys, total, transfers = _state(restored_socket)
                    assert (keys, total) == (ACCOUNTS + 1, TOTAL)
                    stale += transfers < done_before
                    if level == "application":
                        assert transfers >= done_before, "the restore lost acknowledged writes"
                    subprocess.run(["rm", "-rf", str(target)], check=True)
            setup.close()
    mode = "aof" if appendonly else "rdb"
    print(f"redis {mode}, {level}: {stale} of {TRIALS} restores lost writes made before the backup")


def test_sigkill_while_redis_writes_are_paused_releases_them_within_a_second(
    repo: Path, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "redis").mkdir()
        with _redis_server(mnt / "redis", False) as socket:
            client = redis.Redis(unix_socket_path=str(socket), socket_timeout=0.2)
            backup = spawn_freezeframe(
                "backup",
                mnt / "redis",
                "--quiesce",
                f"redis:unix://{socket}",
                repo=repo,
                env={"FREEZEFRAME_TEST_HOLD_APPLICATION_S": "30"},
            )
            deadline = time.monotonic() + 30
            while True:  # wait until a write blocks
                try:
                    client.set("probe", "1")
                except redis.TimeoutError:
                    break
                assert backup.poll() is None, backup.communicate()
                assert time.monotonic() < deadline, "writes were never paused"
                time.sleep(0.01)
            backup.kill()
            backup.wait()
            killed = time.monotonic()
            client = redis.Redis(unix_socket_path=str(socket), socket_timeout=5)
            client.set("probe", "2")
            assert time.monotonic() - killed < 1.0
            client.close()
