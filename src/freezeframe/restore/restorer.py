"""Restoring a snapshot (or parts of it) into a target directory.

Snapshots record absolute paths, so ``/srv/data/x`` comes back as ``TARGET/srv/data/x`` (as with
restic). One thread walks the snapshot's trees depth-first and creates every directory, file,
link and special file through directory descriptors (see ``safepath``); the content of regular
files is written by worker threads (see ``content``), and each file gets its metadata once its
last byte is written. A directory's metadata is applied after all its entries exist (post-order),
so creating them does not disturb its mtime and a read-only directory still receives them;
writing content into open files never touches a directory again. Over a storage with latency
the trees of the directories ahead are loaded on a few threads meanwhile (see ``trees``).

One entry that cannot be restored (a bad name in the tree, a missing or damaged blob, a full
disk) becomes an error in the result and the restore goes on; only Ctrl-C and bugs stop it.
What the repository could not deliver intact is also listed as damage, with the byte ranges
lost, and a file with damaged content is removed once the restore ends: a file of the right
size with zeros where the data should be would look restored.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from freezeframe.errors import (
    FreezeframeError,
    IntegrityError,
    MissingContent,
    TransientStorageError,
    UnsafeName,
)
from freezeframe.restore.content import ContentWriter
from freezeframe.restore.filejob import (
    FileJob,
    file_ranges,
    plan_file,
    sparse_extents,
)
from freezeframe.restore.links import HardLinks, is_linked
from freezeframe.restore.metadata import (
    Fresh,
    apply_at,
    apply_to_fd,
    clear_default_acl,
    creation_mode,
    read_umask,
)
from freezeframe.restore.progress import RestoreProgress, count_totals
from freezeframe.restore.reader import Node, Snapshot, SnapshotReader
from freezeframe.restore.safepath import (
    check_name,
    create_entry,
    create_file,
    make_dir,
    open_dir_path,
    open_target,
)
from freezeframe.restore.selection import Selection, narrow, select
from freezeframe.restore.trees import THREADS, TreeLoader

__all__ = ["Damage", "RestoreProgress", "RestoreResult", "restore_snapshot"]

_DEVICE_KINDS = {"chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


@dataclass(frozen=True)
class Damage:
    """A path the repository could not restore intact: a file (not left in the target) with
    the byte ranges whose data is missing or damaged, or a directory whose listing is lost."""

    path: str
    message: str
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass
class RestoreResult:
    """What was restored: regular files (every name, hard links included), directories,
    bytes of file content (each inode once, holes included), and what could not be."""

    files: int
    dirs: int
    bytes: int
    errors: list[tuple[str, str]]  # (path as recorded in the snapshot, message), sorted
    damaged: list[Damage] = field(default_factory=list)  # also in errors; sorted by path


def restore_snapshot(
    reader: SnapshotReader,
    snapshot: Snapshot,
    target: Path,
    *,
    includes: Sequence[str] = (),
    progress: RestoreProgress | None = None,
    workers: int = 4,
) -> RestoreResult:
    """Restore ``snapshot`` under ``target``, or only the ``includes`` (absolute paths as
    recorded) and the directories above them. NotFound before anything is written if an
    include is not in the snapshot.

    Trees and content come from ``reader`` (see ``restore.reader``; a repository's is
    ``repository.reader.RepositoryReader``), so a mount or a VM-disk reader restores the same way.

    ``workers`` threads open and write large blobs; small files are written by the calling
    thread, where threads would only contend for the GIL (see ``content``)."""
    selection = select(reader, snapshot, includes)
    progress = progress or RestoreProgress()
    stop = count_totals(reader, snapshot, selection, progress)
    try:
        return _Restorer(reader, progress, workers).run(snapshot.tree, Path(target), selection)
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
    wanted: Selection  # None: everything below
    setgid: bool  # new entries take the directory's group, not ours
    seen: set[bytes] = field(default_factory=set)


class _Restorer:
    def __init__(self, reader: SnapshotReader, progress: RestoreProgress, workers: int) -> None:
        self.reader = reader
        self.progress = progress
        self.owner = os.geteuid() == 0
        self.errors: list[tuple[str, str]] = []
        self.damaged: list[Damage] = []
        self._remove: list[tuple[FileJob, os.stat_result]] = []
        # Names linked to a first name restored earlier, by recorded inode: a damaged file's
        # other names go with it.
        self._linked: dict[tuple[int, int], list[_Name]] = {}
        self.files = 0
        self.dirs = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._writer = ContentWriter(reader, workers, self._file_done, self._bytes_written)
        # Where each request pays a round trip, subdirectories' trees are loaded ahead.
        self._trees = TreeLoader(reader.load_tree, THREADS if reader.fetch_threads > 1 else 0)
        self._root_fd = -1  # both set once the target is open
        self._links = HardLinks(-1)
        umask = read_umask()
        self._umask = umask if umask is not None else -1
        self._fresh: dict[int, Fresh] = {}  # by creation mode

    def run(self, tree: bytes, target: Path, selection: Selection) -> RestoreResult:
        try:
            return self._run(tree, target, selection)
        finally:
            self._trees.close()

    def _run(self, tree: bytes, target: Path, selection: Selection) -> RestoreResult:
        root_nodes = self._trees.load(tree, ahead=selection is None)
        self._root_fd = open_target(target)
        self._links = HardLinks(self._root_fd)
        setgid = bool(os.fstat(self._root_fd).st_mode & stat.S_ISGID)
        stack = [_Dir(self._root_fd, None, b"", (), iter(root_nodes), selection, setgid)]
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
            self._remove_damaged_files()
        except BaseException:
            # Stopped (Ctrl-C, a storage that stopped answering): no file cut short is left
            # looking restored, under any of its names.
            self._remove += self._writer.abort()
            for left in stack[1:]:
                os.close(left.fd)
            self._remove_damaged_files()
            raise
        finally:
            os.close(self._root_fd)
        # Workers finish files in any order; sorted, the report reads like the tree.
        damaged = sorted(self.damaged, key=lambda d: d.path)
        return RestoreResult(self.files, self.dirs, self.bytes, sorted(self.errors), damaged)

    def _visit(self, parent: _Dir, node: Node) -> _Dir | None:
        path = parent.path + b"/" + node.name
        try:
            check_name(node.name)
            if node.name in parent.seen:
                raise UnsafeName("refused a second entry with the same name in one directory")
        except FreezeframeError as exc:
            self._damage(path, str(exc))
            return None
        parent.seen.add(node.name)
        selected, wanted = narrow(parent.wanted, node.name)
        if not selected:
            return None
        if node.type == "dir":
            return self._enter_dir(parent, node, path, wanted)
        if wanted is None:
            self._restore_leaf(parent, node, path)
        return None

    # -- directories ------------------------------------------------------------------------

    def _enter_dir(self, parent: _Dir, node: Node, path: bytes, wanted: Selection) -> _Dir | None:
        try:
            fd, created = make_dir(parent.fd, node.name)
        except OSError as exc:
            self._error(path, f"cannot create the directory: {exc.strerror or exc}")
            return None
        nodes: list[Node] = []
        setgid = parent.setgid  # mkdir in a setgid directory makes a setgid directory
        try:
            if not created:
                setgid = _reuse(fd, self.owner)
            clear_default_acl(fd)
            if node.subtree is None:
                raise IntegrityError("the directory has no recorded contents")
            nodes = self._trees.load(node.subtree, ahead=wanted is None)
        except TransientStorageError:
            raise  # the storage stopped answering (retries spent): stop, not damage
        except FreezeframeError as exc:
            self._damage(path, f"contents not restored: {exc}")
        except OSError as exc:
            self._error(path, f"contents not restored: {exc.strerror or exc}")
        with self._lock:
            self.dirs += 1
        return _Dir(fd, node, path, (*parent.rel, node.name), iter(nodes), wanted, setgid)

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
            if is_linked(node) and self._link(parent, node, path):
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
        except MissingContent as exc:
            self._damage(path, str(exc), file_ranges(exc.ranges, _extents_or_none(node)))
        except TransientStorageError:
            raise
        except FreezeframeError as exc:
            self._damage(path, str(exc))
        except OSError as exc:
            self._error(path, f"cannot restore: {exc.strerror or exc}")
        except (ValueError, OverflowError) as exc:  # impossible values in a damaged tree
            self._error(path, f"cannot restore: {exc}")

    def _restore_file(self, parent: _Dir, node: Node, path: bytes) -> None:
        writes, data_bytes = plan_file(self.reader, node)
        extents = sparse_extents(node) if node.sparse_map is not None else None
        mode = creation_mode(node)
        fd = create_file(parent.fd, node.name, mode)
        job = FileJob(fd, node, path, writes, extents, data_bytes, rel=parent.rel)
        if parent.node is not None:
            job.parent_times = (parent.node.atime_ns, parent.node.mtime_ns)
        if parent.node is not None and not parent.setgid:
            # Created by us in a directory without a default ACL (cleared on entry) or setgid
            # bit: its owner, mode and (absent) xattrs are known without asking.
            job.fresh = self._fresh.get(mode) or self._fresh.setdefault(mode, self._known(mode))
        try:
            if extents is not None or len(writes) > 1:
                os.ftruncate(fd, node.size)  # the final size up front; holes stay holes
            if is_linked(node):
                self._links.remember(node, parent.rel, path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        self._writer.add(job)

    def _known(self, mode: int) -> Fresh:
        known_mode = mode & ~self._umask if self._umask >= 0 else None
        return Fresh(os.geteuid(), os.getegid(), known_mode)

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
        if is_linked(node):
            st = os.stat(node.name, dir_fd=parent.fd, follow_symlinks=False)
            self._links.remember(node, parent.rel, path, st)
        for problem in apply_at(parent.fd, node.name, node, owner=self.owner):
            self._error(path, problem)

    # -- hard links -------------------------------------------------------------------------

    def _link(self, parent: _Dir, node: Node, path: bytes) -> bool:
        """Restore ``node`` as another name of an inode restored earlier in this run; False
        when it is the first name (or linking failed: then it is restored as a copy)."""
        first = self._links.first(node)
        if first is None:
            return False
        try:
            self._links.link(first, parent.fd, node.name)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._error(
                path,
                f"restored as a copy, not as a hard link to {os.fsdecode(first.path)}: {reason}",
            )
            return False
        if node.type == "file":
            times = (parent.node.atime_ns, parent.node.mtime_ns) if parent.node else None
            with self._lock:
                self._linked.setdefault((node.device, node.inode), []).append(
                    _Name(parent.rel, node.name, path, times)
                )
                self.files += 1
                self.progress.files_done += 1
                self.progress.bytes_done += node.size
        return True

    # -- results, from any thread -----------------------------------------------------------

    def _file_done(self, job: FileJob) -> None:
        problems = [job.error] if job.error is not None else []
        if job.error is None:
            problems += apply_to_fd(job.fd, job.node, owner=self.owner, fresh=job.fresh)
        if job.damaged:
            self._damage(job.path, f"{job.error}; removed", job.damaged_file_ranges(), quiet=True)
            with self._lock:
                self._remove.append((job, os.fstat(job.fd)))
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
                self.errors.append((os.fsdecode(job.path), problem))
                self.progress.errors += 1

    def _bytes_written(self, count: int) -> None:
        with self._lock:
            self.progress.bytes_done += count

    def _error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.errors.append((os.fsdecode(path), message))
            self.progress.errors += 1

    def _damage(
        self,
        path: bytes,
        message: str,
        ranges: Sequence[tuple[int, int]] = (),
        *,
        quiet: bool = False,
    ) -> None:
        """Something the repository could not deliver intact (also an error, unless
        ``quiet``: the caller reports the error itself)."""
        with self._lock:
            self.damaged.append(Damage(os.fsdecode(path), message, tuple(ranges)))
        if not quiet:
            self._error(path, message)

    def _remove_damaged_files(self) -> None:
        """Unlink the files whose content is damaged (every name of each), once every write is
        done. Each name is found again from the target's descriptor without following symlinks,
        and removed only if it is still the file this restore wrote; its directory gets its
        recorded times back."""
        for job, written in self._remove:
            names = [_Name(job.rel, job.node.name, job.path, job.parent_times)]
            if is_linked(job.node):
                others = self._linked.get((job.node.device, job.node.inode), [])
                names += others
                self.files -= len(others)
                for other in others:
                    self._damage(
                        other.path, f"a hard link to the damaged {os.fsdecode(job.path)}; removed"
                    )
            for name in names:
                self._unlink_written(name, (written.st_dev, written.st_ino))

    def _unlink_written(self, name: _Name, identity: tuple[int, int]) -> None:
        try:
            dir_fd = open_dir_path(self._root_fd, name.rel)
        except (OSError, FreezeframeError) as exc:
            self._error(name.path, f"the damaged file could not be removed: {exc}")
            return
        try:
            st = os.stat(name.name, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(name.name, dir_fd=dir_fd)
                if name.parent_times is not None:
                    os.utime(dir_fd, ns=name.parent_times)
        except OSError as exc:
            self._error(name.path, f"the damaged file could not be removed: {exc.strerror or exc}")
        finally:
            os.close(dir_fd)


@dataclass(frozen=True)
class _Name:
    """One name of a restored file: its directory (names from the target down), its name, its
    path as recorded, and the directory's recorded (atime, mtime)."""

    rel: tuple[bytes, ...]
    name: bytes
    path: bytes
    parent_times: tuple[int, int] | None


def _extents_or_none(node: Node) -> list[tuple[int, int, int]] | None:
    if node.sparse_map is None:
        return None
    try:
        return sparse_extents(node)
    except IntegrityError:
        return None


def _reuse(fd: int, root: bool) -> bool:
    """Prepare a directory kept from an earlier restore; returns whether it is setgid.

    A non-root user may need to add entries to it although it carries a read-only recorded
    mode: it gets u+rwx until its recorded mode is applied again, after its contents."""
    st = os.fstat(fd)
    if not root and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        os.chmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
    return bool(st.st_mode & stat.S_ISGID)
