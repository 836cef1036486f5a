"""The other repository of ``copy`` and ``init --copy-chunker-params``: its options, its
password (never the target's, never in argv) and opening it."""

from __future__ import annotations

import argparse
import os

from freezeframe.cli.context import CommandContext
from freezeframe.errors import FreezeframeError, UsageError
from freezeframe.repository.password import resolve_source_password
from freezeframe.repository.repository import Repository
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryPolicy


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-repo",
        metavar="LOCATION",
        default=None,
        help="the other repository (default: $FREEZEFRAME_FROM_REPOSITORY)",
    )
    parser.add_argument(
        "--from-password-file",
        metavar="FILE",
        default=None,
        help="read the other repository's password from the first line of FILE "
        "(or $FREEZEFRAME_FROM_PASSWORD_FILE, $FREEZEFRAME_FROM_PASSWORD)",
    )


def location(ctx: CommandContext) -> str | None:
    return ctx.args.from_repo or os.environ.get("FREEZEFRAME_FROM_REPOSITORY") or None


def open_source(ctx: CommandContext) -> Repository:
    """The other repository, opened without its index (its lock loads it). An error says it
    is about this repository, so a wrong password is not taken for the target's."""
    where = location(ctx)
    if where is None:
        raise UsageError(
            "no source repository given: use --from-repo or FREEZEFRAME_FROM_REPOSITORY"
        )
    password = resolve_source_password(ctx.args.from_password_file)
    try:
        storage = open_storage(where, retry=RetryPolicy())
        return Repository.open(storage, password, load_index=False, warn=ctx.out.warn)
    except FreezeframeError as exc:
        raise _about_source(exc, where) from exc


def _about_source(exc: FreezeframeError, where: str) -> FreezeframeError:
    message = f"source repository {where}: {exc}"
    try:
        return type(exc)(message)
    except TypeError:  # an error class with arguments of its own
        return FreezeframeError(message)
