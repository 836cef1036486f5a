"""``freezeframe stats``: sizes of the repository and of what it restores."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.service.browse import StatsRequest, stats


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restore-size",
        action="store_true",
        help="also add up what restoring every snapshot would write",
    )


def run(ctx: CommandContext) -> int:
    with ctx.repository(load_index=False) as repo:
        result = stats(repo, StatsRequest(restore_size=ctx.args.restore_size))
    doc = dict(result.repository)
    if result.restore_size is not None:
        doc["restore_size"] = result.restore_size
    ctx.out.result(doc, lambda: "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in doc.items()))
    return 0
