"""``freezeframe backup``: back up paths into a new snapshot."""

from __future__ import annotations

import argparse
import os

from freezeframe.backup.archiver import Archiver, BackupOptions, BackupResult, SourcePath
from freezeframe.backup.excludes import ExcludeMatcher
from freezeframe.backup.files_cache import FilesCache, default_cache_dir
from freezeframe.backup.progress import BackupProgress
from freezeframe.capture.service_pause import parse as parse_quiescer
from freezeframe.capture.session import (
    DEFAULT_APPLICATION_CAP_S,
    DEFAULT_FREEZE_CAP_S,
    DEFAULT_PAUSE_CAP_S,
    DEFAULT_QUIESCER_TIMEOUT_S,
    Caps,
    Capture,
)
from freezeframe.cli import backup_vm
from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes, human_duration, snapshot_json
from freezeframe.errors import EXIT_PARTIAL, UsageError
from freezeframe.quiesce.discovery import expand_auto
from freezeframe.quiesce.script import expand_directories
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.snapshot import ConsistencyReport


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="what to back up")
    parser.add_argument(
        "--vm",
        action="append",
        default=[],
        metavar="SPEC",
        help="a running QEMU VM: qmp:SOCKET[,qga=SOCKET][,name=NAME] (repeatable; one "
        "snapshot each; see docs/vm.md)",
    )
    parser.add_argument(
        "-e",
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out paths matching PATTERN (restic syntax; repeatable)",
    )
    parser.add_argument(
        "--tag", action="append", default=[], metavar="TAG", help="tag the snapshot (repeatable)"
    )
    parser.add_argument(
        "-x", "--one-file-system", action="store_true", help="do not cross into other file systems"
    )
    parser.add_argument("--host", default="", help="host name to record (default: this host)")
    parser.add_argument(
        "--consistency",
        default="auto",
        choices=["auto", "application", "filesystem", "crash", "none"],
        help="level to reach (default: auto, the highest every source can reach)",
    )
    parser.add_argument(
        "--fallback",
        default="fail",
        choices=["fail", "degrade"],
        help="when the level cannot be reached: fail (default) or take the highest reachable",
    )
    parser.add_argument(
        "--pause-cap",
        type=float,
        default=DEFAULT_PAUSE_CAP_S,
        metavar="SECONDS",
        help="longest time writers may stay paused for the snapshots "
        f"(default {DEFAULT_PAUSE_CAP_S:g}); past it they are resumed and the run fails or "
        "degrades",
    )
    parser.add_argument(
        "--freeze-cap",
        type=float,
        default=DEFAULT_FREEZE_CAP_S,
        metavar="SECONDS",
        help="longest time a file system may stay frozen for its snapshot "
        f"(default {DEFAULT_FREEZE_CAP_S:g}); past it it is thawed and the run fails or degrades",
    )

    parser.add_argument(
        "--quiesce",
        action="append",
        default=[],
        metavar="KIND:TARGET",
        help="hold an application across the snapshots (repeatable; in order): "
        "postgresql:CONNINFO, mysql:URL|OPTION_FILE, sqlite:DATABASE, redis:URL, "
        "script:EXECUTABLE|HOOKS_DIR, cgroup:PATH, unit:NAME or pid:N; auto: every database that "
        "doctor finds running under the paths, then the hooks of /etc/freezeframe/hooks.d",
    )
    parser.add_argument(
        "--quiesce-cap",
        type=float,
        default=DEFAULT_APPLICATION_CAP_S,
        metavar="SECONDS",
        help="longest time applications stay held, first freeze to last thaw "
        f"(default {DEFAULT_APPLICATION_CAP_S:g}, as VSS)",
    )
    parser.add_argument(
        "--quiesce-timeout",
        type=float,
        default=DEFAULT_QUIESCER_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest time each quiescer step may take (default {DEFAULT_QUIESCER_TIMEOUT_S:g})",
    )


def run(ctx: CommandContext) -> int:
    """Paths into one snapshot, then each VM into one of its own (VMs and paths are not taken
    at one instant together)."""
    if not ctx.args.paths and not ctx.args.vm:
        raise UsageError("nothing to back up: give paths, or --vm SPEC")
    if ctx.args.quiesce and not ctx.args.paths:
        raise UsageError(
            "--quiesce holds applications for paths; a VM's are held inside it by the "
            "guest hook (docs/vm.md)"
        )
    specs = backup_vm.parse_specs(ctx.args.vm)  # bad specs fail before anything is taken
    ExcludeMatcher(ctx.args.exclude)  # and so do bad patterns
    result = _back_up_paths(ctx) if ctx.args.paths else None
    if result is not None:
        for path, message in result.errors:
            ctx.out.warn(f"{path}: {message}")
    vms = backup_vm.back_up(ctx, specs) if specs else []
    if result is None:
        ctx.out.result(backup_vm.json_of(vms), lambda: backup_vm.text_of(vms))
        return 0
    if not vms:
        ctx.out.result(_json(result), lambda: _text(result))
    else:
        ctx.out.result(
            {"paths": _json(result), **backup_vm.json_of(vms)},
            lambda: f"{_text(result)}\n{backup_vm.text_of(vms)}",
        )
    return EXIT_PARTIAL if result.errors else 0


def _back_up_paths(ctx: CommandContext) -> BackupResult:
    paths = [_source(p) for p in ctx.args.paths]
    quiesce = expand_directories(ctx.args.quiesce)
    if ctx.args.consistency in ("auto", "application"):
        quiesce, warnings = expand_auto(quiesce, paths)
        for warning in warnings:
            ctx.out.warn(warning)
    elif "auto" in quiesce:
        raise UsageError("--quiesce auto needs --consistency application or auto")
    repo = ctx.open_repository(load_index=False)  # loaded under the lock
    progress = BackupProgress()
    try:
        lock = RepositoryLock(repo, exclusive=False)
        capture = Capture(
            paths,
            ctx.args.consistency,
            ctx.args.fallback,
            one_file_system=ctx.args.one_file_system,
            caps=Caps(
                pause_s=ctx.args.pause_cap,
                freeze_s=ctx.args.freeze_cap,
                application_s=ctx.args.quiesce_cap,
                quiescer_s=ctx.args.quiesce_timeout,
            ),
            never_freeze=(os.path.abspath(ctx.location), str(default_cache_dir())),
            quiescers=[parse_quiescer(spec) for spec in quiesce],
        )
        with lock, capture as captured:
            for warning in captured.warnings:
                ctx.out.warn(warning)
            options = BackupOptions(
                sources=[
                    SourcePath(os.fsencode(p.read_path), os.fsencode(p.original))
                    for p in captured.paths
                ],
                excludes=ctx.args.exclude + captured.excludes,
                tags=ctx.args.tag,
                host=ctx.args.host,
                one_file_system=ctx.args.one_file_system,
                consistency=ConsistencyReport(
                    requested=captured.requested,
                    achieved=captured.achieved,
                    volumes=captured.volumes,
                    reason=captured.reason,
                    pause=captured.pause,
                    quiesce=captured.quiesce,
                ),
                cache_checks_device=not captured.from_snapshot,
                grafts={os.fsencode(g.original): os.fsencode(g.read_path) for g in captured.grafts},
                replaced=_replaced(captured.added_files, captured.left_out),
            )
            archiver = Archiver(
                repo,
                options,
                FilesCache.for_repository(repo.config.repository_id),
                progress,
                estimate_totals=ctx.out.show_progress,
            )
            with ctx.out.live(lambda t: _render(progress, t)):
                return archiver.run(before_commit=lock.ensure_held)
    finally:
        repo.close()


def _replaced(added: dict[str, str], left_out: list[str]) -> dict[bytes, bytes | None]:
    replaced: dict[bytes, bytes | None] = {os.fsencode(p): None for p in left_out}
    replaced.update({os.fsencode(p): os.fsencode(staged) for p, staged in added.items()})
    return replaced


def _source(path: str) -> str:
    if not path:
        raise UsageError("an empty path cannot be backed up")
    return os.path.abspath(path)


def _render(p: BackupProgress, elapsed: float) -> str:
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    line = (
        f"[{human_duration(elapsed)}] {p.files_done} files, {human_bytes(p.bytes_done)}"
        f" ({human_bytes(rate)}/s), {human_bytes(p.bytes_added)} new"
    )
    if p.total_bytes:
        share = min(p.bytes_done / p.total_bytes, 1.0)
        line += f", {share:.0%} of {human_bytes(p.total_bytes)}"
        if p.scan_finished and rate > 0:
            line += f", ETA {human_duration((p.total_bytes - p.bytes_done) / rate)}"
    if p.errors:
        line += f", {p.errors} errors"
    return f"{line}\n{p.current_path[-100:]}"


def _json(result: BackupResult) -> dict[str, object]:
    errors = [{"path": path, "error": message} for path, message in result.errors]
    return {**snapshot_json(result.snapshot), "errors": errors}


def _text(result: BackupResult) -> str:
    s = result.snapshot.summary
    lines = [
        f"Files: {s['files_new']} new, {s['files_changed']} changed, "
        f"{s['files_unmodified']} unmodified; {s['dirs']} directories",
        f"Read {human_bytes(s['bytes_read'])} of {human_bytes(s['bytes_total'])}, added "
        f"{human_bytes(s['bytes_added'])} ({human_bytes(s['bytes_stored'])} stored) "
        f"in {human_duration(s['duration_seconds'])}",
        _consistency_line(result.snapshot.consistency),
    ]
    changed = result.snapshot.consistency.changed_during_read
    if changed:
        lines.append(f"{len(changed)} files changed while they were read (listed in the snapshot)")
    if result.errors:
        lines.append(f"{len(result.errors)} files could not be read (exit status 3)")
    lines.append(f"snapshot {result.snapshot.short_id} saved")
    return "\n".join(lines)


def _consistency_line(report: ConsistencyReport) -> str:
    line = f"Consistency: {report.achieved}"
    snapshotted = [v for v in report.volumes if v.get("provider") not in (None, "none")]
    if snapshotted:
        line += f" ({len(snapshotted)} volume{'s' if len(snapshotted) > 1 else ''} snapshotted"
        if report.pause:
            writers = len(report.pause["writers"])
            line += f", {writers} writer{'s' if writers != 1 else ''} paused for "
            line += f"{report.pause['window_ms']:.1f} ms"
        line += ")"
    if report.quiesce:
        held = len(report.quiesce["quiescers"])
        line += f"; {held} application{'s' if held != 1 else ''} held for "
        line += f"{report.quiesce['window_ms']:.1f} ms"
    if report.reason:
        line += f"; not higher: {report.reason}"
    return line
