"""The local-directory backend: one file per object, written atomically and durably.

Data objects are spread over 256 subdirectories by the first two hex digits of their name so that
no directory grows to hundreds of thousands of entries.

Modes do not follow the umask: directories are 0700 and files 0600, so no other user can read
or delete a snapshot. A repository created group-readable (``init --group-readable``: 0750 and
0640) says so by its config file's mode, and every later writer follows it (as restic does).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from freezeframe.errors import NotFound, StorageError, TransientStorageError
from freezeframe.storage.base import Capabilities, Description, Kind, ObjectInfo

_OPEN_FILES_CACHED = 64
_AUDIT_SHOWN = 10
PRIVATE_MODES = (0o700, 0o600)
GROUP_READABLE_MODES = (0o750, 0o640)
# Errors that a second attempt can get past (on a network file system above all); a full
# disk or a denied permission cannot, and a retry would only delay the message.
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.EBUSY, errno.ETIMEDOUT})


class LocalStorage:
    """A repository in a directory of the local file system."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.capabilities = Capabilities(
            writable=True, local_modes=True, local_directory=os.path.abspath(self.root)
        )
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fds_lock = threading.Lock()
        self._dir_mode, self._file_mode = self._modes_in_use()

    def _modes_in_use(self) -> tuple[int, int]:
        try:
            config_mode = (self.root / "config").stat().st_mode
        except OSError:
            return PRIVATE_MODES
        return GROUP_READABLE_MODES if config_mode & stat.S_IRGRP else PRIVATE_MODES

    def create_layout(self, *, group_readable: bool = False) -> list[str]:
        """Create the directory tree of an empty repository; returns what it had to correct
        in a directory that existed already (its modes, looser than a repository's)."""
        self._dir_mode, self._file_mode = GROUP_READABLE_MODES if group_readable else PRIVATE_MODES
        notes = []
        try:
            existed = self.root.is_dir()
            if existed:
                mode = stat.S_IMODE(self.root.stat().st_mode)
                if mode & ~self._dir_mode:
                    notes.append(
                        f"{self.root} was mode {mode:04o}, which let other users read or delete "
                        f"what it holds; it is now {self._dir_mode:04o}"
                    )
            else:
                self.root.parent.mkdir(parents=True, exist_ok=True)
            self._make_dir(self.root)
            for kind in Kind:
                if kind is not Kind.CONFIG:
                    self._make_dir(self.root / kind.value)
            for prefix in range(256):
                self._make_dir(self.root / Kind.DATA.value / f"{prefix:02x}")
            _fsync_dir(self.root)
        except OSError as exc:
            raise _error(f"cannot create repository at {self.root}", exc) from exc
        return notes

    def _make_dir(self, path: Path) -> None:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=self._dir_mode)
        os.chmod(path, self._dir_mode)  # mkdir's mode is filtered by the umask

    def audit(self) -> list[str]:
        """Directories and files whose modes let more users in than the repository's own
        (0700/0600, or 0750/0640 when group-readable)."""
        problems = []
        for directory, dirs, files in os.walk(self.root):
            dirs.sort()
            for name, wanted in [(None, self._dir_mode)] + [(f, self._file_mode) for f in files]:
                path = Path(directory) / name if name else Path(directory)
                try:
                    mode = stat.S_IMODE(path.lstat().st_mode)
                except FileNotFoundError:
                    continue
                if mode & ~wanted:
                    problems.append(f"{path} is mode {mode:04o} (a repository's is {wanted:04o})")
        if len(problems) > _AUDIT_SHOWN:
            more = len(problems) - _AUDIT_SHOWN
            problems = [*problems[:_AUDIT_SHOWN], f"... and {more} more with loose modes"]
        return problems

    def path_of(self, kind: Kind, name: str) -> Path:
        """Where an object lives; names are checked so nothing escapes the repository."""
        if not name or "/" in name or name.startswith("."):
            raise StorageError(f"invalid object name {name!r}")
        if kind is Kind.CONFIG:
            return self.root / "config"
        if kind is Kind.DATA:
            return self.root / kind.value / name[:2] / name
        return self.root / kind.value / name

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        path = self.path_of(kind, name)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, self._file_mode)  # the umask filtered open's mode
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _error(f"cannot write {path}", exc) from exc

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self.path_of(kind, name)
        try:
            if kind is Kind.DATA and (offset or length is not None):
                fd = self._cached_fd(path)
                try:
                    size = length if length is not None else os.fstat(fd).st_size - offset
                    data = os.pread(fd, size, offset)
                finally:
                    os.close(fd)
            else:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read() if length is None else f.read(length)
        except FileNotFoundError as exc:
            raise NotFound(f"{kind.value}/{name} is missing from the repository") from exc
        except OSError as exc:
            raise _error(f"cannot read {path}", exc) from exc
        if length is not None and len(data) != length:
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        return data

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        try:
            yield from self._list(kind)
        except OSError as exc:
            raise _error(f"cannot list {self.root / kind.value}", exc) from exc

    def _list(self, kind: Kind) -> Iterator[ObjectInfo]:
        if kind is Kind.CONFIG:
            try:
                size = (self.root / "config").stat().st_size
            except FileNotFoundError:
                return
            yield ObjectInfo("config", size)
            return
        base = self.root / kind.value
        dirs = sorted(p for p in base.iterdir() if p.is_dir()) if kind is Kind.DATA else [base]
        for directory in dirs:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed since the directory was read (another process's lock)
                yield ObjectInfo(entry.name, size)

    def delete(self, kind: Kind, name: str) -> None:
        path = self.path_of(kind, name)
        self._forget_fd(str(path))
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _error(f"cannot delete {path}", exc) from exc

    def exists(self, kind: Kind, name: str) -> bool:
        path = self.path_of(kind, name)
        try:
            return path.exists()
        except OSError as exc:  # not ENOENT (that is False) but, say, EACCES or EIO
            raise _error(f"cannot look for {path}", exc) from exc

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a crashed writer; returns how many."""
        removed = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and ".tmp-" in name:
                    _unlink_quietly(Path(directory) / name)
                    removed += 1
        return removed

    def describe(self) -> Description:
        """The directory, and the file system and free space of the nearest directory that
        exists on the way to it (all of it, before ``init`` creates it)."""
        directory = os.path.abspath(self.root)
        existing = _nearest_existing(directory)
        details = {"directory": directory}
        if existing != directory:
            details["nearest_existing"] = existing
        try:
            space = os.statvfs(existing)
        except OSError:
            return Description("local", details, _filesystem_of(existing))
        return Description(
            "local",
            details,
            _filesystem_of(existing),
            free_bytes=space.f_bavail * space.f_frsize,
            total_bytes=space.f_blocks * space.f_frsize,
        )

    def close(self) -> None:
        with self._fds_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _cached_fd(self, path: Path) -> int:
        """A private duplicate of a cached descriptor; the caller closes it, so eviction by
        another thread can never close a descriptor in use."""
        key = str(path)
        with self._fds_lock:
            fd = self._fds.get(key)
            if fd is not None:
                self._fds.move_to_end(key)
                return os.dup(fd)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._fds[key] = fd
            if len(self._fds) > _OPEN_FILES_CACHED:
                _old, old_fd = self._fds.popitem(last=False)
                os.close(old_fd)
            return os.dup(fd)

    def _forget_fd(self, key: str) -> None:
        with self._fds_lock:
            fd = self._fds.pop(key, None)
            if fd is not None:
                os.close(fd)


def _error(what: str, exc: OSError) -> StorageError:
    """One line naming what failed and why, transient when a retry may succeed."""
    reason = exc.strerror or str(exc)
    cls = TransientStorageError if exc.errno in _TRANSIENT_ERRNOS else StorageError
    return cls(f"{what}: {reason}")


def _nearest_existing(directory: str) -> str:
    """``directory`` if it exists, else the closest of its parents that does."""
    path = directory
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _filesystem_of(path: str) -> str | None:
    """The type of the file system ``path`` is on: that of the longest mount point above its
    real path in /proc/self/mountinfo (None where there is none, off Linux)."""
    real = os.path.realpath(path)
    best, found = -1, None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in lines:
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest.split():
            continue
        mount = parts[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best:  # a later mount over the same point hides the earlier
            best, found = len(mount), rest.split()[0]
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
