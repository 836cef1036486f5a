"""Hostile networks and servers under an S3 repository, through the real CLI (a child process,
its credentials in its environment), against ``rclone serve s3`` behind the fault proxy
(``servers.faultproxy``):

- transient faults (connections dropped mid-upload and mid-download, resets, 500, 503,
  SlowDown, slow answers within the timeout, bodies cut short) are retried: the backup
  succeeds, the restore is byte-exact and ``check --read-data`` is clean;
- persistent faults (always 503, connection refused, bodies always cut short) end after the
  bounded retries with one line, exit 1 and no snapshot; once the server heals the repository
  passes ``check --read-data`` and the next backup works; a file is never restored short;
- a rejected session token, or a server that says its storage is full, is not retried and is
  one line; no credential reaches stdout, stderr, ``--json`` or the process's arguments;
- a server whose disk fills (rclone over a small tmpfs) ends the backup with one line;
- ``kill -9`` of a backup mid-upload leaves a repository whose next backup works, which checks
  with at most the documented warning, and whose leftovers prune removes.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ffharness import (
    FAST_INIT,
    one_line_error,
    run_at,
    spawn_freezeframe,
    succeeded,
)
from freezeframe.errors import TransientStorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.retry import RetryingStorage, RetryPolicy
from freezeframe.storage.s3 import S3Storage
from fsfixtures import small_tmpfs
from servers.base import S3Server
from servers.faultproxy import Action, FaultProxy, Rule, fault_proxy
from servers.fixtures import S3_SERVERS
from servers.rclone_s3 import rclone_s3

run = functools.partial(run_at, timeout=180)  # a command hung is a failure

pytestmark = pytest.mark.timeout(240)

MiB = 1024 * 1024
DATA = r"/data/"  # the path of a pack's key, what the rules aim at
KILL_TRIALS_ENV = "FREEZEFRAME_REMOTE_KILL_TRIALS"
KILL_HOLD = 1.0  # seconds the proxy holds each pack's answer in the kill trials
# The CLI's policy (storage.retry.RetryPolicy()): 5 attempts, waits of at most 0.5+1+2+4 s.
ATTEMPTS = 5
RETRY_WAIT_MAX = 7.5


@pytest.fixture
def proxy(rclone_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fresh proxy in front of the session's rclone, the environment pointed at the server."""
    rclone_s3_server.apply(monkeypatch)
    with fault_proxy(rclone_s3_server.endpoint) as found:
        yield found


@pytest.fixture
def location(rclone_s3_server: S3Server, proxy: FaultProxy) -> str:
    """A bucket of this test's own, reached through the proxy."""
    place = rclone_s3_server.fresh_place()
    return f"s3:{proxy.endpoint}/{place.bucket}"


def _make_source(root: Path, seed: int, big: int = 3 * MiB) -> Path:
    """Two incompressible files (one pack's worth and a bit) and a few small ones."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(rng.randbytes(big))
    (root / "half.bin").write_bytes(rng.randbytes(big // 2 + 12345))
    for i in range(12):
        (root / "small" / f"s{i}.txt").parent.mkdir(exist_ok=True)
        (root / "small" / f"s{i}.txt").write_text(f"small file {seed}-{i}\n" * (i + 1))
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _restored(location: str, snapshot: str, source: Path, target: Path) -> dict[str, bytes]:
    succeeded(run(location, "restore", snapshot, "--target", target))
    return _files(target / source.relative_to("/"))


def _clean_check(location: str) -> dict[str, object]:
    """``check --read-data`` passes with no warning at all."""
    doc = json.loads(succeeded(run(location, "check", "--read-data", json=True)))
    assert doc["ok"] and not doc["warnings"], doc
    return doc


# -- transient faults --------------------------------------------------------------------------

TRANSIENT = {
    "dropped-connections": [
        Rule(Action.DROP_REQUEST, method="PUT", path=DATA, times=2, after_bytes=64 * 1024),
        Rule(Action.RESET, method="GET", path="/config$", times=1),
        Rule(Action.DROP_RESPONSE, method="GET", path=DATA, times=2, after_bytes=1000),
    ],
    "server-errors": [
        Rule(Action.ERROR, method="PUT", path=DATA, times=1, status=500),
        Rule(Action.ERROR, method="PUT", times=1, status=503),
        Rule(Action.ERROR, times=2, status=503, code="SlowDown"),
        Rule(Action.ERROR, method="GET", path=DATA, times=2, status=500),
        Rule(Action.ERROR, fraction=0.05, status=503, code="SlowDown", seed=7),
    ],
    "slow-answers": [
        Rule(Action.DELAY, method="PUT", path=DATA, times=2, seconds=1.0),
        Rule(Action.DELAY, method="GET", times=3, seconds=0.5),
    ],
    "truncated-downloads": [
        Rule(Action.TRUNCATE, method="GET", path=DATA, times=3, after_bytes=4096),
        Rule(Action.TRUNCATE, method="GET", path="/index/", times=1, after_bytes=10),
    ],
}


@pytest.mark.parametrize("case", list(TRANSIENT))
def test_transient_faults_are_retried(
    case: str, location: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """With the faults on for backup, restore and check, all three succeed, the data comes
    back byte-exact, and the proxy did fault the requests (so the retries were needed)."""
    source = _make_source(tmp_path / "source", seed=1)
    succeeded(run(location, *FAST_INIT))
    proxy.add(*TRANSIENT[case])
    backup = json.loads(succeeded(run(location, "backup", source, json=True)))
    restored = _restored(location, backup["snapshot_id"], source, tmp_path / "target")
    assert restored == _files(source)
    _clean_check(location)
    rules = TRANSIENT[case]
    assert all(rule.used for rule in rules if rule.times is not None), [
        (rule.action, rule.path, rule.used) for rule in rules
    ]


@pytest.mark.parametrize("name", S3_SERVERS, ids=["rclone", "seaweedfs"])
def test_an_upload_cut_short_stores_nothing(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The server gets the head and a third of a pack, then the connection dies: it must store
    nothing under that name (the Protocol's atomic put, which every crash-safety argument of
    the repository rests on); the put fails as a transient error and its retry stores it whole."""
    server: S3Server = request.getfixturevalue(name)
    place = server.fresh_place()
    data = random.Random(9).randbytes(3 * MiB)
    pack = "ab" + "0" * 62
    with fault_proxy(server.endpoint) as proxy:
        location = f"s3:{proxy.endpoint}/{place.bucket}" + (
            f"/{place.prefix}" if place.prefix else ""
        )
        storage = S3Storage(location, env=server.env())
        proxy.add(Rule(Action.CUT_UPLOAD, method="PUT", path=DATA, times=2, after_bytes=MiB))
        with pytest.raises(TransientStorageError):
            storage.put(Kind.DATA, pack, data)
        assert f"data/ab/{pack}" not in server.keys(place)
        RetryingStorage(storage, RetryPolicy(base_delay=0.05, max_delay=0.1)).put(
            Kind.DATA, pack, data
        )
        assert proxy.count("PUT", DATA) == 3 and proxy.actions()[Action.CUT_UPLOAD] == 2
        assert storage.get(Kind.DATA, pack) == data
        storage.close()


# -- persistent faults -------------------------------------------------------------------------


def _spawn_backup(location: str, source: Path) -> subprocess.Popen[str]:
    return spawn_freezeframe("backup", source, repo=None, env={"FREEZEFRAME_REPOSITORY": location})


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _finished(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _heals(location: str, proxy: FaultProxy, source: Path) -> None:
    """Once the faults stop: ``check --read-data`` passes (with at most the documented warning
    for packs an interrupted backup left), the next backup works and restores byte-exact."""
    proxy.reset()
    doc = json.loads(succeeded(run(location, "check", "--read-data", json=True)))
    assert doc["ok"], doc
    assert all("is not named by any index" in w for w in doc["warnings"]), doc["warnings"]
    backup = json.loads(succeeded(run(location, "backup", source, json=True)))
    restored = _restored(location, backup["snapshot_id"], source, source.parent / "healed")
    assert restored == _files(source)


def test_a_server_that_always_answers_503_ends_the_backup_in_one_line(
    location: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    source = _make_source(tmp_path / "source", seed=2)
    succeeded(run(location, *FAST_INIT))
    proxy.add(Rule(Action.ERROR, method="PUT", path=DATA, status=503))
    started = time.monotonic()
    line = one_line_error(run(location, "backup", source))
    took = time.monotonic() - started
    assert "cannot write" in line and "ServiceUnavailable" in line, line
    # Bounded: every pack was tried ATTEMPTS times, then the run gave up within the waits.
    puts = proxy.count("PUT", DATA)
    assert puts % ATTEMPTS == 0 and puts >= ATTEMPTS, puts
    assert took < RETRY_WAIT_MAX * 2 + 10, took
    assert json.loads(succeeded(run(location, "snapshots", json=True))) == []
    _heals(location, proxy, source)


def test_connection_refused_mid_backup_ends_in_one_line(
    location: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The server goes away once it stored a pack, before its answer: the backup gives up
    after its retries (its lock cannot even be removed), and the lock it left does not stop
    the next run."""
    source = _make_source(tmp_path / "source", seed=3)
    succeeded(run(location, *FAST_INIT))
    proxy.add(Rule(Action.DELAY, method="PUT", path=DATA, seconds=0.3))
    process = _spawn_backup(location, source)
    _wait_for(lambda: proxy.count("PUT", DATA) >= 1, 60, "the first pack's upload")
    proxy.refuse()
    done = _finished(process)
    line = one_line_error(done, warnings=1)
    netloc = proxy.endpoint.removeprefix("http://")
    assert "cannot write" in line, line
    assert line.endswith(f": cannot connect to {netloc} (connection refused)"), line
    if done.stderr.count("\n") == 2:  # the lock's removal failed too: it is left to go stale
        assert "our lock could not be removed" in done.stderr and "goes stale" in done.stderr
    proxy.accept()
    assert json.loads(succeeded(run(location, "snapshots", json=True))) == []
    _heals(location, proxy, source)


def test_truncated_downloads_are_never_restored_short(
    location: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every read of file content comes back short: the restore fails after retrying, with one
    line naming the read, and leaves no file short on disk; once healed all is intact."""
    source = _make_source(tmp_path / "source", seed=4)
    succeeded(run(location, *FAST_INIT))
    snapshot = json.loads(succeeded(run(location, "backup", source, json=True)))["snapshot_id"]
    # Trees are read whole (small reads); the files' content reads (over 64 KiB) come short.
    proxy.add(Rule(Action.TRUNCATE, method="GET", path=DATA, after_bytes=100, larger_than=64 << 10))
    target = tmp_path / "target"
    line = one_line_error(run(location, "restore", snapshot, "--target", target))
    assert "cannot read" in line and "broke off after 100 of" in line, line
    expected = _files(source)
    restored_root = target / source.relative_to("/")
    for name, data in _files(restored_root).items() if restored_root.exists() else []:
        assert data == expected[name], f"{name} restored with {len(data)} of {len(expected[name])}"
    assert proxy.count("GET", DATA) >= ATTEMPTS
    proxy.reset()
    _clean_check(location)
    assert _restored(location, snapshot, source, tmp_path / "again") == expected


def test_the_documented_retries_and_timeouts(rclone_s3_server: S3Server) -> None:
    """What the operator guide says of them: 5 attempts, waits of 0.25-0.5 s doubling up to
    2-4 s; 10 s to connect, 120 s between two reads."""
    policy = RetryPolicy()
    assert policy.attempts == ATTEMPTS
    waits = [(policy.delay(n, 0.0), policy.delay(n, 1.0)) for n in range(ATTEMPTS - 1)]
    assert waits == [(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0)]
    assert sum(high for _, high in waits) == RETRY_WAIT_MAX
    storage = S3Storage(rclone_s3_server.fresh_place().location, env=rclone_s3_server.env())
    config = storage._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (10, 120)
    assert config.retries["total_max_attempts"] == 1  # retries are storage.retry's alone
    storage.close()


# -- credentials and a full server -------------------------------------------------------------


def _argv_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def test_a_rejected_session_token_is_one_line_and_no_credential_leaks(
    location: str, proxy: FaultProxy, rclone_s3_server: S3Server, tmp_path: Path
) -> None:
    """A wrong secret key, and a session token the server refuses (as S3 does an expired one):
    one line naming the variable, exit 1, code ``storage``, no retry; the secret keys and the
    token appear in no output and in no process's arguments."""
    succeeded(run(location, *FAST_INIT))
    token = "FwoGZXIvYXdzE" + os.urandom(24).hex()
    env = {"AWS_SESSION_TOKEN": token}
    secrets = (token, rclone_s3_server.secret_key)
    wrong = "Wrong" + os.urandom(16).hex()
    proxy.reset()
    result = run(location, "snapshots", env=rclone_s3_server.env(secret_key=wrong))
    assert "AWS_SECRET_ACCESS_KEY" in one_line_error(result)
    assert proxy.count() <= 2, proxy.seen()  # a HEAD's 403 is asked about once: no retry
    assert wrong not in result.stdout + result.stderr
    for code in ("ExpiredToken", "InvalidToken"):
        proxy.reset()
        proxy.add(Rule(Action.ERROR, status=400 if code == "ExpiredToken" else 403, code=code))
        result = run(location, "snapshots", env=env)
        line = one_line_error(result)
        assert "AWS_SESSION_TOKEN" in line, line
        assert proxy.count() == 1, proxy.seen()  # not retried
        as_json = run(location, "snapshots", env=env, json=True)
        assert json.loads(as_json.stdout)["error"]["code"] == "storage"
        for secret in secrets:
            assert secret not in result.stdout + result.stderr + as_json.stdout + as_json.stderr

    proxy.reset()  # running commands: what their arguments show
    proxy.add(Rule(Action.DELAY, seconds=1.0, times=1))
    process = spawn_freezeframe(
        "snapshots", repo=None, env={"FREEZEFRAME_REPOSITORY": location, **env}
    )
    _wait_for(lambda: bool(proxy.actions()), 60, "the first request")
    argv = _argv_of(process.pid)
    assert "snapshots" in argv and not any(secret in argv for secret in secrets), argv
    _finished(process)
    proxy.reset()
    proxy.add(Rule(Action.DELAY, method="PUT", path=DATA, seconds=1.0))
    source = _make_source(tmp_path / "source", seed=5)
    process = spawn_freezeframe(
        "backup", source, repo=None, json=True, env={"FREEZEFRAME_REPOSITORY": location}
    )
    _wait_for(lambda: proxy.count("PUT", DATA) >= 1, 60, "the backup's first pack")
    assert rclone_s3_server.secret_key not in _argv_of(process.pid)
    done = _finished(process)
    assert done.returncode == 0, done.stderr
    assert rclone_s3_server.secret_key not in done.stdout + done.stderr


def test_a_server_that_says_it_is_full_is_not_retried(
    location: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """MinIO's answer to a full disk (507 XMinioStorageFull) ends the backup at once."""
    source = _make_source(tmp_path / "source", seed=6)
    succeeded(run(location, *FAST_INIT))
    proxy.add(Rule(Action.ERROR, method="PUT", path=DATA, status=507, code="XMinioStorageFull"))
    line = one_line_error(run(location, "backup", source))
    assert "storage is full" in line, line
    assert proxy.count("PUT", DATA) <= 2, proxy.seen("PUT")  # one per pack in flight
    _heals(location, proxy, source)


@pytest.fixture
def small_rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[S3Server, Path]]:
    """``rclone serve s3`` over a 24 MiB tmpfs of its own (and that tmpfs)."""
    mount = tmp_path_factory.mktemp("small-s3")
    with small_tmpfs(mount, lazy=True), rclone_s3(mount) as server:
        yield server, mount


def test_a_full_server_ends_the_backup_in_one_line(
    small_rclone: tuple[S3Server, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """rclone answers a full disk with a bare 500 InternalError, which cannot be told from a
    passing fault: it is retried, then the backup ends with one line; once space is freed the
    repository checks clean and the next backup works."""
    server, mount = small_rclone
    server.apply(monkeypatch)
    location = server.fresh_place().location
    succeeded(run(location, *FAST_INIT))
    source = _make_source(tmp_path / "source", seed=7, big=2 * MiB)
    succeeded(run(location, "backup", source))
    filler = mount / "filler"
    with open(filler, "wb") as f:  # what is left is too little for a pack
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        f.write(b"\0" * max(0, free - 512 * 1024))
    (source / "more.bin").write_bytes(random.Random(8).randbytes(4 * MiB))
    line = one_line_error(run(location, "backup", source))
    assert "cannot write" in line and "InternalError" in line, line
    filler.unlink()
    doc = json.loads(succeeded(run(location, "check", "--read-data", json=True)))
    assert doc["ok"], doc
    assert len(json.loads(succeeded(run(location, "snapshots", json=True)))) == 1
    succeeded(run(location, "backup", source))


# -- kill -9 mid-upload ------------------------------------------------------------------------


def test_kill_9_mid_upload_leaves_a_repository_that_heals(
    location: str, proxy: FaultProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``FREEZEFRAME_REMOTE_KILL_TRIALS`` (3 by default) backups, each of new data, are killed
    with SIGKILL at a random moment after some packs went out; each time the next backup
    works and restores byte-exact and ``check --read-data`` passes with at most the warning
    for packs no index names; in the end prune removes those packs and check is clean."""
    trials = int(os.environ.get(KILL_TRIALS_ENV, "3"))
    rng = random.Random(os.environ.get("FREEZEFRAME_REMOTE_KILL_SEED", str(time.time_ns())))
    succeeded(run(location, *FAST_INIT))
    left_behind = 0
    delays: list[float] = []
    for trial in range(trials):
        source = _make_source(tmp_path / f"source{trial}", seed=100 + trial, big=20 * MiB)
        # Every pack's answer comes KILL_HOLD s after the server stored it, so a kill within
        # that time after the first is counted always lands mid-upload, before any snapshot.
        proxy.reset()
        proxy.add(Rule(Action.DELAY, method="PUT", path=DATA, seconds=KILL_HOLD))
        process = _spawn_backup(location, source)
        _wait_for(lambda: proxy.count("PUT", DATA) >= 1, 60, "the first pack")
        delays.append(rng.uniform(0.0, KILL_HOLD * 0.8))
        time.sleep(delays[-1])
        assert process.poll() is None, "the backup ended before it was killed"
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        proxy.reset()
        doc = json.loads(succeeded(run(location, "check", "--read-data", json=True)))
        assert doc["ok"], doc
        assert all("is not named by any index" in w for w in doc["warnings"]), doc
        assert len(doc["warnings"]) > left_behind, doc  # this run's packs are there, unindexed
        left_behind = len(doc["warnings"])
        backup = json.loads(succeeded(run(location, "backup", source, json=True)))
        target = tmp_path / f"target{trial}"
        assert _restored(location, backup["snapshot_id"], source, target) == _files(source)
    assert len(json.loads(succeeded(run(location, "snapshots", json=True)))) == trials
    # On S3 a prune marks the leftovers (the default grace period is an hour: a listing may lag
    # behind writes); check no longer warns of them; a prune after the grace deletes them.
    marked = json.loads(succeeded(run(location, "prune", json=True)))
    assert marked["packs_marked"] >= left_behind and marked["orphans_deleted"] == 0, marked
    _clean_check(location)
    pruned = json.loads(succeeded(run(location, "prune", "--grace", "0", json=True)))
    assert pruned["marked_packs_deleted"] >= left_behind, pruned
    _clean_check(location)
    with capsys.disabled():
        sys.stderr.write(
            f"\nkill -9 trials: {trials} backups killed mid-upload ("
            f"{', '.join(f'{d:.2f}' for d in delays)} s after a pack went out), all healed; "
            f"prune removed {pruned['marked_packs_deleted']} leftover packs\n"
        )
