"""``freezeframe doctor``: per path, the volume, what every snapshot provider answers for it,
and which consistency levels are reachable."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from freezeframe.capture.doctor import PathReport
from freezeframe.cli.context import CommandContext
from freezeframe.levels import Level
from freezeframe.service.doctor import DoctorRequest, doctor
from freezeframe.vm.machine import VmSpec


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="paths to examine")
    parser.add_argument(
        "--vm", action="append", default=[], metavar="SPEC", help="a running QEMU VM to examine"
    )


def run(ctx: CommandContext) -> int:
    request = DoctorRequest(
        tuple(ctx.args.paths), tuple(VmSpec.parse(spec) for spec in ctx.args.vm)
    )
    found = doctor(request)
    reports, vms = found.paths, found.vms
    if not vms:
        ctx.out.result([asdict(r) for r in reports], lambda: "\n\n".join(map(_text, reports)))
    else:
        ctx.out.result(
            {"paths": [asdict(r) for r in reports], "vms": vms},
            lambda: "\n\n".join([*map(_text, reports), *map(_vm_text, vms)]),
        )
    return 0


def _vm_text(vm: dict[str, Any]) -> str:
    lines = [f"VM {vm['name']} (QEMU {_version(vm['qemu'])})"]
    for disk in vm["disks"]:
        lines.append(
            f"  disk:     {disk['drive']} node {disk['node']}, {disk['format']}, "
            f"{disk['size'] / 2**30:.1f} GiB ({disk['filename']})"
        )
    agent = vm["guest_agent"]
    if agent["socket"] is None:
        lines.append("  agent:    none given (qga=PATH)")
    elif agent["answers"]:
        lines.append(f"  agent:    answers (version {agent.get('version')}), file systems "
                     f"{agent.get('fsfreeze_status')}")  # fmt: skip
    else:
        lines.append(f"  agent:    does not answer: {agent.get('error')}")
    hook = vm["guest_hook"]
    if hook:
        quiescers = hook.get("quiescers")
        named = [str(q) for q in quiescers] if isinstance(quiescers, list) else []
        kinds = ", ".join(named) or "no quiescer"
        lines.append(f"  hook:     installed (freezeframe {hook.get('version')}: {kinds}, "
                     f"cap {hook.get('cap_s')} s)")  # fmt: skip
    else:
        lines.append("  hook:     not installed (freezeframe guest-hook install, in the guest)")
    for level in Level.descending():
        if level == Level.NONE:
            continue  # a VM is always read from a point-in-time view
        if level in vm["reachable"]:
            lines.append(f"  {level:<12} reachable")
        else:
            lines.append(f"  {level:<12} not reachable: {vm['unreachable'][level]}")
    return "\n".join(lines)


def _version(qemu: dict[str, Any]) -> str:
    return ".".join(str(qemu.get(k, "?")) for k in ("major", "minor", "micro"))


def _text(report: PathReport) -> str:
    lines = [
        report.path,
        f"  volume:   {report.mount_point} ({report.fs_type} on {report.device})",
    ]
    if report.subvolume is not None:
        lines.append(f"  subvolume: {report.subvolume}")
    lines.append(f"  provider: {report.provider}")
    lines += _answers(report.providers, " " * 12)
    for below in report.volumes_below:
        how = below["provider"] if below["why_not"] is None else f"none ({below['why_not']})"
        lines.append(f"  below:    {below['path']} ({below['fs_type']}), provider {how}")
        lines += _answers(below["providers"], " " * 14)
    if report.volumes_below:
        lines.append("            several volumes: writers are paused while all are snapshotted")
    for app in report.applications:
        how = f"--quiesce {app['spec']}" if app["spec"] else "no socket or port found"
        lines.append(f"  database: {app['kind']} (pid {app['pid']}) in {app['data_dir']}: {how}")
    for level in Level.descending():
        if level in report.reachable:
            lines.append(f"  {level:<12} reachable")
        else:
            lines.append(f"  {level:<12} not reachable: {report.unreachable[level]}")
    return "\n".join(lines)


def _answers(providers: list[dict[str, str | None]], indent: str) -> list[str]:
    """Each provider's answer for a volume, in the order they are asked."""
    width = max((len(str(p["name"])) for p in providers), default=0)
    return [
        f"{indent}{p['name']!s:<{width}}  "
        + ("can snapshot it" if p["why_not"] is None else f"cannot: {p['why_not']}")
        for p in providers
    ]
