"""Run history in a local SQLite database (``/var/lib/freezeframe/state.db`` by default), kept
across restarts: one row per run of a plan with what a user looks at first (status, when, how
long, the consistency reached, the pause window, bytes read and added, the error) and the
snapshots' whole consistency reports."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_PATH = "/var/lib/freezeframe/state.db"
# The results a run ends with. "degraded": it succeeded at a lower level than the plan asked.
RESULTS = ("running", "success", "degraded", "failed", "interrupted", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    requested TEXT,
    achieved TEXT,
    pause_ms REAL,
    bytes_read INTEGER,
    bytes_added INTEGER,
    snapshots TEXT NOT NULL DEFAULT '[]',
    error TEXT NOT NULL DEFAULT '',
    report TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS runs_by_plan ON runs (plan, started);
"""


@dataclass
class Run:
    """One run of a plan. Times are UNIX seconds (UTC)."""

    plan: str
    status: str
    trigger: str  # "schedule", "missed", "manual"
    started: float
    ended: float | None = None
    requested: str | None = None
    achieved: str | None = None  # the lowest level among the run's snapshots
    pause_ms: float | None = None  # the longest hold or pause of the run's snapshots
    bytes_read: int | None = None
    bytes_added: int | None = None
    snapshots: list[str] = field(default_factory=list)
    error: str = ""
    report: dict[str, Any] = field(default_factory=dict)  # the snapshots' consistency sections
    id: int | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["started"] = _iso(self.started)
        doc["ended"] = _iso(self.ended) if self.ended is not None else None
        doc["duration_s"] = None if self.duration_s is None else round(self.duration_s, 3)
        return doc


class History:
    """The database; one connection per call, so threads and processes may share the file."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # makedirs' mode is filtered by the umask
        # Runs' errors may name hosts, paths and commands: only root reads them. SQLite gives
        # its journal files the database's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)
        with self._db() as db:
            db.executescript(_SCHEMA)

    def start(self, plan: str, trigger: str, started: float, requested: str | None) -> Run:
        run = Run(plan=plan, status="running", trigger=trigger, started=started)
        run.requested = requested
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO runs (plan, status, trigger, started, requested) VALUES (?,?,?,?,?)",
                (plan, run.status, trigger, started, requested),
            )
            run.id = cursor.lastrowid
        return run

    def finish(self, run: Run) -> None:
        assert run.id is not None
        with self._db() as db:
            db.execute(
                "UPDATE runs SET status=?, ended=?, achieved=?, pause_ms=?, bytes_read=?,"
                " bytes_added=?, snapshots=?, error=?, report=? WHERE id=?",
                (
                    run.status,
                    run.ended,
                    run.achieved,
                    run.pause_ms,
                    run.bytes_read,
                    run.bytes_added,
                    json.dumps(run.snapshots),
                    run.error,
                    json.dumps(run.report, sort_keys=True),
                    run.id,
                ),
            )

    def record(self, run: Run) -> Run:
        """A run that never started (skipped): inserted whole."""
        started = self.start(run.plan, run.trigger, run.started, run.requested)
        run.id = started.id
        self.finish(run)
        return run

    def runs(self, plan: str | None = None, limit: int = 100) -> list[Run]:
        """The latest runs first."""
        sql = "SELECT * FROM runs"
        params: tuple[Any, ...] = ()
        if plan is not None:
            sql += " WHERE plan = ?"
            params = (plan,)
        sql += " ORDER BY started DESC, id DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(sql, (*params, limit)).fetchall()
        return [_run(row) for row in rows]

    def last(self, plan: str, statuses: tuple[str, ...] | None = None) -> Run | None:
        sql = "SELECT * FROM runs WHERE plan = ?"
        params: list[Any] = [plan]
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            params += list(statuses)
        with self._db() as db:
            row = db.execute(sql + " ORDER BY started DESC, id DESC LIMIT 1", params).fetchone()
        return None if row is None else _run(row)

    def first_started(self, plan: str) -> float | None:
        """When the plan's first recorded run started (None: it never ran)."""
        with self._db() as db:
            row = db.execute("SELECT min(started) FROM runs WHERE plan = ?", (plan,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def counts(self, plan: str) -> dict[str, int]:
        with self._db() as db:
            rows = db.execute(
                "SELECT status, count(*) FROM runs WHERE plan = ? GROUP BY status", (plan,)
            ).fetchall()
        return {status: count for status, count in rows}

    def interrupt_running(self, now: float) -> int:
        """Runs left 'running' by an agent that died are marked interrupted at its restart."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE runs SET status='interrupted', ended=?, error=? WHERE status='running'",
                (now, "the agent stopped during the run"),
            )
            return cursor.rowcount

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            db.row_factory = sqlite3.Row
            with db:  # one transaction, committed on success
                yield db


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        plan=row["plan"],
        status=row["status"],
        trigger=row["trigger"],
        started=row["started"],
        ended=row["ended"],
        requested=row["requested"],
        achieved=row["achieved"],
        pause_ms=row["pause_ms"],
        bytes_read=row["bytes_read"],
        bytes_added=row["bytes_added"],
        snapshots=json.loads(row["snapshots"]),
        error=row["error"],
        report=json.loads(row["report"]),
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()
