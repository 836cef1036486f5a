"""``freezeframe diff``: what changed between two snapshots."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.repository.diff import diff_snapshots
from freezeframe.repository.snapshot import find_snapshot

_MARKS = {"added": "+", "removed": "-", "modified": "M", "type": "T", "metadata": "U"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("first", help="snapshot id (prefix) or `latest`")
    parser.add_argument("second", help="snapshot id (prefix) or `latest`")


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository()
    first = find_snapshot(repo, ctx.args.first)
    second = find_snapshot(repo, ctx.args.second)
    changes = diff_snapshots(repo, first, second)
    ctx.out.result(
        {
            "first": first.id,
            "second": second.id,
            "changes": [{"path": c.path, "change": c.change} for c in changes],
        },
        lambda: (
            "\n".join(f"{_MARKS[c.change]}  {c.path}" for c in changes)
            + f"\n{len(changes)} changes"
        ),
    )
    return 0
