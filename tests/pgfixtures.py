"""Throwaway PostgreSQL servers for tests: initdb as the `postgres` user on a data directory the
test chooses (a loop volume), a unix socket in a short directory, no TCP; pgbench as the
workload; and a restored copy started and checked. PostgreSQL refuses to run as root, so every
server command runs through ``runuser -u postgres``, and the directories it uses must be
traversable by that user (see ``fsfixtures.shared_workdir``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ffharness import is_root, privileged_required

BIN = Path("/usr/lib/postgresql/15/bin")
CONNECT_WAIT_S = 60


@dataclass
class PgServer:
    data_dir: Path
    socket_dir: Path
    log: Path

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} dbname=postgres user=postgres"

    def psql(self, sql: str) -> str:
        """One query's result as unaligned text."""
        return run_as_postgres(
            BIN / "psql", "-h", self.socket_dir, "-d", "postgres", "-XAtq", "-v",
            "ON_ERROR_STOP=1", "-c", sql,
        ).strip()  # fmt: skip

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def require_postgresql() -> None:
    if not is_root():
        privileged_required("PostgreSQL tests start servers as the postgres user: need root")
    if not (BIN / "initdb").exists():
        privileged_required("PostgreSQL 15 is not installed (make setup installs it)")


def run_as_postgres(*argv: str | os.PathLike[str], check: bool = True) -> str:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {result.stderr or result.stdout}")
    return result.stdout


def initdb(data_dir: Path, wal_dir: Path | None = None) -> None:
    """``wal_dir``: pg_wal elsewhere (a link to it in the data directory), as servers often
    keep their WAL on a volume of its own."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(data_dir, "postgres", "postgres")
    data_dir.chmod(0o700)
    extra = []
    if wal_dir is not None:
        wal_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(wal_dir, "postgres", "postgres")
        wal_dir.chmod(0o700)
        extra = ["-X", str(wal_dir)]
    run_as_postgres(BIN / "initdb", "-D", data_dir, "-U", "postgres", "--auth=trust", "-N", *extra)


@contextmanager
def postgres_server(
    data_dir: Path, *, fresh: bool = True, wal_dir: Path | None = None
) -> Iterator[PgServer]:
    """A server on ``data_dir`` (initialised first when ``fresh``), stopped at once on exit
    (immediate mode: what it leaves behind is the tests' business, not a clean shutdown)."""
    require_postgresql()
    if fresh:
        initdb(data_dir, wal_dir)
    socket_dir = Path(tempfile.mkdtemp(prefix="ffpgs", dir="/tmp"))  # socket paths are short
    shutil.chown(socket_dir, "postgres", "postgres")
    log = socket_dir / "server.log"
    options = (
        f"-k {socket_dir} -c listen_addresses='' -c max_wal_size=256MB "
        "-c shared_buffers=64MB -c fsync=on -c log_checkpoints=on"
    )
    server = PgServer(data_dir, socket_dir, log)
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(data_dir), "-l",
         str(log), "-o", options, "-w", "-t", str(CONNECT_WAIT_S), "start"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        if result.returncode != 0:
            raise AssertionError(f"postgres did not start: {result.stdout}\n{server.log_text()}")
        yield server
    finally:
        run_as_postgres(BIN / "pg_ctl", "-D", data_dir, "-m", "immediate", "stop", check=False)
        shutil.rmtree(socket_dir, ignore_errors=True)


@contextmanager
def pgbench(server: PgServer, clients: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """pgbench's TPC-B-like transactions flat out until the block ends (initialise first with
    ``pgbench_init``)."""
    proc = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", str(BIN / "pgbench"), "-h", str(server.socket_dir),
         "-c", str(clients), "-j", "1", "-T", "3600", "-n", "postgres"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        yield proc
        assert proc.poll() is None, f"pgbench died: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        proc.kill()
        proc.wait()


def pgbench_init(server: PgServer, scale: int = 1) -> None:
    run_as_postgres(BIN / "pgbench", "-h", server.socket_dir, "-i", "-q", "-s", scale, "postgres")


def balances(server: PgServer) -> tuple[int, int, int, int]:
    """pgbench's invariant: every transaction adds the same delta to one account, teller and
    branch and logs it in history, so the four sums are equal in a consistent database."""
    row = server.psql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts),"
        " (SELECT sum(tbalance) FROM pgbench_tellers),"
        " (SELECT sum(bbalance) FROM pgbench_branches),"
        " (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
    )
    a, t, b, h = (int(x) for x in row.split("|"))
    return a, t, b, h


def amcheck(server: PgServer) -> None:
    """Every table and index of every database checked by pg_amcheck (heap and B-tree)."""
    run_as_postgres(
        BIN / "pg_amcheck", "-h", server.socket_dir, "-U", "postgres", "--all",
        "--install-missing", "--heapallindexed",
    )  # fmt: skip


@dataclass
class Recovery:
    """What a restored server's log says it had to do before it accepted connections."""

    crash_recovery: bool  # "not properly shut down; automatic recovery in progress"
    backup_recovery: bool  # started from a backup_label
    redo_start: str | None
    consistent_at: str | None


def recovery_of(log: str) -> Recovery:
    redo = re.search(r"redo starts at (\S+)", log)
    consistent = re.search(r"consistent recovery state reached at (\S+)", log)
    return Recovery(
        crash_recovery="automatic recovery in progress" in log,
        backup_recovery="backup_label" in log or "starting backup recovery" in log,
        redo_start=redo.group(1) if redo else None,
        consistent_at=consistent.group(1) if consistent else None,
    )
