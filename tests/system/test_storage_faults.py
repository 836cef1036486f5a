"""Backup, restore, check and prune over a storage that fails half-way (FaultyStorage over each
bare backend of ``tests/backends``: the local directory, S3 against rclone and SeaweedFS, REST
against ``freezeframe serve`` of a directory and of a bucket, SFTP against sshd), driven
through the library calls the CLI makes, without the CLI: each either fails with one line (a
FreezeframeError, never a traceback) or reports the failure in its result; afterwards the
repository, opened over another bare client of the same backend, checks clean with
--read-data, every snapshot taken before restores byte for byte, and no lock is left.

The repository is a few MiB in small packs, built once in a local directory and copied into a
fresh place of the backend for each case.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.base import Backend, Factory
from backends.registry import BARE
from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.errors import FreezeframeError, TransientStorageError
from freezeframe.repository.check import CheckResult, check_repository
from freezeframe.repository.crypto import config_mac_key
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.locks import RepositoryLock, read_locks
from freezeframe.repository.prune import execute_prune, plan_prune
from freezeframe.repository.reader import RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot, delete_snapshot, list_snapshots
from freezeframe.restore.restorer import RestoreResult, restore_snapshot
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.faults import Effect, Fault, FaultyStorage, random_plan
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy

pytestmark = pytest.mark.timeout(120)

PASSWORD = b"pw"
KiB = 1024
PACK_SIZE = 128 * KiB

Files = dict[str, bytes]
Kept = dict[str, tuple[Path, Files]]
"""Snapshot id -> the source directory it recorded, and the files it holds below it."""


def _write_tree(root: Path, seed: int, count: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        path = root / f"d{i % 3}" / f"f{seed}-{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.choice([3 * KiB, 60 * KiB, 200 * KiB])))


def _files(root: Path) -> Files:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _backup(storage: Storage, source: Path, cache: Path) -> Snapshot:
    """As ``freezeframe backup`` (cmd_backup): the index loaded under a shared lock that is
    checked before the commit."""
    repo = Repository.open(storage, PASSWORD, load_index=False)
    try:
        with RepositoryLock(repo, exclusive=False) as lock:
            path = os.fsencode(source)
            archiver = Archiver(
                repo, BackupOptions(sources=[SourcePath(path, path)]), FilesCache(cache), workers=2
            )
            return archiver.run(before_commit=lock.ensure_held).snapshot
    finally:
        repo.close()


def _restore(storage: Storage, snapshot_id: str, target: Path) -> RestoreResult:
    """As ``freezeframe restore`` (cmd_restore): over a remote backend it reads ahead (pack
    windows, several requests in flight, trees loaded ahead), over a local one it does not."""
    repo = Repository.open(storage, PASSWORD, load_index=False)
    try:
        snapshot = next(s for s in list_snapshots(repo) if s.id == snapshot_id)
        with RepositoryLock(repo, exclusive=False):
            return restore_snapshot(RepositoryReader(repo), snapshot, target)
    finally:
        repo.close()


def _check(storage: Storage) -> CheckResult:
    """As ``freezeframe check --read-data`` (cmd_check)."""
    repo = Repository.open(storage, PASSWORD, load_index=False)
    try:
        with RepositoryLock(repo, exclusive=False):
            return check_repository(repo, read_data=True)
    finally:
        repo.close()


def _prune(storage: Storage) -> object:
    """As ``freezeframe prune --max-unused 0 --grace 0`` (cmd_prune): every partly used pack
    repacked, and what no snapshot uses deleted at once (a remote backend's default grace
    would keep it an hour: no delete to fail)."""
    repo = Repository.open(storage, PASSWORD, load_index=False)
    try:
        with RepositoryLock(repo, exclusive=False, maintenance=True) as lock:
            plan = plan_prune(repo, max_unused_fraction=0.0, grace_s=0.0, lock=lock)
            return execute_prune(repo, plan, lock=lock)
    finally:
        repo.close()


@dataclass
class Repo:
    """A repository with two snapshots of a source tree, the first forgotten (so prune has
    packs to repack and delete), the files each kept snapshot holds, and ``src``, a copy of
    the tree for more backups. ``bare`` and ``under`` are two bare clients of it: the fault
    wrapper is stacked on ``under``, what it left is judged through ``bare``."""

    tmp: Path
    bare: Storage
    under: Storage
    src: Path
    kept: Kept

    def keep(self, snapshot: Snapshot) -> None:
        self.kept[snapshot.id] = (self.src, _files(self.src))

    def plain(self) -> Storage:
        return self.bare

    def faulty(self, plan: list[Fault]) -> FaultyStorage:
        return FaultyStorage(self.under, plan, sleep=lambda _s: None)

    def cache(self, name: str) -> Path:
        return self.tmp / "files-cache" / name


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tmp = tmp_path_factory.mktemp("template")
    path, src = tmp / "repo", tmp / "src"
    storage = LocalStorage(path)
    repo = Repository.init(storage, PASSWORD, KdfParams(1, 8192, 1))
    small = dataclasses.replace(repo.config, pack_size=PACK_SIZE)
    storage.put(
        Kind.CONFIG, "config", small.sealed(config_mac_key(repo.master.encryption_key)).to_bytes()
    )
    repo.close()
    _write_tree(src, 1, 24)
    first = _backup(LocalStorage(path), src, tmp / "fc")
    for victim in sorted(src.rglob("*.bin"))[::2]:
        victim.unlink()
    _write_tree(src, 2, 12)
    second = _backup(LocalStorage(path), src, tmp / "fc")
    repo = Repository.open(LocalStorage(path), PASSWORD)
    delete_snapshot(repo, first.id)
    repo.close()
    return Repo(tmp, LocalStorage(path), LocalStorage(path), src, {second.id: (src, _files(src))})


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """A fresh place of the bare backend the case names (``over_backends``)."""
    factory: Factory = request.param
    return factory(request, tmp_path_factory.mktemp("backend"))


LOCAL, *REMOTE = BARE


def over_backends(
    argname: str, cases: dict[str, Any], remote: Iterable[str]
) -> pytest.MarkDecorator:
    """Every case over the local backend, and the ``remote`` ones over every other bare backend:
    a remote case takes about two seconds, so all of them would add minutes to a run. Those
    kept are the faults whose aftermath the backend itself shapes (a write half-done or done
    unreported, a delete that fails, a read cut short, a lock that cannot be written)."""
    chosen = set(remote)
    assert chosen <= set(cases), chosen - set(cases)
    return pytest.mark.parametrize(
        ("backend", argname),
        [
            pytest.param(factory, case, id=f"{factory.__name__}-{name}")
            for factory in BARE
            for name, case in cases.items()
            if factory is LOCAL or name in chosen
        ],
        indirect=["backend"],
    )


def _copy_objects(source: Storage, target: Storage) -> None:
    for kind in Kind:
        for info in list(source.list(kind)):
            target.put(kind, info.name, source.get(kind, info.name))


@pytest.fixture
def fx(template: Repo, backend: Backend, tmp_path: Path) -> Repo:
    """The template's repository copied into a fresh place of the backend."""
    _copy_objects(template.plain(), backend.seed)
    shutil.copytree(template.src, tmp_path / "src", symlinks=True)
    return Repo(tmp_path, backend.seed, backend.storage, tmp_path / "src", dict(template.kept))


def _one_line(error: FreezeframeError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


def _assert_healthy(fx: Repo) -> None:
    """Checked over the plain backend: clean with read-data, no lock left, and every
    snapshot taken before the faulty operation restores byte for byte."""
    result = _check(fx.plain())
    assert result.errors == [] and result.damaged == []
    # A failed backup may leave packs no index names; check says so, prune removes them.
    assert all("is not named by any index" in w for w in result.warnings), result.warnings
    repo = Repository.open(fx.plain(), PASSWORD, load_index=False)
    try:
        assert read_locks(repo) == []
    finally:
        repo.close()
    for snapshot_id, (source, files) in fx.kept.items():
        target = fx.tmp / f"verify-{snapshot_id[:8]}"
        shutil.rmtree(target, ignore_errors=True)
        restored = _restore(fx.plain(), snapshot_id, target)
        assert (restored.errors, restored.damaged) == ([], [])
        assert _files(target / str(source).lstrip("/")) == files


# -- backup ----------------------------------------------------------------------------------

BACKUP_FAULTS = {
    "second pack upload fails": Fault("put", Effect.ERROR, kind=Kind.DATA, nth=2),
    "pack upload times out": Fault("put", Effect.TRANSIENT, kind=Kind.DATA, nth=1),
    "pack stored but its reply lost": Fault("put", Effect.LOST_REPLY, kind=Kind.DATA, nth=1),
    "index upload fails": Fault("put", Effect.ERROR, kind=Kind.INDEX),
    "snapshot upload fails": Fault("put", Effect.ERROR, kind=Kind.SNAPSHOTS),
    "index listing fails": Fault("list", Effect.TRANSIENT, kind=Kind.INDEX),
    "index read short": Fault("get", Effect.TRUNCATE, kind=Kind.INDEX),
    "lock check fails": Fault("exists", Effect.ERROR, kind=Kind.LOCKS),
    "another lock cannot be read": Fault("get", Effect.ERROR, kind=Kind.LOCKS),
}


@over_backends(
    "fault",
    BACKUP_FAULTS,
    ["second pack upload fails", "pack stored but its reply lost", "snapshot upload fails"],
)
def test_a_backup_that_fails_half_way(fx: Repo, fault: Fault) -> None:
    _write_tree(fx.src, 3, 12)  # new data: packs to upload
    storage = fx.faulty([fault])
    try:
        snapshot = _backup(storage, fx.src, fx.cache("faulty"))
    except FreezeframeError as exc:
        _one_line(exc)
    else:
        # A read fault the repository works around (an index read short is read from the
        # pack headers instead) still leaves a whole snapshot.
        fx.keep(snapshot)
    assert storage.fired, "the fault never took effect"
    _assert_healthy(fx)
    # And the next backup over the plain storage completes with what the failed one left.
    done = _backup(fx.plain(), fx.src, fx.cache("faulty"))
    fx.keep(done)
    _assert_healthy(fx)


# -- restore ---------------------------------------------------------------------------------

RESTORE_FAULTS = {
    "root tree read fails": Fault("get", Effect.ERROR, kind=Kind.DATA, nth=1),
    "a data read fails": Fault("get", Effect.ERROR, kind=Kind.DATA, nth=4),
    "data reads time out": Fault("get", Effect.TRANSIENT, kind=Kind.DATA, nth=3, times=3),
    "a data read short": Fault("get", Effect.TRUNCATE, kind=Kind.DATA, nth=4),
    "index listing empty": Fault("list", Effect.EMPTY, kind=Kind.INDEX),
    "snapshot listing fails": Fault("list", Effect.ERROR, kind=Kind.SNAPSHOTS),
    "lock write fails": Fault("put", Effect.ERROR, kind=Kind.LOCKS),
}


@over_backends("fault", RESTORE_FAULTS, ["a data read fails", "lock write fails"])
def test_a_restore_that_fails_half_way(fx: Repo, fault: Fault) -> None:
    storage = fx.faulty([fault])
    ((snapshot_id, (source, expected)),) = fx.kept.items()
    target = fx.tmp / "target"
    try:
        result = _restore(storage, snapshot_id, target)
    except FreezeframeError as exc:
        _one_line(exc)
        reported: list[str] | None = None
    else:
        for path, message in result.errors:
            assert "\n" not in message, (path, message)
        reported = [path for path, _ in result.errors]
    # Whether it stopped or went on, no file is left looking restored with other content:
    # what it could not restore is reported (one line each) and not left behind; a lost index
    # is worked around (the packs' headers are read instead).
    restored = _files(target / str(source).lstrip("/")) if target.exists() else {}
    assert {p: expected[p] for p in restored} == restored
    if reported is not None:
        for missing in set(expected) - set(restored):
            full = f"{source}/{missing}"
            assert any(full == p or full.startswith(f"{p}/") for p in reported), (full, reported)
    assert storage.fired, "the fault never took effect"
    _assert_healthy(fx)


@over_backends("nth", {"12": 12, "20": 20}, ["12"])  # both stop with files begun, not finished
def test_a_storage_that_stops_answering_stops_the_restore(fx: Repo, nth: int) -> None:
    """Retries spent on a storage that no longer answers: the restore stops with one line
    (not thousands of files named damaged), and no file it had begun is left behind."""
    storage = fx.faulty([Fault("get", Effect.TRANSIENT, kind=Kind.DATA, nth=nth, times=None)])
    ((snapshot_id, (source, expected)),) = fx.kept.items()
    target = fx.tmp / "target"
    with pytest.raises(TransientStorageError) as stopped:
        _restore(storage, snapshot_id, target)
    _one_line(stopped.value)
    restored = _files(target / str(source).lstrip("/")) if target.exists() else {}
    assert len(restored) < len(expected)
    assert {p: expected[p] for p in restored} == restored
    _assert_healthy(fx)
    # The same restore again, over a storage that answers, completes the target.
    again = _restore(fx.plain(), snapshot_id, target)
    assert (again.errors, again.damaged) == ([], [])
    assert _files(target / str(source).lstrip("/")) == expected


# -- check -----------------------------------------------------------------------------------

CHECK_FAULTS = {
    "a pack read fails": Fault("get", Effect.ERROR, kind=Kind.DATA, nth=2),
    "a pack read short": Fault("get", Effect.TRUNCATE, kind=Kind.DATA, nth=2),
    "index reads short": Fault("get", Effect.TRUNCATE, kind=Kind.INDEX, times=None),
    "pack listing partial": Fault("list", Effect.PARTIAL, kind=Kind.DATA),
    "snapshot read fails": Fault("get", Effect.ERROR, kind=Kind.SNAPSHOTS),
    "key listing fails": Fault("list", Effect.ERROR, kind=Kind.KEYS, nth=2),
}


@over_backends("fault", CHECK_FAULTS, ["a pack read short"])
def test_a_check_that_fails_half_way(fx: Repo, fault: Fault) -> None:
    storage = fx.faulty([fault])
    try:
        result = _check(storage)
    except FreezeframeError as exc:
        _one_line(exc)
    else:
        # check collects problems rather than raising: the storage's failure is one of them.
        assert result.errors, "a failing storage checked clean"
        for message in result.errors:
            assert "\n" not in message, message
    assert storage.fired, "the fault never took effect"
    _assert_healthy(fx)


# -- prune -----------------------------------------------------------------------------------

PRUNE_FAULTS = {
    "repacked pack upload fails": Fault("put", Effect.ERROR, kind=Kind.DATA),
    "repacked pack reply lost": Fault("put", Effect.LOST_REPLY, kind=Kind.DATA),
    "a tree read short while planning": Fault("get", Effect.TRUNCATE, kind=Kind.DATA, nth=2),
    "new index upload fails": Fault("put", Effect.ERROR, kind=Kind.INDEX, nth=2),
    "old index delete fails": Fault("delete", Effect.ERROR, kind=Kind.INDEX, nth=1),
    "second pack delete fails": Fault("delete", Effect.ERROR, kind=Kind.DATA, nth=2),
    "pack listing partial": Fault("list", Effect.PARTIAL, kind=Kind.DATA),
    "index listing empty when planning": Fault("list", Effect.EMPTY, kind=Kind.INDEX, nth=2),
    "index listing empty when executing": Fault("list", Effect.EMPTY, kind=Kind.INDEX, nth=3),
}


@over_backends(
    "fault",
    PRUNE_FAULTS,
    ["repacked pack reply lost", "new index upload fails", "second pack delete fails"],
)
def test_a_prune_that_fails_half_way(fx: Repo, fault: Fault) -> None:
    storage = fx.faulty([fault])
    try:
        _prune(storage)
    except FreezeframeError as exc:
        _one_line(exc)
    assert storage.fired, "the fault never took effect"
    _assert_healthy(fx)
    _prune(fx.plain())  # and a prune over the plain storage finishes the job
    _assert_healthy(fx)


# -- retries and drawn plans -----------------------------------------------------------------


@pytest.mark.parametrize("backend", BARE, ids=lambda f: f.__name__, indirect=True)
def test_retries_ride_out_transient_faults(fx: Repo) -> None:
    """What the CLI stacks (retries over the backend) turns timeouts and lost replies into
    nothing worse than a wait."""
    plan = [
        Fault("put", Effect.TRANSIENT, kind=Kind.DATA, nth=1, times=2),
        Fault("put", Effect.LOST_REPLY, kind=Kind.INDEX),
        Fault("get", Effect.TRANSIENT, kind=Kind.DATA, nth=3, times=3),
        Fault("list", Effect.TRANSIENT, kind=Kind.DATA),
        Fault("delete", Effect.LOST_REPLY, kind=Kind.DATA),
    ]
    faulty = fx.faulty(plan)
    waits: list[float] = []
    storage = RetryingStorage(faulty, RetryPolicy(attempts=4), sleep=waits.append)
    _write_tree(fx.src, 4, 6)
    fx.keep(_backup(storage, fx.src, fx.cache("retried")))
    _prune(storage)
    assert {f.fault for f in faulty.fired} == set(plan)
    assert len(waits) == len(faulty.fired)
    _assert_healthy(fx)


@over_backends("seed", {str(seed): seed for seed in (0, 1, 3, 4, 5)}, ["0"])
def test_drawn_fault_plans_never_harm_the_repository(fx: Repo, seed: int) -> None:
    """A backup then a prune over a plan drawn from ``seed`` (replay a failure by its seed)."""
    effects = (Effect.ERROR, Effect.TRANSIENT, Effect.LOST_REPLY, Effect.TRUNCATE, Effect.PARTIAL)
    plan = random_plan(seed, count=4, ops=("get", "put", "list", "delete"), effects=effects)
    _write_tree(fx.src, 10 + seed, 6)
    for step in ("backup", "prune"):
        storage = fx.faulty(plan)
        try:
            if step == "backup":
                fx.keep(_backup(storage, fx.src, fx.cache(f"drawn{seed}")))
            else:
                _prune(storage)
        except FreezeframeError as exc:
            _one_line(exc)
        _assert_healthy(fx)


def test_the_template_is_what_the_faults_need(template: Repo) -> None:
    """Enough packs for faults on the second and fourth read, and a prune with work to do."""
    storage = template.plain()
    assert len(list(storage.list(Kind.DATA))) >= 6
    repo = Repository.open(storage, PASSWORD)
    try:
        plan = plan_prune(repo, max_unused_fraction=0.0)
    finally:
        repo.close()
    assert plan.repack and plan.delete
