"""A local on-disk copy of the repository's immutable small objects (index files and snapshots),
so that opening a repository on slow or metered storage does not download them every time.

Their names are content hashes (BLAKE3 of the stored bytes, as ``repository.crypto``'s
``content_name``), so a cached copy never goes stale; it only outlives its object, which is why
deletes evict, listings always come from the inner storage (and evict what they no longer name),
and ``exists`` asks the inner storage. Bytes are kept and served only when they hash to their
name: a short or damaged read is never kept, a damaged entry is dropped and fetched again, and
an object named otherwise is simply not cached. The directory is 0700 and entries 0600, as the
repository's own objects: the cache holds the same ciphertext.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import blake3

from freezeframe.errors import StorageError
from freezeframe.storage.base import Kind, ObjectInfo, Storage
from freezeframe.storage.wrapper import StorageWrapper

CACHED_KINDS = frozenset({Kind.INDEX, Kind.SNAPSHOTS})


class CachingStorage(StorageWrapper):
    """Whole-object gets of ``kinds`` are served from ``directory`` once fetched (or put)."""

    def __init__(
        self,
        inner: Storage,
        directory: str | os.PathLike[str],
        kinds: Iterable[Kind] = CACHED_KINDS,
    ) -> None:
        super().__init__(inner)
        self.directory = Path(directory)
        self.kinds = frozenset(kinds)
        try:
            _private_dir(self.directory, parents=True)
            for kind in self.kinds:
                _private_dir(self.directory / kind.value)
        except OSError as exc:
            raise StorageError(f"cannot use {self.directory} as a cache: {exc.strerror}") from exc

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind not in self.kinds:
            return self.inner.get(kind, name, offset, length)
        data = self._read(kind, name)
        if data is None:
            if offset or length is not None:
                return self.inner.get(kind, name, offset, length)  # a piece is not kept
            data = self.inner.get(kind, name)
            if _is_named_by(name, data):
                self._write(kind, name, data)
            return data
        if length is None:
            return data[offset:]
        if offset + length > len(data):
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        return data[offset : offset + length]

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        if kind not in self.kinds:
            self.inner.put(kind, name, data)
            return
        self._evict(kind, name)  # first: a failed put must not leave an older copy served
        self.inner.put(kind, name, data)
        if _is_named_by(name, data):
            self._write(kind, name, data)

    def delete(self, kind: Kind, name: str) -> None:
        if kind in self.kinds:
            self._evict(kind, name)
        self.inner.delete(kind, name)

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        if kind not in self.kinds:
            yield from self.inner.list(kind)
            return
        listed = set()
        for info in self.inner.list(kind):
            listed.add(info.name)
            yield info
        # A whole listing names every object: copies of others were deleted elsewhere.
        for entry in _entries(self.directory / kind.value):
            if entry not in listed:
                self._evict(kind, entry)

    def _path(self, kind: Kind, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise StorageError(f"invalid object name {name!r}")
        return self.directory / kind.value / name

    def _read(self, kind: Kind, name: str) -> bytes | None:
        path = self._path(kind, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if not _is_named_by(name, data):
            self._evict(kind, name)  # cut short or damaged: fetched again
            return None
        return data

    def _write(self, kind: Kind, name: str, data: bytes) -> None:
        """Keep a copy; a cache that cannot be written only makes the next get slower."""
        path = self._path(kind, name)
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                with open(fd, "wb", closefd=False) as f:
                    f.write(data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _evict(self, kind: Kind, name: str) -> None:
        """A copy that cannot be removed would be served after its object is gone: fail."""
        path = self._path(kind, name)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot remove {path} from the cache: {exc.strerror}") from exc


def _is_named_by(name: str, data: bytes) -> bool:
    """Whether ``data`` is the object ``name`` names: only such bytes are kept or served."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() == name


def _private_dir(path: Path, *, parents: bool = False) -> None:
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask, and it may have existed


def _entries(directory: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(directory) if not e.name.startswith(".")]
    except OSError:
        return []
