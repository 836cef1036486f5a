"""MariaDB and MySQL: commits held back across the snapshot by one session that holds the locks.

On MariaDB 10.4 and later the backup stages are taken in turn: ``BACKUP STAGE START`` (DDL
logging begins), ``FLUSH`` (non-transactional tables not in use are flushed and closed; new
writes to them wait), ``BLOCK_DDL`` (statements writing non-transactional tables finish; new DDL
waits) and ``BLOCK_COMMIT`` (commits in flight finish; new commits and binary log writes wait).
Then ``FLUSH ENGINE LOGS`` writes InnoDB's redo log out. Why this is consistent: once
``BLOCK_COMMIT`` returns no commit is half done, so every transaction is in the binary log *and*
committed in InnoDB, or in neither; InnoDB writes its commit records lazily when the binary log
is on (the binary log makes a commit durable), hence the redo flush, without which an image can
hold transactions InnoDB only prepared, for recovery to settle from the binary log. The binary
log position read while commits wait (``SHOW MASTER STATUS``, ``@@gtid_binlog_pos``) is exactly
where the image ends. Reads, and writes inside open transactions, go on; commits and DDL wait.
MySQL, and MariaDB before 10.4, get ``FLUSH TABLES WITH READ LOCK`` instead (after a plain
``FLUSH TABLES``, so the locked flush has less to close): there every write waits.

What the image still is: that of a running server. InnoDB replays its redo from the last
checkpoint (data pages are not flushed for the snapshot; the redo holds every commit) and rolls
back the transactions that were open and not committing; the binary log is marked in use, so
the server runs its crash recovery from it, which finds nothing in doubt. Not covered:
non-transactional tables (MyISAM, Aria, CSV) are flushed and closed by the FLUSH stage and not
written after it, so each restores whole and needs no check or repair, as of its last
statement; but they have no transactions, so a change an application spreads over several
statements on them can be half done, and writes to them wait from the FLUSH stage on, not only
at commit. MEMORY tables restore empty. An ALTER TABLE running meanwhile leaves ``#sql`` files,
which the server removes at start. XA transactions an application prepared itself stay prepared.

The locks belong to the session: if freezeframe dies, the connection drops and the server
releases them at once. Should freezeframe stop instead, the session's ``wait_timeout`` (the cap
plus the timeout plus a second) ends it on the server's side. A session that ends before the
thaw fails the thaw: the snapshots may have been taken without the hold.

TARGET is ``mysql://USER[:PASSWORD]@HOST[:PORT][/DATABASE]`` (percent-encoded), with
``?unix_socket=PATH`` to use a socket (the host is then ignored), e.g.
``mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock``; or the path of an option file
whose ``[client]`` group gives user, password, socket, host and port (``/etc/mysql/debian.cnf``).
The password never reaches the record or a message.
"""

from __future__ import annotations

import configparser
import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.optionfile

from freezeframe.errors import QuiesceError

SCHEMES = ("mysql", "mariadb")
BACKUP_STAGE = "backup_stage"
READ_LOCK = "flush_tables_with_read_lock"
MIN_MARIADB = (10, 2)
MIN_MARIADB_BACKUP_STAGE = (10, 4, 1)
MIN_MYSQL = (5, 7)
MYSQL_BINARY_LOG_STATUS = (8, 2)  # SHOW MASTER STATUS is gone in 8.4
# InnoDB's redo written out while commits wait: every commit of the binary log is in it too.
FLUSH_ENGINE_LOGS = "FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS"
STEPS = {
    BACKUP_STAGE: [
        ("start", "BACKUP STAGE START"),
        ("flush", "BACKUP STAGE FLUSH"),
        ("block_ddl", "BACKUP STAGE BLOCK_DDL"),
        ("block_commit", "BACKUP STAGE BLOCK_COMMIT"),
        ("flush_engine_logs", FLUSH_ENGINE_LOGS),
    ],
    READ_LOCK: [
        ("flush_tables", "FLUSH NO_WRITE_TO_BINLOG TABLES"),  # no GTID of its own
        ("read_lock", "FLUSH TABLES WITH READ LOCK"),
        ("flush_engine_logs", FLUSH_ENGINE_LOGS),
    ],
}
RELEASE = {BACKUP_STAGE: "BACKUP STAGE END", READ_LOCK: "UNLOCK TABLES"}
CONNECTION_LOST = (2006, 2013)  # server has gone away, lost connection during query
READ_TIMEOUT_MARGIN_S = 5  # the socket's own timeout, past the server-side lock timeouts
EXPIRY_MARGIN_S = 1


class MysqlQuiescer:
    kind = "mysql"

    def __init__(self, target: str, *, method: str | None = None) -> None:
        if method not in (None, BACKUP_STAGE, READ_LOCK):
            raise ValueError(f"unknown method {method!r}")
        self.target = _redacted(target)
        self._target = target
        self._method_asked = method  # tests force READ_LOCK on a MariaDB that has backup stages
        self._db: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()  # the cap's timer may thaw from another thread
        self._server: dict[str, Any] = {}
        self._method = ""
        self._locking = False  # a lock statement was sent: the thaw must release
        self._held = False  # every lock was taken: losing the session now loses the hold

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        options = self._connect_options()
        try:
            db = pymysql.connect(
                **options,
                connect_timeout=max(timeout_s, 0.001),
                read_timeout=math.ceil(timeout_s) + READ_TIMEOUT_MARGIN_S,
                write_timeout=math.ceil(timeout_s) + READ_TIMEOUT_MARGIN_S,
                autocommit=True,
                program_name="freezeframe",
            )
        except (pymysql.Error, OSError, ValueError) as exc:
            raise QuiesceError(f"mysql: cannot reach {self.target}: {_one_line(exc)}") from exc
        self._db = db
        try:
            self._check(db)
        except BaseException:
            self._close()
            raise

    def _connect_options(self) -> dict[str, Any]:
        """PyMySQL's arguments for the target: a URL, or an option file it reads itself."""
        scheme = self._target.partition("://")[0]
        if scheme in SCHEMES and "://" in self._target:
            return _url_options(self._target, self.target)
        path = os.path.abspath(self._target)
        parser = pymysql.optionfile.Parser()
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise QuiesceError(
                f"mysql: {self._target} is neither a mysql:// URL nor a readable option file: "
                f"{_one_line(exc)}"
            ) from exc
        if not parser.has_section("client"):
            raise QuiesceError(f"mysql: the option file {path} has no [client] group")
        return {"read_default_file": path}

    def _check(self, db: pymysql.connections.Connection[Any]) -> None:
        """The server, its version, and the privileges the hold and the record need."""
        try:
            version, datadir, log_bin, user = _row(
                db, "SELECT @@version, @@datadir, @@log_bin, CURRENT_USER()"
            )
            grants = [str(row[0]) for row in _rows(db, "SHOW GRANTS")]
        except pymysql.Error as exc:
            raise QuiesceError(f"mysql: cannot query {self.target}: {_one_line(exc)}") from exc
        mariadb = "mariadb" in str(version).lower()
        number = _version_tuple(str(version))
        product = "MariaDB" if mariadb else "MySQL"
        minimum = MIN_MARIADB if mariadb else MIN_MYSQL
        if number < minimum:
            raise QuiesceError(
                f"mysql: {self.target} runs {product} {version}; freezeframe needs "
                f"{product} {'.'.join(map(str, minimum))} or later"
            )
        stages = mariadb and number >= MIN_MARIADB_BACKUP_STAGE
        self._method = self._method_asked or (BACKUP_STAGE if stages else READ_LOCK)
        privileges, roles = _global_privileges(grants)
        if not ({"RELOAD", "ALL PRIVILEGES"} & privileges) and not roles:
            what = "BACKUP STAGE" if self._method == BACKUP_STAGE else "FLUSH TABLES WITH READ LOCK"
            raise QuiesceError(
                f"mysql: {user} lacks the RELOAD privilege that {what} needs "
                f"(GRANT RELOAD ON *.* TO {user})"
            )
        binlog = bool(int(log_bin or 0))
        if binlog:
            try:  # read-only, and the one way to know the privilege is enough
                _rows(db, self._binlog_status(mariadb, number))
            except pymysql.Error as exc:
                raise QuiesceError(
                    f"mysql: cannot read the binary log position of {self.target}: {_one_line(exc)}"
                ) from exc
        self._server = {
            "server": product,
            "version": str(version),
            "version_number": number,
            "datadir": str(datadir),
            "binlog": binlog,
        }

    @staticmethod
    def _binlog_status(mariadb: bool, number: tuple[int, ...]) -> str:
        if not mariadb and number >= MYSQL_BINARY_LOG_STATUS:
            return "SHOW BINARY LOG STATUS"
        return "SHOW MASTER STATUS"

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        with self._lock:
            db = self._require()
            deadline = time.monotonic() + timeout_s
            waits: dict[str, float] = {}
            step = "SET SESSION wait_timeout"
            try:
                # The server ends the session, and so the hold, if this process stops talking
                # to it for longer than the cap plus the thaw: a hung freezeframe holds nothing.
                _rows(db, f"SET SESSION wait_timeout = {_expiry_s(hold_s, timeout_s)}")
                for name, statement in STEPS[self._method]:
                    step = statement
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise QuiesceError(
                            f"mysql: {self.target} was not held within {timeout_s:g} s "
                            f"(stopped before {statement})"
                        )
                    wait_s = max(1, math.ceil(left))
                    _rows(
                        db,
                        f"SET SESSION lock_wait_timeout = {wait_s},"
                        f" innodb_lock_wait_timeout = {wait_s}",
                    )
                    started = time.monotonic()
                    self._locking = True
                    _rows(db, statement)
                    waits[name] = round((time.monotonic() - started) * 1000, 3)
                self._held = True
                step = "reading the binary log position"
                positions = self._positions(db)
            except pymysql.Error as exc:
                raise QuiesceError(
                    f"mysql: cannot hold {self.target}: {step}: {_one_line(exc)}"
                ) from exc
        return {
            "server": self._server["server"],
            "version": self._server["version"],
            "method": self._method,
            "datadir": self._server["datadir"],
            **positions,
            "steps_ms": waits,
        }

    def _positions(self, db: pymysql.connections.Connection[Any]) -> dict[str, Any]:
        """Where the binary log ends while commits wait: the point a restore of this image
        continues from (replication, point-in-time recovery)."""
        mariadb = self._server["server"] == "MariaDB"
        found: dict[str, Any] = {"binlog_file": None, "binlog_position": None}
        if self._server["binlog"]:
            rows = _rows(db, self._binlog_status(mariadb, self._server["version_number"]))
            if rows:
                found["binlog_file"] = str(rows[0][0])
                found["binlog_position"] = int(rows[0][1])
        if mariadb:
            found["gtid_binlog_pos"] = str(_row(db, "SELECT @@gtid_binlog_pos")[0])
        else:
            found["gtid_executed"] = str(_row(db, "SELECT @@gtid_executed")[0]).replace("\n", "")
        return found

    def thaw(self, timeout_s: float) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            locking, held = self._locking, self._held
            self._locking = self._held = False
            lost: BaseException | None = None
            try:
                if locking:
                    _rows(db, RELEASE[self._method])
            except pymysql.Error as exc:
                # Whatever the failure, closing the session below releases what it held.
                if _connection_lost(exc):
                    lost = exc
            finally:
                _close(db)
        if held and lost is not None:
            raise QuiesceError(
                f"mysql: the session holding {self.target} ended before the thaw "
                f"({_one_line(lost)}); the hold may have ended before the snapshots did"
            )

    def undo_on_crash(self) -> list[str] | None:
        return None

    def _require(self) -> pymysql.connections.Connection[Any]:
        if self._db is None:
            raise QuiesceError("mysql: prepare was not called")
        return self._db

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            _close(db)


def _url_options(target: str, shown: str) -> dict[str, Any]:
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"unix_socket"})
    if unknown:
        raise QuiesceError(f"mysql: {shown}: unknown parameter {unknown[0]!r} (only unix_socket)")
    try:
        port = parts.port or 3306
    except ValueError as exc:
        raise QuiesceError(f"mysql: {shown}: {exc}") from exc
    options: dict[str, Any] = {
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password or ""),
        "host": parts.hostname or "localhost",
        "port": port,
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    if "unix_socket" in query:
        options["unix_socket"] = query["unix_socket"][-1]
    return options


def _redacted(target: str) -> str:
    """The target as records and messages show it: a URL's password replaced."""
    return re.sub(r"^([a-z]+://[^/@:]*:)[^/@]*@", r"\1***@", target)


def _global_privileges(grants: list[str]) -> tuple[set[str], bool]:
    """The privileges granted ON *.* in SHOW GRANTS, and whether any role is granted (whose
    privileges SHOW GRANTS may not list: then the freeze is left to tell)."""
    privileges: set[str] = set()
    roles = False
    for grant in grants:
        match = re.match(r"GRANT (.+?) ON \*\.\* TO ", grant)
        if match:
            privileges.update(p.strip().upper() for p in match.group(1).split(","))
        elif grant.startswith("GRANT ") and " ON " not in grant:
            roles = True
    return privileges, roles


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def _expiry_s(hold_s: float, timeout_s: float) -> int:
    return math.ceil(hold_s) + math.ceil(timeout_s) + EXPIRY_MARGIN_S


def _rows(db: pymysql.connections.Connection[Any], sql: str) -> tuple[tuple[Any, ...], ...]:
    with db.cursor() as cursor:
        cursor.execute(sql)
        return tuple(cursor.fetchall())


def _row(db: pymysql.connections.Connection[Any], sql: str) -> tuple[Any, ...]:
    rows = _rows(db, sql)
    if not rows:
        raise QuiesceError(f"mysql: {sql} returned nothing")
    return rows[0]


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True  # PyMySQL closed the connection after an earlier failure
    return bool(exc.args) and exc.args[0] in CONNECTION_LOST


def _close(db: pymysql.connections.Connection[Any]) -> None:
    with contextlib.suppress(pymysql.Error):  # already closed: the session is gone anyway
        db.close()


def _one_line(exc: BaseException) -> str:
    """A driver error as one line: the server's message without its error number tuple."""
    if isinstance(exc, pymysql.Error) and len(exc.args) >= 2:
        text = f"{exc.args[1]} (error {exc.args[0]})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
