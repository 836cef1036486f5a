"""``freezeframe init``: create a repository."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.repository import Repository


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = KdfParams()
    parser.add_argument(
        "--argon2-memory",
        type=int,
        metavar="MIB",
        default=defaults.memory_kib // 1024,
        help="Argon2id memory per password check (default: %(default)s MiB)",
    )
    parser.add_argument(
        "--argon2-time",
        type=int,
        metavar="N",
        default=defaults.time_cost,
        help="Argon2id passes (default: %(default)s)",
    )


def run(ctx: CommandContext) -> int:
    kdf = KdfParams(time_cost=ctx.args.argon2_time, memory_kib=ctx.args.argon2_memory * 1024)
    repo = Repository.init(ctx.storage(), ctx.password(confirm=True), kdf)
    ctx.out.result(
        {"id": repo.config.repository_id, "location": ctx.location},
        f"created repository {repo.config.repository_id[:8]} at {ctx.location}\n"
        "Keep the password safe: without it the data cannot be recovered.",
    )
    return 0
