"""repair index, packs, snapshots and config: each returns what it found and did, and the
front end tells the user what to do next.

The index, packs and snapshots are repaired under the exclusive lock: they rewrite or delete
what a backup or a prune elsewhere would read. The config is repaired without opening the
repository (a damaged config is why it does not open), so without a lock."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repair import config as config_repair
from freezeframe.repository.repair import index as index_repair
from freezeframe.repository.repair import packs as pack_repair
from freezeframe.repository.repair import snapshots as snapshot_repair
from freezeframe.repository.repair.config import ConfigRepair
from freezeframe.repository.repair.index import IndexRepair
from freezeframe.repository.repair.packs import PackRepair
from freezeframe.repository.repair.snapshots import SnapshotRepair
from freezeframe.repository.repository import Repository
from freezeframe.service.reporter import PhaseCounter, Reporter
from freezeframe.storage.base import Storage


@dataclass(frozen=True)
class IndexRepairRequest:
    read_all_packs: bool = False  # not only the packs no sound index file describes


def repair_index(repo: Repository, request: IndexRepairRequest, reporter: Reporter) -> IndexRepair:
    """Write a new index from the pack headers (and the index files that read)."""
    progress = PhaseCounter()
    # It reads the index files itself: the lock loads none.
    with (
        RepositoryLock(repo, exclusive=True, load_index=False),
        reporter.phase("repair index", progress),
    ):
        return index_repair.repair_index(
            repo, read_all_packs=request.read_all_packs, progress=progress
        )


@dataclass(frozen=True)
class PackRepairRequest:
    packs: tuple[str, ...] = ()  # pack ids; none: read every pack to find the damaged


def repair_packs(repo: Repository, request: PackRepairRequest, reporter: Reporter) -> PackRepair:
    """Copy the intact blobs of damaged packs into new ones and drop the damaged."""
    progress = PhaseCounter()
    with (
        RepositoryLock(repo, exclusive=True, load_index=False),
        reporter.phase("repair packs", progress),
    ):
        return pack_repair.repair_packs(repo, list(request.packs) or None, progress=progress)


@dataclass(frozen=True)
class SnapshotRepairRequest:
    snapshots: tuple[str, ...] = ()  # id prefixes; none: all
    forget: bool = False  # remove the originals (and the unreadable snapshots)
    dry_run: bool = False


def repair_snapshots(
    repo: Repository, request: SnapshotRepairRequest, reporter: Reporter
) -> SnapshotRepair:
    """Write new snapshots without the directories and data that are lost."""
    progress = PhaseCounter()
    with (
        RepositoryLock(repo, exclusive=True),
        reporter.phase("repair snapshots", progress),
    ):
        return snapshot_repair.repair_snapshots(
            repo, list(request.snapshots) or None, forget=request.forget, dry_run=request.dry_run
        )


@dataclass(frozen=True)
class ConfigRepairRequest:
    password: bytes = field(repr=False)
    force: bool = False  # rewrite even a config of a newer format version


def repair_config(storage: Storage, request: ConfigRepairRequest) -> ConfigRepair:
    """Check the config with the key the password opens; rewrite it if it is unsound."""
    return config_repair.repair_config(storage, request.password, force=request.force)
