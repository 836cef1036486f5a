"""Backing up and restoring a tree full of awkward files gives back exactly that tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ffharness import Cli, is_root, privileged_required
from treeutil import (
    INCLUDE_DIR,
    NEWLINE_NAME,
    PLAIN_FILE,
    SPARSE_FILE,
    SPARSE_SIZE,
    allocated_bytes,
    assert_same_tree,
    build_odd_tree,
    data_regions,
    restored_path,
    tree_manifest,
)

pytestmark = pytest.mark.timeout(60)


def _backup(cli: Cli, *paths: Path) -> dict:
    result = cli("backup", *paths)
    assert result["errors"] == [], result["errors"]
    assert result["summary"]["errors"] == 0
    assert len(result["snapshot_id"]) == 64
    return result


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    return source


@pytest.mark.parametrize(
    "privileged", [False, pytest.param(True, marks=pytest.mark.privileged)], ids=["user", "root"]
)
def test_odd_tree_restores_exactly(cli: Cli, repo: Path, tmp_path: Path, privileged: bool) -> None:
    """Names, contents, modes, owners, times, links, xattrs/ACLs, holes and special files all
    come back as they were, at <target>/<original absolute path>."""
    if privileged and not is_root():
        privileged_required("foreign owners, setuid and device nodes need root")
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=privileged)

    _backup(cli, source)
    target = tmp_path / "target"
    result = cli("restore", "latest", "--target", target)
    assert result["errors"] == []

    restored = restored_path(target, source)
    assert_same_tree(source, restored)

    sparse = os.path.join(os.fsencode(restored), SPARSE_FILE)
    assert allocated_bytes(sparse) < SPARSE_SIZE // 2, "holes were written out as zeros"
    regions = data_regions(sparse)
    assert regions, "the data of the sparse file is missing"
    assert regions[-1][1] < SPARSE_SIZE, "the hole at the end of the sparse file was filled"


def test_restore_reports_what_it_restored(
    cli: Cli, repo: Path, odd_tree: Path, tmp_path: Path
) -> None:
    """The restore summary counts the regular files and their bytes."""
    _backup(cli, odd_tree)
    manifest = tree_manifest(odd_tree)
    files = {e.hardlink_group or rel: e for rel, e in manifest.items() if e.type == "file"}
    result = cli("restore", "latest", "--target", tmp_path / "target")
    # Hardlinked names may be counted once or per name; non-files may be counted too.
    assert len(files) <= result["files"] <= len(manifest)
    assert result["bytes"] >= sum(e.size for e in files.values()) - SPARSE_SIZE


def test_ls_lists_every_node_including_odd_names(cli: Cli, repo: Path, odd_tree: Path) -> None:
    """`ls --json` lists each backed-up path once, even names with newlines or bad UTF-8."""
    _backup(cli, odd_tree)
    listing = cli("ls", "latest")
    prefix = str(odd_tree).strip("/") + "/"
    paths = [node["path"].lstrip("/") for node in listing["nodes"]]
    below = [p for p in paths if p.startswith(prefix)]
    expected = len(tree_manifest(odd_tree)) - 1  # everything but the root itself
    assert len(below) == expected, (
        f"{len(below)} nodes listed below the source, expected {expected}"
    )
    assert len(set(below)) == len(below), "some node is listed twice"
    newline_name = NEWLINE_NAME.decode()
    head, tail = newline_name.split("\n")
    assert any(p[len(prefix) :].startswith(head) and p.endswith(tail) for p in below), (
        "the file with a newline in its name is not listed"
    )
    for node in listing["nodes"]:
        assert {"path", "type", "size", "mode", "mtime_ns"} <= node.keys()


def test_restore_include_restores_only_that_directory(
    cli: Cli, repo: Path, odd_tree: Path, tmp_path: Path
) -> None:
    """`restore --include DIR` brings back DIR exactly and nothing else of the snapshot."""
    _backup(cli, odd_tree)
    target = tmp_path / "target"
    wanted = odd_tree / os.fsdecode(INCLUDE_DIR)
    cli("restore", "latest", "--target", target, "--include", wanted)
    restored_root = restored_path(target, odd_tree)
    assert sorted(os.listdir(restored_root)) == [os.fsdecode(INCLUDE_DIR)]
    assert_same_tree(wanted, restored_path(target, wanted))


def _plant(target: Path, source: Path, where: str, outside: Path) -> None:
    restored = restored_path(target, source)
    if where == "top-level-dir":
        first = Path(restored.relative_to(target).parts[0])
        target.mkdir()
        (target / first).symlink_to(outside)
    elif where == "dir-inside-tree":
        restored.mkdir(parents=True)
        (restored / os.fsdecode(INCLUDE_DIR)).symlink_to(outside)
    else:
        restored.mkdir(parents=True)
        (restored / os.fsdecode(PLAIN_FILE)).symlink_to(outside / "victim")


@pytest.mark.parametrize("where", ["top-level-dir", "dir-inside-tree", "file-inside-tree"])
def test_restore_never_writes_through_planted_symlinks(
    cli: Cli, repo: Path, odd_tree: Path, tmp_path: Path, where: str
) -> None:
    """A symlink already in the target where restore creates a directory or file is never
    followed: nothing outside the target is created or overwritten."""
    _backup(cli, odd_tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_content = b"precious data outside the target\n"
    if where == "file-inside-tree":
        (outside / "victim").write_bytes(victim_content)
    target = tmp_path / "target"
    _plant(target, odd_tree, where, outside)
    before = sorted(os.listdir(outside))

    cli("restore", "latest", "--target", target, expect=None)

    assert sorted(os.listdir(outside)) == before, "restore wrote outside the target"
    if where == "file-inside-tree":
        assert (outside / "victim").read_bytes() == victim_content
    if cli.status == 0:
        restored = restored_path(target, odd_tree)
        real = os.path.realpath(restored / os.fsdecode(INCLUDE_DIR))
        assert real.startswith(os.path.realpath(target) + os.sep)
        assert (restored / os.fsdecode(PLAIN_FILE)).read_bytes() == (
            odd_tree / os.fsdecode(PLAIN_FILE)
        ).read_bytes()


def test_latest_and_id_prefix_select_snapshots(
    cli: Cli, repo: Path, odd_tree: Path, tmp_path: Path
) -> None:
    """`latest` restores the newest snapshot; a short id restores the one it names."""
    plain = odd_tree / os.fsdecode(PLAIN_FILE)
    old_content = plain.read_bytes()
    first = _backup(cli, odd_tree)["snapshot_id"]
    plain.write_bytes(b"changed after the first snapshot\n")
    second = _backup(cli, odd_tree)["snapshot_id"]
    assert first != second

    snapshots = cli("snapshots")
    by_id = {s["id"]: s for s in snapshots}
    assert set(by_id) == {first, second}
    assert by_id[first]["paths"] == [str(odd_tree)]
    assert first.startswith(by_id[first]["short_id"])

    cli("restore", "latest", "--target", tmp_path / "t-latest")
    assert restored_path(tmp_path / "t-latest", plain).read_bytes() == plain.read_bytes()

    cli("restore", by_id[first]["short_id"], "--target", tmp_path / "t-first")
    assert restored_path(tmp_path / "t-first", plain).read_bytes() == old_content
