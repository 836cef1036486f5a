"""``freezeframe diff``: what changed between two snapshots."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.service.browse import DiffRequest, diff

_MARKS = {"added": "+", "removed": "-", "modified": "M", "type": "T", "metadata": "U"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("first", help="snapshot id (prefix) or `latest`")
    parser.add_argument("second", help="snapshot id (prefix) or `latest`")


def run(ctx: CommandContext) -> int:
    with ctx.repository(load_index=False) as repo:
        result = diff(repo, DiffRequest(ctx.args.first, ctx.args.second))
    changes = result.changes
    ctx.out.result(
        {
            "first": result.first.id,
            "second": result.second.id,
            "changes": [{"path": c.path, "change": c.change} for c in changes],
        },
        lambda: (
            "\n".join(f"{_MARKS[c.change]}  {c.path}" for c in changes)
            + f"\n{len(changes)} changes"
        ),
    )
    return 0
