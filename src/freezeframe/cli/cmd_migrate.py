"""``freezeframe migrate``: upgrade a repository to the current format version."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.service.admin import MigrateRequest, migrate


def configure(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: it does every step the repository needs


def run(ctx: CommandContext) -> int:
    request = MigrateRequest(ctx.password())
    with ctx.repository(load_index=False) as repo:
        done = migrate(repo, request)
    if done.unmarked_keys:
        ctx.out.warn(
            f"{len(done.unmarked_keys)} other keys still accept a version 1 config; "
            "`freezeframe key passwd` with each of their passwords marks them"
        )
    doc = {
        "from_version": done.from_version,
        "to_version": done.to_version,
        "steps": done.steps,
        "unmarked_keys": done.unmarked_keys,
    }
    if not done.steps:
        text = f"the repository is format version {done.to_version} already; nothing to do"
    else:
        text = "\n".join([*done.steps, f"format version {done.from_version} -> {done.to_version}"])
    ctx.out.result(doc, text)
    return 0
