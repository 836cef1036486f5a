"""Backup behaviour users rely on: deduplication, the files cache, change detection, excludes,
one-file-system, and the snapshot record."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import Cli, is_root, privileged_required


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _settle() -> None:
    """Let 2 s pass: the files cache ignores files whose mtime or ctime is that recent, since a
    further write within the same timestamp tick would go unseen."""
    time.sleep(2.1)


def test_duplicate_content_is_stored_once(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Copies of a file, inside one snapshot and across snapshots, add no data."""
    blob = os.urandom(6 * 1024 * 1024)
    src = tmp_path / "src"
    _write(src / "a.bin", blob)
    _write(src / "sub" / "copy.bin", blob)
    first = cli("backup", src)
    assert first["summary"]["bytes_read"] == 2 * len(blob)
    assert first["summary"]["bytes_added"] <= len(blob) + 64 * 1024
    other = tmp_path / "other"
    _write(other / "third-copy.bin", blob)
    second = cli("backup", other)
    assert second["summary"]["bytes_added"] < 64 * 1024  # only the new tree objects


def test_unchanged_files_are_not_read_again(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """The files cache: a re-backup of an unchanged tree reads no file data, and a changed
    file is read again."""
    src = tmp_path / "src"
    for i in range(50):
        _write(src / f"f{i}", os.urandom(20_000))
    _settle()
    cli("backup", src)
    again = cli("backup", src)
    assert again["summary"]["files_unmodified"] == 50
    assert again["summary"]["bytes_read"] == 0
    with open(src / "f7", "ab") as f:
        f.write(b"more")
    _settle()
    third = cli("backup", src)
    assert third["summary"]["files_unmodified"] == 49
    assert third["summary"]["files_changed"] == 1
    assert third["summary"]["bytes_read"] == 20_004


def test_a_damaged_files_cache_costs_time_not_data(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Garbage in the local cache must never produce a snapshot pointing at missing data."""
    src = tmp_path / "src"
    _write(src / "f", os.urandom(100_000))
    _settle()
    cli("backup", src)
    cache_root = Path(os.environ["XDG_CACHE_HOME"]) / "freezeframe"
    (cache_file,) = cache_root.glob("*/files")
    cache_file.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    again = cli("backup", src)
    assert again["summary"]["bytes_read"] == 100_000
    assert cli("check", "--read-data")["ok"]


def test_files_changed_while_read_are_recorded(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Level `none`: a file written during its read is listed in the snapshot's consistency
    section, and files left alone are not."""
    src = tmp_path / "src"
    _write(src / "still.bin", os.urandom(1024 * 1024))
    busy = src / "busy.log"
    _write(busy, os.urandom(256 * 1024 * 1024))
    stop = threading.Event()

    def writer() -> None:
        with open(busy, "ab") as f:
            while not stop.is_set():
                f.write(b"x" * 512)
                f.flush()
                time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = cli("backup", src)
    finally:
        stop.set()
        thread.join()
    record = result["consistency"]
    assert record["requested"] == "auto"  # the default: the highest level reachable
    assert record["achieved"] == "none"
    assert str(busy) in record["changed_during_read"]
    assert str(src / "still.bin") not in record["changed_during_read"]
    (snapshot,) = cli("snapshots")
    assert snapshot["consistency"]["changed_during_read"] == record["changed_during_read"]
    assert snapshot["consistency"]["achieved"] == "none"


def test_excludes_leave_files_out(repo: Path, cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / "keep.txt", b"keep")
    _write(src / "drop.tmp", b"drop")
    _write(src / "cache" / "deep" / "x", b"drop")
    _write(src / "sub" / "also.tmp", b"drop")
    cli("backup", src, "--exclude", "*.tmp", "--exclude", "cache")
    listed = {n["path"] for n in cli("ls", "latest")["nodes"]}
    assert str(src / "keep.txt") in listed
    assert not [p for p in listed if p.endswith(".tmp") or "/cache" in p]


def test_tags_host_and_paths_are_recorded(repo: Path, cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src / "f", b"x")
    cli("backup", src, "--tag", "nightly", "--tag", "db", "--host", "db1")
    (snap,) = cli("snapshots")
    assert snap["tags"] == ["nightly", "db"]
    assert snap["host"] == "db1"
    assert snap["paths"] == [str(src)]
    assert snap["program_version"].startswith("freezeframe ")
    assert cli("snapshots", "--tag", "nightly") and not cli("snapshots", "--tag", "weekly")


def test_one_file_system_stops_at_mount_points(repo: Path, cli: Cli, tmp_path: Path) -> None:
    if not is_root():
        privileged_required("mounting a tmpfs needs root")
    src = tmp_path / "src"
    _write(src / "here", b"x")
    mnt = src / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        _write(mnt / "elsewhere", b"y")
        cli("backup", src, "--one-file-system")
        listed = {n["path"] for n in cli("ls", "latest")["nodes"]}
        assert str(mnt) in listed
        assert str(mnt / "elsewhere") not in listed
        cli("backup", src)
        assert str(mnt / "elsewhere") in {n["path"] for n in cli("ls", "latest")["nodes"]}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_missing_source_path_is_one_clear_error(repo: Path, cli: Cli, tmp_path: Path) -> None:
    out = cli("backup", tmp_path / "nope", expect=1)
    assert out["error"]["code"] == "not_found"
    assert "does not exist" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert cli("snapshots") == []


@pytest.mark.parametrize("bad", ["", "abc", "zzzzzzzz"])
def test_bad_snapshot_references_are_usage_errors(
    repo: Path, cli: Cli, tmp_path: Path, bad: str
) -> None:
    _write(tmp_path / "src" / "f", b"x")
    cli("backup", tmp_path / "src")
    out = cli("restore", bad, "--target", tmp_path / "t", expect=None)
    assert cli.status in (1, 2)
    assert "error" in out


def test_an_xattr_added_later_is_backed_up(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """Unchanged files are not asked for xattrs again; setting one changes the ctime, so the
    next backup must notice it."""
    src = tmp_path / "src"
    _write(src / "f", b"content")
    _settle()
    cli("backup", src)
    try:
        os.setxattr(src / "f", "user.note", b"added later")
    except OSError as exc:
        pytest.skip(f"user xattrs unsupported here: {exc}")
    _settle()
    cli("backup", src)
    cli("restore", "latest", "--target", tmp_path / "out")
    restored = tmp_path / "out" / str(src / "f").lstrip("/")
    assert os.getxattr(restored, "user.note") == b"added later"


def test_an_unchanged_sparse_file_keeps_its_holes_in_the_next_snapshot(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """The files cache holds no hole map: a second backup of an unchanged sparse file must
    still record it as sparse, and restore it byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    with open(sparse, "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"in the middle")
    if os.stat(sparse).st_blocks * 512 >= 1024 * 1024:
        pytest.skip("this file system does not keep holes")
    _settle()
    cli("backup", src)
    cli("backup", src)
    cli("restore", "latest", "--target", tmp_path / "out")
    restored = tmp_path / "out" / str(sparse).lstrip("/")
    assert restored.read_bytes() == sparse.read_bytes()
    assert os.stat(restored).st_blocks * 512 < 1024 * 1024


def test_a_file_gone_between_listing_and_stat_is_a_change_not_an_error(
    repo: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file renamed away right after the directory was listed (an atomic replace) is listed
    as changed during the read; the backup exits 0, not 3."""
    src = tmp_path / "src"
    _write(src / "kept", b"kept")
    _write(src / "vanishing", b"gone before its stat")
    real_scandir = os.scandir

    class Vanished:
        def __init__(self, entry: os.DirEntry[bytes]) -> None:
            self._entry = entry
            self.name, self.path = entry.name, entry.path

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            raise FileNotFoundError(2, "No such file or directory", self.path)

        def __getattr__(self, attribute: str) -> object:
            return getattr(self._entry, attribute)

    class Listing:
        def __init__(self, path: object) -> None:
            self._scan = real_scandir(path)  # type: ignore[call-overload]

        def __iter__(self) -> Iterator[object]:
            for entry in self._scan:
                yield Vanished(entry) if entry.name == b"vanishing" else entry

        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._scan.close()

        def close(self) -> None:
            self._scan.close()

    monkeypatch.setattr("freezeframe.backup.archiver.os.scandir", Listing)
    result = cli("backup", src)
    assert result["consistency"]["changed_during_read"] == [str(src / "vanishing")]
    assert result["errors"] == []
