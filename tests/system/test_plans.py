"""Backup plans end to end: a plan run into a real repository with retention applied; a failing
hook fails the run and a local HTTP receiver gets the webhook; a degraded run alerts too; two
plans on one repository at once; a day of scheduled runs compressed through the agent's loop;
SIGTERM to the agent during a run leaves nothing held and the repository valid."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ffharness import Cli, hold_env, run_freezeframe
from freezeframe.hooks import Point
from freezeframe.plans.agent import Agent
from freezeframe.plans.history import History, Run
from fsfixtures import loop_filesystem
from sqlitefixtures import create_bank


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.bodies.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()


def _plans(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(f'[state]\npath = "{tmp_path}/state.db"\n{body}')
    return path


def _data(tmp_path: Path, name: str = "data") -> Path:
    data = tmp_path / name
    data.mkdir(exist_ok=True)
    (data / "file.txt").write_text(f"{name} {time.time_ns()}\n")
    return data


def _agent_on_a_test_clock(plans: Path) -> tuple[Agent, list[float]]:
    """An agent started at 2026-11-30 00:00:30 UTC on a clock the test moves (``now[0]``)."""
    now = [datetime(2026, 11, 30, 0, 0, 30, tzinfo=UTC).timestamp()]
    agent = Agent(str(plans), clock=lambda: now[0], log=lambda _: None)
    agent.begin()
    return agent, now


def _ff(plans: Path, *args: str, expect: int = 0) -> Any:
    done = run_freezeframe("--json", *args, "--config", str(plans), repo=None)
    assert done.returncode == expect, done.stderr
    return json.loads(done.stdout)


def test_a_plan_runs_into_the_repository_and_retention_keeps_its_last_two(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    data = _data(tmp_path)
    plans = _plans(
        tmp_path,
        f"""[plans.files]
repository = "{repo}"
sources = ["{data}"]
tags = ["nightly"]
[plans.files.retention]
keep_last = 2
""",
    )
    assert _ff(plans, "plan", "validate")["plans"] == ["files"]
    dry = _ff(plans, "plan", "run", "files", "--dry-run")
    assert [step["step"] for step in dry] == ["backup", "retention"]
    for _ in range(3):
        (data / "file.txt").write_text(f"{time.time_ns()}\n")
        run = _ff(plans, "plan", "run", "files")
        assert run["status"] == "success", run
        assert run["achieved"] == "none" and run["bytes_added"] > 0
    snapshots = cli("snapshots")
    assert len(snapshots) == 2  # retention after every run
    assert all(set(s["tags"]) == {"plan:files", "nightly"} for s in snapshots)
    history = _ff(plans, "history", "files")
    assert [r["status"] for r in history] == ["success"] * 3
    assert history[0]["snapshots"] == [snapshots[-1]["id"]] or history[0]["snapshots"]
    [status] = _ff(plans, "status")
    assert status["last"]["status"] == "success" and status["next_run"] is None
    cli("check")


def test_a_failing_hook_fails_the_run_and_the_webhook_hears_of_it(
    repo: Path, cli: Cli, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = webhook
    data = _data(tmp_path)
    plans = _plans(
        tmp_path,
        f"""[plans.files]
repository = "{repo}"
sources = ["{data}"]
[plans.files.hooks]
before = ["echo preparing; echo 'no database dump today' >&2; exit 3"]
on_error = ["touch {tmp_path}/on-error-ran"]
[plans.files.notify]
webhook = ["{url}"]
""",
    )
    run = _ff(plans, "plan", "run", "files", expect=1)
    assert run["status"] == "failed"
    assert "hook before" in run["error"] and "exited 3: no database dump today" in run["error"]
    assert cli("snapshots") == []  # the backup did not run
    assert (tmp_path / "on-error-ran").exists()
    [alert] = bodies
    assert alert["kind"] == "failed" and alert["plan"] == "files"
    assert "no database dump today" in alert["message"]


def test_a_degraded_run_succeeds_and_alerts(
    repo: Path, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = webhook
    data = _data(tmp_path)
    plans = _plans(
        tmp_path,
        f"""[plans.files]
repository = "{repo}"
sources = ["{data}"]
consistency = "crash"
fallback = "degrade"
[plans.files.notify]
webhook = ["{url}"]
""",
    )
    run = _ff(plans, "plan", "run", "files")
    assert run["status"] == "degraded" and run["achieved"] == "none"
    assert run["error"].startswith("none instead of crash")
    assert [b["kind"] for b in bodies] == ["degraded"]


def test_two_plans_on_one_repository_at_once(repo: Path, cli: Cli, tmp_path: Path) -> None:
    body = ""
    for name in ("one", "two"):
        data = _data(tmp_path, name)
        body += f"""[plans.{name}]
repository = "{repo}"
sources = ["{data}"]
[plans.{name}.retention]
keep_last = 1
"""
    agent = Agent(str(_plans(tmp_path, body)), log=lambda _: None)
    for _ in range(2):
        agent.fire("one", "manual")
        agent.fire("two", "manual")
        agent.wait_idle()
    runs = agent.history.runs()
    assert [r.status for r in runs] == ["success"] * 4, [r.error for r in runs]
    tags = sorted(tuple(s["tags"]) for s in cli("snapshots"))
    assert tags == [("plan:one",), ("plan:two",)]  # each plan's retention kept its own last
    cli("check")


def test_a_day_of_scheduled_runs_through_the_agent(
    repo: Path, cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every two hours, a check at 03:30, one run failing at noon by its hook; the agent's clock
    is the test's, the runs are real."""
    data = _data(tmp_path)
    flag = tmp_path / "fail-now"
    plans = _plans(
        tmp_path,
        f"""[plans.files]
repository = "{repo}"
sources = ["{data}"]
schedule = ["0 */2 * * *"]
timezone = "UTC"
[plans.files.retention]
keep_last = 4
[plans.files.check]
schedule = ["30 3 * * *"]
[plans.files.hooks]
before = ["test ! -e {flag}"]
""",
    )
    agent, now = _agent_on_a_test_clock(plans)
    start = now[0]
    while now[0] < start + 24 * 3600:
        flag_wanted = abs(now[0] - (start + 12 * 3600)) < 60
        if flag_wanted:
            flag.touch()
        delay = agent.tick()
        agent.wait_idle()
        flag.unlink(missing_ok=True)
        now[0] += max(delay, 1.0)
    runs = agent.history.runs("files")
    assert len(runs) == 12, [(r.started, r.status) for r in runs]
    assert [r.status for r in runs].count("failed") == 1
    assert [r.status for r in runs].count("success") == 11
    [check] = agent.history.runs("files:check")
    assert check.status == "success"
    assert len(cli("snapshots")) == 4
    status = _ff(plans, "status")
    history = run_freezeframe("history", "--config", str(plans), repo=None).stdout
    shown = run_freezeframe("status", "--config", str(plans), repo=None).stdout
    with capsys.disabled():
        print(f"\n--- status after the day ---\n{shown}--- history ---\n{history}")
    assert status[0]["last"]["status"] == "success"


def _writable(db_file: Path) -> bool:
    """Whether a write to the SQLite database goes through within 0.3 s (not held)."""
    db = sqlite3.connect(db_file, timeout=0.3, isolation_level=None)
    try:
        db.execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 0)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def test_sigterm_to_the_agent_during_a_run_releases_and_keeps_the_repository_valid(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """The agent's run holds a SQLite database (application level, on a btrfs loop volume);
    SIGTERM to the agent: the run's process releases it, removes its snapshot, the repository
    checks clean and the history says the run was interrupted."""
    with loop_filesystem(tmp_path, "btrfs", size_mib=256) as mount:
        db_file = mount / "bank.db"
        create_bank(db_file, "wal")
        plans = _plans(
            tmp_path,
            f"""[plans.held]
repository = "{repo}"
sources = ["{mount}"]
consistency = "application"
quiesce = ["sqlite:{db_file}"]
schedule = ["0 * * * *"]
""",
        )
        # A scheduled run two hours ago: the agent catches up at once when it starts.
        history = History(f"{tmp_path}/state.db")
        earlier = time.time() - 2 * 3600
        history.record(Run("held", "success", "schedule", earlier, earlier + 1, "application"))
        env = {**os.environ, **hold_env(Point.APPLICATIONS_HELD, 60)}
        agent = subprocess.Popen(
            [sys.executable, "-m", "freezeframe", "agent", "--config", str(plans)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while _writable(db_file):
                assert time.monotonic() < deadline, "the agent's run never held the database"
                assert agent.poll() is None, agent.stderr.read() if agent.stderr else ""
                time.sleep(0.1)
            agent.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert agent.wait(60) == 0
            took = time.monotonic() - stopped
            assert _writable(db_file), "the database stayed held"
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        log = agent.stderr.read() if agent.stderr else ""
        assert "SIGTERM: stopping the runs safely" in log, log
        [last, _earlier] = History(f"{tmp_path}/state.db").runs("held")
        assert last.trigger == "missed" and last.status == "interrupted", last
        assert cli("snapshots") == []
        assert not list((mount / ".freezeframe-snapshots").glob("*"))
        cli("check")
        print(f"agent stopped {took:.1f} s after SIGTERM")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for(stream: Any, text: str, seconds: float = 30) -> str:
    """Lines of the agent's log up to the one containing ``text``."""
    seen = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} in the agent's log:\n{seen}")


def test_sighup_reloads_a_good_file_keeps_the_plans_of_a_broken_one_and_metrics_are_served(
    repo: Path, tmp_path: Path
) -> None:
    data = _data(tmp_path)
    port = _free_port()
    plan = f'repository = "{repo}"\nsources = ["{data}"]\n'
    plans = _plans(tmp_path, f'[agent]\nmetrics_listen = "127.0.0.1:{port}"\n[plans.one]\n{plan}')
    run_freezeframe("plan", "run", "one", "--config", str(plans), repo=None)
    agent = subprocess.Popen(
        [sys.executable, "-m", "freezeframe", "agent", "--config", str(plans)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(agent.stderr, "1 plans from")
        families = {
            family.name: family
            for family in text_string_to_metric_families(
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
                .read()
                .decode()
            )
        }
        [runs] = [
            s for s in families["freezeframe_plan_runs"].samples if s.labels["result"] == "success"
        ]
        assert runs.labels["plan"] == "one" and runs.value == 1
        [level] = families["freezeframe_plan_last_consistency_level"].samples
        assert level.value == 0  # none: a plain directory
        good = plans.read_text()
        plans.write_text(good + "[plans.two]\nrepository = 7\n")
        agent.send_signal(signal.SIGHUP)
        log = _wait_for(agent.stderr, "was not reloaded")
        assert "plans.two.repository: Input should be a valid string" in log
        plans.write_text(good + f"[plans.two]\n{plan}")
        agent.send_signal(signal.SIGHUP)
        _wait_for(agent.stderr, "2 plans")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_run_due_while_the_last_one_runs_is_skipped_or_queued(
    repo: Path, tmp_path: Path, overlap: str
) -> None:
    data = _data(tmp_path)
    plans = _plans(
        tmp_path,
        f"""[plans.slow]
repository = "{repo}"
sources = ["{data}"]
overlap = "{overlap}"
[plans.slow.hooks]
before = ["sleep 1.5"]
""",
    )
    agent = Agent(str(plans), log=lambda _: None)
    agent.fire("slow", "schedule")
    agent.fire("slow", "schedule")  # due while the first one sleeps in its hook
    agent.wait_idle()
    time.sleep(0.2)
    agent.wait_idle()  # a queued run starts as the first one ends
    statuses = sorted(r.status for r in agent.history.runs("slow"))
    if overlap == "skip":
        assert statuses == ["skipped", "success"]
        [skipped] = [r for r in agent.history.runs("slow") if r.status == "skipped"]
        assert skipped.error == "the previous run was still running"
    else:
        assert statuses == ["success", "success"]


def test_an_overdue_plan_alerts_once(
    repo: Path, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Hourly runs that all fail: once an hour plus the grace has passed with no success, one
    overdue alert (beside each run's failure alert), not one per tick."""
    url, bodies = webhook
    data = _data(tmp_path)
    plans = _plans(
        tmp_path,
        f"""[agent]
overdue_grace_s = 600
[plans.failing]
repository = "{repo}"
sources = ["{data}"]
schedule = ["0 * * * *"]
timezone = "UTC"
[plans.failing.hooks]
before = ["exit 1"]
[plans.failing.notify]
webhook = ["{url}"]
""",
    )
    agent, now = _agent_on_a_test_clock(plans)
    start = now[0]
    while now[0] < start + 3 * 3600:
        agent.tick()
        agent.wait_idle()
        now[0] += 300
    kinds = [body["kind"] for body in bodies]
    # The runs at 01:00 and 02:00 fail; overdue from 01:10 (the first slot plus the grace).
    assert kinds == ["failed", "overdue", "failed"], kinds
