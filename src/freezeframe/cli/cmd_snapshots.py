"""``freezeframe snapshots``: list snapshots with their achieved consistency."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import table
from freezeframe.cli.snapshot_view import SNAPSHOT_HEADERS, snapshot_json, snapshot_row
from freezeframe.repository.snapshot import list_snapshots


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="only snapshots of this host")
    parser.add_argument("--tag", action="append", default=[], help="only snapshots with TAG")


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository(load_index=False)
    snapshots = [
        s
        for s in list_snapshots(repo)
        if (ctx.args.host is None or s.host == ctx.args.host)
        and all(tag in s.tags for tag in ctx.args.tag)
    ]
    ctx.out.result(
        [snapshot_json(s) for s in snapshots],
        lambda: (
            table(SNAPSHOT_HEADERS, [snapshot_row(s) for s in snapshots])
            + f"\n{len(snapshots)} snapshots"
        ),
    )
    return 0
