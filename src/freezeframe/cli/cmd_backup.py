"""``freezeframe backup``: back up paths into a new snapshot."""

from __future__ import annotations

import argparse

from freezeframe.backup.archiver import BackupResult
from freezeframe.capture.session import (
    DEFAULT_APPLICATION_CAP_S,
    DEFAULT_FREEZE_CAP_S,
    DEFAULT_PAUSE_CAP_S,
    DEFAULT_QUIESCER_TIMEOUT_S,
    Caps,
)
from freezeframe.cli import backup_vm
from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes, human_duration, snapshot_json
from freezeframe.cli.reporting import CliReporter
from freezeframe.errors import EXIT_PARTIAL
from freezeframe.levels import Level
from freezeframe.repository.snapshot import ConsistencyReport
from freezeframe.service.backup import BackupRequest, backup
from freezeframe.vm.machine import VmSpec


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
        choices=Level.choices(),
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
        "--snapshot-size",
        default="",
        metavar="SIZE",
        help="copy-on-write store of a snapshot of a thick LVM volume: a size (512M, 2G) or a "
        "share of the volume (25%%); default 20%%, checked against the VG's free space first",
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
    a = ctx.args
    request = BackupRequest(
        paths=tuple(a.paths),
        vms=tuple(VmSpec.parse(text) for text in a.vm),
        excludes=tuple(a.exclude),
        tags=tuple(a.tag),
        host=a.host,
        one_file_system=a.one_file_system,
        consistency=a.consistency,
        fallback=a.fallback,
        caps=Caps(
            pause_s=a.pause_cap,
            freeze_s=a.freeze_cap,
            application_s=a.quiesce_cap,
            quiescer_s=a.quiesce_timeout,
        ),
        quiesce=tuple(a.quiesce),
        snapshot_size=a.snapshot_size,
    )
    request.validate()  # before a password is asked for
    with ctx.repository(load_index=False) as repo:
        outcome = backup(repo, request, CliReporter(ctx.out))
    result, vms = outcome.paths, outcome.vms
    if result is None:
        ctx.out.result(backup_vm.json_of(vms), lambda: backup_vm.text_of(vms))
        return 0
    for path, message in result.errors:
        ctx.out.warn(f"{path}: {message}")
    if not vms:
        ctx.out.result(_json(result), lambda: _text(result))
    else:
        ctx.out.result(
            {"paths": _json(result), **backup_vm.json_of(vms)},
            lambda: f"{_text(result)}\n{backup_vm.text_of(vms)}",
        )
    return EXIT_PARTIAL if outcome.unreadable else 0


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
