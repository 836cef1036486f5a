"""The incremental chain of a VM's disks: which dirty bitmap records the writes since which
snapshot, so a backup reads only those ranges and takes every other chunk from it.

Each backup starts a persistent dirty bitmap on every disk at its own instant (in the same QMP
transaction as the point-in-time view), named ``freezeframe-<repository>-<run>`` and noted in
the snapshot's record. The next backup finds that bitmap on the disk and that snapshot in the
repository, and reads only what the bitmap marks. Anything that breaks the chain (no bitmap:
the first backup, a VM restarted with a raw disk, whose bitmaps do not persist; a bitmap QEMU
marks inconsistent after a crash; a snapshot since forgotten; a resized disk) makes a full read,
and the record says why. A run that died after the handover leaves two bitmaps: they are merged
back into the older one, which then covers everything since the last saved snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freezeframe.backup.images import chunk_map
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, list_snapshots
from freezeframe.repository.walk import find_node
from freezeframe.vm.machine import Disk
from freezeframe.vm.pointintime import BITMAP_PREFIX, quietly
from freezeframe.vm.qmp import Qmp


@dataclass
class Link:
    bitmap: str | None = None  # exported with the disk: the ranges to read
    chunks: dict[int, bytes] | None = None  # the parent's chunks, taken where not dirty
    parent: str | None = None  # the parent snapshot's id
    why_full: str = ""


def bitmap_prefix(repo: Repository) -> str:
    return f"{BITMAP_PREFIX}{repo.config.repository_id[:8]}-"


def chain_of(repo: Repository, qmp: Qmp, vm_name: str, disks: list[Disk]) -> dict[str, Link]:
    prefix = bitmap_prefix(repo)
    on_node = _bitmaps(qmp, prefix)
    snapshots = sorted(
        (s for s in list_snapshots(repo) if s.paths == [f"/vm/{vm_name}"]),
        key=lambda s: s.time,
        reverse=True,
    )
    started_by: dict[tuple[str, str], tuple[int, Snapshot, dict[str, Any]]] = {}
    for age, snapshot in enumerate(snapshots):
        for volume in snapshot.consistency.volumes:
            key = (volume.get("drive", ""), volume.get("bitmap", ""))
            started_by.setdefault(key, (age, snapshot, volume))
    links = {}
    for disk in disks:
        bitmaps = on_node.get(disk.node, [])
        links[disk.drive] = _link(repo, qmp, vm_name, disk, bitmaps=bitmaps, started_by=started_by)
    return links


def _link(
    repo: Repository,
    qmp: Qmp,
    vm_name: str,
    disk: Disk,
    *,
    bitmaps: list[dict[str, Any]],
    started_by: dict[tuple[str, str], tuple[int, Snapshot, dict[str, Any]]],
) -> Link:
    known = sorted(
        (started_by[(disk.drive, b["name"])][0], b["name"])
        for b in bitmaps
        if (disk.drive, b["name"]) in started_by
    )
    names = [b["name"] for b in bitmaps]
    if not known:
        for name in names:
            quietly(qmp, "block-dirty-bitmap-remove", {"node": disk.node, "name": name})
        if not bitmaps:
            return Link(why_full="no dirty bitmap on the disk yet (first backup, or the VM was "
                        "restarted and its bitmap did not persist)")  # fmt: skip
        return Link(why_full="its dirty bitmap belongs to no snapshot in this repository")
    _age, target = known[0]  # the newest snapshot's bitmap; later ones hold later writes
    others = [n for n in names if n != target]
    if others:
        qmp.execute(
            "block-dirty-bitmap-merge", {"node": disk.node, "target": target, "bitmaps": others}
        )
        for name in others:
            qmp.execute("block-dirty-bitmap-remove", {"node": disk.node, "name": name})
    state = next(b for b in bitmaps if b["name"] == target)
    if state.get("inconsistent"):
        quietly(qmp, "block-dirty-bitmap-remove", {"node": disk.node, "name": target})
        return Link(why_full="QEMU marks its dirty bitmap inconsistent (it stopped uncleanly)")
    if not state.get("recording", True):
        qmp.execute("block-dirty-bitmap-enable", {"node": disk.node, "name": target})
    _age, snapshot, volume = started_by[(disk.drive, target)]
    if volume.get("size") != disk.size:
        return Link(why_full="the disk was resized since the last backup")
    node = find_node(repo, snapshot.tree, [b"vm", vm_name.encode(), f"{disk.drive}.raw".encode()])
    if node is None or node.sparse_map is None:
        return Link(why_full="the last backup's image of this disk is not in its snapshot")
    return Link(target, chunk_map(node.content, node.sparse_map), snapshot.id)


def _bitmaps(qmp: Qmp, prefix: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for node in qmp.execute("query-named-block-nodes", {"flat": True}):
        ours = [b for b in node.get("dirty-bitmaps", []) if b["name"].startswith(prefix)]
        if ours:
            found[node["node-name"]] = ours
    return found
