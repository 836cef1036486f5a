"""Application-aware backups of SQLite on a real loop btrfs, with a money-transfer workload
running flat out: every restore passes `PRAGMA integrity_check`, keeps the total balance, and
opens with nothing to recover (no hot journal; in WAL mode every committed frame already in the
database file). A SIGKILL while the database is held releases its lock at once.
FREEZEFRAME_APPLICATION_TRIALS sets the number of backups (default 10)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem
from sqlitefixtures import TOTAL, create_bank, transfer_workload

TRIALS = int(os.environ.get("FREEZEFRAME_APPLICATION_TRIALS", "10"))


def _needs_recovery(db_file: Path) -> bool:
    """Whether opening the restored file has anything to roll back or to take from the WAL."""
    journal = db_file.with_name(db_file.name + "-journal")
    if journal.exists() and journal.stat().st_size > 0:
        return True
    wal = db_file.with_name(db_file.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return False
    before = db_file.read_bytes()
    probe = sqlite3.connect(db_file)  # a scratch copy: checkpointing it changes nothing else
    probe.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    probe.close()
    return db_file.read_bytes() != before


def _restored_state(db_file: Path) -> tuple[str, int]:
    db = sqlite3.connect(db_file)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        total = db.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
    finally:
        db.close()
    return check, total


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
@pytest.mark.parametrize("level", ["application", "crash"])
def test_sqlite_restores_clean_and_balanced_under_transfers(
    repo: Path, cli: Cli, tmp_path: Path, journal_mode: str, level: str
) -> None:
    with loop_filesystem(tmp_path, "btrfs", size_mib=1024) as mnt:
        db_file = mnt / "bank.db"
        create_bank(db_file, journal_mode)
        recovered = 0
        with transfer_workload(db_file, journal_mode):
            for trial in range(TRIALS):
                args = ["backup", mnt, "--consistency", level]
                if level == "application":
                    args += ["--quiesce", f"sqlite:{db_file}"]
                result = cli(*args)
                record = result["consistency"]
                assert record["achieved"] == level
                target = tmp_path / f"restore-{trial}"
                cli("restore", result["snapshot_id"][:12], "--target", target)
                restored = target / str(db_file).lstrip("/")
                needed = _needs_recovery(restored)
                recovered += needed
                assert _restored_state(restored) == ("ok", TOTAL)
                if level == "application":
                    assert not needed, "an application-aware restore needed recovery"
                    (held,) = record["quiesce"]["quiescers"]
                    assert held["kind"] == "sqlite" and held["result"] == "ok"
                    assert held["positions"]["journal_mode"] == journal_mode
                subprocess.run(["rm", "-rf", str(target)], check=True)
    print(f"sqlite {journal_mode}, {level}: {recovered} of {TRIALS} restores needed recovery")


def test_sigkill_while_sqlite_is_held_releases_the_lock_at_once(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        db_file = mnt / "bank.db"
        create_bank(db_file, "wal")
        backup = spawn_freezeframe(
            "backup",
            mnt,
            "--quiesce",
            f"sqlite:{db_file}",
            repo=repo,
            env=hold_env(Point.APPLICATIONS_HELD, 30),
        )
        writer = sqlite3.connect(db_file, isolation_level=None, timeout=0)
        deadline = time.monotonic() + 30
        while True:  # wait until freezeframe holds the write lock
            try:
                writer.execute("BEGIN IMMEDIATE")
                writer.execute("ROLLBACK")
            except sqlite3.OperationalError:
                break
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, "the database was never held"
            time.sleep(0.01)
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        writer.execute("PRAGMA busy_timeout = 1000")
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE accounts SET balance = balance WHERE id = 1")
        writer.execute("COMMIT")
        assert time.monotonic() - killed < 1.0
        writer.close()


def test_a_quiescer_that_cannot_hold_fails_the_run_or_degrades(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        failed = cli("backup", mnt, "--quiesce", f"sqlite:{mnt / 'missing.db'}", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert "missing.db is not a database file" in failed["error"]["message"]
        degraded = cli(
            "backup", mnt, "--quiesce", f"sqlite:{mnt / 'missing.db'}", "--fallback", "degrade"
        )
        assert degraded["consistency"]["achieved"] == "filesystem"
        assert "degraded to filesystem" in cli.stderr
        assert cli("backup", mnt, "--quiesce", "nosuch:x", expect=2)["error"]["code"] == "usage"
