"""``freezeframe copy``: snapshots of another repository (``--from-repo``) into this one."""

from __future__ import annotations

import argparse
from typing import Any

from freezeframe.cli import from_repo
from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes
from freezeframe.cli.reporting import CliReporter
from freezeframe.service.copy import CopiedSnapshot, CopyOutcome, CopyRequest, copy


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "snapshot",
        nargs="*",
        help="snapshot ids (prefixes) of the source, or `latest`; none: every snapshot that "
        "passes the filters",
    )
    parser.add_argument("--host", help="only snapshots of this host")
    parser.add_argument(
        "--tag", action="append", default=[], help="only snapshots with TAG (repeatable: all)"
    )
    parser.add_argument(
        "--path",
        action="append",
        default=[],
        help="only snapshots of this path (repeatable: all)",
    )
    from_repo.add_options(parser)


def run(ctx: CommandContext) -> int:
    request = CopyRequest(
        tuple(ctx.args.snapshot), ctx.args.host, tuple(ctx.args.tag), tuple(ctx.args.path)
    )
    with ctx.repository(load_index=False) as target:
        source = from_repo.open_source(ctx)
        try:
            outcome = copy(source, target, request, CliReporter(ctx.out))
        finally:
            source.close()
    ctx.out.result(_json(outcome), lambda: _text(outcome))
    return 0


def _entry(item: CopiedSnapshot) -> dict[str, Any]:
    s = item.source
    return {
        "source_id": s.id,
        "snapshot_id": item.target_id,
        "time": s.time.isoformat(),
        "host": s.host,
        "paths": s.paths,
        "tags": s.tags,
    }


def _json(outcome: CopyOutcome) -> dict[str, Any]:
    return {
        "copied": [_entry(c) for c in outcome.copied],
        "skipped": [_entry(c) for c in outcome.skipped],
        "blobs_added": outcome.blobs_added,
        "bytes_added": outcome.bytes_added,
        "packs_written": outcome.packs_written,
        "bytes_written": outcome.bytes_written,
    }


def _text(outcome: CopyOutcome) -> str:
    lines = [
        f"copied snapshot {c.source.short_id} as {c.target_id[:8]} "
        f"({c.source.host}: {', '.join(c.source.paths)})"
        for c in outcome.copied
    ]
    lines += [
        f"skipped snapshot {c.source.short_id}: copied before as {c.target_id[:8]}"
        for c in outcome.skipped
    ]
    lines.append(
        f"{len(outcome.copied)} snapshots copied, {len(outcome.skipped)} already there; "
        f"{outcome.blobs_added} blobs ({human_bytes(outcome.bytes_added)}) added, "
        f"{human_bytes(outcome.bytes_written)} stored"
    )
    return "\n".join(lines)
