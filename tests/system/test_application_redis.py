"""Application-aware backups of Redis on a real loop btrfs, with MULTI/EXEC transfers running
flat out: every restored instance loads every key, keeps the total, and holds at least the
writes made before the backup began; at `crash` an RDB-only instance restores stale (its last
save), for contrast. A SIGKILL while writes are paused releases them within a second.
FREEZEFRAME_APPLICATION_TRIALS sets the number of backups (default 10)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import redis

from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem
from redisfixtures import ACCOUNTS, TOTAL, redis_server, transfer_workload

TRIALS = int(os.environ.get("FREEZEFRAME_APPLICATION_TRIALS", "10"))


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
        with redis_server(mnt / "redis", appendonly) as socket:
            setup = redis.Redis(unix_socket_path=str(socket))
            setup.mset({f"acct:{i}": 1000 for i in range(ACCOUNTS)} | {"transfers": 0})
            setup.save()
            stale = 0
            with transfer_workload(socket):
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
                    with redis_server(restored, appendonly) as restored_socket:
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
        with redis_server(mnt / "redis", False) as socket:
            client = redis.Redis(unix_socket_path=str(socket), socket_timeout=0.2)
            backup = spawn_freezeframe(
                "backup",
                mnt / "redis",
                "--quiesce",
                f"redis:unix://{socket}",
                repo=repo,
                env=hold_env(Point.APPLICATIONS_HELD, 30),
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
