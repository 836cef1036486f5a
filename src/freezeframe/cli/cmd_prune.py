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
    add_grace_option(parser)


def add_grace_option(parser: argparse.ArgumentParser) -> None:
    """``--grace``: shared with ``forget --prune``."""
    parser.add_argument(
        "--grace",
        type=grace_seconds,
        default=None,
        metavar="DURATION",
        help="delete packs marked by an earlier prune only after DURATION (e.g. 30m, 1h, 0; "
        "default: 0 for a local directory, 1h for other storage)",
    )


def grace_seconds(text: str) -> float:
    """``0``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no duration (e.g. 0, 30m, 1h)") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError("the grace period is 0 or more")
    return value


def run(ctx: CommandContext) -> int:
    with ctx.repository(load_index=False) as repo:
        stats = prune(
            repo,
            max_unused_fraction=ctx.args.max_unused / 100,
            dry_run=ctx.args.dry_run,
            grace_s=ctx.args.grace,
        )
    ctx.out.result(
        {"dry_run": ctx.args.dry_run, **stats},
        lambda: "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items()),
    )
    return 0
