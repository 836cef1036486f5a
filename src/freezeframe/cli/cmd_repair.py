"""``freezeframe repair``: rebuild the index, salvage damaged packs, rewrite damaged snapshots,
rewrite a damaged config. Each prints what it found and what the user should do next."""

from __future__ import annotations

import argparse
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.cli.reporting import CliReporter
from freezeframe.repository.repair.index import IndexRepair
from freezeframe.repository.repair.packs import PackRepair
from freezeframe.repository.repair.snapshots import SnapshotRepair
from freezeframe.service.repair import (
    ConfigRepairRequest,
    IndexRepairRequest,
    PackRepairRequest,
    SnapshotRepairRequest,
    repair_config,
    repair_index,
    repair_packs,
    repair_snapshots,
)


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="WHAT")
    actions.required = True
    index = actions.add_parser(
        "index", help="write a new index from the pack headers (and the index files that read)"
    )
    index.add_argument(
        "--read-all-packs",
        action="store_true",
        help="read every pack's header, not only those no sound index file describes",
    )
    packs = actions.add_parser(
        "packs", help="copy the intact blobs of damaged packs into new ones, drop the damaged"
    )
    packs.add_argument(
        "packs", nargs="*", metavar="PACK", help="pack ids (default: read every pack to find them)"
    )
    snapshots = actions.add_parser(
        "snapshots", help="write new snapshots without the directories and data that are lost"
    )
    snapshots.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="ids (default: all)")
    snapshots.add_argument(
        "--forget", action="store_true", help="remove the originals (and unreadable snapshots)"
    )
    snapshots.add_argument("-n", "--dry-run", action="store_true", help="only show what changes")
    config = actions.add_parser("config", help="rewrite a missing, damaged or tampered config")
    config.add_argument(
        "--force", action="store_true", help="rewrite even a config of a newer format version"
    )


def run(ctx: CommandContext) -> int:
    action = ctx.args.action
    if action == "config":
        return _config(ctx)
    reporter = CliReporter(ctx.out)
    with ctx.repository(load_index=False) as repo:  # the index is loaded under the lock
        if action == "index":
            request = IndexRepairRequest(read_all_packs=ctx.args.read_all_packs)
            doc, problems, text = _index_report(repair_index(repo, request, reporter))
        elif action == "packs":
            packs = PackRepairRequest(tuple(ctx.args.packs))
            doc, problems, text = _packs_report(repair_packs(repo, packs, reporter))
        else:
            snapshots = SnapshotRepairRequest(
                tuple(ctx.args.snapshots), forget=ctx.args.forget, dry_run=ctx.args.dry_run
            )
            doc, problems, text = _snapshots_report(repair_snapshots(repo, snapshots, reporter))
    for problem in problems:
        ctx.out.warn(problem)
    ctx.out.result(doc, text)
    return 0


def _index_report(done: IndexRepair) -> tuple[dict[str, Any], list[str], str]:
    doc = {
        "index_files_read": done.index_files_read,
        "damaged_index_files": done.damaged_index_files,
        "packs_indexed": done.packs_indexed,
        "blobs_indexed": done.blobs_indexed,
        "headers_read": done.headers_read,
        "index_files_written": done.index_files_written,
        "index_files_deleted": done.index_files_deleted,
        "problems": done.problems,
    }
    text = (
        f"indexed {done.blobs_indexed} blobs in {done.packs_indexed} packs "
        f"({done.headers_read} headers read); wrote {done.index_files_written} "
        f"index files, removed {done.index_files_deleted}"
    )
    return doc, done.problems, text


def _packs_report(fixed: PackRepair) -> tuple[dict[str, Any], list[str], str]:
    doc = {
        "packs_read": fixed.packs_read,
        "damaged": fixed.damaged,
        "blobs_salvaged": fixed.blobs_salvaged,
        "blobs_lost": [b.hex() for b in fixed.blobs_lost],
        "packs_written": fixed.packs_written,
        "packs_deleted": fixed.packs_deleted,
    }
    problems = ["; ".join(errors) for _pack, errors in sorted(fixed.damaged.items())]
    if fixed.blobs_lost:
        problems.append(
            f"{len(fixed.blobs_lost)} blobs are lost; back up the same paths again "
            "(their files, if unchanged, store them again and heal the snapshots), "
            "then `freezeframe repair snapshots` for what stays lost"
        )
    text = (
        f"{len(fixed.damaged)} damaged packs of {fixed.packs_read} read: "
        f"{fixed.blobs_salvaged} blobs salvaged into {fixed.packs_written} new "
        f"packs, {len(fixed.blobs_lost)} lost, {fixed.packs_deleted} packs removed"
    )
    return doc, problems, text


def _snapshots_report(result: SnapshotRepair) -> tuple[dict[str, Any], list[str], str]:
    doc = {
        "dry_run": result.dry_run,
        "snapshots_checked": result.snapshots_checked,
        "repaired": [
            {
                "original": fix.original,
                "snapshot_id": fix.repaired,
                "changes": [{"path": c.path, "what": c.what} for c in fix.changes],
            }
            for fix in result.fixed
        ],
        "unreadable": result.unreadable,
        "forgotten": result.forgotten,
    }
    problems = [f"snapshot {name[:8]}: {why}" for name, why in sorted(result.unreadable.items())]
    lines = []
    verb = "would write" if result.dry_run else "wrote"
    for fix in result.fixed:
        if fix.repaired is None:
            lines.append(f"snapshot {fix.original[:8]}: its root directory is lost")
        else:
            new = f" {fix.repaired[:8]}" if fix.repaired else ""
            lines.append(f"snapshot {fix.original[:8]}: {verb} repaired snapshot{new}")
        lines += [f"  {c.path}: {c.what}" for c in fix.changes]
    if result.forgotten:
        lines.append(f"removed {len(result.forgotten)} original or unreadable snapshots")
    elif result.fixed and not result.dry_run:
        lines.append("the originals are kept: `repair snapshots --forget` or `forget` removes them")
    lines.append(f"{len(result.fixed)} of {result.snapshots_checked} snapshots needed repair")
    return doc, problems, "\n".join(lines)


def _config(ctx: CommandContext) -> int:
    request = ConfigRepairRequest(ctx.password(), force=ctx.args.force)
    done = repair_config(ctx.storage(), request)
    doc = {
        "rewritten": done.rewritten,
        "problem": done.problem,
        "version": done.config.version,
        "id": done.config.repository_id,
    }
    if done.rewritten:
        text = f"the config was unsound ({done.problem}); rewrote it (format {done.config.version})"
    else:
        text = "the config is sound; nothing to do"
    ctx.out.result(doc, text)
    return 0
