"""``freezeframe doctor``: per path, the volume and which consistency levels are reachable."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from freezeframe.capture.doctor import LEVELS, PathReport, examine
from freezeframe.cli.context import CommandContext
from freezeframe.quiesce import discovery


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="paths to examine")


def run(ctx: CommandContext) -> int:
    running = discovery.running()
    reports = [examine(path, running) for path in ctx.args.paths]
    ctx.out.result([asdict(r) for r in reports], lambda: "\n\n".join(map(_text, reports)))
    return 0


def _text(report: PathReport) -> str:
    lines = [
        report.path,
        f"  volume:   {report.mount_point} ({report.fs_type} on {report.device})",
    ]
    if report.subvolume is not None:
        lines.append(f"  subvolume: {report.subvolume}")
    lines.append(f"  provider: {report.provider}")
    for below in report.volumes_below:
        how = below["provider"] if below["why_not"] is None else f"none ({below['why_not']})"
        lines.append(f"  below:    {below['path']} ({below['fs_type']}), provider {how}")
    if report.volumes_below:
        lines.append("            several volumes: writers are paused while all are snapshotted")
    for app in report.applications:
        how = f"--quiesce {app['spec']}" if app["spec"] else "no socket or port found"
        lines.append(f"  database: {app['kind']} (pid {app['pid']}) in {app['data_dir']}: {how}")
    for level in LEVELS:
        if level in report.reachable:
            lines.append(f"  {level:<12} reachable")
        else:
            lines.append(f"  {level:<12} not reachable: {report.unreachable[level]}")
    return "\n".join(lines)
