"""``freezeframe forget``: remove snapshots by a retention policy, optionally pruning."""

from __future__ import annotations

import argparse
from typing import Any

from freezeframe.cli.cmd_prune import add_grace_option
from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import table
from freezeframe.cli.snapshot_view import SNAPSHOT_HEADERS, snapshot_row
from freezeframe.errors import UsageError
from freezeframe.repository.retention import RetentionPolicy, parse_duration
from freezeframe.service.maintenance import ForgetRequest, forget


def configure(parser: argparse.ArgumentParser) -> None:
    for unit in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        parser.add_argument(
            f"--keep-{unit}",
            type=_count,
            metavar="N",
            help=f"keep the {unit} N snapshots (-1 or `unlimited`: all)"
            if unit != "last"
            else "keep the N latest snapshots",
        )
    parser.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help="keep snapshots newer than DURATION (e.g. 1y2m3d4h) before the latest",
    )
    parser.add_argument("--host", help="only consider snapshots of this host")
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only consider snapshots with this tag (repeatable: all of them)",
    )
    parser.add_argument("--prune", action="store_true", help="run prune afterwards")
    add_grace_option(parser)
    parser.add_argument("-n", "--dry-run", action="store_true", help="only show what would go")


def _count(text: str) -> int:
    if text == "unlimited":
        return -1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < -1:
        raise argparse.ArgumentTypeError("counts are -1 (unlimited) or more")
    return value


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(ctx: CommandContext) -> int:
    a = ctx.args
    policy = RetentionPolicy(
        a.keep_last,
        a.keep_hourly,
        a.keep_daily,
        a.keep_weekly,
        a.keep_monthly,
        a.keep_yearly,
        a.keep_within,
    )
    if policy.is_empty():
        raise UsageError(
            "no policy given: nothing would be kept, so nothing is removed (use --keep-* options)"
        )
    request = ForgetRequest(
        policy, a.host, tuple(a.tag), prune=a.prune, dry_run=a.dry_run, grace_s=a.grace
    )
    with ctx.repository(load_index=False) as repo:
        result = forget(repo, request)
    removed = result.removed
    report = [
        {
            "host": g.host,
            "paths": g.paths,
            "keep": [{"id": snapshot_id, "reasons": reasons} for snapshot_id, reasons in g.kept],
            "remove": g.removed,
        }
        for g in result.groups
    ]
    prune_stats = result.prune
    verb = "would remove" if a.dry_run else "removed"
    ctx.out.result(
        {
            "groups": report,
            "removed": [s.id for s in removed],
            "dry_run": a.dry_run,
            "prune": prune_stats.to_json() if prune_stats is not None else None,
        },
        lambda: (
            (table(SNAPSHOT_HEADERS, [snapshot_row(s) for s in removed]) + "\n" if removed else "")
            + f"{verb} {len(removed)} snapshots ({policy.describe()})"
        ),
    )
    return 0
