"""PostgreSQL: the non-exclusive base-backup API around the snapshot. ``pg_backup_start`` runs a
checkpoint and marks where WAL replay of the backup must begin; the snapshot is taken while the
session that started the backup stays open; ``pg_backup_stop`` writes the end-of-backup record,
switches to a new WAL segment and returns the ``backup_label`` (and ``tablespace_map``).

PostgreSQL is never paused: writes go on throughout, and full-page writes during the backup
make any copy of the data directory taken between start and stop restorable. What the snapshot
cannot hold is known only after it: the label, and the WAL from the start of the backup to its
end record. Both are added to the backup at the server's own paths (``files_for_backup``), so a
restored data directory starts in backup recovery, replays exactly that WAL and is consistent.
The pid file is left out, so the restored copy never mistakes the live server for itself.

The backup belongs to the session: if freezeframe dies, the connection drops and PostgreSQL
aborts the backup itself.

Inside a VM's guest (``IN_IMAGE_KEY``) nothing can be added to the disks' snapshot after the thaw,
so the backup is started and stopped before the guest's file systems freeze, and the label (and
tablespace map) is written into the live data directory for the freeze and removed at the thaw:
the disks are taken after the end-of-backup record, with every WAL segment up to it and the
label in place, so the restored guest's server starts in backup recovery from that label. The
label lies in the live directory only while the guest is frozen; the watchdog removes it if the
hook dies, and a server that crashed in that window would itself recover from the label, whose
WAL is still in pg_wal.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader

from freezeframe.errors import QuiesceError
from freezeframe.quiesce.base import IN_IMAGE_KEY, BackupFiles, source_paths, within_any

MIN_VERSION = 100000  # non-exclusive backups with pg_start_backup(label, fast, false): 10
NEW_API_VERSION = 150000  # pg_backup_start / pg_backup_stop
WAL_NAME = re.compile(r"^[0-9A-F]{24}$")
LEFT_OUT = ("postmaster.pid", "postmaster.opts")


class PostgresqlQuiescer:
    kind = "postgresql"

    def __init__(self, target: str) -> None:
        self.target = target
        self._db: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()  # the cap's timer may thaw from another thread
        self._version = 0
        self._data_dir = ""
        self._wal_dir = ""  # pg_wal may be a link to another volume
        self._label = "freezeframe"
        self._started = False
        self._start_lsn = ""
        self._stopped: dict[str, str] = {}
        self._pre_checkpoint_ms: float | None = None
        self._in_image = False
        self._placed: list[str] = []  # label files written into the live data directory

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        try:
            self._db = psycopg.connect(
                self.target,
                autocommit=True,
                connect_timeout=max(1, int(timeout_s)),
                application_name="freezeframe",
            )
            if self._db.info.encoding == "ascii":
                _decode_sql_ascii(self._db)
            self._version = self._db.info.server_version
            self._db.execute("SELECT set_config('statement_timeout', %s, false)", [_ms(timeout_s)])
            wal_level = self._scalar("SELECT current_setting('wal_level')")
            self._data_dir = self._scalar("SELECT current_setting('data_directory')")
            may_start = self._scalar(
                "SELECT has_function_privilege(%s, 'EXECUTE')",
                [_start_signature(self._version)],
            )
            spaces = [
                row[0]
                for row in self._db.execute(
                    "SELECT pg_tablespace_location(oid) FROM pg_tablespace"
                    " WHERE spcname NOT IN ('pg_default', 'pg_global')"
                )
            ]
        except psycopg.Error as exc:
            self._close()
            raise QuiesceError(f"postgresql: {_one_line(exc)}") from exc
        try:
            self._check_server(spaces, wal_level, may_start, context)
        except QuiesceError:
            self._close()  # a refused server keeps no connection of ours
            raise
        self._label = f"freezeframe {context.get('FREEZEFRAME_RUN_ID', '')}".strip()
        self._in_image = context.get(IN_IMAGE_KEY) == "1"
        self._pre_checkpoint()

    def _check_server(
        self, spaces: list[str], wal_level: str, may_start: bool, context: Mapping[str, str]
    ) -> None:
        """QuiesceError unless this server can take a base backup of the paths backed up."""
        if self._version < MIN_VERSION:
            raise QuiesceError("postgresql: the server is older than 10 (no concurrent backups)")
        if wal_level == "minimal":
            raise QuiesceError("postgresql: wal_level is minimal; base backups need replica")
        if not may_start:
            raise QuiesceError(
                "postgresql: the user may not run a base backup (grant EXECUTE on "
                f"{_start_signature(self._version)} or use a superuser)"
            )
        if not os.path.isdir(os.path.join(self._data_dir, "pg_wal")):
            raise QuiesceError(
                f"postgresql: the data directory {self._data_dir} is not on this machine"
            )
        self._data_dir = os.path.realpath(self._data_dir)
        self._wal_dir = os.path.realpath(os.path.join(self._data_dir, "pg_wal"))
        for needed in [self._data_dir, self._wal_dir, *spaces]:
            if not within_any(needed, source_paths(context)):
                raise QuiesceError(
                    f"postgresql: {needed} is not inside the paths backed up; add it to them"
                )

    def _pre_checkpoint(self) -> None:
        """A checkpoint now, before anything is held, so the one pg_backup_start runs inside
        the hold has only what was written since to flush. Best effort: it needs a superuser
        or pg_checkpoint, and without it the hold is only longer."""
        started = time.monotonic()
        try:
            self._require().execute("CHECKPOINT")
        except psycopg.Error:
            self._pre_checkpoint_ms = None
            return
        self._pre_checkpoint_ms = round((time.monotonic() - started) * 1000, 3)

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        """Start the backup (a checkpoint: fast, spread over no time)."""
        with self._lock:
            db = self._require()
            try:
                db.execute("SELECT set_config('statement_timeout', %s, false)", [_ms(timeout_s)])
                if self._version >= NEW_API_VERSION:
                    start = "SELECT pg_backup_start(%s, true)::text"
                else:
                    start = "SELECT pg_start_backup(%s, true, false)::text"
                self._start_lsn = self._scalar(start, [self._label])
                self._started = True
                timeline = self._scalar("SELECT timeline_id FROM pg_control_checkpoint()")
            except psycopg.Error as exc:
                raise QuiesceError(
                    f"postgresql: cannot start the backup: {_one_line(exc)}"
                ) from exc
            positions: dict[str, Any] = {
                "start_lsn": self._start_lsn,
                "timeline": int(timeline),
                "data_directory": self._data_dir,
                "label": self._label,
                "pre_checkpoint_ms": self._pre_checkpoint_ms,
            }
            if self._in_image:
                self._stop()
                self._place_label()
                positions.update(
                    stop_lsn=self._stopped["stop_lsn"],
                    backup_label=self._stopped["label"],
                    label_in_image=list(self._placed),
                )
        return positions

    def _place_label(self) -> None:
        """The label (and tablespace map) into the live data directory, for the snapshot."""
        owner = os.stat(self._data_dir)
        files = {"backup_label": self._stopped["label"]}
        if self._stopped["tablespace_map"]:
            files["tablespace_map"] = self._stopped["tablespace_map"]
        for name, content in files.items():
            path = os.path.join(self._data_dir, name)
            self._placed.append(path)
            _write_text(path, content)
            os.chown(path, owner.st_uid, owner.st_gid)
            os.chmod(path, 0o600)
            with open(path, "rb") as f:
                os.fsync(f.fileno())

    def thaw(self, timeout_s: float) -> None:
        """Stop the backup. A failure here is a failed backup, not a detail: without the end
        record the restored copy cannot tell when it is consistent."""
        with self._lock:
            for path in self._placed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._placed = []
            self._stop()

    def _stop(self) -> None:
        """pg_backup_stop on the session that started the backup (no-op when none is)."""
        if self._db is None or not self._started:
            self._close()
            return
        self._started = False
        try:
            stop = "pg_backup_stop(false)"
            if self._version < NEW_API_VERSION:
                stop = "pg_stop_backup(false, false)"
            row = self._db.execute(
                f"SELECT lsn::text, labelfile, spcmapfile FROM {stop}"
            ).fetchone()
            if row is None:
                raise QuiesceError("postgresql: pg_backup_stop returned nothing")
            lsn, label, spcmap = row
            first, last = self._db.execute(
                "SELECT pg_walfile_name(%s::pg_lsn), pg_walfile_name(%s::pg_lsn)",
                [self._start_lsn, lsn],
            ).fetchone() or ("", "")
        except psycopg.Error as exc:
            raise QuiesceError(f"postgresql: cannot stop the backup: {_one_line(exc)}") from exc
        finally:
            self._close()
        self._stopped = {
            "stop_lsn": lsn,
            "label": label,
            "tablespace_map": spcmap or "",
            "first_wal": first,
            "last_wal": last,
        }

    def files_for_backup(self, staging_dir: str, timeout_s: float) -> BackupFiles:
        """The label, the tablespace map and the WAL segments from the backup's start to its
        end, copied from the live pg_wal right after the stop (the segments were just written,
        nothing recycles them that soon); the pid files left out."""
        if not self._stopped:
            raise QuiesceError("postgresql: the backup was not stopped; nothing to add")
        stopped = self._stopped
        owner = os.stat(self._data_dir)
        files: dict[str, str] = {}

        def stage(path: str, write: Any) -> None:
            staged = os.path.join(staging_dir, "postgresql", path.lstrip("/"))
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            write(staged)
            os.chown(staged, owner.st_uid, owner.st_gid)
            os.chmod(staged, 0o600)
            files[path] = staged

        def text(content: str) -> Any:
            return lambda staged: _write_text(staged, content)

        stage(os.path.join(self._data_dir, "backup_label"), text(stopped["label"]))
        if stopped["tablespace_map"]:
            stage(os.path.join(self._data_dir, "tablespace_map"), text(stopped["tablespace_map"]))
        wal_dir = self._wal_dir
        segments = sorted(
            name
            for name in os.listdir(wal_dir)
            if WAL_NAME.match(name) and stopped["first_wal"] <= name <= stopped["last_wal"]
        )
        if segments[:1] != [stopped["first_wal"]] or segments[-1:] != [stopped["last_wal"]]:
            raise QuiesceError(
                f"postgresql: WAL {stopped['first_wal']}..{stopped['last_wal']} is no longer "
                f"all in {wal_dir}; the backup cannot be made consistent"
            )
        for name in segments:
            source = os.path.join(wal_dir, name)
            stage(os.path.join(wal_dir, name), lambda staged, s=source: shutil.copy2(s, staged))
        return BackupFiles(
            add=files,
            leave_out=[os.path.join(self._data_dir, name) for name in LEFT_OUT],
            positions={
                "stop_lsn": stopped["stop_lsn"],
                "wal_segments": segments,
                "backup_label": stopped["label"],
            },
        )

    def undo_on_crash(self) -> list[str] | None:
        if self._in_image:  # the label must not outlive the freeze in the live directory
            names = ("backup_label", "tablespace_map")
            return ["rm", "-f", *(os.path.join(self._data_dir, n) for n in names)]
        return None  # the backup ends with the session

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self._require().execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _require(self) -> psycopg.Connection[Any]:
        if self._db is None:
            raise QuiesceError("postgresql: prepare was not called")
        return self._db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _PathTextLoader(Loader):
    """Text from a SQL_ASCII server, which psycopg hands over as bytes (SQL_ASCII says nothing
    of their encoding): decoded as Python decodes file names, so a path round-trips to the very
    bytes the server uses on disk."""

    def load(self, data: Buffer) -> str:
        return os.fsdecode(bytes(data))


def _decode_sql_ascii(db: psycopg.Connection[Any]) -> None:
    """Every text-like result of this connection as str: a cluster made by initdb in the C
    locale (the default without LANG) is SQL_ASCII, and its data directory, label and WAL
    names must be strings like any other server's."""
    for type_name in ("text", "varchar", "bpchar", "name"):
        db.adapters.register_loader(type_name, _PathTextLoader)


def _start_signature(version: int) -> str:
    if version >= NEW_API_VERSION:
        return "pg_backup_start(text, boolean)"
    return "pg_start_backup(text, boolean, boolean)"


def _write_text(path: str, content: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def _ms(seconds: float) -> str:
    return str(max(1, int(seconds * 1000)))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
