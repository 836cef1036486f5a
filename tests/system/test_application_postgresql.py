"""Application-aware backups of PostgreSQL 15 on a real loop btrfs, with pgbench running flat
out: every restored cluster starts in backup recovery from the backup's own label, replays its
WAL from the backup's start to its end record and nothing before, keeps pgbench's invariant
(accounts, tellers, branches and history sum to the same), holds every transaction committed
before the backup began, and passes pg_amcheck. At `crash` the same workload restores only
through crash recovery, for contrast. PostgreSQL is never paused: pgbench commits throughout
the hold, and a SIGKILL ends the backup with freezeframe's session.
FREEZEFRAME_APPLICATION_TRIALS sets the number of backups (default 10)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem, shared_workdir
from pgfixtures import (
    BIN,
    PgServer,
    amcheck,
    balances,
    pgbench,
    pgbench_init,
    postgres_server,
    recovery_of,
    require_postgresql,
    run_as_postgres,
)

TRIALS = int(os.environ.get("FREEZEFRAME_APPLICATION_TRIALS", "10"))


def _committed(server: PgServer) -> int:
    return int(server.psql("SELECT count(*) FROM pgbench_history"))


@pytest.mark.parametrize("level", ["application", "crash"])
def test_postgresql_restores_start_clean_and_balanced_under_pgbench(
    repo: Path, cli: Cli, level: str
) -> None:
    require_postgresql()
    crash_recoveries = 0
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=1024) as mnt:
        mnt.chmod(0o755)
        with postgres_server(mnt / "pg") as server:
            pgbench_init(server)
            with pgbench(server):
                for trial in range(TRIALS):
                    before = _committed(server)
                    args = ["backup", mnt / "pg", "--consistency", level]
                    if level == "application":
                        args += ["--quiesce", f"postgresql:{server.conninfo}"]
                    result = cli(*args)
                    assert result["consistency"]["achieved"] == level
                    target = work / f"restore-{trial}"
                    cli("restore", result["snapshot_id"][:12], "--target", target)
                    restored = target / str(mnt / "pg").lstrip("/")
                    if level == "crash":
                        # The live server's pid file came along; it is running, so the copy
                        # would refuse to start beside it (elsewhere it would not matter).
                        (restored / "postmaster.pid").unlink()
                    else:
                        assert not (restored / "postmaster.pid").exists()
                        assert (restored / "backup_label").exists()
                    with postgres_server(restored, fresh=False) as copy:
                        recovery = recovery_of(copy.log_text())
                        a, t, b, h = balances(copy)
                        assert a == t == b == h, f"trial {trial}: pgbench invariant broken"
                        assert _committed(copy) >= before, "the restore lost committed work"
                        amcheck(copy)
                    if level == "application":
                        positions = result["consistency"]["quiesce"]["quiescers"][0]["positions"]
                        assert recovery.backup_recovery and not recovery.crash_recovery, (
                            copy.log_text()
                        )
                        assert recovery.redo_start == positions["start_lsn"]
                        assert recovery.consistent_at == positions["stop_lsn"]
                    crash_recoveries += recovery.crash_recovery
                    subprocess.run(["rm", "-rf", str(target)], check=True)
    print(f"postgresql, {level}: {crash_recoveries} of {TRIALS} restores needed crash recovery")
    if level == "crash":
        assert crash_recoveries == TRIALS  # a snapshot of a running server is a crash image


def test_the_record_and_the_backup_hold_the_label_and_the_wal_to_its_end(
    repo: Path, cli: Cli
) -> None:
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=512) as mnt:
        mnt.chmod(0o755)
        with postgres_server(mnt / "pg") as server:
            pgbench_init(server)
            result = cli("backup", mnt / "pg", "--quiesce", f"postgresql:{server.conninfo}")
            assert result["consistency"]["achieved"] == "application"
            record = result["consistency"]["quiesce"]["quiescers"][0]
            assert record["kind"] == "postgresql" and record["result"] == "ok"
            positions = record["positions"]
            data_dir = str(mnt / "pg")
            assert positions["data_directory"] == data_dir
            assert f"START WAL LOCATION: {positions['start_lsn']}" in positions["backup_label"]
            assert record["files_left_out"] == [
                f"{data_dir}/postmaster.opts",
                f"{data_dir}/postmaster.pid",
            ]
            listed = cli("ls", result["snapshot_id"][:12], data_dir)
            nodes = {node["path"]: node for node in listed["nodes"]}
            label = nodes[f"{data_dir}/backup_label"]
            assert (label["user"], label["mode"]) == ("postgres", 0o600)
            assert f"{data_dir}/postmaster.pid" not in nodes
            for segment in positions["wal_segments"]:
                assert nodes[f"{data_dir}/pg_wal/{segment}"]["size"] == 16 * 1024 * 1024
            shown = cli("snapshots", json=False)
            assert "application" in shown


def _starts_from_its_label_balanced(restored: Path, stop_lsn: str) -> None:
    """The restored cluster starts in backup recovery (never crash recovery), is consistent
    at the backup's end record, and keeps pgbench's balances."""
    with postgres_server(restored, fresh=False) as copy:
        recovery = recovery_of(copy.log_text())
        assert recovery.backup_recovery and not recovery.crash_recovery
        assert recovery.consistent_at == stop_lsn
        a, t, b, h = balances(copy)
        assert a == t == b == h


def test_a_sql_ascii_cluster_reaches_application_and_restores_from_its_label(
    repo: Path, cli: Cli
) -> None:
    """initdb in the C locale (no LANG, as on many servers and in the LVM lab's guest) makes
    a SQL_ASCII cluster, whose text psycopg returns as bytes: its data directory and label
    must still come back as paths and text."""
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=512) as mnt:
        mnt.chmod(0o755)
        data_dir = mnt / "pg"
        data_dir.mkdir()
        shutil.chown(data_dir, "postgres", "postgres")
        data_dir.chmod(0o700)
        run_as_postgres(BIN / "initdb", "-D", data_dir, "-U", "postgres", "--auth=trust", "-N",
                        "-E", "SQL_ASCII", "--locale=C")  # fmt: skip
        with postgres_server(data_dir, fresh=False) as server:
            assert server.psql("SHOW server_encoding") == "SQL_ASCII"
            pgbench_init(server)
            result = cli("backup", data_dir, "--quiesce", f"postgresql:{server.conninfo}")
            assert result["consistency"]["achieved"] == "application"
            positions = result["consistency"]["quiesce"]["quiescers"][0]["positions"]
            assert positions["data_directory"] == str(data_dir)
            target = work / "restore"
            cli("restore", result["snapshot_id"][:12], "--target", target)
            restored = target / str(data_dir).lstrip("/")
            label = (restored / "backup_label").read_text()
            assert f"START WAL LOCATION: {positions['start_lsn']}" in label
            _starts_from_its_label_balanced(restored, positions["stop_lsn"])


def test_wal_on_a_volume_of_its_own_is_added_there_and_the_restore_starts_clean(
    repo: Path, cli: Cli
) -> None:
    """pg_wal a link to a second volume: both are snapshotted together, the WAL to the end of
    the backup is added in the WAL volume's directory, and the restore (its link pointed at
    the restored WAL, as anyone restoring beside the live server must) recovers from its
    label."""
    require_postgresql()
    with (
        shared_workdir() as work,
        loop_filesystem(work, "btrfs", size_mib=512, name="data") as data,
        loop_filesystem(work, "btrfs", size_mib=512, name="wal") as wal,
    ):
        data.chmod(0o755)
        wal.chmod(0o755)
        with postgres_server(data / "pg", wal_dir=wal / "pg_wal") as server:
            pgbench_init(server)
            with pgbench(server):
                result = cli(
                    "backup", data / "pg", wal / "pg_wal",
                    "--quiesce", f"postgresql:{server.conninfo}",
                )  # fmt: skip
                assert result["consistency"]["achieved"] == "application"
                assert len(result["consistency"]["volumes"]) == 2
                positions = result["consistency"]["quiesce"]["quiescers"][0]["positions"]
                added = result["consistency"]["quiesce"]["quiescers"][0]["files_added"]
                assert f"{wal}/pg_wal/{positions['wal_segments'][-1]}" in added
                target = work / "restore"
                cli("restore", result["snapshot_id"][:12], "--target", target)
                restored = target / str(data / "pg").lstrip("/")
                link = restored / "pg_wal"
                assert os.readlink(link) == str(wal / "pg_wal")
                link.unlink()
                link.symlink_to(target / str(wal / "pg_wal").lstrip("/"))
                _starts_from_its_label_balanced(restored, positions["stop_lsn"])


def test_sigkill_during_the_hold_ends_the_backup_and_writes_never_stop(repo: Path) -> None:
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=512) as mnt:
        mnt.chmod(0o755)
        with postgres_server(mnt / "pg") as server:
            pgbench_init(server)
            backend = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'freezeframe'"
                " AND query LIKE '%pg_backup_start%'"
            )
            with pgbench(server):
                backup = spawn_freezeframe(
                    "backup",
                    mnt / "pg",
                    "--quiesce",
                    f"postgresql:{server.conninfo}",
                    repo=repo,
                    env=hold_env(Point.APPLICATIONS_HELD, 30),
                )
                deadline = time.monotonic() + 30
                while server.psql(backend) != "1":
                    assert backup.poll() is None, backup.communicate()
                    assert time.monotonic() < deadline, "the backup never started"
                    time.sleep(0.05)
                during = _committed(server)
                time.sleep(1)
                assert _committed(server) > during, "pgbench stopped committing during the hold"
                backup.kill()
                backup.wait()
                killed = time.monotonic()
                while server.psql(backend) != "0":
                    assert time.monotonic() - killed < 1.0, (
                        "the backup session outlived freezeframe"
                    )
                    time.sleep(0.02)


def test_postgresql_errors_are_one_line_and_leave_no_backup_running(repo: Path, cli: Cli) -> None:
    require_postgresql()
    with shared_workdir() as work, loop_filesystem(work, "btrfs", size_mib=512) as mnt:
        mnt.chmod(0o755)
        (mnt / "other").mkdir()
        unreachable = cli(
            "backup", mnt / "other", "--quiesce", f"postgresql:host={work}/nowhere", expect=1
        )
        assert unreachable["error"]["code"] == "consistency_unreachable"
        assert unreachable["error"]["message"].startswith("postgresql: connection")
        assert "Traceback" not in cli.stderr
        with postgres_server(mnt / "pg") as server:
            outside = cli(
                "backup", mnt / "other", "--quiesce", f"postgresql:{server.conninfo}", expect=1
            )
            assert f"{mnt / 'pg'} is not inside the paths backed up" in outside["error"]["message"]
            assert server.psql("SELECT count(*) FROM pg_stat_activity WHERE "
                               "application_name = 'freezeframe'") == "0"  # fmt: skip
