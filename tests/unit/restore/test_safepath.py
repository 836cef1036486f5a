"""The restore's path safety: names from a snapshot, include paths, and creating entries in a
target that already holds symlinks, hard links and files in the way."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from freezeframe.errors import UnsafeName, UsageError
from freezeframe.restore.safepath import (
    check_name,
    clear_way,
    create_entry,
    create_file,
    make_dir,
    open_dir_path,
    parse_include,
)


@pytest.fixture
def target_fd(tmp_path: Path):
    target = tmp_path / "target"
    target.mkdir()
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    place = tmp_path / "outside"
    place.mkdir()
    (place / "victim").write_bytes(b"precious\n")
    return place


@pytest.mark.parametrize("name", [b"", b".", b"..", b"/", b"a/b", b"../x", b"a\0b", b"x/"])
def test_names_that_are_not_one_component_are_refused(name: bytes) -> None:
    with pytest.raises(UnsafeName):
        check_name(name)


@pytest.mark.parametrize("name", [b"...", b"..x", b".hidden", b"\xff\xfe", b"new\nline", b" "])
def test_odd_but_harmless_names_are_accepted(name: bytes) -> None:
    check_name(name)


@pytest.mark.parametrize(
    ("path", "components"),
    [
        ("/srv/data/sub", (b"srv", b"data", b"sub")),
        ("/srv//data/", (b"srv", b"data")),
        ("/srv/x/../data", (b"srv", b"data")),
        ("/", ()),
    ],
)
def test_include_paths_become_components(path: str, components: tuple[bytes, ...]) -> None:
    assert parse_include(path) == components


def test_relative_include_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_include("srv/data")


def test_make_dir_replaces_a_planted_symlink_without_following_it(
    target_fd: int, tmp_path: Path, outside: Path
) -> None:
    (tmp_path / "target" / "srv").symlink_to(outside)
    fd, created = make_dir(target_fd, b"srv")
    try:
        os.mkdir(b"inside", dir_fd=fd)
    finally:
        os.close(fd)
    assert created
    assert (tmp_path / "target" / "srv").is_dir()
    assert not (tmp_path / "target" / "srv").is_symlink()
    assert sorted(os.listdir(outside)) == ["victim"]


def test_make_dir_reuses_a_real_directory(target_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target" / "srv").mkdir()
    (tmp_path / "target" / "srv" / "kept").write_bytes(b"x")
    fd, created = make_dir(target_fd, b"srv")
    os.close(fd)
    assert not created
    assert (tmp_path / "target" / "srv" / "kept").exists()


def test_make_dir_replaces_a_file(target_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target" / "srv").write_bytes(b"in the way")
    fd, created = make_dir(target_fd, b"srv")
    os.close(fd)
    assert created
    assert (tmp_path / "target" / "srv").is_dir()


def test_create_file_never_writes_through_a_symlink(
    target_fd: int, tmp_path: Path, outside: Path
) -> None:
    (tmp_path / "target" / "file").symlink_to(outside / "victim")
    fd = create_file(target_fd, b"file")
    os.write(fd, b"restored\n")
    os.close(fd)
    assert (outside / "victim").read_bytes() == b"precious\n"
    assert (tmp_path / "target" / "file").read_bytes() == b"restored\n"
    assert not (tmp_path / "target" / "file").is_symlink()


def test_create_file_never_writes_into_a_hard_link_to_an_outside_file(
    target_fd: int, tmp_path: Path, outside: Path
) -> None:
    os.link(outside / "victim", tmp_path / "target" / "file")
    fd = create_file(target_fd, b"file")
    os.write(fd, b"restored\n")
    os.close(fd)
    assert (outside / "victim").read_bytes() == b"precious\n"


def test_create_file_does_not_block_on_a_planted_fifo(target_fd: int, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "target" / "file")
    fd = create_file(target_fd, b"file")
    os.close(fd)
    assert (tmp_path / "target" / "file").is_file()


def test_a_non_empty_directory_in_the_way_is_an_error(target_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target" / "name").mkdir()
    (tmp_path / "target" / "name" / "child").write_bytes(b"x")
    with pytest.raises(OSError) as excinfo:
        clear_way(target_fd, b"name")
    assert excinfo.value.errno == errno.ENOTEMPTY
    assert (tmp_path / "target" / "name" / "child").exists()


def test_an_empty_directory_in_the_way_is_removed(target_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target" / "name").mkdir()
    create_entry(target_fd, b"name", lambda: os.symlink(b"t", b"name", dir_fd=target_fd))
    assert os.readlink(tmp_path / "target" / "name") == "t"


def test_create_entry_replaces_what_is_there(target_fd: int, tmp_path: Path) -> None:
    (tmp_path / "target" / "link").symlink_to("old")
    create_entry(target_fd, b"link", lambda: os.symlink(b"new", b"link", dir_fd=target_fd))
    assert os.readlink(tmp_path / "target" / "link") == "new"


def test_open_dir_path_refuses_symlinked_components(
    target_fd: int, tmp_path: Path, outside: Path
) -> None:
    (tmp_path / "target" / "a").mkdir()
    (tmp_path / "target" / "a" / "b").symlink_to(outside)
    fd = open_dir_path(target_fd, [b"a"])
    os.close(fd)
    with pytest.raises(OSError) as excinfo:
        open_dir_path(target_fd, [b"a", b"b"])
    assert excinfo.value.errno in (errno.ELOOP, errno.ENOTDIR)
    with pytest.raises(UnsafeName):
        open_dir_path(target_fd, [b"a", b".."])
