"""The restore engine through its Python API: trees backed up with the archiver come back
exactly (content, modes, ns times, links, holes, xattrs, special files), includes select
subtrees, hostile trees and planted symlinks never make it write outside the target, and
damaged content is reported per file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ffharness import is_root, privileged_required
from freezeframe.backup.archiver import Archiver, BackupOptions, SourcePath
from freezeframe.backup.files_cache import FilesCache
from freezeframe.errors import FreezeframeError, NotFound
from freezeframe.repository.keys import KdfParams
from freezeframe.repository.pack import BlobType
from freezeframe.repository.reader import RepositoryReader
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot
from freezeframe.repository.tree import Node, encode_tree
from freezeframe.repository.walk import walk_tree
from freezeframe.restore import restorer as restorer_module
from freezeframe.restore.restorer import RestoreProgress, restore_snapshot
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from treeutil import (
    INCLUDE_DIR,
    SPARSE_FILE,
    SPARSE_SIZE,
    MiB,
    allocated_bytes,
    assert_same_tree,
    build_odd_tree,
    data_regions,
    restored_path,
    tree_manifest,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    repo = Repository.init(LocalStorage(tmp_path / "repository"), b"pw", KdfParams(1, 8192, 1))
    yield repo
    repo.close()


def backup(repo: Repository, tmp_path: Path, *sources: Path) -> Snapshot:
    options = BackupOptions(sources=[SourcePath(bytes(s), bytes(s)) for s in sources])
    result = Archiver(repo, options, FilesCache(tmp_path / "files-cache")).run()
    assert result.errors == []
    return result.snapshot


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    return source


# -- round trips ----------------------------------------------------------------------------


def test_odd_tree_comes_back_exactly(
    repository: Repository, odd_tree: Path, tmp_path: Path
) -> None:
    """Everything the manifest compares (type, mode, owner, size, ns mtime, content, link
    target, rdev, xattrs/ACLs, hard-link groups) matches, holes stay holes, and the progress
    counters reach their totals."""
    snapshot = backup(repository, tmp_path, odd_tree)
    progress = RestoreProgress()
    result = restore_snapshot(
        RepositoryReader(repository), snapshot, tmp_path / "target", progress=progress
    )
    assert result.errors == []

    restored = restored_path(tmp_path / "target", odd_tree)
    assert_same_tree(odd_tree, restored)
    sparse = restored / os.fsdecode(SPARSE_FILE)
    assert allocated_bytes(sparse) < 4 * MiB, "holes were written out"
    assert data_regions(sparse)[-1][1] < SPARSE_SIZE
    assert (restored / "hardlink-a").stat().st_ino == (restored / "hardlink-b").stat().st_ino
    assert (restored / "dir1/linked").stat().st_ino == (restored / "dir2/linked-too").stat().st_ino
    assert stat.S_ISFIFO((restored / "fifo").lstat().st_mode)
    assert os.getxattr(restored / "with-xattr", "user.binary") == bytes(range(256))
    assert progress.files_done == progress.total_files > 0
    assert progress.bytes_done == progress.total_bytes > SPARSE_SIZE
    assert progress.errors == 0
    manifest = tree_manifest(odd_tree)
    assert result.dirs >= sum(1 for e in manifest.values() if e.type == "dir")
    assert result.files == sum(1 for e in manifest.values() if e.type == "file")


def test_restoring_twice_into_one_target_overwrites(
    repository: Repository, odd_tree: Path, tmp_path: Path
) -> None:
    """A second restore over the first (edited in between) gives the snapshot back again:
    files are replaced, directories (read-only ones too) reused."""
    snapshot = backup(repository, tmp_path, odd_tree)
    target = tmp_path / "target"
    restore_snapshot(RepositoryReader(repository), snapshot, target)
    restored = restored_path(target, odd_tree)
    (restored / "plain.txt").write_bytes(b"edited after the restore\n")
    (restored / "data" / "random.bin").unlink()
    (restored / "data" / "random.bin").symlink_to("/etc/passwd")
    (restored / "dir1" / "own.txt").unlink()
    (restored / "dir1" / "own.txt").mkdir()

    result = restore_snapshot(RepositoryReader(repository), snapshot, target)
    assert result.errors == []
    assert_same_tree(odd_tree, restored)


def test_many_small_files_and_shared_chunks(repository: Repository, tmp_path: Path) -> None:
    """Thousands of small files (batched per pack) and large files sharing chunks (fetched
    once, split over workers) restore byte for byte."""
    source = tmp_path / "many"
    source.mkdir()
    for d in range(20):
        sub = source / f"d{d:02}"
        sub.mkdir()
        for f in range(150):
            write(sub / f"f{f:03}", b"%d-%d\n" % (d, f) * (f % 7 + 1))
            if f % 10 == 0:
                write(sub / f"same{f:03}", b"identical small content\n")
    big = os.urandom(12 * MiB)
    write(source / "big", big)
    write(source / "big-copy", big)
    write(source / "big-prefix", big[: 5 * MiB] + os.urandom(MiB))
    snapshot = backup(repository, tmp_path, source)

    for workers in (1, 4):
        target = tmp_path / f"target{workers}"
        result = restore_snapshot(RepositoryReader(repository), snapshot, target, workers=workers)
        assert result.errors == []
        assert result.files == 20 * 165 + 3
        assert_same_tree(source, restored_path(target, source))


def test_includes_restore_only_those_subtrees_and_their_parents(
    repository: Repository, odd_tree: Path, tmp_path: Path
) -> None:
    snapshot = backup(repository, tmp_path, odd_tree)
    target = tmp_path / "target"
    wanted_dir = odd_tree / os.fsdecode(INCLUDE_DIR)
    wanted_file = odd_tree / "data" / "repeated.txt"
    result = restore_snapshot(
        RepositoryReader(repository),
        snapshot,
        target,
        includes=[str(wanted_dir), f"{wanted_file}/"],
    )
    assert result.errors == []
    restored = restored_path(target, odd_tree)
    assert sorted(os.listdir(restored)) == ["data", "dir1"]
    assert os.listdir(restored / "data") == ["repeated.txt"]
    assert_same_tree(wanted_dir, restored / "dir1")
    assert (restored / "data" / "repeated.txt").read_bytes() == wanted_file.read_bytes()
    # Parents carry their recorded metadata, applied after their (partial) contents.
    for parent in (odd_tree, odd_tree / "data"):
        st, got = parent.stat(), restored_path(target, parent).stat()
        assert (got.st_mode, got.st_mtime_ns) == (st.st_mode, st.st_mtime_ns)


def test_hard_links_of_every_kind_and_across_includes(
    repository: Repository, tmp_path: Path
) -> None:
    """Hard-linked files, symlinks and fifos come back as one inode each; a name whose first
    link lies outside the includes becomes the first name itself."""
    source = tmp_path / "links"
    (source / "a").mkdir(parents=True)
    (source / "b").mkdir()
    write(source / "a" / "file", b"shared\n")
    os.link(source / "a" / "file", source / "b" / "file")
    os.symlink("target", source / "a" / "sym")
    os.link(source / "a" / "sym", source / "b" / "sym", follow_symlinks=False)
    os.mkfifo(source / "a" / "fifo")
    os.link(source / "a" / "fifo", source / "b" / "fifo")
    snapshot = backup(repository, tmp_path, source)

    whole = tmp_path / "whole"
    assert restore_snapshot(RepositoryReader(repository), snapshot, whole).errors == []
    assert_same_tree(source, restored_path(whole, source))
    for name in ("file", "sym", "fifo"):
        a, b = (restored_path(whole, source / d / name).lstat() for d in "ab")
        assert (a.st_ino, a.st_nlink) == (b.st_ino, 2), name

    part = tmp_path / "part"
    result = restore_snapshot(
        RepositoryReader(repository), snapshot, part, includes=[str(source / "b")]
    )
    assert result.errors == []
    assert restored_path(part, source / "b" / "file").read_bytes() == b"shared\n"
    assert restored_path(part, source / "b" / "file").stat().st_nlink == 1
    assert not restored_path(part, source / "a").exists()


def test_an_include_missing_from_the_snapshot_writes_nothing(
    repository: Repository, odd_tree: Path, tmp_path: Path
) -> None:
    snapshot = backup(repository, tmp_path, odd_tree)
    with pytest.raises(NotFound):
        restore_snapshot(
            RepositoryReader(repository),
            snapshot,
            tmp_path / "target",
            includes=[str(odd_tree / "nope")],
        )
    with pytest.raises(NotFound):  # a path below a file
        restore_snapshot(
            RepositoryReader(repository),
            snapshot,
            tmp_path / "target",
            includes=[str(odd_tree / "plain.txt/x")],
        )
    assert not (tmp_path / "target").exists()


def test_walk_tree_lists_absolute_paths_depth_first(repository: Repository, tmp_path: Path) -> None:
    source = tmp_path / "w"
    (source / "b").mkdir(parents=True)
    write(source / "a", b"a")
    write(source / "b" / "c", b"c")
    write(source / "d", b"d")
    snapshot = backup(repository, tmp_path, source)
    paths = [path for path, _ in walk_tree(repository, snapshot.tree)]
    top = bytes(source)
    assert paths[-4:] == [top + b"/a", top + b"/b", top + b"/b/c", top + b"/d"]
    assert paths[0] == b"/" + top.split(b"/")[1]


# -- safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "inside", "file"])
def test_planted_symlinks_in_the_target_are_never_followed(
    repository: Repository, odd_tree: Path, tmp_path: Path, where: str
) -> None:
    snapshot = backup(repository, tmp_path, odd_tree)
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "victim", b"precious\n")
    target = tmp_path / "target"
    restored = restored_path(target, odd_tree)
    if where == "top":
        target.mkdir()
        (target / restored.relative_to(target).parts[0]).symlink_to(outside)
    elif where == "inside":
        restored.mkdir(parents=True)
        (restored / "dir1").symlink_to(outside)
    else:
        restored.mkdir(parents=True)
        (restored / "plain.txt").symlink_to(outside / "victim")

    result = restore_snapshot(RepositoryReader(repository), snapshot, target)

    assert result.errors == []
    assert listing(outside) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious\n"
    assert_same_tree(odd_tree, restored)


def _node(name: bytes, kind: str, **fields: object) -> Node:
    values: dict[str, object] = {"mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 10**18}
    values.update(fields)
    return Node(name=name, type=kind, **values)  # type: ignore[arg-type]


def _save_tree(repo: Repository, nodes: list[Node]) -> bytes:
    return repo.save_blob(BlobType.TREE, encode_tree(nodes))[0]


def _snapshot_of(repo: Repository, root: bytes) -> Snapshot:
    repo.flush()
    return Snapshot(
        time=datetime.now(UTC), host="h", user="u", paths=["/"], tree=root, program_version="t"
    )


def test_a_hostile_tree_cannot_escape_the_target(repository: Repository, tmp_path: Path) -> None:
    """Names like ``..``, ``a/b`` or NUL, duplicates, content placed beyond a file's size and
    impossible times are refused one by one; the rest is restored and nothing lands outside
    the target."""
    blob, _ = repository.save_blob(BlobType.DATA, b"payload\n")
    payload = {"content": [blob], "size": 8}
    escape = _save_tree(repository, [_node(b"escaped", "file", **payload)])
    nodes = [
        _node(b"..", "dir", subtree=escape, mode=0o755),
        _node(b".", "dir", subtree=escape, mode=0o755),
        _node(b"../../escaped-too", "file", **payload),
        _node(b"/abs", "file", **payload),
        _node(b"", "file", **payload),
        _node(b"nul\0name", "file", **payload),
        _node(b"twice", "symlink", linktarget=bytes(tmp_path)),
        _node(b"twice", "dir", subtree=escape, mode=0o755),
        _node(b"link", "symlink", linktarget=b"../../../.."),
        _node(b"holey", "file", content=[blob], size=8, sparse_map=[(1 << 30, 8)]),
        _node(b"missing", "file", content=[b"\x01" * 32], size=8),
        _node(b"ok", "file", **payload),
        _node(b"far-future", "file", mtime_ns=10**40, **payload),
        _node(b"far-future-fifo", "fifo", mtime_ns=10**40),
    ]
    snapshot = _snapshot_of(repository, _save_tree(repository, nodes))
    jail = tmp_path / "jail"
    target = jail / "target"
    target.mkdir(parents=True)
    before = listing(tmp_path)

    result = restore_snapshot(RepositoryReader(repository), snapshot, target)

    refused = sorted(path for path, _ in result.errors)
    bad_names = ["/..", "/.", "/../../escaped-too", "//abs", "/", "/nul\0name", "/twice"]
    odd_values = ["/far-future", "/far-future-fifo"]
    assert refused == sorted([*bad_names, "/holey", "/missing", *odd_values])
    assert (target / "ok").read_bytes() == b"payload\n"
    assert os.readlink(target / "twice") == str(tmp_path)
    assert os.readlink(target / "link") == "../../../.."
    assert sorted(os.listdir(target)) == ["far-future", "far-future-fifo", "link", "ok", "twice"]
    after = listing(tmp_path)
    assert sorted(set(after) - set(before)) == [
        f"jail/target/{name}" for name in sorted(os.listdir(target))
    ]


@pytest.mark.parametrize("size", [3_000, 300_000], ids=["small", "large"])
def test_damaged_content_is_reported_per_file(
    repository: Repository, tmp_path: Path, size: int
) -> None:
    """A blob that fails authentication spoils only the files that use it (small blobs are
    written by the walk thread, large ones by workers: both paths report it)."""
    source = tmp_path / "src"
    source.mkdir()
    write(source / "a-first", os.urandom(size))
    backup(repository, tmp_path, source)  # a-first gets a pack of its own
    write(source / "b-second", b"fine\n")
    snapshot = backup(repository, tmp_path, source)
    first_blob = next(
        node.content[0]
        for path, node in walk_tree(repository, snapshot.tree)
        if path.endswith(b"/a-first")
    )
    location = repository.index.lookup(first_blob)
    assert location is not None
    pack_path = repository.storage.path_of(Kind.DATA, location.pack)  # type: ignore[attr-defined]
    damaged = bytearray(pack_path.read_bytes())
    damaged[location.offset + 40] ^= 0xFF
    pack_path.write_bytes(bytes(damaged))
    repository.storage.close()

    target = tmp_path / "target"
    result = restore_snapshot(RepositoryReader(repository), snapshot, target)

    assert [path for path, _ in result.errors] == [str(source / "a-first")]
    assert "authentication" in result.errors[0][1]
    assert restored_path(target, source / "b-second").read_bytes() == b"fine\n"


def test_ctrl_c_propagates_and_leaks_no_descriptors(
    repository: Repository, odd_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = backup(repository, tmp_path, odd_tree)
    fds_before = len(os.listdir("/proc/self/fd"))

    def interrupted(*args: object, **kwargs: object) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(restorer_module, "apply_at", interrupted)
    with pytest.raises(KeyboardInterrupt):
        restore_snapshot(RepositoryReader(repository), snapshot, tmp_path / "target")
    repository.storage.close()  # its cache of open packs is not the restore's
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_as_a_normal_user_devices_are_errors_and_the_rest_restores(
    repository: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not is_root():
        privileged_required("creating the device node to back up needs root")
    source = tmp_path / "dev"
    source.mkdir()
    os.mknod(source / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    write(source / "file", b"x\n")
    snapshot = backup(repository, tmp_path, source)
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    result = restore_snapshot(RepositoryReader(repository), snapshot, tmp_path / "target")
    monkeypatch.undo()
    assert [path for path, _ in result.errors] == [str(source / "null")]
    assert "root" in result.errors[0][1]
    assert restored_path(tmp_path / "target", source / "file").read_bytes() == b"x\n"


# -- root only ------------------------------------------------------------------------------


@pytest.mark.privileged
def test_owners_setuid_and_devices_as_root(repository: Repository, tmp_path: Path) -> None:
    """Numeric owners of files, directories and symlinks come back, setuid survives the
    chown, and device nodes are recreated."""
    if not is_root():
        privileged_required("chown and mknod need root")
    source = tmp_path / "owned"
    source.mkdir()
    write(source / "setuid", b"#!/bin/sh\n", 0o755)
    os.chown(source / "setuid", 12345, 23456)
    os.chmod(source / "setuid", 0o6755)
    (source / "link").symlink_to("setuid")
    os.lchown(source / "link", 34567, 45678)
    os.mknod(source / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(source, 23456, 12345)
    snapshot = backup(repository, tmp_path, source)

    result = restore_snapshot(RepositoryReader(repository), snapshot, tmp_path / "target")

    assert result.errors == []
    restored = restored_path(tmp_path / "target", source)
    assert_same_tree(source, restored)
    st = (restored / "setuid").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12345, 23456, 0o6755)
    assert (restored / "link").lstat().st_uid == 34567
    assert (restored / "blk").lstat().st_rdev == os.makedev(7, 200)
    assert restored.stat().st_uid == 23456


def test_files_added_after_the_snapshot_replace_and_leave_out_entries(
    repository: Repository, tmp_path: Path
) -> None:
    """What a quiescer adds once the application is released (a backup label, the WAL to the
    end of the backup) is stored at the application's paths; what it leaves out is not
    stored; a file to add whose directory the walk never reaches fails the backup."""
    source = tmp_path / "db"
    for directory in (source / "wal", source / "base", tmp_path / "staged"):
        directory.mkdir(parents=True)
    write(source / "wal" / "seg1", b"partial")
    write(source / "postmaster.pid", b"4242")
    write(source / "base" / "t1", b"table")
    staged = tmp_path / "staged"
    write(staged / "seg1", b"partial, then the end record")
    write(staged / "backup_label", b"START WAL LOCATION")
    replaced: dict[bytes, bytes | None] = {
        bytes(source / "wal" / "seg1"): bytes(staged / "seg1"),
        bytes(source / "backup_label"): bytes(staged / "backup_label"),
        bytes(source / "postmaster.pid"): None,
    }
    options = BackupOptions(sources=[SourcePath(bytes(source), bytes(source))], replaced=replaced)
    snapshot = Archiver(repository, options, FilesCache(tmp_path / "fc1")).run().snapshot
    target = tmp_path / "restored"
    restore_snapshot(RepositoryReader(repository), snapshot, target)
    restored = target / str(source).lstrip("/")
    assert listing(restored) == ["backup_label", "base", "base/t1", "wal", "wal/seg1"]
    assert (restored / "wal" / "seg1").read_bytes() == b"partial, then the end record"
    assert (restored / "backup_label").read_bytes() == b"START WAL LOCATION"
    assert not (restored / "postmaster.pid").exists()
    assert (restored / "base" / "t1").read_bytes() == b"table"

    nowhere = {bytes(source / "missing" / "x"): bytes(staged / "seg1")}
    options = BackupOptions(sources=[SourcePath(bytes(source), bytes(source))], replaced=nowhere)
    with pytest.raises(FreezeframeError, match="have no directory in it"):
        Archiver(repository, options, FilesCache(tmp_path / "fc2")).run()
