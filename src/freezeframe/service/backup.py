"""``backup``: paths into one snapshot, then each VM into one of its own.

Paths and VMs are not taken at one instant together: the paths' capture (snapshots of their
volumes, applications held) and each VM's point-in-time view are separate, and each gives the
snapshot it produces its own consistency record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from freezeframe.backup.archiver import Archiver, BackupOptions, BackupResult, SourcePath
from freezeframe.backup.excludes import ExcludeMatcher
from freezeframe.backup.files_cache import FilesCache, default_cache_dir
from freezeframe.backup.images import DiskProgress
from freezeframe.backup.progress import BackupProgress
from freezeframe.capture.service_pause import parse as parse_quiescer
from freezeframe.capture.session import Caps, Capture, CaptureOutcome
from freezeframe.errors import UsageError
from freezeframe.quiesce.discovery import expand_auto
from freezeframe.quiesce.script import expand_directories
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import ConsistencyReport
from freezeframe.service.reporter import Cancel, Reporter
from freezeframe.vm.backup import VmBackupResult, backup_vm
from freezeframe.vm.machine import VmSpec
from freezeframe.vm.nbdreader import open_export


@dataclass(frozen=True)
class BackupRequest:
    """What to back up and how; the same for the CLI, a plan and an API call."""

    paths: tuple[str, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    excludes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    host: str = ""  # recorded host name ('' = this host)
    one_file_system: bool = False
    consistency: str = "auto"  # a level, or auto: the highest every source reaches
    fallback: str = "fail"  # or degrade: take the highest reachable
    caps: Caps = field(default_factory=Caps)
    quiesce: tuple[str, ...] = ()  # KIND:TARGET, auto, or a hooks directory

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
        if "auto" in self.quiesce and self.consistency not in ("auto", "application"):
            raise UsageError("--quiesce auto needs --consistency application or auto")


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


def _back_up_paths(repo: Repository, request: BackupRequest, reporter: Reporter) -> BackupResult:
    paths = [os.path.abspath(p) for p in request.paths]
    quiesce = expand_directories(list(request.quiesce))
    if request.consistency in ("auto", "application"):
        quiesce, warnings = expand_auto(quiesce, paths)
        for warning in warnings:
            reporter.warn(warning)
    lock = RepositoryLock(repo, exclusive=False)
    capture = Capture(
        paths,
        request.consistency,
        request.fallback,
        one_file_system=request.one_file_system,
        caps=request.caps,
        never_freeze=(os.path.abspath(repo.storage.location), str(default_cache_dir())),
        quiescers=[parse_quiescer(spec) for spec in quiesce],
    )
    progress = BackupProgress()
    with lock, capture as captured:
        for warning in captured.warnings:
            reporter.warn(warning)
        archiver = Archiver(
            repo,
            _options(request, captured),
            FilesCache.for_repository(repo.config.repository_id),
            progress,
            estimate_totals=reporter.wants_totals,
        )
        with reporter.phase("backup", progress):
            return archiver.run(before_commit=lock.ensure_held)


def _options(request: BackupRequest, captured: CaptureOutcome) -> BackupOptions:
    """What the archiver reads (inside the snapshots) and records (the original paths)."""
    replaced: dict[bytes, bytes | None] = {os.fsencode(p): None for p in captured.left_out}
    replaced.update({os.fsencode(p): os.fsencode(s) for p, s in captured.added_files.items()})
    return BackupOptions(
        sources=[
            SourcePath(os.fsencode(p.read_path), os.fsencode(p.original)) for p in captured.paths
        ],
        excludes=[*request.excludes, *captured.excludes],
        tags=list(request.tags),
        host=request.host,
        one_file_system=request.one_file_system,
        consistency=ConsistencyReport(
            requested=captured.requested,
            achieved=captured.achieved,
            volumes=captured.volumes,
            reason=captured.reason,
            pause=captured.pause,
            quiesce=captured.quiesce,
        ),
        cache_checks_device=not captured.from_snapshot,
        grafts={os.fsencode(g.original): os.fsencode(g.read_path) for g in captured.grafts},
        replaced=replaced,
    )


def _back_up_vm(
    repo: Repository, request: BackupRequest, spec: VmSpec, reporter: Reporter
) -> VmBackupResult:
    progress = DiskProgress()
    with RepositoryLock(repo, exclusive=False) as lock, reporter.phase(f"vm {spec.name}", progress):
        result = backup_vm(
            repo,
            spec,
            open_export,
            requested=request.consistency,
            fallback=request.fallback,
            freeze_cap_s=request.caps.freeze_s,
            quiesce_cap_s=request.caps.application_s,
            tags=list(request.tags),
            progress=progress,
            before_commit=lock.ensure_held,
        )
    for warning in result.warnings:
        reporter.warn(warning)
    return result
