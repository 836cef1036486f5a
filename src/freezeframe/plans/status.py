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
        next_run = schedule.next_after(_dt(now)).timestamp()
        first = history.runs(name, limit=1_000_000)[-1:]  # the plan's first run: since then
        since = _dt(first[0].started) if first else _dt(now)
        grace = timedelta(seconds=plans.agent.overdue_grace_s)
        overdue = schedule.overdue(
            _dt(success.started) if success else None, _dt(now), grace, since
        )
    return {
        "plan": name,
        "last": last.to_json() if last else None,
        "last_success": success.to_json()["ended"] if success else None,
        "next_run": _dt(next_run).isoformat() if next_run is not None else None,
        "overdue": overdue,
        "last_check": check.to_json() if check else None,
    }


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
