"""Many hosts, one repository on object storage, no blocking: two hosts back up into one bucket
on SeaweedFS at the same time, round after round, while a third forgets and prunes with no grace
period. Every backup and every prune must succeed (backups never wait for prune, prune never
waits for them), packs must really be deleted along the way, and afterwards every snapshot left
restores byte-exact and ``check --read-data`` is clean.

The hosts change their files between rounds and keep content in common (deduplicated across
hosts) and bring back content of snapshots already forgotten, so backups keep deduplicating
against data a prune has just marked. ``FREEZEFRAME_MANY_HOSTS_ROUNDS`` sets the rounds per host
(CI: 5); ``bench/`` runs more."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ffharness import FAST_INIT, PASSWORD, run_freezeframe
from freezeframe.errors import FreezeframeError
from freezeframe.repository.repository import Repository
from freezeframe.repository.retention import RetentionPolicy
from freezeframe.service.maintenance import ForgetRequest, forget
from freezeframe.storage.registry import open_storage
from servers.base import S3Server
from treeutil import restored_path

pytestmark = pytest.mark.timeout(900)

ROUNDS = int(os.environ.get("FREEZEFRAME_MANY_HOSTS_ROUNDS", "5"))
HOSTS = ("alpha", "beta")
KEEP_LAST = 2


@dataclass
class Trial:
    location: str
    expected: dict[str, dict[str, bytes]] = field(default_factory=dict)  # snapshot -> files
    failures: list[str] = field(default_factory=list)
    backups: int = 0
    prunes: int = 0
    marked: int = 0
    deleted: int = 0
    revived: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, *args: str | Path, json_out: bool = True) -> dict[str, object] | None:
        result = run_freezeframe(
            *args,
            repo=None,
            json=json_out,
            env={"FREEZEFRAME_REPOSITORY": self.location},
            timeout=300,
        )
        if result.returncode != 0:
            with self.lock:
                self.failures.append(
                    f"{' '.join(map(str, args))}: exit {result.returncode}: {result.stderr.strip()}"
                )
            return None
        return json.loads(result.stdout) if json_out else None


def _files(root: Path) -> dict[str, bytes]:
    return {
        os.path.relpath(p, root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _change(root: Path, rng: random.Random, pool: list[bytes]) -> None:
    """Replace, add and remove a few files; some new files bring back older content."""
    present = sorted(p for p in root.iterdir() if p.is_file())
    for path in rng.sample(present, min(2, len(present))):
        path.unlink()
    for _ in range(3):
        content = rng.choice(pool) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 90_000))
        pool.append(content)
        (root / f"f{rng.getrandbits(32):08x}.bin").write_bytes(content)


def _host(trial: Trial, root: Path, name: str, seed: int, shared: list[bytes]) -> None:
    rng = random.Random(seed)
    pool = list(shared)
    for _ in range(ROUNDS):
        _change(root, rng, pool)
        files = _files(root)
        done = trial.run("backup", "--host", name, root)
        if done is not None:
            with trial.lock:
                trial.expected[str(done["snapshot_id"])] = files
                trial.backups += 1


def _prune_once(trial: Trial, host: str) -> None:
    """``forget --host HOST --keep-last 2 --prune --grace 0`` through the service the CLI
    calls, in this process: it starts within milliseconds, so it plans while a backup that
    was seen running still is."""
    repo = Repository.open(open_storage(trial.location), PASSWORD.encode(), load_index=False)
    try:
        request = ForgetRequest(
            RetentionPolicy(keep_last=KEEP_LAST), host=host, prune=True, grace_s=0.0
        )
        stats = forget(repo, request).prune
    except FreezeframeError as exc:
        with trial.lock:
            trial.failures.append(f"forget --prune --host {host}: {exc}")
        return
    finally:
        repo.close()
    with trial.lock:
        trial.prunes += 1
        if stats is not None:
            trial.marked += stats.packs_marked
            trial.deleted += stats.packs_deleted + stats.marked_packs_deleted
            trial.deleted += stats.orphans_deleted
            trial.revived += stats.packs_revived


def test_two_hosts_back_up_while_a_third_prunes(
    seaweedfs_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seaweedfs_server.apply(monkeypatch)
    place = seaweedfs_server.fresh_place()
    trial = Trial(place.location)
    assert trial.run(*FAST_INIT, json_out=False) is None and not trial.failures
    rng = random.Random(7)
    shared = [rng.randbytes(rng.randint(1, 60_000)) for _ in range(6)]
    roots = []
    for index, name in enumerate(HOSTS):
        root = tmp_path / name
        root.mkdir()
        for number, content in enumerate(shared):
            (root / f"shared{number}.bin").write_bytes(content)
        (root / f"own{index}.bin").write_bytes(rng.randbytes(50_000))
        roots.append(root)
    threads = [
        threading.Thread(target=_host, args=(trial, root, name, index, shared))
        for index, (root, name) in enumerate(zip(roots, HOSTS, strict=True))
    ]
    for thread in threads:
        thread.start()
    turn = 0
    while any(thread.is_alive() for thread in threads):
        # Prune while a backup holds its lock, so the marks are made beside running backups.
        if any(key.startswith("locks/") for key in seaweedfs_server.keys(place)):
            _prune_once(trial, HOSTS[turn % len(HOSTS)])
            turn += 1
    for thread in threads:
        thread.join()
    for host in HOSTS:  # alone now: what is still marked goes
        _prune_once(trial, host)
    assert trial.failures == [], "\n".join(trial.failures)
    assert trial.backups == ROUNDS * len(HOSTS)
    assert trial.deleted > 0, "no prune deleted anything"
    # How many prunes planned while a backup held its lock (and so marked instead of deleting)
    # depends on timing: the summary reports it; test_prune_two_phase.py makes each order sure.

    snapshots = trial.run("snapshots")
    assert isinstance(snapshots, list)
    assert len(snapshots) == KEEP_LAST * len(HOSTS)
    verified = 0
    for snapshot in snapshots:
        target = tmp_path / f"restore-{snapshot['id']}"
        trial.run("restore", str(snapshot["id"]), "--target", target, json_out=False)
        root = tmp_path / str(snapshot["host"])
        assert _files(restored_path(target, root)) == trial.expected[str(snapshot["id"])]
        shutil.rmtree(target)
        verified += 1
    assert trial.run("check", "--read-data", json_out=False) is None
    assert trial.failures == [], "\n".join(trial.failures)
    print(
        f"many hosts: {len(HOSTS)} hosts x {ROUNDS} backups beside {trial.prunes} prunes; "
        f"packs marked {trial.marked}, deleted {trial.deleted}, named live again "
        f"{trial.revived}; {verified} snapshots restored byte-exact; check --read-data clean",
        file=sys.stderr,
    )


def test_a_second_prune_waits_for_none_and_is_refused(
    seaweedfs_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two prunes at once: the second ends at once with one line (exit 11, locked) instead of
    waiting or racing the first; a backup beside the first goes on."""
    seaweedfs_server.apply(monkeypatch)
    location = seaweedfs_server.fresh_place().location
    env = {"FREEZEFRAME_REPOSITORY": location}
    assert run_freezeframe(*FAST_INIT, repo=None, env=env).returncode == 0
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(os.urandom(10_000))
    assert run_freezeframe("backup", source, repo=None, env=env).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_MAINTENANCE_LOCK, location],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FREEZEFRAME_PASSWORD": os.environ["FREEZEFRAME_PASSWORD"]},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = run_freezeframe("prune", repo=None, env=env)
        assert second.returncode == 11, (second.returncode, second.stderr)
        assert len(second.stderr.strip().splitlines()) == 1
        assert "a maintenance lock by PID" in second.stderr
        beside = run_freezeframe("backup", source, repo=None, env=env)
        assert beside.returncode == 0, beside.stderr
    finally:
        holder.kill()
        holder.wait()


_HOLD_MAINTENANCE_LOCK = """
import os, sys, time
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.storage.registry import open_storage
repo = Repository.open(open_storage(sys.argv[1]), os.environ["FREEZEFRAME_PASSWORD"].encode())
with RepositoryLock(repo, exclusive=False, maintenance=True):
    print("held", flush=True)
    time.sleep(600)
"""
