"""``freezeframe snapshots``: list snapshots with their achieved consistency."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import table
from freezeframe.cli.snapshot_view import SNAPSHOT_HEADERS, snapshot_json, snapshot_row
from freezeframe.service.browse import SnapshotsRequest, snapshots


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="only snapshots of this host")
    parser.add_argument("--tag", action="append", default=[], help="only snapshots with TAG")


def run(ctx: CommandContext) -> int:
    request = SnapshotsRequest(ctx.args.host, tuple(ctx.args.tag))
    with ctx.repository(load_index=False) as repo:
        found = snapshots(repo, request)
    ctx.out.result(
        [snapshot_json(s) for s in found],
        lambda: (
            table(SNAPSHOT_HEADERS, [snapshot_row(s) for s in found]) + f"\n{len(found)} snapshots"
        ),
    )
    return 0
