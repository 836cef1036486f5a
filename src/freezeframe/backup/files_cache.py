"""The files cache: which chunks a file had when it was last backed up, keyed by its path.

A file whose device, inode, size, mtime and ctime are unchanged is not read again; its chunk ids
are reused after checking that the index still holds each of them (so a stale or damaged cache can
cost time but never data). The cache is local (``$XDG_CACHE_HOME/freezeframe/<repository id>``),
zstd-compressed binary, written atomically after the snapshot is saved.

Entries stay packed bytes in memory, keyed by a 16-byte hash of the path: a million files cost
about 250 MB as Python objects, but about 120 MB this way.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

_MAGIC = b"FFFC3"
_KEY = 16
_ID = 32
# device, inode, size, mtime_ns, ctime_ns, age, flags, number of ids; then the ids
_HEAD = struct.Struct("<QQQqqBBI")
_HAS_XATTRS = 1
# Entries of files not seen for this many backups are dropped.
MAX_AGE = 10


@dataclass(frozen=True, slots=True)
class CachedFile:
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    content: tuple[bytes, ...]
    has_xattrs: bool
    age: int = 0

    @classmethod
    def unpack(cls, value: bytes) -> CachedFile:
        device, inode, size, mtime, ctime, age, flags, count = _HEAD.unpack_from(value)
        ids = tuple(value[_HEAD.size + i * _ID : _HEAD.size + (i + 1) * _ID] for i in range(count))
        return cls(device, inode, size, mtime, ctime, ids, bool(flags & _HAS_XATTRS), age)

    def matches(self, st: os.stat_result, check_device: bool) -> bool:
        return (
            (self.device == st.st_dev or not check_device)
            and self.inode == st.st_ino
            and self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.ctime_ns == st.st_ctime_ns
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "freezeframe"


def _pack(st: os.stat_result, content: list[bytes], has_xattrs: bool) -> bytes:
    flags = _HAS_XATTRS if has_xattrs else 0
    head = _HEAD.pack(
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, 0, flags, len(content)
    )
    return head + b"".join(content)


class FilesCache:
    """Loaded at the start of a backup, updated as files are saved, written at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._old: dict[bytes, bytes] = {}
        self._new: dict[bytes, bytes] = {}

    @classmethod
    def for_repository(cls, repository_id: str, cache_dir: Path | None = None) -> FilesCache:
        cache = cls((cache_dir or default_cache_dir()) / repository_id / "files")
        cache.load()
        return cache

    def __len__(self) -> int:
        return len(self._old)

    @staticmethod
    def _key(path: bytes) -> bytes:
        return blake3.blake3(path).digest(_KEY)

    def lookup(
        self, path: bytes, st: os.stat_result, check_device: bool = True
    ) -> CachedFile | None:
        """The cached entry if the file looks unchanged. Snapshots get a new device number each
        time, so backups of snapshots compare everything but the device."""
        value = self._old.get(self._key(path))
        if value is None:
            return None
        entry = CachedFile.unpack(value)
        return entry if entry.matches(st, check_device) else None

    def knows(self, path: bytes) -> bool:
        return self._key(path) in self._old

    def remember(
        self, path: bytes, st: os.stat_result, content: list[bytes], has_xattrs: bool
    ) -> None:
        self._new[self._key(path)] = _pack(st, content, has_xattrs)

    def load(self) -> None:
        """Read the cache; a missing or unreadable cache is simply empty."""
        try:
            self._old = _decode(_decompress(self.path.read_bytes()))
        except (OSError, zstandard.ZstdError, struct.error, ValueError):
            self._old = {}

    def save(self) -> None:
        """Write this run's entries plus unseen older ones (aged), atomically."""
        parts = [_MAGIC]
        for key, value in self._new.items():
            parts += (key, value)
        age_offset = 40  # where the age byte sits in _HEAD
        for key, value in self._old.items():
            age = value[age_offset] + 1
            if key not in self._new and age < MAX_AGE:
                parts += (key, value[:age_offset] + bytes((age,)) + value[age_offset + 1 :])
        data = zstandard.ZstdCompressor(level=1).compress(b"".join(parts))
        _private_dirs(self.path.parent)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0700 whatever the umask: the cache names
    every file backed up."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        os.chmod(path, 0o700)


def _decompress(data: bytes) -> bytes:
    """The cache's zstd frame, decoded as a stream: a one-shot decompress allocates whatever
    size the frame header declares, so a damaged header could ask for terabytes."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    raw = decompressor.decompress(data)
    if not decompressor.eof:
        raise ValueError("files cache is truncated")
    return raw


def _decode(raw: bytes) -> dict[bytes, bytes]:
    if not raw.startswith(_MAGIC):
        raise ValueError("unknown files cache format")
    entries: dict[bytes, bytes] = {}
    pos = len(_MAGIC)
    while pos < len(raw):
        key = raw[pos : pos + _KEY]
        count = _HEAD.unpack_from(raw, pos + _KEY)[-1]
        end = pos + _KEY + _HEAD.size + count * _ID
        if end > len(raw):
            raise ValueError("files cache is truncated")
        entries[key] = raw[pos + _KEY : end]
        pos = end
    return entries
