"""A SQLite bank for tests and benchmarks: ``ACCOUNTS`` accounts of 1000 each and a ledger, and
the money-transfer workload (BEGIN IMMEDIATE, debit, ledger row, credit, COMMIT with
``synchronous=FULL``) running flat out in a child process. Shared by
tests/system/test_application_sqlite.py and bench/freeze_window.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ACCOUNTS = 1000
TOTAL = ACCOUNTS * 1000

TRANSFERS = f"""
import random, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=120)
db.execute("PRAGMA journal_mode=" + sys.argv[2])
db.execute("PRAGMA synchronous=FULL")
while True:
    a, b = random.sample(range({ACCOUNTS}), 2)
    x = random.randint(1, 100)
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (x, a))
    db.execute("INSERT INTO ledger (src, dst, amount) VALUES (?, ?, ?)", (a, b, x))
    db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (x, b))
    db.execute("COMMIT")
"""


def create_bank(path: Path, journal_mode: str) -> None:
    """The accounts (1000 each) and an empty ledger, in ``journal_mode``."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA journal_mode={journal_mode}")
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    db.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INT, dst INT, amount INT)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO accounts VALUES (?, 1000)", [(i,) for i in range(ACCOUNTS)])
    db.execute("COMMIT")
    db.close()


@contextmanager
def transfer_workload(path: Path, journal_mode: str) -> Iterator[subprocess.Popen[bytes]]:
    """The TRANSFERS workload on the database at ``path`` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", TRANSFERS, str(path), journal_mode])
    try:
        time.sleep(0.5)
        yield proc
        assert proc.poll() is None, "the workload died"
    finally:
        proc.kill()
        proc.wait()
