"""``freezeframe status``: one line per plan: last result, last success, next run, overdue."""

from __future__ import annotations

import argparse
import time
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.cli.plansfile import add_config_option, load
from freezeframe.plans.history import History
from freezeframe.plans.status import plan_status


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)


def run(ctx: CommandContext) -> int:
    plans = load(ctx.args)
    history = History(plans.state.path)
    now = time.time()
    rows = [plan_status(name, plans, history, now) for name in sorted(plans.plans)]
    ctx.out.result(rows, lambda: "\n".join(map(_line, rows)) or "no plans")
    return 0


def _line(row: dict[str, Any]) -> str:
    last = row["last"]
    result = "never run" if last is None else f"last run {last['status']} {_when(last['started'])}"
    if last is not None and last["achieved"]:
        result += f" ({last['achieved']})"
    success = f"last success {_when(row['last_success'])}" if row["last_success"] else "no success"
    following = f"next {_when(row['next_run'])}" if row["next_run"] else "no schedule"
    flag = ", OVERDUE" if row["overdue"] else ""
    return f"{row['plan']}: {result}; {success}; {following}{flag}"


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ") + " UTC"
