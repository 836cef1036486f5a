"""What each source path can reach: its volume, what every snapshot provider answers for it
(the first that can snapshots it), and for every consistency level either "reachable" or the
reason it is not."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from freezeframe.capture import layout
from freezeframe.capture.providers.registry import BY_NAME, PROVIDERS, answers, choose
from freezeframe.capture.volumes import Volume, resolve_volume
from freezeframe.levels import Level
from freezeframe.quiesce import discovery


@dataclass
class PathReport:
    path: str
    mount_point: str
    fs_type: str
    device: str
    subvolume: str | None
    provider: str
    reachable: list[Level] = field(default_factory=list)
    unreachable: dict[Level, str] = field(default_factory=dict)
    # Every provider's answer, in the order they are asked: name, and why_not (None: it can).
    providers: list[dict[str, str | None]] = field(default_factory=list)
    # Volumes mounted or nested below the path: each is captured too, or limits the level
    # (path, fs_type, provider, why_not, and every provider's answer).
    volumes_below: list[dict[str, Any]] = field(default_factory=list)
    # Databases running with their data under the path, each with the quiescer that holds it.
    applications: list[dict[str, object]] = field(default_factory=list)
    # What the provider knows of the volume beyond yes or no: an LVM volume's LV, thin pool
    # fullness or VG free space (from the provider that serves it, else the first that knows).
    snapshot: dict[str, object] = field(default_factory=dict)


def examine(
    path: str | os.PathLike[str], running: list[discovery.Instance] | None = None
) -> PathReport:
    """``running``: the databases found on this machine (looked up when not given)."""
    volume = resolve_volume(path)
    report = PathReport(
        path=volume.path,
        mount_point=volume.mount.mount_point,
        fs_type=volume.fs_type,
        device=volume.mount.source,
        subvolume=volume.subvolume,
        provider="none",
    )
    provider, snapshot_reason, report.providers = _ask(volume)
    report.snapshot = _facts(volume, provider)
    for below in layout.plan([volume.path]).nested:
        below_provider, why, asked = _ask(below)
        report.volumes_below.append(
            {
                "path": below.subvolume or below.mount.mount_point,
                "fs_type": below.fs_type,
                "provider": below_provider or "none",
                "why_not": why,
                "providers": asked,
            }
        )
        if why is not None and snapshot_reason is None:
            snapshot_reason = f"{below.path} below it: {why}"
    if snapshot_reason is None and provider is not None:
        report.provider = provider
        report.reachable += [Level.FILESYSTEM, Level.CRASH]
    else:
        reason = snapshot_reason or "no snapshot provider"
        report.unreachable[Level.FILESYSTEM] = reason
        report.unreachable[Level.CRASH] = reason
    report.applications = [i.to_json() for i in discovery.under([volume.path], running)]
    if Level.FILESYSTEM not in report.reachable:
        report.unreachable[Level.APPLICATION] = report.unreachable[Level.FILESYSTEM]
    elif report.applications and all(a["spec"] for a in report.applications):
        report.reachable.insert(0, Level.APPLICATION)
    else:
        report.unreachable[Level.APPLICATION] = (
            "no running database found under it; name a quiescer: backup --quiesce KIND:TARGET "
            "(postgresql, mysql, redis, sqlite, script, cgroup, unit, pid)"
            if not report.applications
            else "a database runs under it that freezeframe cannot reach; name its quiescer"
        )
    report.reachable.append(Level.NONE)
    return report


def _facts(volume: Volume, chosen: str | None) -> dict[str, object]:
    if chosen is not None:
        return BY_NAME[chosen].facts(volume)
    for provider in PROVIDERS:
        facts = provider.facts(volume)
        if facts:
            return facts
    return {}


def _ask(volume: Volume) -> tuple[str | None, str | None, list[dict[str, str | None]]]:
    """The name of the provider that would snapshot ``volume`` (None: none can), why none can,
    and every provider's answer."""
    asked = answers(volume)
    provider, why = choose(volume, asked)
    return (
        provider.name if provider is not None else None,
        why,
        [{"name": p.name, "why_not": reason} for p, reason in asked],
    )
