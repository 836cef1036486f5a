"""Restoring a snapshot (or parts of it) into a target directory.

Snapshots record absolute paths, so ``/srv/data/x`` comes back as ``TARGET/srv/data/x`` (as with
restic). One thread walks the snapshot's trees depth-first and creates every directory, file,
link and special file through directory descriptors (see ``safepath``); the content of regular
files is written by worker threads (see ``content``), and each file gets its metadata once its
last byte is written. A directory's metadata is applied after all its entries exist (post-order),
so creating them does not disturb its mtime and a read-only directory still receives them;
writing content into open files never touches a directory again.

One entry that cannot be restored (a bad name in the tree, a missing or damaged blob, a full
disk) becomes an error in the result and the restore goes on; only Ctrl-C and bugs stop it.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound
from freezeframe.repository.repository import Repository
from freezeframe.repository.snapshot import Snapshot
from freezeframe.repository.tree import Node
from freezeframe.repository.walk import find_node, load_tree, walk_tree
from freezeframe.restore.content import ContentWriter, FileJob, plan_file, sparse_extents
from freezeframe.restore.metadata import apply_at, apply_to_fd, clear_default_acl
from freezeframe.restore.safepath import (
    UnsafeName,
    check_name,
    create_entry,
    create_file,
    make_dir,
    open_dir_path,
    open_target,
    parse_include,
)

_DEVICE_KINDS = {"chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


@dataclass
class RestoreProgress:
    """Counters a progress display reads while the restore runs (totals may arrive late)."""

    files_done: int = 0
    bytes_done: int = 0
    total_files: int = 0
    total_bytes: int = 0
    errors: int = 0


@dataclass
class RestoreResult:
    files: int
    dirs: int
    bytes: int
    errors: list[tuple[str, str]]  # (path as recorded in the snapshot, message)


def restore_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    target: Path,
    *,
    includes: Sequence[str] = (),
    progress: RestoreProgress | None = None,
    workers: int = 4,
) -> RestoreResult:
    """Restore ``snapshot`` under ``target``, or only the ``includes`` (absolute paths as
    recorded) and the directories above them. NotFound before anything is written if an
    include is not in the snapshot."""
    wanted = [parse_include(path) for path in includes]
    for path, components in zip(includes, wanted, strict=True):
        if components and find_node(repo, snapshot.tree, components) is None:
            raise NotFound(
                f"{path} is not in snapshot {snapshot.short_id}; "
                f"`freezeframe ls {snapshot.short_id}` shows what it holds"
            )
    selection = None if not wanted or any(not c for c in wanted) else wanted
    progress = progress or RestoreProgress()
    stop = threading.Event()
    if not _totals_from_summary(snapshot, selection, progress):
        threading.Thread(
            target=_count_totals,
            args=(repo, snapshot.tree, selection, progress, stop),
            daemon=True,
        ).start()
    try:
        return _Restorer(repo, progress, workers).run(snapshot.tree, Path(target), selection)
    finally:
        stop.set()


# -- the walk -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Dir:
    """A directory being restored: its descriptor stays open until its metadata is applied."""

    fd: int
    node: Node | None  # None for the snapshot's root (the target itself: left untouched)
    path: bytes  # as recorded, b"" for the root
    rel: tuple[bytes, ...]  # names from the target down
    nodes: Iterator[Node]
    wanted: list[tuple[bytes, ...]] | None  # None: everything below
    seen: set[bytes] = field(default_factory=set)


@dataclass(frozen=True)
class _FirstLink:
    """Where the first name of a hard-linked inode was restored."""

    rel: tuple[bytes, ...]
    name: bytes
    path: bytes
    identity: tuple[int, int]  # (st_dev, st_ino) of what we created


class _Restorer:
    def __init__(self, repo: Repository, progress: RestoreProgress, workers: int) -> None:
        self.repo = repo
        self.progress = progress
        self.owner = os.geteuid() == 0
        self.errors: list[tuple[str, str]] = []
        self.files = 0
        self.dirs = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._links: dict[tuple[int, int], _FirstLink] = {}
        self._writer = ContentWriter(repo, workers, self._file_done, self._bytes_written)
        self._root_fd = -1

    def run(
        self, tree: bytes, target: Path, selection: list[tuple[bytes, ...]] | None
    ) -> RestoreResult:
        root_nodes = load_tree(self.repo, tree)
        self._root_fd = open_target(target)
        stack = [_Dir(self._root_fd, None, b"", (), iter(root_nodes), selection)]
        try:
            while stack:
                current = stack[-1]
                node = next(current.nodes, None)
                if node is None:
                    stack.pop()
                    self._leave_dir(current)
                    continue
                child = self._visit(current, node)
                if child is not None:
                    stack.append(child)
            self._writer.finish()
        except BaseException:
            self._writer.abort()
            for left in stack[1:]:
                os.close(left.fd)
            raise
        finally:
            os.close(self._root_fd)
        return RestoreResult(self.files, self.dirs, self.bytes, self.errors)

    def _visit(self, parent: _Dir, node: Node) -> _Dir | None:
        path = parent.path + b"/" + node.name
        try:
            check_name(node.name)
            if node.name in parent.seen:
                raise UnsafeName("refused a second entry with the same name in one directory")
        except FreezeframeError as exc:
            self._error(path, str(exc))
            return None
        parent.seen.add(node.name)
        selected, wanted = _narrow(parent.wanted, node.name)
        if not selected:
            return None
        if node.type == "dir":
            return self._enter_dir(parent, node, path, wanted)
        if wanted is None:
            self._restore_leaf(parent, node, path)
        return None

    # -- directories ------------------------------------------------------------------------

    def _enter_dir(
        self, parent: _Dir, node: Node, path: bytes, wanted: list[tuple[bytes, ...]] | None
    ) -> _Dir | None:
        try:
            fd, created = make_dir(parent.fd, node.name)
        except OSError as exc:
            self._error(path, f"cannot create the directory: {exc.strerror or exc}")
            return None
        nodes: list[Node] = []
        try:
            if not created and not self.owner:
                _make_writable(fd)
            clear_default_acl(fd)
            if node.subtree is None:
                raise IntegrityError("the directory has no recorded contents")
            nodes = load_tree(self.repo, node.subtree)
        except FreezeframeError as exc:
            self._error(path, f"contents not restored: {exc}")
        except OSError as exc:
            self._error(path, f"contents not restored: {exc.strerror or exc}")
        with self._lock:
            self.dirs += 1
        return _Dir(fd, node, path, (*parent.rel, node.name), iter(nodes), wanted)

    def _leave_dir(self, done: _Dir) -> None:
        if done.node is None:
            return
        try:
            for problem in apply_to_fd(done.fd, done.node, owner=self.owner):
                self._error(done.path, problem)
        finally:
            os.close(done.fd)

    # -- everything else --------------------------------------------------------------------

    def _restore_leaf(self, parent: _Dir, node: Node, path: bytes) -> None:
        try:
            if node.links > 1 and node.inode and self._link(parent, node, path):
                return
            if node.type == "file":
                self._restore_file(parent, node, path)
            elif node.type == "symlink":
                self._restore_symlink(parent, node, path)
            elif node.type == "fifo":
                self._restore_special(parent, node, path, stat.S_IFIFO)
            elif node.type in _DEVICE_KINDS:
                if not self.owner:
                    raise OSError(errno.EPERM, "device nodes can only be restored by root")
                self._restore_special(parent, node, path, _DEVICE_KINDS[node.type])
            else:
                raise IntegrityError(f"cannot restore a node of type {node.type!r}")
        except FreezeframeError as exc:
            self._error(path, str(exc))
        except OSError as exc:
            self._error(path, f"cannot restore: {exc.strerror or exc}")

    def _restore_file(self, parent: _Dir, node: Node, path: bytes) -> None:
        writes, data_bytes = plan_file(self.repo, node)
        extents = sparse_extents(node) if node.sparse_map is not None else None
        fd = create_file(parent.fd, node.name)
        job = FileJob(fd, node, os.fsdecode(path), writes, extents, data_bytes)
        try:
            if extents is not None or len(writes) > 1:
                os.ftruncate(fd, node.size)  # the final size up front; holes stay holes
            if node.links > 1 and node.inode:
                self._remember_link(parent, node, path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        self._writer.add(job)

    def _restore_symlink(self, parent: _Dir, node: Node, path: bytes) -> None:
        link_target = node.linktarget
        if not link_target or b"\0" in link_target:
            raise IntegrityError("the symlink has no usable target")
        create_entry(
            parent.fd, node.name, lambda: os.symlink(link_target, node.name, dir_fd=parent.fd)
        )
        self._created_at(parent, node, path)

    def _restore_special(self, parent: _Dir, node: Node, path: bytes, kind: int) -> None:
        if kind == stat.S_IFIFO:
            create_entry(
                parent.fd, node.name, lambda: os.mkfifo(node.name, 0o600, dir_fd=parent.fd)
            )
        else:
            create_entry(
                parent.fd,
                node.name,
                lambda: os.mknod(node.name, 0o600 | kind, node.rdev, dir_fd=parent.fd),
            )
        self._created_at(parent, node, path)

    def _created_at(self, parent: _Dir, node: Node, path: bytes) -> None:
        if node.links > 1 and node.inode:
            st = os.stat(node.name, dir_fd=parent.fd, follow_symlinks=False)
            self._remember_link(parent, node, path, st)
        for problem in apply_at(parent.fd, node.name, node, owner=self.owner):
            self._error(path, problem)

    # -- hard links -------------------------------------------------------------------------

    def _remember_link(self, parent: _Dir, node: Node, path: bytes, st: os.stat_result) -> None:
        first = _FirstLink(parent.rel, node.name, path, (st.st_dev, st.st_ino))
        self._links.setdefault((node.device, node.inode), first)

    def _link(self, parent: _Dir, node: Node, path: bytes) -> bool:
        """Restore ``node`` as another name of an inode restored earlier in this run; False
        when it is the first name (or linking failed: then it is restored as a copy)."""
        first = self._links.get((node.device, node.inode))
        if first is None:
            return False
        try:
            source_fd = open_dir_path(self._root_fd, first.rel)
            try:
                st = os.stat(first.name, dir_fd=source_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != first.identity:
                    raise OSError(errno.ESTALE, "its first name was replaced during the restore")
                create_entry(
                    parent.fd,
                    node.name,
                    lambda: os.link(
                        first.name,
                        node.name,
                        src_dir_fd=source_fd,
                        dst_dir_fd=parent.fd,
                        follow_symlinks=False,
                    ),
                )
            finally:
                os.close(source_fd)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._error(
                path,
                f"restored as a copy, not as a hard link to {os.fsdecode(first.path)}: {reason}",
            )
            return False
        if node.type == "file":
            with self._lock:
                self.files += 1
                self.progress.files_done += 1
                self.progress.bytes_done += node.size
        return True

    # -- results, from any thread -----------------------------------------------------------

    def _file_done(self, job: FileJob) -> None:
        problems = [job.error] if job.error is not None else []
        if job.error is None:
            problems += apply_to_fd(job.fd, job.node, owner=self.owner)
        try:
            os.close(job.fd)
        except OSError as exc:
            problems.append(f"cannot close after writing: {exc.strerror or exc}")
        with self._lock:
            if job.error is None:
                self.files += 1
                self.bytes += job.node.size
            self.progress.files_done += 1
            self.progress.bytes_done += max(0, job.node.size - job.data_bytes)
            for problem in problems:
                self.errors.append((job.path, problem))
                self.progress.errors += 1

    def _bytes_written(self, count: int) -> None:
        with self._lock:
            self.progress.bytes_done += count

    def _error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.errors.append((os.fsdecode(path), message))
            self.progress.errors += 1


def _narrow(
    wanted: list[tuple[bytes, ...]] | None, name: bytes
) -> tuple[bool, list[tuple[bytes, ...]] | None]:
    """Whether ``name`` is selected, and the selection below it (None: all of it)."""
    if wanted is None:
        return True, None
    below = [path[1:] for path in wanted if path[0] == name]
    if not below:
        return False, None
    if any(not path for path in below):
        return True, None
    return True, below


def _make_writable(fd: int) -> None:
    """Let a non-root user add entries to a directory kept from an earlier restore (it may
    carry a read-only recorded mode); the recorded mode is applied again afterwards."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        os.chmod(fd, stat.S_IMODE(st.st_mode) | 0o700)


# -- totals for the progress display ---------------------------------------------------------


def _totals_from_summary(
    snapshot: Snapshot, selection: list[tuple[bytes, ...]] | None, progress: RestoreProgress
) -> bool:
    summary = snapshot.summary
    if selection is not None or "bytes_total" not in summary:
        return False
    counts = ("files_new", "files_changed", "files_unmodified")
    progress.total_files = sum(int(summary.get(key, 0)) for key in counts)
    progress.total_bytes = int(summary["bytes_total"])
    return True


def _count_totals(
    repo: Repository,
    tree: bytes,
    selection: list[tuple[bytes, ...]] | None,
    progress: RestoreProgress,
    stop: threading.Event,
) -> None:
    """Walk the selected trees in the background and fill in the totals; only progress
    depends on it, so a damaged tree just leaves the totals short."""
    try:
        roots: list[tuple[Node | None, bytes | None]] = []
        if selection is None:
            roots.append((None, tree))
        for components in selection or ():
            found = find_node(repo, tree, components)
            roots.append((found, found.subtree if found and found.type == "dir" else None))
        for found, subtree in roots:
            if found is not None and found.type == "file":
                progress.total_files += 1
                progress.total_bytes += found.size
            if subtree is None:
                continue
            for _path, node in walk_tree(repo, subtree):
                if stop.is_set():
                    return
                if node.type == "file":
                    progress.total_files += 1
                    progress.total_bytes += node.size
    except FreezeframeError:
        return
