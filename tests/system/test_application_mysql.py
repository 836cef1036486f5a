"""Application-aware backups of MariaDB on a real loop btrfs, with InnoDB money transfers and
MyISAM updates running flat out: every restored server starts on its own, keeps the total,
passes CHECK TABLE ... EXTENDED, holds at least the transfers committed before the backup began,
and its InnoDB data and binary log agree (one GTID per transfer). At `application` the restore is
clean (see CLEAN below: nothing in doubt, no MyISAM table to check) and ends exactly at the
binary log position recorded in the snapshot; at `crash`, for contrast, what recovery had to do
is counted and printed. A SIGKILL while commits wait releases them within a second; a stopped
freezeframe's hold is ended by the server. FREEZEFRAME_APPLICATION_TRIALS sets the number of
backups (default 10)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest

from ffharness import Cli, hold_env, parse_json, spawn_freezeframe
from freezeframe.hooks import Point
from freezeframe.quiesce.mysql import READ_LOCK, MysqlQuiescer
from fsfixtures import loop_filesystem, shared_workdir
from mariadbfixtures import MariaDB, mariadb_server

TRIALS = int(os.environ.get("FREEZEFRAME_APPLICATION_TRIALS", "10"))
ACCOUNTS = 1000
TOTAL = ACCOUNTS * 1000
TRANSFER_WRITERS = 2
NOTES = 100

SCHEMA = [
    "CREATE DATABASE bank",
    "CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE bank.counter (id INT PRIMARY KEY, transfers BIGINT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE bank.notes (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=MyISAM",
    "INSERT INTO bank.counter VALUES (1, 0)",
    f"INSERT INTO bank.accounts SELECT seq, 1000 FROM bank.seq_0_to_{ACCOUNTS - 1}",
    f"INSERT INTO bank.notes SELECT seq, 0 FROM bank.seq_0_to_{NOTES - 1}",
]

# Each transfer is one transaction, so one GTID in the binary log: the counter and the log agree
# in any consistent image. Rows are locked in id order, so the writers never deadlock.
TRANSFERS = f"""
import random, sys, pymysql
db = pymysql.connect(unix_socket=sys.argv[1], user="root", database="bank")
cur = db.cursor()
while True:
    a, b = sorted(random.sample(range({ACCOUNTS}), 2))
    x = random.randint(-100, 100)
    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (x, a))
    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (x, b))
    cur.execute("UPDATE counter SET transfers = transfers + 1 WHERE id = 1")
    db.commit()
"""
# Non-transactional writes, kept out of the binary log (they would add GTIDs of their own).
NOTE_UPDATES = f"""
import random, sys, pymysql
db = pymysql.connect(unix_socket=sys.argv[1], user="root", database="bank", autocommit=True)
cur = db.cursor()
cur.execute("SET SESSION sql_log_bin = 0")
while True:
    cur.execute("UPDATE notes SET n = n + 1 WHERE id = %s", (random.randrange({NOTES}),))
"""

# What a restored server's error log says recovery did, by kind. At `application` only the first
# three may appear: the image is that of a running server, so InnoDB replays redo from its last
# checkpoint (data pages are not flushed for the snapshot) and rolls back the transactions that
# were open and not committing, and the binary log, marked in use, drives the server's crash
# recovery, which finds nothing to decide.
RECOVERY = {
    "redo replayed": r"InnoDB: Starting crash recovery from checkpoint",
    "open transactions rolled back": r"InnoDB: Rolled back recovered transaction|"
    r"transaction\(s\) which must be rolled back",
    "binlog crash recovery": r"Recovering after a crash using",
    "transactions in doubt": r"Found \d+ prepared transaction|in prepared state|"
    r"XA prepared state",
    "MyISAM tables checked": r"Checking table|marked as crashed|Recovering table|"
    r"Auto-recovering|Warning.*not closed properly",
    "Aria recovery": r"Aria engine: starting recovery|Aria.*recovered",
}
CLEAN = ("redo replayed", "open transactions rolled back", "binlog crash recovery")


@contextmanager
def _volume(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A loop btrfs mounted where user mysql can reach it, and a directory beside it for the
    restores (pytest's tmp_path is not reachable by mysql)."""
    with (
        shared_workdir("ffm") as base,
        loop_filesystem(base, "btrfs", size_mib=1024, image_dir=tmp_path) as mnt,
    ):
        yield mnt, base


def _query(db: pymysql.connections.Connection[Any], sql: str) -> tuple[tuple[Any, ...], ...]:
    with db.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchall())


def _seq(gtid_pos: str) -> int:
    """The sequence number of domain 0 in a GTID position like ``0-1-1234``."""
    for gtid in gtid_pos.split(","):
        domain, _server, seq = gtid.strip().split("-")
        if domain == "0":
            return int(seq)
    return 0


@contextmanager
def _workload(server: MariaDB) -> Iterator[None]:
    scripts = [TRANSFERS] * TRANSFER_WRITERS + [NOTE_UPDATES]
    procs = [subprocess.Popen([sys.executable, "-c", s, str(server.socket)]) for s in scripts]
    try:
        time.sleep(0.5)
        yield
        assert all(p.poll() is None for p in procs), "the workload died"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _restored_state(datadir: Path) -> dict[str, Any]:
    """Start a server on a restored data directory, read it, and what its log says it did."""
    with mariadb_server(datadir) as server:
        db = server.connect(database="bank")
        try:
            total, count = _query(db, "SELECT SUM(balance), COUNT(*) FROM accounts")[0]
            transfers = _query(db, "SELECT transfers FROM counter")[0][0]
            _query(db, "SELECT SUM(n) FROM notes")  # a first open, as an application's
            check = _query(db, "CHECK TABLE accounts, counter, notes EXTENDED")
            gtid = _query(db, "SELECT @@gtid_binlog_pos")[0][0]
        finally:
            db.close()
        log = server.log()
    lines = [
        (kind, line)
        for line in log.splitlines()
        for kind, pattern in RECOVERY.items()
        if re.search(pattern, line)
    ]
    return {
        "total": int(total),
        "accounts": int(count),
        "transfers": int(transfers),
        "check": [(row[0], row[2], row[3]) for row in check],
        "seq": _seq(str(gtid)),
        "gtid": str(gtid),
        "recovery": Counter(kind for kind, _line in lines),
        "lines": lines,
        "log": log,
    }


def _clean_check(check: list[tuple[str, str, str]]) -> bool:
    return all(kind == "status" and text == "OK" for _table, kind, text in check)


@pytest.mark.parametrize("level", ["application", "crash"])
def test_mariadb_restores_balanced_checked_and_in_step_with_its_binlog(
    repo: Path, cli: Cli, tmp_path: Path, level: str
) -> None:
    with _volume(tmp_path) as (mnt, base):
        datadir = mnt / "mysql"
        with mariadb_server(datadir, fresh=True) as server:
            setup = server.connect(autocommit=True)
            for sql in SCHEMA:
                _query(setup, sql)
            first_seq = _seq(str(_query(setup, "SELECT @@gtid_binlog_pos")[0][0]))
            recovered: Counter[str] = Counter()  # restores whose log shows each kind
            unclean_checks = 0
            kept: list[int] = []
            timings: list[dict[str, float]] = []
            with _workload(server):
                for trial in range(TRIALS):
                    done_before = int(_query(setup, "SELECT transfers FROM bank.counter")[0][0])
                    args = ["backup", datadir, "--consistency", level]
                    if level == "application":
                        args += ["--quiesce", f"mysql:{server.url}"]
                    result = cli(*args)
                    assert result["consistency"]["achieved"] == level
                    target = base / f"restore-{trial}"
                    cli("restore", result["snapshot_id"][:12], "--target", target)
                    restored = target / str(datadir).lstrip("/")
                    index = (restored / "binlog.index").read_text().split()
                    last_binlog = restored / Path(index[-1]).name
                    binlog_size = last_binlog.stat().st_size
                    state = _restored_state(restored)
                    assert (state["total"], state["accounts"]) == (TOTAL, ACCOUNTS)
                    assert state["transfers"] >= done_before, "acknowledged transfers were lost"
                    assert state["transfers"] == state["seq"] - first_seq, (
                        "InnoDB and the binary log disagree",
                        state["transfers"],
                        state["gtid"],
                    )
                    recovered.update(set(state["recovery"]))
                    kept.append(state["transfers"] - done_before)
                    if not _clean_check(state["check"]):
                        unclean_checks += 1
                        print(f"{level} trial {trial}: CHECK TABLE said {state['check']}")
                    if level == "application":
                        assert _clean_check(state["check"]), state["check"]
                        unclean = set(state["recovery"]) - set(CLEAN)
                        assert not unclean, [
                            line for kind, line in state["lines"] if kind in unclean
                        ]
                        (held,) = result["consistency"]["quiesce"]["quiescers"]
                        assert held["kind"] == "mysql" and held["result"] == "ok"
                        positions = held["positions"]
                        assert positions["method"] == "backup_stage"
                        assert Path(positions["datadir"]) == datadir
                        # The image ends exactly where the binary log stood while commits waited.
                        assert last_binlog.name == positions["binlog_file"]
                        assert binlog_size == positions["binlog_position"]
                        assert state["gtid"] == positions["gtid_binlog_pos"]
                        timings.append(
                            {"freeze": held["freeze_ms"], "held": held["pause_ms"]}
                            | positions["steps_ms"]
                        )
                    subprocess.run(["rm", "-rf", str(target)], check=True)
            setup.close()
    print(
        f"mariadb, {level}: of {TRIALS} restores, recovery did {dict(recovered)}; "
        f"{unclean_checks} had CHECK TABLE warnings; transfers committed while each backup ran "
        f"and kept: {kept}"
    )
    for name in timings[0] if timings else ():
        values = sorted(t[name] for t in timings)
        print(f"  {name} ms: min {values[0]}, median {values[len(values) // 2]}, max {values[-1]}")


def _commit(db: pymysql.connections.Connection[Any], wait_s: int) -> None:
    """One InnoDB transaction; its COMMIT waits at most ``wait_s`` (0: not at all) for the
    backup lock, then fails with error 1205."""
    _query(db, f"SET SESSION lock_wait_timeout = {wait_s}")
    try:
        _query(db, "BEGIN")
        _query(db, "UPDATE bank.counter SET transfers = transfers + 1 WHERE id = 1")
        _query(db, "COMMIT")
    except pymysql.err.OperationalError:
        _query(db, "ROLLBACK")
        raise


def _bank(server: MariaDB) -> pymysql.connections.Connection[Any]:
    db = server.connect(autocommit=True)
    for sql in SCHEMA:
        _query(db, sql)
    return db


def _wait_until_commits_block(db: pymysql.connections.Connection[Any], backup: Any) -> float:
    deadline = time.monotonic() + 30
    while True:
        try:
            _commit(db, 0)
        except pymysql.err.OperationalError as exc:
            assert exc.args[0] == 1205, exc
            return time.monotonic()
        assert backup.poll() is None, backup.communicate()
        assert time.monotonic() < deadline, "commits were never blocked"
        time.sleep(0.01)


def test_sigkill_while_mariadb_commits_wait_releases_them_within_a_second(
    repo: Path, tmp_path: Path
) -> None:
    with _volume(tmp_path) as (mnt, _base), mariadb_server(mnt / "mysql", fresh=True) as server:
        db = _bank(server)
        backup = spawn_freezeframe(
            "backup",
            mnt / "mysql",
            "--quiesce",
            f"mysql:{server.url}",
            repo=repo,
            env=hold_env(Point.APPLICATIONS_HELD, 30),
        )
        try:
            _wait_until_commits_block(db, backup)
        finally:
            backup.kill()
            backup.wait()
        killed = time.monotonic()
        _commit(db, 5)
        released = time.monotonic() - killed
        assert released < 1.0
        print(f"commits went on {released * 1000:.1f} ms after the SIGKILL")
        db.close()


def test_a_stopped_freezeframe_holds_mariadb_no_longer_than_the_cap_and_the_timeout(
    repo: Path, tmp_path: Path
) -> None:
    """SIGSTOP stops the cap's timer too; the session's wait_timeout ends the hold instead."""
    with _volume(tmp_path) as (mnt, _base), mariadb_server(mnt / "mysql", fresh=True) as server:
        db = _bank(server)
        backup = spawn_freezeframe(
            "backup",
            mnt / "mysql",
            "--quiesce",
            f"mysql:{server.url}",
            "--quiesce-cap",
            "3",
            "--quiesce-timeout",
            "1",
            repo=repo,
            env=hold_env(Point.APPLICATIONS_HELD, 30),
        )
        try:
            blocked = _wait_until_commits_block(db, backup)
            backup.send_signal(signal.SIGSTOP)
            _commit(db, 30)
            released = time.monotonic() - blocked
            assert backup.poll() is None, "freezeframe was not stopped"
        finally:
            backup.kill()
            backup.wait()
        # wait_timeout = cap 3 s + timeout 1 s + 1 s, counted from the end of the freeze.
        assert 2.0 < released < 7.0, released
        print(f"a stopped freezeframe's hold ended {released:.2f} s after commits blocked")
        db.close()


def test_a_session_killed_during_the_hold_fails_the_run(repo: Path, tmp_path: Path) -> None:
    with _volume(tmp_path) as (mnt, _base), mariadb_server(mnt / "mysql", fresh=True) as server:
        db = _bank(server)
        backup = spawn_freezeframe(
            "backup",
            mnt / "mysql",
            "--quiesce",
            f"mysql:{server.url}",
            repo=repo,
            json=True,
            env=hold_env(Point.APPLICATIONS_HELD, 3),
        )
        try:
            _wait_until_commits_block(db, backup)
            deadline = time.monotonic() + 10
            sessions: tuple[tuple[Any, ...], ...] = ()
            while not sessions:  # freezeframe's, once the freeze has read the positions
                assert time.monotonic() < deadline, "freezeframe's session never went idle"
                sessions = _query(
                    db,
                    "SELECT id FROM information_schema.PROCESSLIST"
                    " WHERE id <> CONNECTION_ID() AND command = 'Sleep'",
                )
            (session,) = sessions
            _query(db, f"KILL {session[0]}")
            _commit(db, 1)  # released at once
            out, err = backup.communicate(timeout=60)
        finally:
            backup.kill()
            backup.wait()
        assert backup.returncode == 1, (out, err)
        error = parse_json(out)["error"]
        assert error["code"] == "consistency_unreachable"
        assert "the session holding" in error["message"], error
        assert "ended before the thaw" in error["message"]
        assert "Traceback" not in err
        print(f"a killed session: {error['message']}")
        db.close()


def test_a_write_that_outlasts_the_timeout_fails_the_freeze_and_holds_nothing(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A statement writing a MyISAM table keeps BACKUP STAGE BLOCK_DDL waiting."""
    with _volume(tmp_path) as (mnt, _base), mariadb_server(mnt / "mysql", fresh=True) as server:
        db = _bank(server)
        slow = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import pymysql, sys; pymysql.connect(unix_socket=sys.argv[1], user='root')"
                ".cursor().execute('UPDATE bank.notes SET n = SLEEP(20) WHERE id = 1')",
                str(server.socket),
            ]
        )
        try:
            while not _query(
                db, "SELECT 1 FROM information_schema.PROCESSLIST WHERE info LIKE 'UPDATE%'"
            ):
                assert slow.poll() is None
                time.sleep(0.01)
            started = time.monotonic()
            failed = cli(
                "backup",
                mnt / "mysql",
                "--quiesce",
                f"mysql:{server.url}",
                "--quiesce-timeout",
                "1",
                expect=1,
            )
            took = time.monotonic() - started
            message = failed["error"]["message"]
            assert failed["error"]["code"] == "consistency_unreachable"
            assert "BACKUP STAGE BLOCK_DDL: Lock wait timeout exceeded" in message, message
            assert took < 5, took
            _commit(db, 0)  # commits and DDL go on: nothing is left held
            _query(db, "SET SESSION lock_wait_timeout = 1")
            _query(db, "CREATE TABLE bank.after (id INT) ENGINE=InnoDB")
        finally:
            slow.kill()
            slow.wait()
        db.close()


def test_the_read_lock_method_blocks_commits_and_adds_nothing_to_the_binlog() -> None:
    """FLUSH TABLES WITH READ LOCK, the MySQL method, run on MariaDB."""
    with shared_workdir("ffm") as base, mariadb_server(base / "mysql", fresh=True) as server:
        db = _bank(server)
        before = _query(db, "SELECT @@gtid_binlog_pos")[0][0]
        quiescer = MysqlQuiescer(server.url, method=READ_LOCK)
        quiescer.prepare(5, {})
        try:
            record = quiescer.freeze(5, 30)
            with pytest.raises(pymysql.err.OperationalError, match="Lock wait timeout"):
                _commit(db, 0)
            _query(db, "SET SESSION lock_wait_timeout = 0")
            with pytest.raises(pymysql.err.OperationalError, match="Lock wait timeout"):
                _query(db, "UPDATE bank.notes SET n = n + 1 WHERE id = 1")  # MyISAM too
        finally:
            quiescer.thaw(5)
        quiescer.thaw(5)  # a second thaw is harmless
        assert record["method"] == READ_LOCK
        assert set(record["steps_ms"]) == {"flush_tables", "read_lock", "flush_engine_logs"}
        status = _query(db, "SHOW MASTER STATUS")[0]
        assert (record["binlog_file"], record["binlog_position"]) == (status[0], status[1])
        assert record["gtid_binlog_pos"] == before  # the flushes wrote no GTID
        _commit(db, 0)
        db.close()


def test_mariadb_targets_and_their_errors(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """A URL with its password percent-encoded, or an option file; every failure one line,
    with no password in it."""
    with _volume(tmp_path) as (mnt, base), mariadb_server(mnt / "mysql", fresh=True) as server:
        db = server.connect(autocommit=True)
        for sql in (
            "CREATE USER backup@localhost IDENTIFIED BY 's3cret pass'",
            "GRANT RELOAD, BINLOG MONITOR ON *.* TO backup@localhost",
            "CREATE USER noreload@localhost IDENTIFIED BY 'x'",
            "GRANT BINLOG MONITOR ON *.* TO noreload@localhost",
            "CREATE USER nobinlog@localhost IDENTIFIED BY 'x'",
            "GRANT RELOAD ON *.* TO nobinlog@localhost",
        ):
            _query(db, sql)
        db.close()
        path, socket = mnt / "mysql", server.socket

        def fails(target: str) -> str:
            failed = cli("backup", path, "--quiesce", f"mysql:{target}", expect=1)
            assert failed["error"]["code"] == "consistency_unreachable"
            assert "Traceback" not in cli.stdout + cli.stderr
            message: str = failed["error"]["message"]
            assert "\n" not in message and "s3cret" not in message
            return message

        message = fails(f"mysql://root@localhost/?unix_socket={base}/none.sock")
        assert f"mysql: cannot reach mysql://root@localhost/?unix_socket={base}/none.sock" in (
            message
        )
        assert "No such file or directory" in message
        message = fails(f"mysql://backup:s3cret%20passX@localhost/?unix_socket={socket}")
        assert "Access denied for user 'backup'@'localhost' (using password: YES)" in message
        assert "mysql://backup:***@localhost" in message
        message = fails(f"mysql://noreload:x@localhost/?unix_socket={socket}")
        assert "noreload@localhost lacks the RELOAD privilege that BACKUP STAGE needs" in message
        message = fails(f"mysql://nobinlog:x@localhost/?unix_socket={socket}")
        assert "cannot read the binary log position" in message
        assert "BINLOG MONITOR" in message
        message = fails(str(base / "missing.cnf"))
        assert "is neither a mysql:// URL nor a readable option file" in message

        good = f"mysql://backup:s3cret%20pass@localhost/?unix_socket={socket}"
        result = cli("backup", path, "--quiesce", f"mysql:{good}")
        assert result["consistency"]["achieved"] == "application"
        assert "s3cret" not in json.dumps(result)
        (held,) = result["consistency"]["quiesce"]["quiescers"]
        assert held["target"] == f"mysql://backup:***@localhost/?unix_socket={socket}"

        options = base / "backup.cnf"
        options.write_text(
            f'[client]\nuser = backup\npassword = "s3cret pass"\nsocket = {socket}\n'
        )
        result = cli("backup", path, "--quiesce", f"mysql:{options}")
        assert result["consistency"]["achieved"] == "application"
        (held,) = result["consistency"]["quiesce"]["quiescers"]
        assert held["target"] == str(options) and held["positions"]["binlog_file"]
