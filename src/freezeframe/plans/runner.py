"""One run of a plan: hooks before, the backup, retention, hooks after (or on error), the run
recorded in the history, alerts and pings sent.

The backup and the retention are ``freezeframe backup`` and ``freezeframe forget`` run as child
processes with ``--json``: the very commands an admin would type, so everything a plan does can
be done by hand; and a run that crashes or is stopped takes only its own process down, whose
watchdog thaws and resumes whatever it held, while the agent and other plans' runs go on.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from freezeframe.errors import (
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_PARTIAL,
    RepositoryLocked,
    UsageError,
)
from freezeframe.levels import AUTO, Level
from freezeframe.plans import envfile
from freezeframe.plans.config import Plan, PlansFile
from freezeframe.plans.history import History, Run
from freezeframe.plans.notify import Event, Notifier, NotifyTargets, SmtpSettings

LOCK_RETRY_S = 600.0  # retention waits this long for another plan's backup to let go
LOCK_POLL_S = 2.0
PROBE_TIMEOUT_S = 120.0  # doctor --repo: a connect timeout, a few requests and 8 MiB moved
PLAN_TAG = "plan:{name}"  # every snapshot of a plan carries it; retention looks at no other


@dataclass
class Step:
    """A command of the run, for ``--dry-run`` and for errors."""

    what: str
    argv: list[str]

    def text(self) -> str:
        return f"{self.what}: {shlex.join(self.argv)}"


@dataclass
class RunControl:
    """How the agent stops a run: SIGTERM to its current child, which stops safely."""

    stopping: threading.Event = field(default_factory=threading.Event)
    _child: subprocess.Popen[str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        with self._lock:
            self.stopping.set()
            if self._child is not None and self._child.poll() is None:
                self._child.send_signal(signal.SIGTERM)

    def run(self, argv: list[str], env: dict[str, str], timeout_s: float | None = None) -> Any:
        with self._lock:
            if self.stopping.is_set():
                raise _Stopped
            child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # signals reach it from the agent only
            )
            self._child = child
        try:
            out, err = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            return subprocess.CompletedProcess(argv, -9, out, err)
        finally:
            with self._lock:
                self._child = None
        return subprocess.CompletedProcess(argv, child.returncode, out, err)


class _Stopped(Exception):
    pass


class _Failed(Exception):
    pass


def freezeframe_argv(plan: Plan, *command: str) -> list[str]:
    argv = [sys.executable, "-m", "freezeframe", "--repo", plan.repository, "--json"]
    argv += ["--no-progress"]
    if plan.password_file:
        argv += ["--password-file", plan.password_file]
    return argv + list(command)


def backup_step(name: str, plan: Plan) -> Step:
    command = ["backup", *plan.sources]
    for vm in plan.vms:
        command += ["--vm", vm]
    for pattern in plan.excludes:
        command += ["--exclude", pattern]
    command += ["--consistency", plan.consistency, "--fallback", plan.fallback]
    for spec in plan.quiesce:
        command += ["--quiesce", spec]
    if plan.quiesce_cap_s is not None:
        command += ["--quiesce-cap", f"{plan.quiesce_cap_s:g}"]
    if plan.freeze_cap_s is not None:
        command += ["--freeze-cap", f"{plan.freeze_cap_s:g}"]
    if plan.snapshot_size is not None:
        command += ["--snapshot-size", plan.snapshot_size]
    for tag in [PLAN_TAG.format(name=name), *plan.tags]:
        command += ["--tag", tag]
    return Step("backup", freezeframe_argv(plan, *command))


def retention_step(name: str, plan: Plan) -> Step | None:
    keep = plan.retention
    if keep.policy().is_empty():
        return None
    command = ["forget", "--tag", PLAN_TAG.format(name=name)]
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        value = getattr(keep, f"keep_{unit}")
        if value is not None:
            command += [f"--keep-{unit}", str(value)]
    if keep.keep_within:
        command += ["--keep-within", keep.keep_within]
    if keep.prune:
        command.append("--prune")
    return Step("retention", freezeframe_argv(plan, *command))


def check_step(plan: Plan) -> Step:
    command = ["check"]
    if plan.check.read_data_subset:
        command += ["--read-data-subset", plan.check.read_data_subset]
    return Step("check", freezeframe_argv(plan, *command))


def probe_step(plan: Plan) -> Step:
    """``doctor --repo`` on the plan's repository: reachable, and what its credentials may do."""
    return Step("probe", freezeframe_argv(plan, "doctor", "--repo"))


def probe(name: str, plan: Plan, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """The plan's repository examined by ``doctor --repo`` in a child process, with the
    environment its runs get: doctor's ``repository`` document, or ``{"ok": False, "error":
    ...}`` when it could not even start (a bad environment file, a location that does not
    parse)."""
    try:
        env = {**os.environ, "FREEZEFRAME_PLAN": name, **_environment(plan)}
    except _Failed as exc:
        return {"ok": False, "error": str(exc)}
    done = RunControl().run(probe_step(plan).argv, env, timeout_s)
    document = _json(done.stdout) or {}
    report = document.get("repository")
    if isinstance(report, dict):
        return report
    if done.returncode == -9:
        return {"ok": False, "error": f"doctor --repo took longer than {timeout_s:g} s"}
    return {"ok": False, "error": _error_of(document, done.stderr, "doctor")}


def _environment(plan: Plan) -> dict[str, str]:
    """The variables of the plan's environment file, read anew for every run (so a changed
    file counts without a reload, and a loosened one is refused); none without one."""
    if plan.environment_file is None:
        return {}
    try:
        return envfile.read(plan.environment_file)
    except UsageError as exc:
        raise _Failed(str(exc)) from exc


def steps(name: str, plan: Plan) -> list[Step]:
    """What a run does, in order (the error hooks only on failure)."""
    listed = [Step("hook before", ["sh", "-c", c]) for c in plan.hooks.before]
    listed.append(backup_step(name, plan))
    retention = retention_step(name, plan)
    if retention is not None:
        listed.append(retention)
    listed += [Step("hook after", ["sh", "-c", c]) for c in plan.hooks.after]
    listed += [Step("hook on error", ["sh", "-c", c]) for c in plan.hooks.on_error]
    return listed


def notifier_for(plan: Plan, plans: PlansFile) -> Notifier:
    smtp = None
    if plans.smtp is not None:
        smtp = SmtpSettings(**plans.smtp.model_dump())
    targets = NotifyTargets(
        webhook=tuple(plan.notify.webhook),
        email=tuple(plan.notify.email),
        smtp=smtp,
        ping=plan.notify.ping,
        on=tuple(plan.notify.on),
    )
    return Notifier(targets)


def run_plan(
    name: str,
    plans: PlansFile,
    history: History,
    *,
    trigger: str = "manual",
    control: RunControl | None = None,
    clock: Callable[[], float] = time.time,
    log: Callable[[str], None] = lambda _: None,
) -> Run:
    """Run the plan once and record it; never raises for the run's own failures."""
    plan = plans.plan(name)
    control = control or RunControl()
    notifier = notifier_for(plan, plans)
    run = history.start(name, trigger, clock(), plan.consistency)
    log(f"plan {name}: run {run.id} started ({trigger})")
    env = {**os.environ, "FREEZEFRAME_PLAN": name}
    for error in notifier.ping("start"):
        log(f"plan {name}: ping: {error}")
    try:
        for command in plan.hooks.before:
            _hook(control, "before", command, env, plan.hooks.timeout_s)
        child_env = {**env, **_environment(plan)}  # for freezeframe's own steps only
        _backup(control, name, plan, child_env, run)
        retention = retention_step(name, plan)
        if retention is not None:
            _retention(control, retention, child_env, name)
    except _Stopped:
        run.status, run.error = "interrupted", "stopped by the agent"
    except _Failed as exc:
        run.status, run.error = "failed", str(exc)
    hooks = plan.hooks.after if run.status in ("success", "degraded") else plan.hooks.on_error
    run_env = {**env, "FREEZEFRAME_RUN_STATUS": run.status, "FREEZEFRAME_RUN_ERROR": run.error}
    for command in hooks:
        try:
            _hook(RunControl(), "after" if hooks is plan.hooks.after else "on_error", command,
                  run_env, plan.hooks.timeout_s)  # fmt: skip
        except _Failed as exc:
            log(f"plan {name}: {exc}")
            if run.status in ("success", "degraded"):
                run.status, run.error = "failed", str(exc)
    run.ended = clock()
    history.finish(run)
    log(f"plan {name}: run {run.id} {run.status}{': ' + run.error if run.error else ''}")
    _tell(notifier, name, run, log)
    return run


def _hook(
    control: RunControl, which: str, command: str, env: dict[str, str], timeout_s: float
) -> None:
    done = control.run(["sh", "-c", command], env, timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        why = "timed out" if done.returncode == -9 else f"exited {done.returncode}"
        raise _Failed(f"hook {which} `{command}` {why}{': ' + last if last else ''}")


def _backup(control: RunControl, name: str, plan: Plan, env: dict[str, str], run: Run) -> None:
    done = _run_waiting_for_lock(control, backup_step(name, plan), env)
    if done.returncode == EXIT_INTERRUPTED or (control.stopping.is_set() and done.returncode):
        raise _Stopped
    document = _json(done.stdout)
    if done.returncode not in (0, EXIT_PARTIAL):
        raise _Failed(_error_of(document, done.stderr, "backup"))
    snapshots = _snapshots_of(document)
    run.snapshots = [s["snapshot_id"] for s in snapshots]
    run.report = {s["snapshot_id"]: s.get("consistency", {}) for s in snapshots}
    levels = [Level.recorded(s.get("consistency", {}).get("achieved")) for s in snapshots]
    run.achieved = min(levels).value if levels else None
    windows = [_window_ms(s.get("consistency", {})) for s in snapshots]
    run.pause_ms = max((w for w in windows if w is not None), default=None)
    run.bytes_read = sum(int(s.get("summary", {}).get("bytes_read", 0)) for s in snapshots)
    run.bytes_added = sum(int(s.get("summary", {}).get("bytes_added", 0)) for s in snapshots)
    run.status = "success"
    asked = plan.consistency
    if asked != AUTO and Level.recorded(run.achieved) < Level.parse(asked):
        run.status = "degraded"
        reasons = [s.get("consistency", {}).get("reason", "") for s in snapshots]
        run.error = f"{run.achieved} instead of {asked}: " + "; ".join(r for r in reasons if r)
    if done.returncode == EXIT_PARTIAL:
        errors = document.get("paths", document).get("errors", []) if document else []
        run.status = "degraded"
        run.error = (run.error + "; " if run.error else "") + (
            f"{len(errors)} files could not be read"
        )


def _retention(control: RunControl, step: Step, env: dict[str, str], name: str) -> None:
    done = _run_waiting_for_lock(control, step, env)
    if control.stopping.is_set() and done.returncode:
        raise _Stopped
    if done.returncode != 0:
        raise _Failed("retention: " + _error_of(_json(done.stdout), done.stderr, "forget"))


def _run_waiting_for_lock(
    control: RunControl, step: Step, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run a step; while another plan's run holds the repository's lock against it (a prune
    excludes backups, a backup excludes a prune), wait and try again, up to LOCK_RETRY_S."""
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        done: subprocess.CompletedProcess[str] = control.run(step.argv, env)
        document = _json(done.stdout) or {}
        locked = (
            done.returncode == EXIT_LOCKED
            or document.get("error", {}).get("code") == RepositoryLocked.code
        )
        if not locked or time.monotonic() > deadline:
            return done
        if control.stopping.wait(LOCK_POLL_S):
            raise _Stopped


def _tell(notifier: Notifier, name: str, run: Run, log: Callable[[str], None]) -> None:
    errors: list[str] = []
    if run.status in ("failed", "degraded", "interrupted"):
        kind = "degraded" if run.status == "degraded" else "failed"
        message = f"plan {name}: {run.status}: {run.error}"
        event = Event(kind=kind, plan=name, message=message, run=run.to_json(), time=run.ended)
        errors += notifier.alert(event)
        if run.status == "degraded":
            errors += notifier.ping("success", message)
        else:
            errors += notifier.ping("fail", message)
    else:
        errors += notifier.ping("success")
    for error in errors:
        log(f"plan {name}: notify: {error}")


def _snapshots_of(document: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not document:
        return []
    found = []
    if "snapshot_id" in document:
        found.append(document)
    if isinstance(document.get("paths"), dict):
        found.append(document["paths"])
    found += list(document.get("vms", []))
    return found


def _window_ms(consistency: dict[str, Any]) -> float | None:
    windows = [
        section.get("window_ms")
        for section in (consistency.get("quiesce") or {}, consistency.get("pause") or {})
    ]
    values = [float(w) for w in windows if w is not None]
    return max(values) if values else None


def _json(text: str) -> dict[str, Any] | None:
    try:
        document = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _error_of(document: dict[str, Any] | None, stderr: str, what: str) -> str:
    if document and isinstance(document.get("error"), dict):
        return str(document["error"].get("message", f"{what} failed"))
    last = (stderr.strip().splitlines() or [f"{what} failed"])[-1]
    return last.removeprefix("freezeframe: error: ")


def run_check(
    name: str,
    plans: PlansFile,
    history: History,
    *,
    control: RunControl | None = None,
    clock: Callable[[], float] = time.time,
    log: Callable[[str], None] = lambda _: None,
) -> Run:
    """The plan's periodic integrity check, recorded as ``PLAN:check``."""
    plan = plans.plan(name)
    control = control or RunControl()
    run = history.start(f"{name}:check", "check", clock(), None)
    try:
        env = {**os.environ, "FREEZEFRAME_PLAN": name, **_environment(plan)}
        done = control.run(check_step(plan).argv, env)
        if control.stopping.is_set() and done.returncode:
            raise _Stopped
        if done.returncode != 0:
            raise _Failed("check: " + _error_of(_json(done.stdout), done.stderr, "check"))
        run.status = "success"
    except _Stopped:
        run.status, run.error = "interrupted", "stopped by the agent"
    except _Failed as exc:
        run.status, run.error = "failed", str(exc)
    run.ended = clock()
    history.finish(run)
    log(f"plan {name}: check {run.status}{': ' + run.error if run.error else ''}")
    if run.status == "failed":
        event = Event(
            kind="failed", plan=name, message=run.error, run=run.to_json(), time=run.ended
        )
        for error in notifier_for(plan, plans).alert(event):
            log(f"plan {name}: notify: {error}")
    return run
