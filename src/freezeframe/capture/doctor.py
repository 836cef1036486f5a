"""What each source path can reach: its volume, the provider that would snapshot it, and for
every consistency level either "reachable" or the reason it is not."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from freezeframe.capture import layout
from freezeframe.capture.providers.registry import provider_for
from freezeframe.capture.volumes import resolve_volume
from freezeframe.quiesce import discovery

LEVELS = ("application", "filesystem", "crash", "none")


@dataclass
class PathReport:
    path: str
    mount_point: str
    fs_type: str
    device: str
    subvolume: str | None
    provider: str
    reachable: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    # Volumes mounted or nested below the path: each is captured too, or limits the level.
    volumes_below: list[dict[str, str | None]] = field(default_factory=list)
    # Databases running with their data under the path, each with the quiescer that holds it.
    applications: list[dict[str, object]] = field(default_factory=list)


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
    provider, snapshot_reason = provider_for(volume)
    for below in layout.plan([volume.path]).nested:
        below_provider, why = provider_for(below)
        report.volumes_below.append(
            {
                "path": below.subvolume or below.mount.mount_point,
                "fs_type": below.fs_type,
                "provider": below_provider.name if below_provider else "none",
                "why_not": why,
            }
        )
        if why is not None and snapshot_reason is None:
            snapshot_reason = f"{below.path} below it: {why}"
    if snapshot_reason is None and provider is not None:
        report.provider = provider.name
        report.reachable += ["filesystem", "crash"]
    else:
        reason = snapshot_reason or "no snapshot provider"
        report.unreachable["filesystem"] = reason
        report.unreachable["crash"] = reason
    report.applications = [i.to_json() for i in discovery.under([volume.path], running)]
    if "filesystem" not in report.reachable:
        report.unreachable["application"] = report.unreachable["filesystem"]
    elif report.applications and all(a["spec"] for a in report.applications):
        report.reachable.insert(0, "application")
    else:
        report.unreachable["application"] = (
            "no running database found under it; name a quiescer: backup --quiesce KIND:TARGET "
            "(postgresql, mysql, redis, sqlite, script, cgroup, unit, pid)"
            if not report.applications
            else "a database runs under it that freezeframe cannot reach; name its quiescer"
        )
    report.reachable.append("none")
    return report
