"""init, migrate and unlock: the repository itself (its making, its format, its locks) rather
than what it stores; kept apart from the snapshot operations, which never create or upgrade."""

from __future__ import annotations

from dataclasses import dataclass, field

from freezeframe.repository import migrate as migration
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.locks import LockInfo, RepositoryLock, remove_locks
from freezeframe.repository.migrate import Migration
from freezeframe.repository.repository import Repository
from freezeframe.service.reporter import Reporter
from freezeframe.storage.base import Storage


@dataclass(frozen=True)
class InitRequest:
    password: bytes = field(repr=False)
    kdf: KdfParams = field(default_factory=KdfParams)
    group_readable: bool = False  # 0750/0640 instead of 0700/0600
    related_to: Repository | None = field(default=None, repr=False)
    """An open repository whose chunker parameters and id key the new one takes
    (``--copy-chunker-params``), so ``copy`` between the two moves blobs as they are."""


def init(storage: Storage, request: InitRequest, reporter: Reporter) -> Repository:
    """Create a repository with one key for the password; the caller closes it."""
    return Repository.init(
        storage,
        request.password,
        request.kdf,
        group_readable=request.group_readable,
        warn=reporter.warn,
        related_to=request.related_to,
    )


@dataclass(frozen=True)
class MigrateRequest:
    password: bytes = field(repr=False)  # the one the repository was opened with


def migrate(repo: Repository, request: MigrateRequest) -> Migration:
    """Every step the repository needs, under the exclusive lock (it rewrites the config and
    the key in use)."""
    with RepositoryLock(repo, exclusive=True):
        return migration.migrate(repo, request.password)


@dataclass(frozen=True)
class UnlockRequest:
    remove_all: bool = False  # also the locks of live processes


def unlock(repo: Repository, request: UnlockRequest) -> list[LockInfo]:
    """Remove stale and damaged locks (or all); returns those removed. Takes no lock itself:
    it is run because one is in the way."""
    return remove_locks(repo, include_live=request.remove_all)
