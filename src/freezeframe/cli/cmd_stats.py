"""``freezeframe stats``: sizes of the repository and of what it restores."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.repository.snapshot import list_snapshots
from freezeframe.repository.stats import repository_stats, restore_size


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restore-size",
        action="store_true",
        help="also add up what restoring every snapshot would write",
    )


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository()
    stats = repository_stats(repo)
    if ctx.args.restore_size:
        stats["restore_size"] = restore_size(repo, list_snapshots(repo))
    ctx.out.result(
        stats, lambda: "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items())
    )
    return 0
