"""``restore``: a snapshot's files (or a VM's disk images) under a target directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from freezeframe.errors import UsageError
from freezeframe.repository.locks import reading
from freezeframe.repository.reader import RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, find_snapshot
from freezeframe.restore.restorer import RestoreProgress, RestoreResult, restore_snapshot
from freezeframe.service.reporter import Reporter
from freezeframe.vm.images import FORMATS, convert_images, disk_includes, vm_root


@dataclass(frozen=True)
class RestoreRequest:
    snapshot: str  # an id prefix, or latest
    target: Path
    includes: tuple[str, ...] = ()  # absolute paths of the snapshot; none: everything
    disks: tuple[str, ...] = ()  # a VM's snapshot: only these drives
    image_format: str = "raw"  # a VM's snapshot: raw (sparse) or qcow2
    lock: bool = True  # False: take no lock (storage that takes no write)


@dataclass
class RestoreOutcome:
    snapshot: Snapshot
    result: RestoreResult
    target: Path


def restore(repo: Repository, request: RestoreRequest, reporter: Reporter) -> RestoreOutcome:
    """Restore under a shared lock; damaged files are removed and listed in the result, and a
    VM's images are converted only when every byte of them came back intact."""
    if request.image_format not in FORMATS:
        raise UsageError(f"unknown image format {request.image_format!r}")
    snapshot = find_snapshot(repo, request.snapshot)
    includes = list(request.includes)
    if request.disks:
        includes += disk_includes(snapshot.paths, list(request.disks))
    vm = vm_root(snapshot.paths)
    if request.image_format != "raw" and vm is None:
        raise UsageError("--format applies to a VM's snapshot (made with backup --vm)")
    progress = RestoreProgress()
    with reading(repo, lock=request.lock), reporter.phase("restore", progress):
        result = restore_snapshot(
            RepositoryReader(repo), snapshot, request.target, includes=includes, progress=progress
        )
    if vm is not None and not result.damaged:
        convert_images(request.target / vm.lstrip("/"), request.image_format)
    return RestoreOutcome(snapshot, result, request.target)
