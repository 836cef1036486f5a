"""``freezeframe restore``: write a snapshot's files under a target directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes
from freezeframe.cli.reporting import CliReporter
from freezeframe.errors import EXIT_FATAL, EXIT_PARTIAL
from freezeframe.restore.restorer import RestoreResult
from freezeframe.service.restore import RestoreRequest, restore
from freezeframe.vm.images import FORMATS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot", help="snapshot id (prefix) or `latest`")
    parser.add_argument("-t", "--target", required=True, help="directory to restore into")
    parser.add_argument(
        "-i",
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="restore only this absolute path of the snapshot (repeatable)",
    )
    parser.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="NAME",
        help="a VM's snapshot: restore only this disk (its drive id, e.g. vda; repeatable)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="raw",
        help="a VM's snapshot: write the disk images as sparse raw (default) or qcow2",
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="take no lock (storage that takes no write, e.g. read-only credentials); a prune "
        "running meanwhile may make this fail",
    )


def run(ctx: CommandContext) -> int:
    request = RestoreRequest(
        ctx.args.snapshot,
        Path(ctx.args.target),
        includes=tuple(ctx.args.include),
        disks=tuple(ctx.args.disk),
        image_format=ctx.args.format,
        lock=not ctx.args.no_lock,
    )
    with ctx.repository(load_index=False) as repo:
        outcome = restore(repo, request, CliReporter(ctx.out))
    snapshot, result, target = outcome.snapshot, outcome.result, outcome.target
    for path, message in result.errors:
        ctx.out.warn(f"{path}: {message}")
    for damage in result.damaged:
        if damage.ranges:
            ctx.out.warn(f"{damage.path}: damaged bytes {_ranges(damage.ranges)}")
    ctx.out.result(
        {
            "snapshot_id": snapshot.id,
            "target": str(target),
            "files": result.files,
            "dirs": result.dirs,
            "bytes": result.bytes,
            "errors": [{"path": p, "error": m} for p, m in result.errors],
            "damaged": [
                {"path": d.path, "error": d.message, "ranges": [list(r) for r in d.ranges]}
                for d in result.damaged
            ],
        },
        lambda: _text(result, snapshot.short_id, target),
    )
    if result.damaged:
        return EXIT_FATAL
    return EXIT_PARTIAL if result.errors else 0


def _text(result: RestoreResult, short_id: str, target: Path) -> str:
    text = (
        f"restored {result.files} files ({human_bytes(result.bytes)}) of snapshot "
        f"{short_id} to {target}"
    )
    if result.errors:
        text += f"; {len(result.errors)} errors"
    if result.damaged:
        text += (
            f"\n{len(result.damaged)} paths could not be restored intact from the repository "
            "(listed above; damaged files were removed): run `freezeframe check --read-data`"
        )
    return text


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    """Inclusive, as HTTP ranges are written (the JSON has half-open [start, end) pairs)."""
    return ", ".join(f"{start}-{end - 1}" for start, end in ranges)
