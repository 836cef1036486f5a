"""``freezeframe backup --vm SPEC``: one snapshot per VM (a VM's applications are held inside
it, by the guest hook, not by ``--quiesce``)."""

from __future__ import annotations

import functools
from typing import Any

from freezeframe.cli.context import CommandContext
from freezeframe.cli.output import human_bytes, human_duration, snapshot_json
from freezeframe.errors import UsageError
from freezeframe.repository.locks import RepositoryLock
from freezeframe.vm.backup import VmBackupResult, backup_vm
from freezeframe.vm.diskstore import DiskProgress
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.nbdreader import open_export


def parse_specs(texts: list[str]) -> list[VmSpec]:
    specs = [VmSpec.parse(text) for text in texts]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError("two --vm have the same name; give each name=NAME")
    return specs


def back_up(ctx: CommandContext, specs: list[VmSpec]) -> list[VmBackupResult]:
    """One snapshot per VM, in order; warnings shown as they come."""
    repo = ctx.open_repository(load_index=False)  # loaded under the lock
    results: list[VmBackupResult] = []
    try:
        with RepositoryLock(repo, exclusive=False) as lock:
            for spec in specs:
                progress = DiskProgress()
                with ctx.out.live(functools.partial(_render, spec.name, progress)):
                    result = backup_vm(
                        repo,
                        spec,
                        open_export,
                        requested=ctx.args.consistency,
                        fallback=ctx.args.fallback,
                        freeze_cap_s=ctx.args.freeze_cap,
                        quiesce_cap_s=ctx.args.quiesce_cap,
                        tags=ctx.args.tag,
                        progress=progress,
                        before_commit=lock.ensure_held,
                    )
                for warning in result.warnings:
                    ctx.out.warn(warning)
                results.append(result)
    finally:
        repo.close()
    return results


def json_of(results: list[VmBackupResult]) -> dict[str, Any]:
    return {"vms": [snapshot_json(r.snapshot) for r in results]}


def text_of(results: list[VmBackupResult]) -> str:
    return "\n".join(_text(r) for r in results)


def _render(name: str, p: DiskProgress, elapsed: float) -> str:
    """The progress line of one VM's backup."""
    rate = p.bytes_done / elapsed if elapsed > 0 else 0
    share = f", {p.bytes_done / p.bytes_total:.0%}" if p.bytes_total else ""
    return (
        f"[{human_duration(elapsed)}] VM {name}: read {human_bytes(p.bytes_done)} "
        f"({human_bytes(rate)}/s{share}), {human_bytes(p.bytes_added)} new"
    )


def _text(result: VmBackupResult) -> str:
    snap = result.snapshot
    s, report = snap.summary, snap.consistency
    line = f"Consistency: {report.achieved} ({s['disks']} disks at one instant"
    frozen = [v.get("freeze_ms") for v in report.volumes if v.get("freeze_ms") is not None]
    if frozen:
        line += f", guest file systems frozen for {frozen[0]:.1f} ms"
    held = report.quiesce.get("quiescers") or []
    if held:
        kinds = ", ".join(str(q.get("kind")) for q in held)
        line += f", {kinds} held in the guest for {report.quiesce.get('window_ms', 0):.1f} ms"
    if report.reason:
        line += f"; not higher: {report.reason}"
    return "\n".join(
        [
            f"VM {snap.paths[0].rsplit('/', 1)[-1]}: read {human_bytes(s['bytes_read'])} of "
            f"{human_bytes(s['bytes_total'])}, added {human_bytes(s['bytes_added'])} in "
            f"{human_duration(s['duration_seconds'])}",
            line + ")",
            f"snapshot {snap.short_id} saved",
        ]
    )
