"""``freezeframe doctor``: per path, the volume, what every snapshot provider answers for it,
and which consistency levels are reachable; per VM the same; with ``--repo [LOCATION]``, what
the repository's storage answers. Exit 0 when every check passed, 1 when one of the
repository's failed (each failure is a line of the report), 2 for a location that does not
parse."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from freezeframe.capture.doctor import PathReport
from freezeframe.cli.context import CommandContext
from freezeframe.errors import EXIT_FATAL, EXIT_OK
from freezeframe.levels import Level
from freezeframe.service.doctor import DoctorRequest, RepositoryReport, doctor
from freezeframe.vm.machine import VmSpec


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="paths to examine")
    parser.add_argument(
        "--vm", action="append", default=[], metavar="SPEC", help="a running QEMU VM to examine"
    )
    _repo_option_with_optional_value(parser)


class _ExamineRepository(argparse.Action):
    """``--repo`` asks for the repository's storage to be examined; a location given with it
    is the one (else ``-r`` before the command, or FREEZEFRAME_REPOSITORY)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.examine_repository = True
        if values is not None:
            namespace.repo = values


def _repo_option_with_optional_value(parser: argparse.ArgumentParser) -> None:
    """The global ``-r/--repo`` needs a value and only names the location (every command, and
    the test harness, passes it before the command); doctor's own takes its value optionally
    and means "examine it". The global action is shared by every command's parser, so it is
    taken off this one (argparse has no public call for that) rather than changed."""
    for action in list(parser._actions):
        if "--repo" in action.option_strings:
            parser._optionals._remove_action(action)
            for option in action.option_strings:
                parser._option_string_actions.pop(option, None)
    parser.add_argument(
        "-r",
        "--repo",
        nargs="?",
        action=_ExamineRepository,
        default=argparse.SUPPRESS,
        metavar="LOCATION",
        help="examine the repository's storage: reachable, latency, throughput, what the "
        "credentials may do, whether a repository is there (default location: -r before "
        "the command, or $FREEZEFRAME_REPOSITORY); needs no password",
    )
    parser.set_defaults(examine_repository=False)


def run(ctx: CommandContext) -> int:
    location = ctx.location if ctx.args.examine_repository else None
    request = DoctorRequest(
        tuple(ctx.args.paths), tuple(VmSpec.parse(spec) for spec in ctx.args.vm), location
    )
    found = doctor(request)
    reports, vms, storage = found.paths, found.vms, found.repository
    if storage is not None:
        doc: dict[str, Any] = {"repository": _repository_doc(storage)}
        if reports:
            doc["paths"] = [asdict(r) for r in reports]
        if vms:
            doc["vms"] = vms
        ctx.out.result(
            doc,
            lambda: "\n\n".join(
                [*map(_text, reports), *map(_vm_text, vms), _repository_text(storage)]
            ),
        )
        return EXIT_OK if storage.ok else EXIT_FATAL
    if not vms:
        ctx.out.result([asdict(r) for r in reports], lambda: "\n\n".join(map(_text, reports)))
    else:
        ctx.out.result(
            {"paths": [asdict(r) for r in reports], "vms": vms},
            lambda: "\n\n".join([*map(_text, reports), *map(_vm_text, vms)]),
        )
    return EXIT_OK


def _repository_doc(report: RepositoryReport) -> dict[str, Any]:
    return {**asdict(report), "ok": report.ok}


_SHOWN = {True: "", False: "FAILED: ", None: ""}


def _repository_text(report: RepositoryReport) -> str:
    """One line per finding, failures marked so that a glance finds them."""
    lines = [f"repository {report.location}"]
    for finding in report.findings:
        lines.append(f"  {finding.check + ':':<12}{_SHOWN[finding.ok]}{finding.message}")
    failed = [f.check for f in report.findings if f.ok is False]
    lines.append(
        "  result:     the storage can hold the repository"
        if not failed
        else f"  result:     FAILED ({', '.join(failed)})"
    )
    return "\n".join(lines)


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
    if report.snapshot:
        lines.append(f"  snapshot: {_snapshot_facts(report.snapshot)}")
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


def _snapshot_facts(facts: dict[str, Any]) -> str:
    """An LVM volume's facts in words; other providers' as key=value."""
    if "error" in facts:
        return f"lvm cannot report it: {facts['error']}"
    if "logical_volume" not in facts:
        return ", ".join(f"{key} {value}" for key, value in facts.items())
    words = [f"{facts['kind']} LV {facts['logical_volume']}"]
    if "thin_pool" in facts:
        data, metadata = facts.get("pool_data_percent"), facts.get("pool_metadata_percent")
        words.append(f"thin pool {facts['thin_pool']} {data}% data, {metadata}% metadata full")
    if "vg_free" in facts:
        words.append(f"VG free {int(facts['vg_free']) / (1 << 20):.1f} MiB")
        size = str(facts["snapshot_size"])
        store = f"{size} of the LV" if size.endswith("%") else f"{int(size[:-1]) >> 20} MiB"
        words.append(f"snapshot store {store} (--snapshot-size)")
    return ", ".join(words)


def _answers(providers: list[dict[str, str | None]], indent: str) -> list[str]:
    """Each provider's answer for a volume, in the order they are asked."""
    width = max((len(str(p["name"])) for p in providers), default=0)
    return [
        f"{indent}{p['name']!s:<{width}}  "
        + ("can snapshot it" if p["why_not"] is None else f"cannot: {p['why_not']}")
        for p in providers
    ]
