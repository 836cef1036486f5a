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

from freezeframe.repository.tree import Node
from freezeframe.restore.safepath import proc_path

# Labels such as security.selinux belong to the host that restores; they are set when the
# snapshot has them, but never removed.
_HOST_PREFIXES = ("security.",)
DEFAULT_ACL = "system.posix_acl_default"


def _problem(what: str, exc: OSError) -> str:
    return f"cannot {what}: {exc.strerror or exc}"


def _times(node: Node) -> tuple[int, int]:
    return (node.atime_ns or node.mtime_ns, node.mtime_ns)


def apply_to_fd(fd: int, node: Node, *, owner: bool) -> list[str]:
    """Metadata for an open file or directory, through its descriptor."""
    problems: list[str] = []
    if owner:
        try:
            os.chown(fd, node.uid, node.gid)
        except OSError as exc:
            problems.append(_problem(f"set owner {node.uid}:{node.gid}", exc))
    problems += _sync_xattrs(fd, node.xattrs, follow=True)
    try:
        os.chmod(fd, node.mode)
    except OSError as exc:
        problems.append(_problem(f"set mode {node.mode:o}", exc))
    try:
        os.utime(fd, ns=_times(node))
    except OSError as exc:
        problems.append(_problem("set times", exc))
    return problems


def apply_at(dir_fd: int, name: bytes, node: Node, *, owner: bool) -> list[str]:
    """Metadata for a symlink, fifo or device node, by name in its directory, never following
    a symlink (opening a fifo or device to use its descriptor could block or have effects)."""
    problems: list[str] = []
    if owner:
        try:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            problems.append(_problem(f"set owner {node.uid}:{node.gid}", exc))
    if node.xattrs:
        problems += _sync_xattrs(proc_path(dir_fd, name), node.xattrs, follow=False)
    if node.type != "symlink":  # Linux has no mode for symlinks
        try:
            _chmod_no_follow(dir_fd, name, node.mode)
        except OSError as exc:
            problems.append(_problem(f"set mode {node.mode:o}", exc))
    try:
        os.utime(name, ns=_times(node), dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        problems.append(_problem("set times", exc))
    return problems


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
    wanted_names = {os.fsdecode(key): value for key, value in wanted.items()}
    for name in present:
        if name not in wanted_names and not name.startswith(_HOST_PREFIXES):
            try:
                os.removexattr(target, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    problems.append(_problem(f"remove extended attribute {name}", exc))
    for name, value in wanted_names.items():
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as exc:
            problems.append(_problem(f"set extended attribute {name}", exc))
    return problems
