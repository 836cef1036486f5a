"""What ``status`` shows per plan: the last result, the last success, the next run, and
whether the plan is overdue (no success within a scheduled time plus the grace)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from freezeframe.plans.config import PlansFile
from freezeframe.plans.history import History
from freezeframe.plans.schedule import Schedule


def plan_status(name: str, plans: PlansFile, history: History, now: float) -> dict[str, Any]:
    plan = plans.plan(name)
    last = history.last(name)
    success = history.last(name, ("success", "degraded"))
    check = history.last(f"{name}:check")
    next_run = overdue = None
    if plan.schedule:
        schedule = Schedule.parse(plan.schedule, plan.timezone)
        next_run = schedule.next_after(utc(now)).timestamp()
        first = history.first_started(name)  # a plan is watched from its first run on
        overdue = is_overdue(name, plans, history, now, since=now if first is None else first)
    return {
        "plan": name,
        "last": last.to_json() if last else None,
        "last_success": success.to_json()["ended"] if success else None,
        "next_run": utc(next_run).isoformat() if next_run is not None else None,
        "overdue": overdue,
        "last_check": check.to_json() if check else None,
    }


def is_overdue(name: str, plans: PlansFile, history: History, now: float, since: float) -> bool:
    """No successful (or degraded) run since a scheduled time plus the grace; a plan that never
    succeeded is measured from ``since``. False for a plan without a schedule."""
    plan = plans.plans.get(name)
    if plan is None or not plan.schedule:
        return False
    success = history.last(name, ("success", "degraded"))
    schedule = Schedule.parse(plan.schedule, plan.timezone)
    grace = timedelta(seconds=plans.agent.overdue_grace_s)
    last = utc(success.started) if success else None
    return schedule.overdue(last, utc(now), grace, utc(since))


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
