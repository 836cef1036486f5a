"""The service functions behind snapshots, ls, diff, stats, key, repair, init, migrate and
unlock, called directly on a repository the CLI made: each gives what the CLI's --json gives."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ffharness import PASSWORD, Cli
from freezeframe.errors import NotFound, RepositoryExists, UsageError
from freezeframe.repository.keys import KdfParams, KeyFile
from freezeframe.repository.locks import LOCK_AAD, RepositoryLock
from freezeframe.repository.repository import Repository, unlock_master_key
from freezeframe.repository.repository import add_key as save_key
from freezeframe.service.admin import (
    InitRequest,
    MigrateRequest,
    UnlockRequest,
    init,
    migrate,
    unlock,
)
from freezeframe.service.browse import (
    DiffRequest,
    ListRequest,
    SnapshotsRequest,
    StatsRequest,
    diff,
    list_files,
    snapshots,
    stats,
)
from freezeframe.service.keys import (
    AddKeyRequest,
    RemoveKeyRequest,
    add_key,
    list_keys,
    remove_key,
)
from freezeframe.service.repair import IndexRepairRequest, repair_index
from freezeframe.service.reporter import SilentReporter
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage


def _open(repo: Path, password: str = PASSWORD) -> closing[Repository]:
    return closing(Repository.open(LocalStorage(repo), password.encode(), load_index=False))


@pytest.fixture
def history(repo: Path, cli: Cli, tmp_path: Path) -> tuple[Path, str, str]:
    """Two snapshots of one tree, tagged differently, with changes between them; returns the
    tree and the two snapshot ids."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "same").write_bytes(b"same")
    (src / "changes").write_bytes(b"one")
    (src / "goes").write_bytes(b"bye")
    (src / "sub" / "deep.bin").write_bytes(os.urandom(200_000))
    os.symlink("same", src / "link")
    first = cli("backup", src, "--tag", "old", "--host", "lab")["snapshot_id"]
    (src / "changes").write_bytes(b"two")
    (src / "goes").unlink()
    (src / "new").write_bytes(b"hi")
    second = cli("backup", src, "--tag", "new", "--tag", "both")["snapshot_id"]
    return src, first, second


def test_snapshots(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    _, first, second = history
    cases: list[tuple[SnapshotsRequest, tuple[str, ...], list[str]]] = [
        (SnapshotsRequest(), (), [first, second]),
        (SnapshotsRequest(tags=("new",)), ("--tag", "new"), [second]),
        (SnapshotsRequest(tags=("new", "both")), ("--tag", "new", "--tag", "both"), [second]),
        (SnapshotsRequest(tags=("new", "old")), ("--tag", "new", "--tag", "old"), []),
        (SnapshotsRequest(host="lab"), ("--host", "lab"), [first]),
    ]
    for request, args, expected in cases:
        with _open(repo) as opened:
            found = snapshots(opened, request)
        by_cli = cli("snapshots", *args)
        assert [s.id for s in found] == [s["id"] for s in by_cli] == expected, args
        for snapshot, doc in zip(found, by_cli, strict=True):
            assert snapshot.tags == doc["tags"] and snapshot.host == doc["host"]
            assert snapshot.paths == doc["paths"]
            assert snapshot.time.isoformat() == doc["time"]


def _nodes(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (n["path"], n["type"], n["size"], n["mode"], n["mtime_ns"], n.get("linktarget"))
        for n in doc["nodes"]
    ]


def test_ls(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    src, first, second = history
    for ref, path in (("latest", "/"), (first[:8], str(src / "sub")), (second, str(src / "new"))):
        with _open(repo) as opened:
            listing = list_files(opened, ListRequest(ref, path))
        by_cli = cli("ls", ref, path)
        assert listing.snapshot.id == by_cli["snapshot"]
        mine = [
            (
                os.fsdecode(p),
                n.type,
                n.size,
                n.mode,
                n.mtime_ns,
                None if n.linktarget is None else os.fsdecode(n.linktarget),
            )
            for p, n in listing.entries
        ]
        assert mine == _nodes(by_cli), (ref, path)
    with _open(repo) as opened:
        everything = list_files(opened, ListRequest("latest"))
    paths = [os.fsdecode(p) for p, _ in everything.entries]
    assert str(src / "sub" / "deep.bin") in paths and str(src / "goes") not in paths
    links = [(os.fsdecode(p), n.linktarget) for p, n in everything.entries if n.type == "symlink"]
    assert links == [(str(src / "link"), b"same")]

    missing = str(src / "no-such")
    with _open(repo) as opened, pytest.raises(NotFound) as raised:
        list_files(opened, ListRequest("latest", missing))
    by_cli = cli("ls", "latest", missing, expect=1)
    assert by_cli["error"] == {"code": "not_found", "message": str(raised.value)}


def test_diff(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    src, first, second = history
    with _open(repo) as opened:
        result = diff(opened, DiffRequest(first[:8], "latest"))
    by_cli = cli("diff", first[:8], "latest")
    assert (result.first.id, result.second.id) == (first, second)
    assert (by_cli["first"], by_cli["second"]) == (first, second)
    changes = [(c.path, c.change) for c in result.changes]
    assert changes == [(c["path"], c["change"]) for c in by_cli["changes"]]
    assert {(str(src / "changes"), "modified"), (str(src / "goes"), "removed")} <= set(changes)
    assert (str(src / "new"), "added") in changes
    with _open(repo) as opened:
        assert diff(opened, DiffRequest(second, second)).changes == []


def test_stats(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    with _open(repo) as opened:
        plain = stats(opened, StatsRequest())
        sized = stats(opened, StatsRequest(restore_size=True))
    assert plain.restore_size is None
    assert plain.repository == cli("stats")
    assert plain.repository["snapshots"] == 2 and plain.repository["data_blobs"] > 0
    by_cli = cli("stats", "--restore-size")
    assert sized.restore_size is not None
    assert {**sized.repository, "restore_size": sized.restore_size} == by_cli
    assert sized.restore_size["files"] > 0


def test_keys(repo: Path, cli: Cli, tmp_path: Path) -> None:
    second = tmp_path / "second.pw"
    second.write_text("second secret\n")
    cli("key", "add", "--new-password-file", second)
    with _open(repo) as opened:
        keys = list_keys(opened)
    by_cli = cli("key", "list")
    assert len(keys) == 2
    assert [
        {
            "id": k.id,
            "current": k.current,
            "damaged": k.damaged,
            "user": k.user,
            "host": k.host,
            "created": k.created,
        }
        for k in keys
    ] == by_cli

    with _open(repo) as opened:
        added = add_key(opened, AddKeyRequest(b"third secret"))
        assert added.removed is None and opened.key_name != added.id
    assert added.id in {k["id"] for k in cli("key", "list")}
    third = tmp_path / "third.pw"
    third.write_text("third secret\n")
    [current] = [k for k in cli("--password-file", third, "key", "list") if k["current"]]
    assert current["id"] == added.id

    with _open(repo, "second secret") as opened:
        replaced = add_key(opened, AddKeyRequest(b"fourth secret", replace_current=True))
        assert opened.key_name == replaced.id  # the open repository goes on with the new key
        with pytest.raises(UsageError):
            remove_key(opened, RemoveKeyRequest(replaced.id[:8]))
        assert remove_key(opened, RemoveKeyRequest(added.id[:8])) == added.id
    assert replaced.removed in {k.id for k in keys}
    remaining = {k["id"] for k in cli("key", "list")}
    assert remaining == {k.id for k in keys if k.id != replaced.removed} | {replaced.id}
    cli("--password-file", second, "key", "list", expect=12)
    cli("--password-file", third, "key", "list", expect=12)


def test_repair_index(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    """The same damage (every index file gone) repaired by the service, then by the CLI."""
    fields = (
        "index_files_read",
        "packs_indexed",
        "blobs_indexed",
        "headers_read",
        "index_files_written",
        "index_files_deleted",
        "problems",
    )
    results = []
    for by in ("service", "cli"):
        for index_file in (repo / "index").rglob("*"):
            if index_file.is_file():
                index_file.unlink()
        if by == "service":
            with _open(repo) as opened:
                done = repair_index(opened, IndexRepairRequest(), SilentReporter())
            results.append({name: getattr(done, name) for name in fields})
        else:
            by_cli = cli("repair", "index")
            results.append({name: by_cli[name] for name in fields})
        assert cli("check", "--read-data")["ok"]
    assert results[0] == results[1]
    assert results[0]["packs_indexed"] > 0 and results[0]["headers_read"] > 0
    assert results[0]["index_files_read"] == 0 and results[0]["problems"] == []


def _stale_lock(repo: Path) -> str:
    """A lock as a crashed backup leaves it: an hour old, its process gone."""
    doc = {
        "time": time.time() - 3600,
        "exclusive": False,
        "host": socket.gethostname(),
        "pid": 2**22 + 17,
        "user": "root",
    }
    with _open(repo) as opened:
        return opened.save_file(Kind.LOCKS, json.dumps(doc).encode(), LOCK_AAD)


def _locks(repo: Path) -> list[str]:
    with _open(repo) as opened:
        return sorted(opened.list_names(Kind.LOCKS))


def test_unlock(repo: Path, cli: Cli) -> None:
    with _open(repo) as holder, RepositoryLock(holder, exclusive=True):
        [live] = _locks(repo)
        stale = _stale_lock(repo)
        with _open(repo) as opened:
            assert [lock.name for lock in unlock(opened, UnlockRequest())] == [stale]
        stale = _stale_lock(repo)
        assert cli("unlock")["removed"] == [stale]
        assert _locks(repo) == [live]
        with _open(repo) as opened:
            assert unlock(opened, UnlockRequest()) == []
            assert [lock.name for lock in unlock(opened, UnlockRequest(remove_all=True))] == [live]
        assert _locks(repo) == []
    assert cli("unlock")["removed"] == []


def test_init(
    tmp_path: Path, make_cli: Callable[[Path], Cli], monkeypatch: pytest.MonkeyPatch
) -> None:
    location = tmp_path / "made-by-service"
    request = InitRequest(b"a password", KdfParams(time_cost=1, memory_kib=8 * 1024))
    reporter = SilentReporter()
    made = init(LocalStorage(location), request, reporter)
    made.close()
    assert reporter.warnings == []
    with closing(Repository.open(LocalStorage(location), b"a password")) as opened:
        assert opened.config.repository_id == made.config.repository_id
    monkeypatch.setenv("FREEZEFRAME_PASSWORD", "a password")
    by_cli = make_cli(location)
    [key] = by_cli("key", "list")
    assert key["current"] and key["id"] == made.key_name
    assert by_cli("snapshots") == []
    with pytest.raises(RepositoryExists):
        init(LocalStorage(location), request, reporter)


def test_migrate(repo: Path, cli: Cli, history: tuple[Path, str, str]) -> None:
    """Nothing to do on a current repository; from version 1, the same steps as the CLI's."""
    with _open(repo) as opened:
        current = migrate(opened, MigrateRequest(PASSWORD.encode()))
    assert (current.from_version, current.to_version, current.steps) == (2, 2, [])
    by_cli = cli("migrate")
    assert (by_cli["from_version"], by_cli["to_version"], by_cli["steps"]) == (2, 2, [])
    _as_written_by_version_1(repo)
    with _open(repo) as opened:
        done = migrate(opened, MigrateRequest(PASSWORD.encode()))
        assert opened.config.version == 2
    _as_written_by_version_1(repo)
    by_cli = cli("migrate")
    assert (done.from_version, done.to_version) == (by_cli["from_version"], by_cli["to_version"])
    assert (done.from_version, done.to_version) == (1, 2)
    assert len(done.steps) == len(by_cli["steps"]) == 2
    assert done.unmarked_keys == by_cli["unmarked_keys"] == []
    assert "not authenticated" not in (cli("snapshots") and cli.stderr)


def _as_written_by_version_1(repo: Path) -> None:
    """The config without its MAC and the key without its format mark (as in
    test_hostile_inputs)."""
    storage = LocalStorage(repo)
    master, name = unlock_master_key(storage, PASSWORD.encode())
    old_key = KeyFile.from_bytes(storage.get(Kind.KEYS, name), name)
    save_key(storage, dataclasses.replace(master, config_format=1), PASSWORD.encode(), old_key.kdf)
    storage.delete(Kind.KEYS, name)
    doc = json.loads((repo / "config").read_bytes())
    old = {k: v for k, v in doc.items() if k != "mac"} | {"version": 1}
    (repo / "config").write_bytes(json.dumps(old, indent=1).encode())
