"""forget, prune and check: each takes the lock it needs and returns what it did.

The repository is opened (and closed) by the caller, without its index: an operation loads it
once it holds the lock, as a prune elsewhere rewrites it. forget and prune take the maintenance
lock, so backups on other hosts go on meanwhile (see ``repository/prune.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from freezeframe.repository.check import CheckResult, check_repository
from freezeframe.repository.locks import RepositoryLock, reading
from freezeframe.repository.prune import PruneStats, execute_prune, plan_prune
from freezeframe.repository.repository import Repository
from freezeframe.repository.retention import RetentionPolicy, apply_policy, group_by
from freezeframe.repository.snapshot import Snapshot, delete_snapshot, list_snapshots


@dataclass(frozen=True)
class ForgetRequest:
    policy: RetentionPolicy
    host: str | None = None
    tags: tuple[str, ...] = ()  # a snapshot must carry all of them to be considered
    prune: bool = False
    dry_run: bool = False
    grace_s: float | None = None  # the prune's grace period; None: the storage's default


@dataclass
class ForgetGroup:
    host: str
    paths: list[str]
    kept: list[tuple[str, list[str]]]  # snapshot id, why kept
    removed: list[str]


@dataclass
class ForgetResult:
    groups: list[ForgetGroup] = field(default_factory=list)
    removed: list[Snapshot] = field(default_factory=list)
    prune: PruneStats | None = None


def forget(repo: Repository, request: ForgetRequest) -> ForgetResult:
    """Apply the policy per host and set of paths; remove (unless a dry run) what it does not
    keep, then prune if asked and anything went."""
    result = ForgetResult()
    with RepositoryLock(repo, exclusive=False, maintenance=True) as lock:
        snapshots = [
            s
            for s in list_snapshots(repo)
            if (request.host is None or s.host == request.host) and set(request.tags) <= set(s.tags)
        ]
        groups = group_by(snapshots, lambda s: (s.host, tuple(sorted(s.paths))))
        for (host, paths), members in groups.items():
            decisions = apply_policy(members, request.policy, lambda s: s.time.astimezone())
            result.groups.append(
                ForgetGroup(
                    host,
                    list(paths),
                    [(d.item.id, list(d.reasons)) for d in decisions if d.keep],
                    [d.item.id for d in decisions if not d.keep],
                )
            )
            result.removed += [d.item for d in decisions if not d.keep]
        if not request.dry_run:
            for snapshot in result.removed:
                delete_snapshot(repo, snapshot.id)
        if request.prune and not request.dry_run and result.removed:
            plan = plan_prune(repo, grace_s=request.grace_s, lock=lock)
            result.prune = execute_prune(repo, plan, lock=lock)
    return result


def prune(
    repo: Repository,
    *,
    max_unused_fraction: float,
    dry_run: bool,
    grace_s: float | None = None,
) -> dict[str, Any]:
    """What a prune removes, marks and repacks (only planned on a dry run)."""
    with RepositoryLock(repo, exclusive=False, maintenance=True) as lock:
        plan = plan_prune(repo, max_unused_fraction=max_unused_fraction, grace_s=grace_s, lock=lock)
        return plan.to_json() if dry_run else execute_prune(repo, plan, lock=lock).to_json()


def check(
    repo: Repository, *, read_data: bool, read_data_subset: float | None, lock: bool = True
) -> CheckResult:
    """Verify structure, and data if asked, under a shared lock (backups go on), or none."""
    with reading(repo, lock=lock):
        return check_repository(repo, read_data=read_data, read_data_subset=read_data_subset)
