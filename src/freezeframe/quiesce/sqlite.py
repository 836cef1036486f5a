"""SQLite: the write lock taken (BEGIN IMMEDIATE) and held across the snapshot, and in WAL mode
every committed frame copied into the database file meanwhile. So no transaction is half written
in the image: the file opens without a hot journal to roll back, and whatever its WAL holds is
already in it. Readers go on meanwhile; writers wait.

The lock is a POSIX lock of this process: if freezeframe dies, the kernel releases it at once.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from freezeframe.errors import QuiesceError

LOCK_RETRY_S = 0.0002


class SqliteQuiescer:
    kind = "sqlite"

    def __init__(self, target: str) -> None:
        self.target = os.path.abspath(target)
        self._db: sqlite3.Connection | None = None

    def prepare(self, timeout_s: float, context: Mapping[str, str]) -> None:
        if not os.path.isfile(self.target):
            raise QuiesceError(f"sqlite: {self.target} is not a database file")
        try:
            # isolation_level=None: transactions are ours to open and close. The cap's timer
            # may thaw from another thread.
            self._db = sqlite3.connect(
                self.target, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as exc:
            raise QuiesceError(f"sqlite: cannot open {self.target}: {exc}") from exc

    def freeze(self, timeout_s: float, hold_s: float) -> dict[str, Any]:
        if self._db is None:
            raise QuiesceError("sqlite: prepare was not called")
        record: dict[str, Any] = {}
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
            record["journal_mode"] = mode
            started = time.monotonic()
            # The write lock: a writer in the middle of a transaction finishes it first.
            record["lock_attempts"] = self._take_write_lock(timeout_s)
            record["lock_wait_ms"] = round((time.monotonic() - started) * 1000, 3)
            if mode == "wal":
                record["checkpoint"] = self._checkpoint(timeout_s)
            record["data_version"] = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise QuiesceError(f"sqlite: cannot hold {self.target}: {exc}") from exc
        return record

    def _take_write_lock(self, timeout_s: float) -> int:
        """BEGIN IMMEDIATE, retried every LOCK_RETRY_S. SQLite's own busy handler sleeps ever
        longer between tries (up to 100 ms), and a writer that commits and begins again in a
        loop takes the lock back in between every time: measured, waits of seconds to tens of
        seconds under one flat-out writer. Tight retries catch the gap between its
        transactions."""
        db = self._db
        assert db is not None
        db.execute("PRAGMA busy_timeout = 0")
        deadline = time.monotonic() + timeout_s
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    db.execute("BEGIN IMMEDIATE")
                    return attempts
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(LOCK_RETRY_S)
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")

    def _checkpoint(self, timeout_s: float) -> dict[str, int]:
        """Copy every committed WAL frame into the database file while our lock keeps writers
        out (PASSIVE: the only mode that does not need the write lock we hold)."""
        other = sqlite3.connect(self.target, timeout=timeout_s, isolation_level=None)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                busy, frames, done = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames == done or time.monotonic() > deadline:
                    break
                time.sleep(0.005)  # a reader still on an older snapshot pins frames
        finally:
            other.close()
        if frames != done:
            raise QuiesceError(
                f"sqlite: {frames - done} WAL frames of {self.target} stayed pinned by readers"
            )
        return {"busy": busy, "wal_frames": frames, "checkpointed": done}

    def thaw(self, timeout_s: float) -> None:
        if self._db is None:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        finally:
            self._db.close()
            self._db = None

    def undo_on_crash(self) -> list[str] | None:
        return None
