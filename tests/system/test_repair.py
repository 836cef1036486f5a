"""A damaged repository keeps working where its data is intact, and ``repair`` brings it back
to a clean ``check --read-data`` with every surviving snapshot restorable."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ffharness import PASSWORD, Cli
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import list_snapshots
from freezeframe.repository.walk import find_node
from freezeframe.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(180)

KiB = 1024


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` by its path relative to it, with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _restore(cli: Cli, snapshot: str, target: Path, src: Path, expect: int = 0) -> dict[str, bytes]:
    """The files of ``src`` as a restore of ``snapshot`` wrote them (the JSON report stays in
    ``cli.stdout``)."""
    cli("restore", snapshot, "--target", target, expect=expect)
    restored = target / str(src).lstrip("/")
    return _files(restored) if restored.exists() else {}


def _open(repo: Path) -> Repository:
    return Repository.open(LocalStorage(repo), PASSWORD.encode())


def _flip_blob(repo: Path, blob_id: bytes, where: float = 0.5) -> str:
    """One flipped byte inside a stored blob; returns its pack."""
    opened = _open(repo)
    location = opened.index.lookup(blob_id)
    opened.close()
    assert location is not None
    pack = repo / "data" / location.pack[:2] / location.pack
    data = bytearray(pack.read_bytes())
    data[location.offset + int(location.length * where)] ^= 0x5A
    pack.write_bytes(bytes(data))
    return location.pack


def _node(repo: Path, snapshot_id: str, path: Path) -> tuple[bytes | None, list[bytes]]:
    """(subtree, content) of the node at ``path`` in a snapshot."""
    opened = _open(repo)
    try:
        snapshot = next(s for s in list_snapshots(opened) if s.id == snapshot_id)
        node = find_node(opened, snapshot.tree, os.fsencode(path).split(b"/")[1:])
        assert node is not None
        return node.subtree, node.content
    finally:
        opened.close()


def _flip_file(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("freezeframe: warning:")]


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    rng = random.Random(7)
    src = tmp_path / "src"
    for name in ("a", "b", "c"):
        _write(src / "d1" / f"{name}.bin", rng.randbytes(200 * KiB))
    _write(src / "d2" / "x.bin", rng.randbytes(600 * KiB))
    _write(src / "small.txt", b"hello\n")
    return src


def test_repair_brings_back_a_repository_with_a_damaged_index_pack_and_tree(
    repo: Path, cli: Cli, sources: Path, tmp_path: Path
) -> None:
    """The issue's acceptance: a damaged index file, a damaged data pack and a lost tree blob;
    `repair index`, `repair packs`, `repair snapshots --forget` and `prune` leave a repository
    that checks clean, whose repaired snapshots restore everything that survived."""
    first = cli("backup", sources)["snapshot_id"]
    first_files = _files(sources)
    rng = random.Random(8)
    _write(sources / "d3" / "p.bin", rng.randbytes(100 * KiB))
    _write(sources / "d3" / "sub" / "q.bin", rng.randbytes(100 * KiB))
    second = cli("backup", sources)["snapshot_id"]
    second_files = _files(sources)

    _, a_content = _node(repo, first, sources / "d1" / "a.bin")
    _flip_blob(repo, a_content[0])  # d1/a.bin's only blob: in both snapshots
    d3_tree, _ = _node(repo, second, sources / "d3")
    assert d3_tree is not None
    _flip_blob(repo, d3_tree)  # d3's listing: only in the second snapshot
    index_file = sorted((repo / "index").iterdir())[0]
    _flip_file(index_file, 40)

    # Damaged, the repository still restores what is intact, and says what is not.
    restored = _restore(cli, first, tmp_path / "before", sources, expect=1)
    assert restored == {k: v for k, v in first_files.items() if k != "d1/a.bin"}
    damaged = json.loads(cli.stdout)["damaged"]
    assert [d["path"] for d in damaged] == [f"{sources}/d1/a.bin"]
    assert damaged[0]["ranges"] == [[0, 200 * KiB]]
    report = cli("check", "--read-data", expect=1)
    assert {(d["snapshot"], d["path"]) for d in report["damaged"]} == {
        (first, f"{sources}/d1/a.bin"),
        (second, f"{sources}/d1/a.bin"),
        (second, f"{sources}/d3"),
    }
    assert any("repair index" in e for e in report["errors"])

    cli("repair", "index")
    packs = cli("repair", "packs")
    assert len(packs["damaged"]) == 2 and len(packs["blobs_lost"]) == 2
    fixed = cli("repair", "snapshots", "--forget")
    assert sorted(f["original"] for f in fixed["repaired"]) == sorted([first, second])
    cli("prune")
    assert cli("check", "--read-data")["ok"]

    by_original = {f["original"]: f for f in fixed["repaired"]}
    changes = {c["path"]: c["what"] for c in by_original[second]["changes"]}
    assert set(changes) == {f"{sources}/d1/a.bin", f"{sources}/d3"}
    assert "removed" in changes[f"{sources}/d3"]
    assert "truncated from 204800 to 0 bytes" in changes[f"{sources}/d1/a.bin"]
    snapshots = {s["id"]: s for s in cli("snapshots")}
    assert set(snapshots) == {f["snapshot_id"] for f in fixed["repaired"]}
    for repaired in fixed["repaired"]:
        assert "repaired" in snapshots[repaired["snapshot_id"]]["tags"]

    expected_first = {**first_files, "d1/a.bin": b""}
    got = _restore(cli, by_original[first]["snapshot_id"], tmp_path / "r1", sources)
    assert got == expected_first
    expected_second = {k: v for k, v in second_files.items() if not k.startswith("d3/")} | {
        "d1/a.bin": b""
    }
    got = _restore(cli, by_original[second]["snapshot_id"], tmp_path / "r2", sources)
    assert got == expected_second


def test_a_damaged_index_file_stops_no_command(
    repo: Path, cli: Cli, sources: Path, tmp_path: Path
) -> None:
    """Every command that reads the index skips the damaged file with one warning, finds the
    blobs from the pack headers and works; prune refuses, naming `repair index`."""
    snapshot = cli("backup", sources)["snapshot_id"]
    expected = _files(sources)
    for index_file in (repo / "index").iterdir():
        _flip_file(index_file, 60)
    for args in (("snapshots",), ("ls", "latest"), ("stats",), ("diff", snapshot, snapshot)):
        cli(*args)
        warnings = _warnings(cli.stderr)
        assert len(warnings) <= 1, cli.stderr
    cli("ls", "latest")
    assert len(_warnings(cli.stderr)) == 1 and "repair index" in cli.stderr
    assert _restore(cli, "latest", tmp_path / "out", sources) == expected
    _write(sources / "new.bin", random.Random(3).randbytes(50 * KiB))
    backup = cli("backup", sources)
    assert backup["summary"]["bytes_added"] < 100 * KiB  # the old blobs were found, not stored
    # The backup refers to blobs only the pack headers described: it indexed those packs.
    errors = cli("check", expect=1)["errors"]
    assert errors and all(e.startswith("index ") for e in errors), errors
    failed = cli("prune", expect=1)
    assert failed["error"]["code"] == "integrity" and "repair index" in failed["error"]["message"]
    cli("repair", "index")
    result = cli("check", "--read-data")
    assert result["ok"] and result["warnings"] == []
    assert _warnings(cli.stderr) == []


def test_a_deleted_index_file_keeps_every_snapshot_restorable(
    repo: Path, cli: Cli, sources: Path, tmp_path: Path
) -> None:
    cli("backup", sources)
    expected = _files(sources)
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    assert _restore(cli, "latest", tmp_path / "out", sources) == expected
    assert "repair index" in cli.stderr
    report = cli("check", expect=1)
    assert report["damaged"] == []  # the data is intact: only the index is wrong
    assert all("repair index" in e for e in report["errors"]), report["errors"]
    failed = cli("prune", expect=1)
    assert "repair index" in failed["error"]["message"]
    assert len(list((repo / "data").rglob("*"))) > 256  # prune deleted nothing
    cli("repair", "index")
    assert cli("check", "--read-data")["ok"]
    assert _restore(cli, "latest", tmp_path / "again", sources) == expected


def test_repair_packs_salvages_and_a_new_backup_heals_old_snapshots(
    repo: Path, cli: Cli, sources: Path, tmp_path: Path
) -> None:
    """Without ids, `repair packs` reads every pack, keeps the intact blobs of the damaged one
    and reports the lost one; backing up the unchanged files stores it again, which makes the
    old snapshot whole without `repair snapshots`."""
    old = cli("backup", sources)["snapshot_id"]
    expected = _files(sources)
    _, content = _node(repo, old, sources / "d2" / "x.bin")
    damaged_pack = _flip_blob(repo, content[-1], 0.9)
    fixed = cli("repair", "packs")
    assert list(fixed["damaged"]) == [damaged_pack]
    assert fixed["blobs_lost"] == [content[-1].hex()]
    assert fixed["blobs_salvaged"] >= 4
    assert not (repo / "data" / damaged_pack[:2] / damaged_pack).exists()
    report = cli("check", "--read-data", expect=1)
    assert {d["path"] for d in report["damaged"]} == {f"{sources}/d2/x.bin"}
    cli("backup", sources)
    assert cli("check", "--read-data")["ok"]
    assert _restore(cli, old, tmp_path / "healed", sources) == expected


def test_repair_snapshots_dry_run_changes_nothing(repo: Path, cli: Cli, sources: Path) -> None:
    snapshot = cli("backup", sources)["snapshot_id"]
    _, content = _node(repo, snapshot, sources / "d1" / "b.bin")
    _flip_blob(repo, content[0])
    cli("repair", "packs")
    before = sorted(p.name for p in (repo / "snapshots").iterdir())
    plan = cli("repair", "snapshots", "--dry-run")
    assert plan["dry_run"] and [f["original"] for f in plan["repaired"]] == [snapshot]
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == before


def test_an_unreadable_snapshot_is_left_out_and_stops_prune(
    repo: Path, cli: Cli, sources: Path
) -> None:
    """One damaged snapshot file hides no other snapshot (one warning), prune refuses to guess
    what it used, and `repair snapshots --forget` removes it."""
    cli("backup", sources)
    cli("backup", sources, "--tag", "second")
    victim = sorted((repo / "snapshots").iterdir())[0]
    _flip_file(victim, 30)
    assert len(cli("snapshots")) == 1
    assert len(_warnings(cli.stderr)) == 1 and victim.name[:8] in cli.stderr
    failed = cli("prune", expect=1)
    assert "repair snapshots --forget" in failed["error"]["message"]
    assert cli("check", expect=1)["errors"][0].startswith(f"snapshot {victim.name}")
    fixed = cli("repair", "snapshots", "--forget")
    assert list(fixed["unreadable"]) == [victim.name] and fixed["forgotten"] == [victim.name]
    cli("prune")
    assert cli("check", "--read-data")["ok"]


def test_repair_index_rebuilds_from_headers_alone(
    repo: Path, cli: Cli, sources: Path, tmp_path: Path
) -> None:
    """`--read-all-packs` rebuilds an index equal in content to the one backups wrote."""
    cli("backup", sources)
    expected = _files(sources)
    opened = _open(repo)
    before = opened.index.by_pack()
    opened.close()
    done = cli("repair", "index", "--read-all-packs")
    assert done["headers_read"] == len(before) and done["problems"] == []
    opened = _open(repo)
    after = opened.index.by_pack()
    opened.close()
    assert after == before
    assert _restore(cli, "latest", tmp_path / "out", sources) == expected


def test_repair_config_rewrites_a_tampered_config(repo: Path, cli: Cli, sources: Path) -> None:
    cli("backup", sources)
    config = repo / "config"
    original = config.read_bytes()
    config.write_bytes(original.replace(b'"avg_size": 524288', b'"avg_size": 524688'))
    failed = cli("snapshots", expect=1)
    assert "config failed authentication" in failed["error"]["message"]
    assert "repair config" in failed["error"]["message"]
    fixed = cli("repair", "config")
    assert fixed["rewritten"] and "authentication" in fixed["problem"]
    assert cli("repair", "config")["rewritten"] is False
    assert len(cli("snapshots")) == 1
    assert cli("check", "--read-data")["ok"]


def test_a_lost_config_is_named_and_repaired(repo: Path, cli: Cli, sources: Path) -> None:
    cli("backup", sources)
    (repo / "config").unlink()
    failed = cli("snapshots", expect=1)
    assert "lost its config" in failed["error"]["message"]
    cli("repair", "config")
    assert cli("check", "--read-data")["ok"]


def test_repair_needs_a_repository(tmp_path: Path, make_cli: Callable[[Path], Cli]) -> None:
    missing = make_cli(tmp_path / "nowhere")
    failed = missing("repair", "index", expect=10)
    assert failed["error"]["code"] == "repository_not_found"


def test_a_damaged_key_is_named_and_removed_with_another_password(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A key whose bytes no longer match its name is listed as damaged and reported by
    check; a flip in its wrapped key material makes its own password fail with a line that
    names the damaged key, and the other password removes it."""
    second = tmp_path / "second.pw"
    second.write_text("second secret\n")
    added = cli("key", "add", "--new-password-file", second)["id"]
    key_file = repo / "keys" / added
    doc = json.loads(key_file.read_bytes())
    data = bytearray(doc["data"].encode())
    data[10] = ord("A") if data[10] != ord("A") else ord("B")
    doc["data"] = data.decode()
    key_file.write_text(json.dumps(doc, indent=1))
    listed = {k["id"]: k for k in cli("key", "list")}
    assert listed[added]["damaged"] and not listed[next(k for k in listed if k != added)]["damaged"]
    assert any(e.startswith(f"key {added[:8]}") for e in cli("check", expect=1)["errors"])
    failed = cli("--password-file", second, "snapshots", expect=1)
    assert f"key {added[:8]} is damaged" in failed["error"]["message"]
    cli("key", "remove", added[:8])
    assert cli("check")["ok"]
