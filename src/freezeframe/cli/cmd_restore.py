"""``freezeframe restore``: write a snapshot's files under a target directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes, human_duration
from freezeframe.errors import EXIT_FATAL, EXIT_PARTIAL, UsageError
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.snapshot import find_snapshot
from freezeframe.restore.restorer import RestoreProgress, RestoreResult, restore_snapshot
from freezeframe.vm.images import FORMATS, convert_images, disk_includes, vm_root


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


def run(ctx: CommandContext) -> int:
    repo = ctx.open_repository(load_index=False)  # loaded under the lock
    progress = RestoreProgress()
    try:
        snapshot = find_snapshot(repo, ctx.args.snapshot)
        target = Path(ctx.args.target)
        includes = list(ctx.args.include)
        if ctx.args.disk:
            includes += disk_includes(snapshot.paths, ctx.args.disk)
        vm = vm_root(snapshot.paths)
        if ctx.args.format != "raw" and vm is None:
            raise UsageError("--format applies to a VM's snapshot (made with backup --vm)")
        with RepositoryLock(repo, exclusive=False), ctx.out.live(lambda t: _render(progress, t)):
            result = restore_snapshot(repo, snapshot, target, includes=includes, progress=progress)
    finally:
        repo.close()
    if vm is not None and not result.damaged:
        convert_images(target / vm.lstrip("/"), ctx.args.format)
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


def _render(p: RestoreProgress, elapsed: float) -> str:
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    line = f"[{human_duration(elapsed)}] {p.files_done} files, {human_bytes(p.bytes_done)}"
    if p.total_bytes:
        line += f" of {human_bytes(p.total_bytes)} ({human_bytes(rate)}/s)"
        if rate > 0:
            line += f", ETA {human_duration((p.total_bytes - p.bytes_done) / rate)}"
    return line
