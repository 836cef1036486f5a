"""``backup``: paths into one snapshot, then each VM into one of its own.

Paths and VMs are two kinds of source behind one interface (``View``): entering a source takes
a read-only point-in-time view and its consistency record; the service reads the view (the
file archiver for paths, the image store for a VM's disks) and writes the snapshot through
``backup.commit.commit_snapshot`` inside the source's block, under the repository lock; leaving
the block releases the view. Paths and VMs are not taken at one instant together: each source
gives its own snapshot its own consistency record."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from freezeframe.backup.archiver import Archiver, BackupOptions, BackupResult, SourcePath
from freezeframe.backup.commit import Labels, StoredTree, commit_snapshot
from freezeframe.backup.excludes import ExcludeMatcher
from freezeframe.backup.files_cache import FilesCache, default_cache_dir
from freezeframe.backup.image_tree import archive_images
from freezeframe.backup.images import DiskProgress
from freezeframe.backup.progress import BackupProgress
from freezeframe.capture.providers.lvm_report import parse_snapshot_size
from freezeframe.capture.providers.registry import DEFAULT_OPTIONS, SnapshotOptions
from freezeframe.capture.service_pause import parse as parse_quiescer
from freezeframe.capture.session import Caps, Capture, CaptureOutcome
from freezeframe.errors import UsageError
from freezeframe.levels import AUTO, Level, parse_requested
from freezeframe.quiesce.discovery import expand_auto
from freezeframe.quiesce.script import expand_directories
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport, Snapshot
from freezeframe.service.reporter import Cancel, Reporter
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.nbdreader import open_export
from freezeframe.vm.source import VmLevels, VmSource, VmView


class View(Protocol):
    """A source's point-in-time view, as the backup sees every kind of it."""

    @property
    def warnings(self) -> list[str]: ...

    def consistency(self) -> ConsistencyReport:
        """The record of the instant the view shows."""
        ...


ViewT = TypeVar("ViewT", bound=View)


@dataclass(frozen=True)
class _PathView:
    """The paths' capture seen as a view: their snapshots (or the live files) and its record."""

    captured: CaptureOutcome

    @property
    def warnings(self) -> list[str]:
        return self.captured.warnings

    def consistency(self) -> ConsistencyReport:
        captured = self.captured
        return ConsistencyReport(
            requested=captured.requested,
            achieved=captured.achieved,
            volumes=captured.volumes,
            reason=captured.reason,
            pause=captured.pause,
            quiesce=captured.quiesce,
        )


@contextmanager
def _path_source(capture: Capture) -> Iterator[_PathView]:
    with capture as captured:
        yield _PathView(captured)


@dataclass(frozen=True)
class BackupRequest:
    """What to back up and how; the same for the CLI, a plan and an API call."""

    paths: tuple[str, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    excludes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    host: str = ""  # recorded host name ('' = this host)
    one_file_system: bool = False
    consistency: str = AUTO  # a level, or auto: the highest every source reaches
    fallback: str = "fail"  # or degrade: take the highest reachable
    caps: Caps = field(default_factory=Caps)
    quiesce: tuple[str, ...] = ()  # KIND:TARGET, auto, or a hooks directory
    snapshot_size: str = ""  # an LVM thick snapshot's store: 512M, 25%... ('' = 20 %)

    def snapshot_options(self) -> SnapshotOptions:
        if not self.snapshot_size:
            return DEFAULT_OPTIONS
        return SnapshotOptions(lvm_snapshot_size=parse_snapshot_size(self.snapshot_size))

    def validate(self) -> None:
        """Refuse a request that cannot run, before anything is opened or taken."""
        if not self.paths and not self.vms:
            raise UsageError("nothing to back up: give paths, or --vm SPEC")
        if self.quiesce and not self.paths:
            raise UsageError(
                "--quiesce holds applications for paths; a VM's are held inside it by the "
                "guest hook (docs/vm.md)"
            )
        if any(not path for path in self.paths):
            raise UsageError("an empty path cannot be backed up")
        names = [spec.name for spec in self.vms]
        if len(set(names)) != len(names):
            raise UsageError("two --vm have the same name; give each name=NAME")
        ExcludeMatcher(list(self.excludes))  # a bad pattern fails here
        parse_requested(self.consistency)
        self.snapshot_options()  # a bad size fails here
        if AUTO in self.quiesce and self.consistency not in (AUTO, Level.APPLICATION):
            raise UsageError("--quiesce auto needs --consistency application or auto")


@dataclass
class VmBackupResult:
    """One VM's snapshot, and what the backup warned of on the way."""

    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)


@dataclass
class BackupOutcome:
    """The snapshot of the paths (None without paths) and one per VM, in order."""

    paths: BackupResult | None = None
    vms: list[VmBackupResult] = field(default_factory=list)

    @property
    def unreadable(self) -> bool:
        """Whether some source files could not be read (the snapshot holds the rest)."""
        return self.paths is not None and bool(self.paths.errors)


def backup(
    repo: Repository, request: BackupRequest, reporter: Reporter, cancel: Cancel | None = None
) -> BackupOutcome:
    """Run the request against ``repo`` (opened without its index: it is loaded under the
    lock). Warnings and progress go to ``reporter``; ``cancel`` is honoured between sources."""
    request.validate()
    cancel = cancel or Cancel()
    outcome = BackupOutcome()
    if request.paths:
        outcome.paths = _back_up_paths(repo, request, reporter)
    for spec in request.vms:
        cancel.check()
        outcome.vms.append(_back_up_vm(repo, request, spec, reporter))
    return outcome


def _commit_view(
    repo: Repository,
    source: AbstractContextManager[ViewT],
    read: Callable[[ViewT], StoredTree],
    labels: Labels,
    reporter: Reporter,
) -> Snapshot:
    """The one line of every source: take the view, read it, write its snapshot."""
    lock = RepositoryLock(repo, exclusive=False)
    with lock, source as view:
        for warning in view.warnings:
            reporter.warn(warning)
        stored = read(view)
        return commit_snapshot(repo, stored, view.consistency(), labels, lock.ensure_held)


def _labels(request: BackupRequest) -> Labels:
    return Labels(tuple(request.tags), request.host)


def _back_up_paths(repo: Repository, request: BackupRequest, reporter: Reporter) -> BackupResult:
    paths = [os.path.abspath(p) for p in request.paths]
    quiesce = expand_directories(list(request.quiesce))
    if request.consistency in (AUTO, Level.APPLICATION):
        quiesce, warnings = expand_auto(quiesce, paths)
        for warning in warnings:
            reporter.warn(warning)
    capture = Capture(
        paths,
        request.consistency,
        request.fallback,
        one_file_system=request.one_file_system,
        caps=request.caps,
        never_freeze=_never_freeze(repo),
        quiescers=[parse_quiescer(spec) for spec in quiesce],
        snapshot_options=request.snapshot_options(),
    )
    progress = BackupProgress()
    archivers: list[Archiver] = []

    def read(view: _PathView) -> StoredTree:
        archiver = Archiver(
            repo,
            _options(request, view.captured),
            FilesCache.for_repository(repo.config.repository_id),
            progress,
            estimate_totals=reporter.wants_totals,
        )
        archivers.append(archiver)
        with reporter.phase("backup", progress):
            stored = archiver.store()
        # A snapshot that changed or failed under the read is never committed.
        capture.confirm(archiver.io_errors)
        return stored

    snapshot = _commit_view(repo, _path_source(capture), read, _labels(request), reporter)
    archiver = archivers[0]
    archiver.save_files_cache()  # only once the snapshot is saved
    return BackupResult(snapshot, archiver.errors)


def _never_freeze(repo: Repository) -> tuple[str, ...]:
    """Where the backup writes: freezing those file systems would stall it."""
    local = repo.storage.capabilities.local_directory
    return (*([local] if local else []), str(default_cache_dir()))


def _options(request: BackupRequest, captured: CaptureOutcome) -> BackupOptions:
    """What the archiver reads (inside the snapshots) and records (the original paths)."""
    replaced: dict[bytes, bytes | None] = {os.fsencode(p): None for p in captured.left_out}
    replaced.update({os.fsencode(p): os.fsencode(s) for p, s in captured.added_files.items()})
    return BackupOptions(
        sources=[
            SourcePath(os.fsencode(p.read_path), os.fsencode(p.original)) for p in captured.paths
        ],
        excludes=[*request.excludes, *captured.excludes],
        one_file_system=request.one_file_system,
        cache_checks_device=not captured.from_snapshot,
        grafts={os.fsencode(g.original): os.fsencode(g.read_path) for g in captured.grafts},
        replaced=replaced,
    )


def _back_up_vm(
    repo: Repository, request: BackupRequest, spec: VmSpec, reporter: Reporter
) -> VmBackupResult:
    levels = VmLevels(
        requested=parse_requested(request.consistency),
        fallback=request.fallback,
        freeze_cap_s=request.caps.freeze_s,
        quiesce_cap_s=request.caps.application_s,
    )
    source = VmSource(repo, spec, open_export, levels)
    progress = DiskProgress()
    warnings: list[str] = []

    def read(view: VmView) -> StoredTree:
        warnings.extend(view.warnings)
        with reporter.phase(f"vm {spec.name}", progress):
            return archive_images(
                repo,
                view.directory,
                view.images,
                view.files,
                started=view.started,
                t0=view.t0,
                progress=progress,
            )

    snapshot = _commit_view(repo, source, read, _labels(request), reporter)
    return VmBackupResult(snapshot, warnings)
