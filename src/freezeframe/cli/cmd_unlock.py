"""``freezeframe unlock``: remove stale locks (or all locks)."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.service.admin import UnlockRequest, unlock


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--remove-all",
        action="store_true",
        help="also remove locks of live processes (only when sure none runs)",
    )


def run(ctx: CommandContext) -> int:
    with ctx.repository(load_index=False) as repo:
        removed = unlock(repo, UnlockRequest(remove_all=ctx.args.remove_all))
    ctx.out.result(
        {"removed": [lock.name for lock in removed]},
        "\n".join(
            [f"removed {lock.describe()}" for lock in removed] + [f"{len(removed)} locks removed"]
        ),
    )
    return 0
