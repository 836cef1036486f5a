"""A throwaway MariaDB server for tests: ``mariadbd --no-defaults`` as user mysql on a given data
directory, on a short unix socket only, with a binary log (so there are positions to record),
durable commits (``sync_binlog=1``, ``innodb_flush_log_at_trx_commit=1``) and small InnoDB
buffers so it starts in about a second. Killed (SIGKILL) and waited for on exit.

The data directory and its parents must be reachable by user mysql: keep it out of pytest's
``tmp_path`` (``/tmp/pytest-of-root`` is mode 0700), e.g. under ``fsfixtures.shared_workdir()``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from ffharness import privileged_required

INNODB = ("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M")
SERVER = (
    "--skip-networking",
    "--skip-name-resolve",
    "--log-bin=binlog",  # relative: the index names files inside the data directory
    "--server-id=1",
    "--sync-binlog=1",
    "--innodb-flush-log-at-trx-commit=1",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    "--loose-feedback=OFF",
    *INNODB,
)


@dataclass
class MariaDB:
    socket: Path
    error_log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The ``--quiesce mysql:`` target of this server."""
        return f"mysql://root@localhost/?unix_socket={self.socket}"

    def log(self) -> str:
        """Its error log, after what it wrote to stderr before opening it."""
        paths = (self.error_log.with_name("stderr"), self.error_log)
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def connect(self, **options: Any) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(unix_socket=str(self.socket), user="root", **options)


def _require_mariadb() -> None:
    if os.geteuid() != 0:
        privileged_required("a throwaway mariadbd runs as user mysql, which needs root")
    for tool in ("mariadbd", "mariadb-install-db"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            privileged_required(f"{tool} is not installed (make setup installs mariadb-server)")
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        privileged_required("there is no user mysql (make setup installs mariadb-server)")


def _chown_mysql(path: Path) -> None:
    shutil.chown(path, "mysql", "mysql")


def initialise(datadir: Path) -> None:
    """A fresh data directory: system tables, root@localhost with no password (as ``normal``
    authentication: by password, not by unix socket credentials)."""
    _require_mariadb()
    datadir.mkdir(parents=True, exist_ok=True)
    _chown_mysql(datadir)
    result = subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            "--user=mysql",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *INNODB,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@contextmanager
def mariadb_server(
    datadir: Path, *, fresh: bool = False, extra: tuple[str, ...] = (), wait_s: float = 60
) -> Iterator[MariaDB]:
    """A mariadbd on ``datadir`` (initialised first when ``fresh``); yields it once it answers.
    The socket, pid file and error log live in a directory of their own, so a copy of the data
    directory carries none of them."""
    _require_mariadb()
    if fresh:
        initialise(datadir)
    run = Path(tempfile.mkdtemp(prefix="ffm", dir="/tmp"))  # socket paths must be short
    _chown_mysql(run)
    socket, error_log = run / "sock", run / "error.log"
    argv = [
        "mariadbd",
        "--no-defaults",
        "--user=mysql",
        f"--datadir={datadir}",
        f"--socket={socket}",
        f"--pid-file={run / 'pid'}",
        f"--log-error={error_log}",
        *SERVER,
        *extra,
    ]
    with open(run / "stderr", "wb") as stderr:  # what it says before the error log opens
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=stderr)
    handle = MariaDB(socket, error_log, server)
    try:
        deadline = time.monotonic() + wait_s
        while True:  # the socket exists a moment before the server takes connections
            try:
                handle.connect(connect_timeout=5).close()
                break
            except pymysql.err.OperationalError:
                assert server.poll() is None, f"mariadbd exited:\n{handle.log()[-5000:]}"
                assert time.monotonic() < deadline, f"mariadbd did not start:\n{handle.log()}"
                time.sleep(0.02)
        yield handle
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(run, ignore_errors=True)
