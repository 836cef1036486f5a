"""Build file trees full of awkward cases and describe trees exactly enough to compare them.

Everything works on ``bytes`` paths so names that are not valid UTF-8 survive untouched.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

MiB = 1024 * 1024

# Paths (relative to the tree root) that tests refer to by name.
SPARSE_FILE = b"sparse.img"
SPARSE_SIZE = 64 * MiB
BIG_FILE = b"data/random.bin"
NEWLINE_NAME = b"newline\nname"
INCLUDE_DIR = b"dir1"
PLAIN_FILE = b"plain.txt"

# Distinct nanosecond timestamps so a restore that drops sub-second precision is caught.
_BASE_NS = 1_600_000_000_123_456_789


class Entry(NamedTuple):
    """What a user expects a restore to reproduce about one path."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int | None  # None for directories (their st_size is file-system bookkeeping)
    mtime_ns: int
    sha256: str | None  # regular files only
    link_target: bytes | None  # symlinks only
    rdev: int | None  # device nodes only
    xattrs: tuple[tuple[bytes, bytes], ...]
    hardlink_group: bytes | None  # smallest relative path sharing the inode, None if unshared


def _type_name(st_mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chardev"),
        (stat.S_ISBLK, "blockdev"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(st_mode):
            return name
    return "unknown"


def _walk(root: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (relative path, absolute path) for the root and everything below, never following
    symlinks."""
    yield b".", root
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        with os.scandir(abs_dir) as it:
            for entry in it:
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                yield rel, entry.path
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    pairs = []
    for name in names:
        # security.selinux and friends are assigned by the host, not by the user.
        if name.startswith("security."):
            continue
        pairs.append((name.encode(), os.getxattr(path, name, follow_symlinks=False)))
    return tuple(sorted(pairs))


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def tree_manifest(root: str | os.PathLike[str] | bytes) -> dict[bytes, Entry]:
    """Describe every path under ``root`` (including ``b"."`` for the root itself)."""
    root_b = os.fsencode(root)
    stats = {rel: (path, os.lstat(path)) for rel, path in _walk(root_b)}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, (_path, st) in stats.items():
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    manifest = {}
    for rel, (path, st) in stats.items():
        kind = _type_name(st.st_mode)
        group = inodes.get((st.st_dev, st.st_ino))
        manifest[rel] = Entry(
            type=kind,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if kind == "dir" else st.st_size,
            mtime_ns=st.st_mtime_ns,
            sha256=_sha256(path) if kind == "file" else None,
            link_target=os.readlink(path) if kind == "symlink" else None,
            rdev=st.st_rdev if kind in ("chardev", "blockdev") else None,
            xattrs=_xattrs(path),
            hardlink_group=min(group) if group and len(group) > 1 else None,
        )
    return manifest


def manifest_differences(expected: dict[bytes, Entry], actual: dict[bytes, Entry]) -> list[str]:
    """Human-readable differences, empty when the trees match."""
    problems = []
    for rel in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing: {rel!r}")
    for rel in sorted(actual.keys() - expected.keys()):
        problems.append(f"unexpected: {rel!r}")
    for rel in sorted(expected.keys() & actual.keys()):
        want, got = expected[rel], actual[rel]
        for field in Entry._fields:
            w, g = getattr(want, field), getattr(got, field)
            if w != g:
                if field == "mode":
                    w, g = oct(w), oct(g)
                problems.append(f"{rel!r}: {field} expected {w!r}, got {g!r}")
    return problems


def assert_same_tree(
    source: str | os.PathLike[str] | bytes, restored: str | os.PathLike[str] | bytes
) -> None:
    problems = manifest_differences(tree_manifest(source), tree_manifest(restored))
    assert not problems, "restored tree differs:\n" + "\n".join(problems[:60])


def data_regions(path: str | os.PathLike[str] | bytes) -> list[tuple[int, int]]:
    """The (start, end) byte ranges holding data according to SEEK_DATA/SEEK_HOLE."""
    regions = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            regions.append((start, end))
            offset = end
    finally:
        os.close(fd)
    return regions


def allocated_bytes(path: str | os.PathLike[str] | bytes) -> int:
    return os.lstat(path).st_blocks * 512


def has_acl_tools() -> bool:
    return shutil.which("setfacl") is not None


def _write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _setfacl(*args: bytes | str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


def build_odd_tree(root: str | os.PathLike[str] | bytes, *, root_privileges: bool) -> None:
    """Create under ``root`` (which must not exist) a tree with the cases backups get wrong.

    With ``root_privileges`` it also creates what only root can: foreign owners, a setuid
    file and device nodes.
    """
    r = os.fsencode(root)
    rng = random.Random(20240601)

    def p(rel: bytes) -> bytes:
        return os.path.join(r, rel)

    os.mkdir(r)
    os.chmod(r, 0o755)

    # Awkward names.
    _write(p(NEWLINE_NAME), b"a newline in the name\n")
    _write(p(b"tab\there"), b"a tab in the name\n")
    _write(p(b"bad-\xff\xfe-utf8"), b"not utf-8\n")
    _write(p(b"latin1-caf\xe9"), b"latin-1 name\n")
    _write(p(b" leading and trailing space "), b"spaces\n")
    _write(p(b"-dash-first"), b"looks like an option\n")
    _write(p(b"glob*?[x]\\"), b"glob characters\n")
    _write(p(b"L" * 255), b"longest ascii name\n")
    _write(p("é".encode() * 127 + b"x"), b"longest multibyte name\n")
    _write(p(PLAIN_FILE), b"plain old file\n")

    # A deep directory chain.
    deep = r
    for level in range(40):
        deep = os.path.join(deep, b"level%02d" % level)
        os.mkdir(deep)
    _write(os.path.join(deep, b"bottom.txt"), b"40 levels down\n")

    # Empty things.
    _write(p(b"empty"), b"")
    os.mkdir(p(b"empty-dir"))

    # A sparse file: leading hole, two data regions, a hole between and a hole at the end.
    with open(p(SPARSE_FILE), "wb") as f:
        f.seek(8 * MiB)
        f.write(rng.randbytes(MiB))
        f.seek(40 * MiB)
        f.write(rng.randbytes(MiB // 2))
        f.truncate(SPARSE_SIZE)

    # Several chunks worth of incompressible data, plus a copy (deduplicated, not a hardlink).
    os.mkdir(p(b"data"))
    big = rng.randbytes(3 * MiB + 12345)
    _write(p(BIG_FILE), big)
    _write(p(b"data/random-copy.bin"), big)
    _write(p(b"data/repeated.txt"), b"all work and no play\n" * 50_000)

    # Hardlinks: two names in one directory, and a pair across directories.
    _write(p(b"hardlink-a"), b"shared inode\n")
    os.link(p(b"hardlink-a"), p(b"hardlink-b"))
    os.mkdir(p(INCLUDE_DIR))
    os.mkdir(p(b"dir2"))
    _write(p(b"dir1/linked"), b"linked across directories\n")
    os.link(p(b"dir1/linked"), p(b"dir2/linked-too"))
    _write(p(b"dir1/own.txt"), b"only in dir1\n")
    os.mkdir(p(b"dir1/sub"))
    _write(p(b"dir1/sub/nested.txt"), b"nested in dir1\n")

    # Symlinks.
    os.symlink(b"does/not/exist", p(b"dangling"))
    os.symlink(b"../dir1/own.txt", p(b"dir2/relative-link"))
    os.symlink(b"dir1", p(b"link-to-dir"))
    os.symlink(b"/etc/hostname", p(b"absolute-link"))
    os.symlink(b"odd-target-\xff\n", p(b"odd-target-link"))
    os.symlink(b"T" * 1000, p(b"long-target-link"))

    # A fifo (must not be opened for reading by the backup).
    os.mkfifo(p(b"fifo"), 0o640)

    # A read-only directory with a file in it.
    os.mkdir(p(b"readonly-dir"))
    _write(p(b"readonly-dir/inside.txt"), b"inside a read-only directory\n", 0o444)

    # Odd modes.
    _write(p(b"private"), b"mode 600\n", 0o600)
    _write(p(b"script.sh"), b"#!/bin/sh\necho hi\n", 0o755)
    _write(p(b"write-only"), b"mode 200\n", 0o200 if root_privileges else 0o600)
    os.mkdir(p(b"sticky-dir"))
    _write(p(b"sticky-dir/file"), b"in a sticky directory\n")

    # Extended attributes.
    _write(p(b"with-xattr"), b"has extended attributes\n")
    os.setxattr(p(b"with-xattr"), "user.comment", b"a comment")
    os.setxattr(p(b"with-xattr"), "user.binary", bytes(range(256)))
    os.setxattr(p(b"dir2"), "user.comment", b"on a directory")

    # POSIX ACLs (stored as system.posix_acl_* xattrs, so the manifest compares them).
    if has_acl_tools():
        _write(p(b"with-acl"), b"has an access ACL\n", 0o640)
        _setfacl(b"-m", b"u:12345:r--,g:23456:rw-", p(b"with-acl"))
        os.mkdir(p(b"acl-default-dir"))
        # Created before the default ACL: a restore must not let the directory's default
        # ACL leak onto it.
        _write(p(b"acl-default-dir/older-file"), b"no ACL of its own\n", 0o644)
        _setfacl(b"-d", b"-m", b"u:12345:rwx", p(b"acl-default-dir"))

    if root_privileges:
        _write(p(b"foreign-owner"), b"owned by 12345:23456\n", 0o640)
        os.chown(p(b"foreign-owner"), 12345, 23456)
        os.mkdir(p(b"foreign-dir"))
        _write(p(b"foreign-dir/inner"), b"owned by 23456:12345\n")
        os.chown(p(b"foreign-dir/inner"), 23456, 12345)
        os.symlink(b"inner", p(b"foreign-dir/foreign-link"))
        os.lchown(p(b"foreign-dir/foreign-link"), 12345, 23456)
        os.chown(p(b"foreign-dir"), 12345, 23456)
        _write(p(b"setuid-file"), b"setuid root\n")
        os.chown(p(b"setuid-file"), 12345, 23456)
        os.chmod(p(b"setuid-file"), 0o6755)  # after chown, which clears setuid/setgid
        _write(p(b"no-permissions"), b"mode 000, readable only thanks to root\n", 0o000)
        os.mknod(p(b"char-device"), 0o640 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(p(b"block-device"), 0o600 | stat.S_IFBLK, os.makedev(7, 200))

    _set_times_and_dir_modes(r)


def _set_times_and_dir_modes(root: bytes) -> None:
    """Give everything a distinct ns-precision mtime; directories last and deepest first,
    because creating children changes a directory's mtime."""
    entries = list(_walk(root))
    for index, (_rel, path) in enumerate(entries):
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            continue
        ns = _BASE_NS + index * 1_000_000_007
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    dirs = [
        (rel, path) for rel, path in entries if os.path.isdir(path) and not os.path.islink(path)
    ]
    dirs.sort(key=lambda item: item[0].count(b"/") + (item[0] != b"."), reverse=True)
    special_modes = {b"readonly-dir": 0o555, b"sticky-dir": 0o1777, b"empty-dir": 0o700}
    for index, (rel, path) in enumerate(dirs):
        if rel in special_modes:
            os.chmod(path, special_modes[rel])
        ns = _BASE_NS - (index + 1) * 999_999_937
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


def make_writable(root: str | os.PathLike[str] | bytes) -> None:
    """Allow deleting a tree that contains read-only directories (for non-root cleanup)."""
    for _rel, path in _walk(os.fsencode(root)):
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o755)


def rmtree(root: str | os.PathLike[str] | bytes) -> None:
    if os.path.lexists(root):
        make_writable(root)
        shutil.rmtree(root)


def restored_path(target: Path, source: Path) -> Path:
    """Where ``restore --target target`` puts a file backed up from absolute path ``source``."""
    return target / Path(os.path.abspath(source)).relative_to("/")
