"""``freezeframe prune``: remove data no snapshot references any more."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.service.maintenance import prune


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--dry-run", action="store_true", help="only show what would go")
    parser.add_argument(
        "--max-unused",
        type=float,
        default=5.0,
        metavar="PCT",
        help="repack partly used packs while more than PCT%% of the repository "
        "is unused (default: %(default)s)",
    )


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository(load_index=False)
    try:
        stats = prune(repo, max_unused_fraction=ctx.args.max_unused / 100, dry_run=ctx.args.dry_run)
    finally:
        repo.close()
    ctx.out.result(
        {"dry_run": ctx.args.dry_run, **stats},
        lambda: "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()),
    )
    return 0
