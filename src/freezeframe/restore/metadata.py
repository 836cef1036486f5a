"""Applying a node's recorded metadata to a restored entry: owner, xattrs, mode, then times.

The order matters: ``chown`` clears setuid/setgid bits and file capabilities, so ownership comes
first, extended attributes (POSIX ACLs and ``security.capability`` among them) next, the mode
after both, and the times last because every other change touches the inode.

Owners are restored by numeric uid/gid, as restic does (and ``tar --numeric-owner``): the user
and group names in a snapshot are for display, since the same name can have another id on the
machine that restores. Only root changes owners; other users get their own files, as with any
copy. Each function returns the problems it met as messages and does not stop at the first, so
a file system without xattr support still gets modes and times.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from freezeframe.restore.reader import Node
from freezeframe.restore.safepath import proc_path

# Labels such as security.selinux belong to the host that restores; they are set when the
# snapshot has them, but never removed.
_HOST_PREFIXES = ("security.",)
DEFAULT_ACL = "system.posix_acl_default"


# A hostile or damaged tree can record values no system call accepts (a negative uid, a huge
# time); those fail the one step, like an OSError, instead of the whole restore.
_FAILURES = (OSError, ValueError, OverflowError)


def _problem(what: str, exc: Exception) -> str:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot {what}: {reason}"


def _times(node: Node) -> tuple[int, int]:
    return (node.atime_ns or node.mtime_ns, node.mtime_ns)


@dataclass(frozen=True)
class Fresh:
    """What a file this restore just created is known to have (no xattrs, these ids, this
    mode), so metadata calls that would change nothing are skipped: with 200,000 small files,
    each saved system call counts."""

    uid: int
    gid: int
    mode: int | None  # None when the umask is unknown


def apply_to_fd(fd: int, node: Node, *, owner: bool, fresh: Fresh | None = None) -> list[str]:
    """Metadata for an open file or directory, through its descriptor."""
    problems: list[str] = []
    changed = False  # since creation: then the recorded mode must be set again
    if owner and (fresh is None or (fresh.uid, fresh.gid) != (node.uid, node.gid)):
        changed = True
        try:
            os.chown(fd, node.uid, node.gid)
        except _FAILURES as exc:
            problems.append(_problem(f"set owner {node.uid}:{node.gid}", exc))
    if fresh is None:
        problems += _sync_xattrs(fd, node.xattrs, follow=True)
    elif node.xattrs:
        changed = True
        problems += _set_xattrs(fd, node.xattrs, follow=True)
    if fresh is None or changed or fresh.mode != node.mode:
        try:
            os.chmod(fd, node.mode)
        except _FAILURES as exc:
            problems.append(_problem(f"set mode {node.mode:o}", exc))
    try:
        os.utime(fd, ns=_times(node))
    except _FAILURES as exc:
        problems.append(_problem("set times", exc))
    return problems


def apply_at(dir_fd: int, name: bytes, node: Node, *, owner: bool) -> list[str]:
    """Metadata for a symlink, fifo or device node, by name in its directory, never following
    a symlink (opening a fifo or device to use its descriptor could block or have effects)."""
    problems: list[str] = []
    if owner:
        try:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        except _FAILURES as exc:
            problems.append(_problem(f"set owner {node.uid}:{node.gid}", exc))
    if node.xattrs:
        problems += _sync_xattrs(proc_path(dir_fd, name), node.xattrs, follow=False)
    if node.type != "symlink":  # Linux has no mode for symlinks
        try:
            _chmod_no_follow(dir_fd, name, node.mode)
        except _FAILURES as exc:
            problems.append(_problem(f"set mode {node.mode:o}", exc))
    try:
        os.utime(name, ns=_times(node), dir_fd=dir_fd, follow_symlinks=False)
    except _FAILURES as exc:
        problems.append(_problem("set times", exc))
    return problems


def creation_mode(node: Node) -> int:
    """The mode a regular file is created with: its own permission bits where they are safe
    while it is being written (never group/other write, never setuid), so that for most files
    the final ``chmod`` changes nothing and can be skipped."""
    return (node.mode & 0o755) | 0o600


def read_umask() -> int | None:
    """The process umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def clear_default_acl(fd: int) -> None:
    """Drop a directory's default ACL (inherited or from an earlier restore) before restoring
    into it, so new entries do not inherit ACLs they never had; the recorded one comes back
    with the directory's metadata, after its contents."""
    try:
        os.removexattr(fd, DEFAULT_ACL)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            raise


def _chmod_no_follow(dir_fd: int, name: bytes, mode: int) -> None:
    """chmod without following a symlink (Python 3.11 has no ``lchmod`` on Linux): pin the
    entry with an O_PATH descriptor, check it is no symlink, chmod through its magic link."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        os.chmod(b"/proc/self/fd/%d" % fd, mode)
    finally:
        os.close(fd)


def _sync_xattrs(target: int | bytes, wanted: dict[bytes, bytes], *, follow: bool) -> list[str]:
    """Make the entry's extended attributes exactly the recorded ones (host labels aside)."""
    problems: list[str] = []
    try:
        present = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno != errno.ENOTSUP or wanted:
            problems.append(_problem("list extended attributes", exc))
        present = []
    wanted_names = {os.fsdecode(key) for key in wanted}
    for name in present:
        if name not in wanted_names and not name.startswith(_HOST_PREFIXES):
            try:
                os.removexattr(target, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    problems.append(_problem(f"remove extended attribute {name}", exc))
    return problems + _set_xattrs(target, wanted, follow=follow)


def _set_xattrs(target: int | bytes, wanted: dict[bytes, bytes], *, follow: bool) -> list[str]:
    problems: list[str] = []
    for key, value in wanted.items():
        name = os.fsdecode(key)
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except _FAILURES as exc:
            problems.append(_problem(f"set extended attribute {name}", exc))
    return problems
