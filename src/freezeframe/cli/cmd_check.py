"""``freezeframe check``: verify the repository's structure and, optionally, its data."""

from __future__ import annotations

import argparse

from freezeframe.cli.context import CommandContext
from freezeframe.errors import EXIT_FATAL, UsageError
from freezeframe.service.maintenance import check


def configure(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--read-data", action="store_true", help="read and verify every pack")
    group.add_argument(
        "--read-data-subset",
        type=_percent,
        metavar="PCT",
        help="read and verify a random PCT%% of the packs",
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="take no lock (storage that takes no write, e.g. read-only credentials); a prune "
        "running meanwhile may make this fail",
    )


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("the subset must be in (0, 100]")
    return value


def run(ctx: CommandContext) -> int:
    if ctx.args.read_data_subset is not None and ctx.args.read_data:
        raise UsageError("give --read-data or --read-data-subset, not both")
    with ctx.repository(load_index=False) as repo:
        result = check(
            repo,
            read_data=ctx.args.read_data,
            read_data_subset=ctx.args.read_data_subset,
            lock=not ctx.args.no_lock,
        )
    for warning in result.warnings:
        ctx.out.warn(warning)
    ok = not result.errors
    doc = {
        "ok": ok,
        "errors": result.errors,
        "warnings": result.warnings,
        "damaged": [{"snapshot": d.snapshot_id, "path": d.path} for d in result.damaged],
        "packs_checked": result.packs_checked,
        "snapshots_checked": result.snapshots_checked,
    }

    def text() -> str:
        lines = [f"error: {e}" for e in result.errors]
        lines += [f"damaged: snapshot {d.snapshot_id[:8]} {d.path}" for d in result.damaged]
        lines.append("no errors were found" if ok else f"{len(result.errors)} errors found")
        return "\n".join(lines)

    ctx.out.result(doc, text)
    return 0 if ok else EXIT_FATAL
