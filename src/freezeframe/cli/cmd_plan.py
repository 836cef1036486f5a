"""``freezeframe plan list|show NAME|validate [--probe]|run NAME [--dry-run]``: the plans file's
plans, checked (and their repositories examined), shown, or one run by hand (recorded in the
history like the agent's)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.cli.plansfile import add_config_option, load
from freezeframe.errors import EXIT_FATAL
from freezeframe.plans.history import History
from freezeframe.plans.runner import probe, run_plan, steps


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="list the plans")
    show = actions.add_parser("show", help="show a plan, defaults filled in")
    show.add_argument("name")
    validate = actions.add_parser("validate", help="check the plans file")
    validate.add_argument(
        "--probe",
        action="store_true",
        help="also examine each plan's repository (doctor --repo, with the plan's environment "
        "file): reachable, and what its credentials may do; exit 1 if one fails",
    )
    run = actions.add_parser("run", help="run a plan now")
    run.add_argument("name")
    run.add_argument("-n", "--dry-run", action="store_true", help="only show what would run")
    for action in (listing, show, validate, run):
        add_config_option(action, inner=True)


def run(ctx: CommandContext) -> int:
    plans = load(ctx.args)
    action = ctx.args.action
    if action == "list":
        rows = [
            {
                "plan": name,
                "sources": plan.sources,
                "vms": plan.vms,
                "repository": plan.repository,
                "consistency": plan.consistency,
                "schedule": plan.schedule,
            }
            for name, plan in sorted(plans.plans.items())
        ]
        ctx.out.result(rows, lambda: "\n".join(_line(r) for r in rows) or "no plans")
    elif action == "show":
        doc = plans.plan(ctx.args.name).model_dump(mode="json")
        ctx.out.result(doc, lambda: json.dumps(doc, indent=2))
    elif action == "validate":
        return _validate(ctx, plans)
    else:
        return _run(ctx, plans)
    return 0


def _run(ctx: CommandContext, plans: Any) -> int:
    name = ctx.args.name
    plan = plans.plan(name)
    if ctx.args.dry_run:
        planned = [{"step": s.what, "argv": s.argv} for s in steps(name, plan)]
        ctx.out.result(planned, lambda: "\n".join(s.text() for s in steps(name, plan)))
        return 0
    history = History(plans.state.path)
    log = (lambda line: None) if ctx.args.quiet or ctx.args.json else _stderr
    result = run_plan(name, plans, history, trigger="manual", clock=time.time, log=log)
    doc = result.to_json()
    ctx.out.result(doc, lambda: _run_text(doc))
    return 0 if result.status in ("success", "degraded") else EXIT_FATAL


def _validate(ctx: CommandContext, plans: Any) -> int:
    doc: dict[str, Any] = {"path": plans.path, "valid": True, "plans": sorted(plans.plans)}
    lines = [f"{plans.path}: valid, {len(plans.plans)} plans"]
    if not ctx.args.probe:
        ctx.out.result(doc, lines[0])
        return 0
    doc["probes"] = {name: probe(name, plan) for name, plan in sorted(plans.plans.items())}
    lines += [_probe_line(name, found) for name, found in doc["probes"].items()]
    ctx.out.result(doc, "\n".join(lines))
    return 0 if all(found.get("ok") for found in doc["probes"].values()) else EXIT_FATAL


def _probe_line(name: str, found: dict[str, Any]) -> str:
    """A plan's repository in one line: how it answered, or the first thing that failed."""
    where = found.get("location", "")
    if "error" in found:
        return f"  {name}: FAILED: {found['error']}"
    failed = [f for f in found.get("findings", []) if f.get("ok") is False]
    if failed:
        return f"  {name}: {where}: FAILED: {failed[0]['check']}: {failed[0]['message']}"
    there = "a repository is there" if found.get("repository_exists") else "no repository yet"
    return f"  {name}: {where}: reachable, {found.get('latency_ms')} ms, {there}"


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def _line(row: dict[str, Any]) -> str:
    what = ", ".join([*row["sources"], *(f"vm {v}" for v in row["vms"])])
    when = "; ".join(row["schedule"]) or "no schedule"
    return f"{row['plan']}: {what} -> {row['repository']} ({row['consistency']}; {when})"


def _run_text(doc: dict[str, Any]) -> str:
    line = f"plan {doc['plan']}: {doc['status']}"
    if doc["achieved"]:
        line += f", {doc['achieved']}"
    if doc["duration_s"] is not None:
        line += f", {doc['duration_s']:.1f} s"
    if doc["error"]:
        line += f": {doc['error']}"
    return line
