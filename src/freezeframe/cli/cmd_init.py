"""``freezeframe init``: create a repository."""

from __future__ import annotations

import argparse

from freezeframe.cli import from_repo
from freezeframe.cli.context import CommandContext
from freezeframe.cli.reporting import CliReporter
from freezeframe.errors import UsageError
from freezeframe.repository.keys import KDF_MEMORY_KIB_RANGE, KDF_TIME_RANGE, KdfParams
from freezeframe.service.admin import InitRequest, init


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
    parser.add_argument(
        "--group-readable",
        action="store_true",
        help="let the directory's group read the repository (0750/0640; default: only its "
        "owner, 0700/0600), e.g. for a backup operator's group",
    )
    parser.add_argument(
        "--copy-chunker-params",
        action="store_true",
        help="take the chunker parameters and the id key of --from-repo, so that `copy` "
        "between the two repositories moves data as it is and deduplicates (the new "
        "repository's encryption key and password are its own)",
    )
    from_repo.add_options(parser)


def run(ctx: CommandContext) -> int:
    low, high = (bound // 1024 for bound in KDF_MEMORY_KIB_RANGE)
    if not max(low, 1) <= ctx.args.argon2_memory <= high:
        raise UsageError(f"--argon2-memory must be {max(low, 1)}..{high} MiB")
    if not KDF_TIME_RANGE[0] <= ctx.args.argon2_time <= KDF_TIME_RANGE[1]:
        raise UsageError(f"--argon2-time must be {KDF_TIME_RANGE[0]}..{KDF_TIME_RANGE[1]}")
    kdf = KdfParams(time_cost=ctx.args.argon2_time, memory_kib=ctx.args.argon2_memory * 1024)
    if ctx.args.from_repo and not ctx.args.copy_chunker_params:
        raise UsageError("--from-repo at init needs --copy-chunker-params")
    if ctx.args.copy_chunker_params and from_repo.location(ctx) is None:
        raise UsageError("--copy-chunker-params needs --from-repo (or FREEZEFRAME_FROM_REPOSITORY)")
    storage = ctx.storage()
    password = ctx.password(confirm=True)
    related = from_repo.open_source(ctx) if ctx.args.copy_chunker_params else None
    try:
        request = InitRequest(
            password, kdf, group_readable=ctx.args.group_readable, related_to=related
        )
        repo = init(storage, request, CliReporter(ctx.out))
        repo.close()
    finally:
        if related is not None:
            related.close()
    repository_id = repo.config.repository_id
    doc = {"id": repository_id, "location": ctx.location}
    text = f"created repository {repository_id[:8]} at {ctx.location}"
    if related is not None:
        doc["chunker_params_from"] = related.config.repository_id
        text += f", related to {related.config.repository_id[:8]} (same chunker and ids)"
    ctx.out.result(doc, text + "\nKeep the password safe: without it the data cannot be recovered.")
    return 0
