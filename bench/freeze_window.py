"""How long each application quiescer holds its database under load, and what a backup costs the
workload's throughput.

Usage (root): python bench/freeze_window.py [--trials 20] [--work DIR] [--json OUT]
                                            [--only postgresql,redis,sqlite,mysql]

For each database: a fresh loop btrfs volume, the server with its data on it, the test suite's
workload running flat out (pgbench; Redis and SQLite money transfers; InnoDB transfers on
MariaDB), a fresh repository, then TRIALS backups at `--consistency application` with the
database's quiescer, a few seconds apart. A thread reads the workload's commit counter every
10 ms, so throughput can be measured afterwards over any window: the 2 s before each backup
(baseline), freezeframe's pause (first freeze to thaw; PostgreSQL logs its start, the others are
placed on the commit stall they cause) and the whole backup run. Per quiescer the table gives
the pause_ms freezeframe records, p50/p95/max against the 1 s target, the longest stall the
workload saw, the throughput during the pause, and the dip over the run (1 - run / baseline),
p50 and worst. Results go to bench/results/freeze_window-<time>.json. MariaDB is skipped, with
the reason, when its fixtures or quiescer are missing.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import math
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tools import FREEZEFRAME, Freezeframe

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the servers and workloads the tests use

from ffharness import FAST_INIT  # noqa: E402
from fsfixtures import loop_filesystem, shared_workdir  # noqa: E402
from pgfixtures import pgbench, pgbench_init, postgres_server  # noqa: E402
from redisfixtures import ACCOUNTS as REDIS_ACCOUNTS  # noqa: E402
from redisfixtures import redis_server  # noqa: E402
from redisfixtures import transfer_workload as redis_transfers  # noqa: E402
from sqlitefixtures import create_bank  # noqa: E402
from sqlitefixtures import transfer_workload as sqlite_transfers  # noqa: E402

KINDS = ("postgresql", "redis", "sqlite", "mysql")
VOLUME_MIB = 4096  # sparse; room for a few minutes of WAL, AOF and ledger growth
SAMPLE_S = 0.010  # how often the commit counter is read
WARMUP_S = 2.0  # workload running before the first backup
SETTLE_S = 2.0  # after a backup, before the next baseline starts (the dip's tail stays out)
BASELINE_S = 2.0  # the window just before each backup, no backup running
TARGET_MS = 1000.0  # the pause we promise to stay under, at p95
# Why a trial can end without a result: the fixtures give up through pytest's skip/fail.
GAVE_UP = (pytest.skip.Exception, pytest.fail.Exception)

Counter = Callable[[], int]


@dataclass
class Setup:
    """One database on its own volume with its workload running: what to back up, how to hold
    it, how to read its commit counter, and how to find where the hold lies in time."""

    kind: str
    config: str
    version: str
    paths: list[Path]
    quiesce: str
    open_counter: Callable[[], AbstractContextManager[Counter]]
    # "log": hold_starts() gives the wall-clock starts from the server's log; "stall start" /
    # "stall end": the hold is aligned on the longest commit stall the workload saw.
    hold_from: str
    hold_starts: Callable[[], list[float]] | None = None


@dataclass
class Summary:
    kind: str
    config: str = ""
    version: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def ok(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["ok"]]

    def to_json(self) -> dict[str, Any]:
        ok = self.ok()
        pause = _percentiles([t["pause_ms"] for t in ok])
        return {
            "quiescer": self.kind,
            "config": self.config,
            "version": self.version,
            "trials": len(self.trials),
            "failed": len(self.trials) - len(ok),
            "error": self.error or None,
            "pause_ms": pause,
            "p95_pause_under_1s": pause["p95"] < TARGET_MS if pause else None,
            "freeze_ms": _percentiles([t["freeze_ms"] for t in ok]),
            "thaw_ms": _percentiles([t["thaw_ms"] for t in ok]),
            "lock_wait_ms": _percentiles(
                [t["positions"]["lock_wait_ms"] for t in ok if "lock_wait_ms" in t["positions"]]
            ),
            "window_ms": _percentiles([t["window_ms"] for t in ok]),
            "stall_ms": _percentiles([t["stall_ms"] for t in ok if t["stall_ms"] is not None]),
            "baseline_tps_median": _median([t["baseline_tps"] for t in ok]),
            "hold_tps_vs_baseline_median": _median(
                [t["hold_vs_baseline"] for t in ok if t["hold_vs_baseline"] is not None]
            ),
            "dip": _dip(ok),
            "backup_s_median": _median([t["backup_s"] for t in ok]),
            "per_trial": self.trials,
        }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50 and p95, and the max: with 20 trials p95 is the 19th of 20."""
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 2)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _dip(trials: list[dict[str, Any]]) -> dict[str, float] | None:
    dips = sorted(t["dip"] for t in trials)
    if not dips:
        return None
    return {"p50": round(dips[max(0, math.ceil(0.5 * len(dips)) - 1)], 4), "worst": dips[-1]}


class Sampler:
    """The workload's commit counter read every SAMPLE_S by a thread of its own, so throughput
    over any window (before, during the hold, over the run) can be measured afterwards; the
    backup runs as a child process and cannot be asked when it held the database."""

    def __init__(self, open_counter: Callable[[], AbstractContextManager[Counter]]) -> None:
        self._open = open_counter
        self.times: list[float] = []
        self.values: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise RuntimeError(f"the commit counter cannot be read: {self.error}")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            with self._open() as read:
                self._ready.set()
                tick = time.monotonic()
                while not self._stop.is_set():
                    before = time.monotonic()
                    value = read()
                    after = time.monotonic()
                    # Appended as a pair under the GIL; readers only look at earlier indexes.
                    self.times.append((before + after) / 2)
                    self.values.append(value)
                    tick = max(tick + SAMPLE_S, after)
                    self._stop.wait(tick - after)
        except Exception as exc:  # noqa: BLE001 - the main thread reports it, it owns the run
            self.error = exc
        finally:
            self._ready.set()

    def count_at(self, t: float) -> float:
        """Commits so far at monotonic time ``t``, linear between the samples around it."""
        times, values = self.times[: len(self.values)], self.values
        i = bisect.bisect_left(times, t)
        if i == 0:
            return float(values[0])
        if i >= len(times):
            return float(values[len(times) - 1])
        t0, t1 = times[i - 1], times[i]
        return values[i - 1] + (values[i] - values[i - 1]) * (t - t0) / max(t1 - t0, 1e-9)

    def rate(self, start: float, end: float) -> float:
        """Commits per second over [start, end]."""
        return (self.count_at(end) - self.count_at(start)) / max(end - start, 1e-9)

    def longest_stall(self, start: float, end: float) -> tuple[float, float] | None:
        """The longest stretch without a commit that overlaps [start, end], as (from, to): the
        counter stayed put between two rises; each edge is placed mid-way between the samples
        around it, so either is within one sample interval."""
        times, values = self.times[: len(self.values)], self.values
        lo = max(1, bisect.bisect_left(times, start) - 1)
        hi = min(len(times) - 1, bisect.bisect_right(times, end) + 1)
        best: tuple[float, float] | None = None
        last_rise: float | None = None
        for k in range(lo, hi + 1):
            if values[k] == values[k - 1]:
                continue
            rise = (times[k - 1] + times[k]) / 2
            if (
                last_rise is not None
                and rise > start
                and last_rise < end
                and (best is None or rise - last_rise > best[1] - best[0])
            ):
                best = (last_rise, rise)
            last_rise = rise
        return best


# --- the databases --------------------------------------------------------------------------


@contextmanager
def _postgresql(base: Path) -> Iterator[Setup]:
    """pgbench (TPC-B-like, 2 clients, scale 1) flat out. PostgreSQL is never paused, so the
    hold is found in its log: pg_backup_start's immediate checkpoint is logged as it starts."""
    with (
        shared_workdir("ffbw") as work,
        loop_filesystem(work, "btrfs", size_mib=VOLUME_MIB, image_dir=base) as mnt,
    ):
        mnt.chmod(0o755)  # the postgres user must reach its data directory
        with postgres_server(mnt / "pg") as server:
            server.psql("ALTER SYSTEM SET log_timezone = 'UTC'")
            server.psql("ALTER SYSTEM SET log_line_prefix = '%m [%p] '")
            server.psql("SELECT pg_reload_conf()")
            pgbench_init(server)
            version = server.psql("SHOW server_version")

            @contextmanager
            def counter() -> Iterator[Counter]:
                # The next transaction id: every pgbench transaction takes one; O(1) to read.
                db = psycopg.connect(server.conninfo, autocommit=True)
                query = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                try:
                    yield lambda: int(db.execute(query).fetchone()[0])  # type: ignore[index]
                finally:
                    db.close()

            def hold_starts() -> list[float]:
                pattern = re.compile(
                    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  "
                    r"checkpoint starting: immediate force wait",
                    re.MULTILINE,
                )
                return [
                    datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
                    .replace(tzinfo=UTC)
                    .timestamp()
                    for m in pattern.finditer(server.log_text())
                ]

            with pgbench(server):
                yield Setup(
                    kind="postgresql",
                    config="pgbench -c 2 -j 1, scale 1; fsync on",
                    version=f"PostgreSQL {version}",
                    paths=[mnt / "pg"],
                    quiesce=f"postgresql:{server.conninfo}",
                    open_counter=counter,
                    hold_from="log",
                    hold_starts=hold_starts,
                )


@contextmanager
def _redis(base: Path) -> Iterator[Setup]:
    """MULTI/EXEC transfers flat out, append-only file on (fsync every second). CLIENT PAUSE
    WRITE is the freeze's first step, so the hold starts where the workload's stall does."""
    with loop_filesystem(base, "btrfs", size_mib=VOLUME_MIB) as mnt:
        (mnt / "redis").mkdir()
        with redis_server(mnt / "redis", appendonly=True) as socket:
            setup = redis.Redis(unix_socket_path=str(socket))
            setup.mset({f"acct:{i}": 1000 for i in range(REDIS_ACCOUNTS)} | {"transfers": 0})
            setup.save()
            version = str(setup.info("server")["redis_version"])  # type: ignore[index]
            setup.close()

            @contextmanager
            def counter() -> Iterator[Counter]:
                # Reads go on during CLIENT PAUSE WRITE: only writers wait.
                client = redis.Redis(unix_socket_path=str(socket))
                try:
                    yield lambda: int(client.get("transfers") or 0)  # type: ignore[arg-type]
                finally:
                    client.close()

            with redis_transfers(socket):
                yield Setup(
                    kind="redis",
                    config="1 client, MULTI/EXEC transfers; appendonly yes, fsync everysec",
                    version=f"Redis {version}",
                    paths=[mnt / "redis"],
                    quiesce=f"redis:unix://{socket}",
                    open_counter=counter,
                    hold_from="stall start",
                )


@contextmanager
def _sqlite(base: Path) -> Iterator[Setup]:
    """Transfers flat out in WAL mode, synchronous=FULL. The freeze waits for the write lock
    (lock_wait_ms) and then the workload stalls, so the hold starts that long before the
    stall; the end is blurred by SQLite's busy-handler sleeps in the waiting writer."""
    with loop_filesystem(base, "btrfs", size_mib=VOLUME_MIB) as mnt:
        db_file = mnt / "bank.db"
        create_bank(db_file, "wal")

        @contextmanager
        def counter() -> Iterator[Counter]:
            # WAL: a reader neither waits for nor blocks the writer.
            db = sqlite3.connect(db_file, isolation_level=None)
            try:
                yield lambda: int(db.execute("SELECT max(id) FROM ledger").fetchone()[0] or 0)
            finally:
                db.close()

        with sqlite_transfers(db_file, "wal"):
            yield Setup(
                kind="sqlite",
                config="1 writer, BEGIN IMMEDIATE transfers; WAL, synchronous=FULL",
                version=f"SQLite {sqlite3.sqlite_version}",
                paths=[mnt],
                quiesce=f"sqlite:{db_file}",
                open_counter=counter,
                hold_from="stall start",
            )


MYSQL_SCHEMA = [
    "CREATE DATABASE bank",
    "CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE bank.counter (id INT PRIMARY KEY, transfers BIGINT NOT NULL) ENGINE=InnoDB",
    "INSERT INTO bank.counter VALUES (1, 0)",
    "INSERT INTO bank.accounts SELECT seq, 1000 FROM bank.seq_0_to_999",
]
# The test module's transfer loop, reduced to InnoDB (it lives in the test, not in a fixture).
MYSQL_TRANSFERS = """
import random, sys, pymysql
db = pymysql.connect(unix_socket=sys.argv[1], user="root", database="bank")
cur = db.cursor()
while True:
    a, b = sorted(random.sample(range(1000), 2))
    x = random.randint(-100, 100)
    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (x, a))
    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (x, b))
    cur.execute("UPDATE counter SET transfers = transfers + 1 WHERE id = 1")
    db.commit()
"""
MYSQL_WRITERS = 2


def _mysql_unusable() -> str:
    """Why the MariaDB part cannot run here, or "" when it can."""
    if not (PROJECT / "tests" / "mariadbfixtures.py").exists():
        return "tests/mariadbfixtures.py does not exist"
    if importlib.util.find_spec("freezeframe.quiesce.mysql") is None:
        return "freezeframe has no mysql quiescer (src/freezeframe/quiesce/mysql.py)"
    return ""


@contextmanager
def _mysql(base: Path) -> Iterator[Setup]:
    """InnoDB transfers flat out (two writers, binary log, durable commits). Commits wait from
    BLOCK_COMMIT, late in the freeze, until the release, which frees the writers at once: the
    hold ends where the workload's stall ends."""
    from mariadbfixtures import mariadb_server

    with (
        shared_workdir("ffbw") as work,  # user mysql must reach its data directory
        loop_filesystem(work, "btrfs", size_mib=VOLUME_MIB, image_dir=base) as mnt,
    ):
        mnt.chmod(0o755)
        with mariadb_server(mnt / "mysql", fresh=True) as server:
            setup = server.connect(autocommit=True)
            with setup.cursor() as cursor:
                for sql in MYSQL_SCHEMA:
                    cursor.execute(sql)
                cursor.execute("SELECT VERSION()")
                version = str(cursor.fetchone()[0])
            setup.close()

            @contextmanager
            def counter() -> Iterator[Counter]:
                db = server.connect(autocommit=True, database="bank")
                cursor = db.cursor()

                def read() -> int:
                    cursor.execute("SELECT transfers FROM counter WHERE id = 1")
                    return int(cursor.fetchone()[0])

                try:
                    yield read
                finally:
                    db.close()

            argv = [sys.executable, "-c", MYSQL_TRANSFERS, str(server.socket)]
            writers = [subprocess.Popen(argv) for _ in range(MYSQL_WRITERS)]
            try:
                time.sleep(0.5)
                yield Setup(
                    kind="mysql",
                    config=f"{MYSQL_WRITERS} writers, InnoDB transfers; binlog, "
                    "sync_binlog=1, flush_log_at_trx_commit=1",
                    version=f"MariaDB {version}",
                    paths=[mnt / "mysql"],
                    quiesce=f"mysql:{server.url}",
                    open_counter=counter,
                    hold_from="stall end",
                )
                assert all(w.poll() is None for w in writers), "the workload died"
            finally:
                for writer in writers:
                    writer.kill()
                    writer.wait()


SETUPS: dict[str, Callable[[Path], AbstractContextManager[Setup]]] = {
    "postgresql": _postgresql,
    "redis": _redis,
    "sqlite": _sqlite,
    "mysql": _mysql,
}


# --- the trials -----------------------------------------------------------------------------


def _freezeframe(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(FREEZEFRAME), "--repo", str(repo), "--no-progress", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


def _locate_hold(
    setup: Setup,
    sampler: Sampler,
    record: dict[str, Any],
    run: tuple[float, float],
    stall: tuple[float, float] | None,
) -> tuple[float, float] | None:
    """Where the hold lay, in monotonic time, or None when it cannot be told."""
    pause_s = record["pause_ms"] / 1000
    if setup.hold_from == "log" and setup.hold_starts is not None:
        offset = time.time() - time.monotonic()
        starts = [s - offset for s in setup.hold_starts() if run[0] <= s - offset <= run[1]]
        return (starts[-1], starts[-1] + pause_s) if len(starts) == 1 else None
    if stall is None:
        return None
    if setup.hold_from == "stall start":
        start = stall[0] - record.get("positions", {}).get("lock_wait_ms", 0) / 1000
        return start, start + pause_s
    return stall[1] - pause_s, stall[1]


def _trial(
    setup: Setup, sampler: Sampler, repo: Path, env: dict[str, str], index: int
) -> dict[str, Any]:
    """One backup at `application`, with the throughput before, during the hold and over it."""
    argv = ["--json", "backup", *map(str, setup.paths), "--consistency", "application"]
    started = time.monotonic()
    done = _freezeframe(repo, env, *argv, "--quiesce", setup.quiesce)
    ended = time.monotonic()
    time.sleep(2 * SAMPLE_S)  # a sample past the end, so the last edge is known
    trial: dict[str, Any] = {"trial": index, "ok": False, "backup_s": round(ended - started, 3)}
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:
        out = {}
    consistency = out.get("consistency") or {}
    if done.returncode != 0 or consistency.get("achieved") != "application":
        error = out.get("error") or done.stderr.strip()[-500:] or f"exit {done.returncode}"
        return trial | {"error": error}
    hold = consistency["quiesce"]
    (record,) = hold["quiescers"]
    baseline = sampler.rate(started - BASELINE_S, started)
    during = sampler.rate(started, ended)
    stall = sampler.longest_stall(started, ended)
    where = _locate_hold(setup, sampler, record, (started, ended), stall)
    hold_tps = sampler.rate(*where) if where else None
    return trial | {
        "ok": record.get("result") == "ok",
        "result": record.get("result"),
        "pause_ms": record["pause_ms"],
        "freeze_ms": record["freeze_ms"],
        "thaw_ms": record["thaw_ms"],
        "window_ms": hold["window_ms"],
        "stall_ms": round((stall[1] - stall[0]) * 1000, 1) if stall else None,
        "baseline_tps": round(baseline, 1),
        "backup_tps": round(during, 1),
        "hold_tps": round(hold_tps, 1) if hold_tps is not None else None,
        "hold_located_by": setup.hold_from if where else None,
        "hold_vs_baseline": round(hold_tps / baseline, 3) if hold_tps is not None else None,
        "dip": round(1 - during / baseline, 4) if baseline > 0 else 1.0,
        "positions": record.get("positions", {}),
    }


def _measure(kind: str, trials: int, base: Path) -> Summary:
    """One database: volume, server, workload, repository, then the trials."""
    summary = Summary(kind)
    if kind == "mysql" and (why := _mysql_unusable()):
        summary.error = f"skipped: {why}"
        return summary
    tool = Freezeframe()
    repo, home = base / "repo", base / "home"
    (home / "tmp").mkdir(parents=True)
    env = tool.env(home, repo)
    # Cheap key derivation, as the tests use: the run's cost is the capture and the read.
    init = _freezeframe(repo, env, *FAST_INIT)
    if init.returncode != 0:
        raise RuntimeError(f"freezeframe init failed: {init.stderr.strip()[-500:]}")
    try:
        with ExitStack() as stack:
            setup = stack.enter_context(SETUPS[kind](base))
            summary.config, summary.version = setup.config, setup.version
            sampler = stack.enter_context(Sampler(setup.open_counter))
            time.sleep(WARMUP_S)
            for index in range(trials):
                time.sleep(SETTLE_S + BASELINE_S)
                trial = _trial(setup, sampler, repo, env, index)
                summary.trials.append(trial)
                if sampler.error is not None:
                    raise RuntimeError(f"the commit counter failed: {sampler.error}")
                if not trial["ok"]:
                    print(f"  trial {index}: {trial.get('error') or trial.get('result')}")
                    if index == 0:  # nothing works: say so once rather than TRIALS times
                        summary.error = f"first backup failed: {trial.get('error')}"
                        break
                else:
                    print(
                        f"  trial {index}: pause {trial['pause_ms']:.1f} ms, stall "
                        f"{trial['stall_ms']} ms, dip {trial['dip']:.1%}",
                        flush=True,
                    )
    except GAVE_UP as exc:
        summary.error = f"skipped: {exc.msg}"
    return summary


def _fmt(p: dict[str, float] | None, digits: int = 1) -> str:
    return " / ".join(f"{p[k]:.{digits}f}" for k in ("p50", "p95", "max")) if p else "-"


def _table(summaries: list[Summary]) -> str:
    lines = [
        "| quiescer | trials | pause ms p50 / p95 / max | p95 < 1 s | freeze ms p50 "
        "| hold window ms p50 | stall seen ms p50 / max | baseline tx/s | during pause "
        "| dip over backup p50 / worst | backup s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if not s.ok():
            lines.append(f"| {s.kind} | {s.error or 'no trial succeeded'} |" + " |" * 9)
            continue
        doc = s.to_json()
        stall = doc["stall_ms"]
        stall_text = f"{stall['p50']:.0f} / {stall['max']:.0f}" if stall else "-"
        hold = doc["hold_tps_vs_baseline_median"]
        dip = doc["dip"]
        failed = f" ({doc['failed']} failed)" if doc["failed"] else ""
        lines.append(
            f"| {s.kind} | {len(s.ok())}{failed} | {_fmt(doc['pause_ms'])} "
            f"| {'yes' if doc['p95_pause_under_1s'] else 'NO'} "
            f"| {doc['freeze_ms']['p50']:.1f} | {doc['window_ms']['p50']:.1f} | {stall_text} "
            f"| {doc['baseline_tps_median']:.0f} "
            f"| {'-' if hold is None else f'{hold:.0%} of baseline'} "
            f"| {dip['p50']:.1%} / {dip['worst']:.1%} | {doc['backup_s_median']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--work", type=Path, default=PROJECT / "bench" / "work" / "freeze_window")
    parser.add_argument("--json", type=Path, help="default bench/results/freeze_window-<time>")
    parser.add_argument("--only", default=",".join(KINDS), help="comma-separated quiescers")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("freeze_window.py needs root: loop btrfs volumes and database servers")
    kinds = args.only.split(",")
    if unknown := set(kinds) - set(KINDS):
        sys.exit(f"unknown quiescer(s): {', '.join(sorted(unknown))} (from {', '.join(KINDS)})")
    # SIGTERM unwinds like Ctrl-C: workloads killed, servers stopped, volumes unmounted.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"freeze_window-{stamp}.json"
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    load_before = os.getloadavg()
    summaries: list[Summary] = []
    for kind in kinds:
        base = args.work / kind
        base.mkdir(parents=True)
        print(f"{kind}: {args.trials} backups at application consistency under load", flush=True)
        summaries.append(_measure(kind, args.trials, base))
        if summaries[-1].error:
            print(f"  {summaries[-1].error}", flush=True)
    table = _table(summaries)
    print("\n" + table)
    for s in summaries:
        if s.error.startswith("skipped"):
            print(f"{s.kind} {s.error}")
    doc = {
        "started": stamp,
        "command": sys.argv,
        "freezeframe": Freezeframe().version(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "settings": {
            "trials": args.trials,
            "sample_s": SAMPLE_S,
            "baseline_s": BASELINE_S,
            "settle_s": SETTLE_S,
            "target_ms": TARGET_MS,
            "init": list(FAST_INIT),
        },
        "results": [s.to_json() for s in summaries],
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0 if all(s.ok() or s.error.startswith("skipped") for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
