"""``freezeframe history [PLAN]``: the plans' runs, latest first."""

from __future__ import annotations

import argparse
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes, table
from freezeframe.cli.plansfile import add_config_option, load
from freezeframe.plans.history import History


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("plan", nargs="?", help="only this plan's runs (PLAN:check: its checks)")
    parser.add_argument("--last", type=int, default=50, metavar="N", help="at most N runs")


def run(ctx: CommandContext) -> int:
    plans = load(ctx.args)
    runs = [r.to_json() for r in History(plans.state.path).runs(ctx.args.plan, ctx.args.last)]
    ctx.out.result(runs, lambda: _text(runs))
    return 0


def _text(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs"
    headers = ["plan", "status", "started", "took", "level", "pause", "read", "added", "error"]
    rows = [
        [
            r["plan"],
            r["status"],
            r["started"][:19].replace("T", " "),
            "" if r["duration_s"] is None else f"{r['duration_s']:.1f}s",
            r["achieved"] or "",
            "" if r["pause_ms"] is None else f"{r['pause_ms']:.0f}ms",
            "" if r["bytes_read"] is None else human_bytes(r["bytes_read"]),
            "" if r["bytes_added"] is None else human_bytes(r["bytes_added"]),
            r["error"][:60],
        ]
        for r in runs
    ]
    return table(headers, rows)
