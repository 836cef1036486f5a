"""The files cache: which chunks a file had when it was last backed up, keyed by its path.

A file whose device, inode, size, mtime and ctime are unchanged is not read again; its chunk ids
are reused after checking that the index still holds each of them (so a stale or damaged cache can
cost time but never data). The cache is local (``$XDG_CACHE_HOME/freezeframe/<repository id>``),
zstd-compressed binary, written atomically after the snapshot is saved.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import zstandard

_MAGIC = b"FFFC1"
_HEAD = struct.Struct("<IQQQqqBI")
_ID = 32
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
    age: int = 0

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


class FilesCache:
    """Loaded at the start of a backup, updated as files are saved, written at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._old: dict[bytes, CachedFile] = {}
        self._new: dict[bytes, CachedFile] = {}

    @classmethod
    def for_repository(cls, repository_id: str, cache_dir: Path | None = None) -> FilesCache:
        cache = cls((cache_dir or default_cache_dir()) / repository_id / "files")
        cache.load()
        return cache

    def __len__(self) -> int:
        return len(self._old)

    def lookup(
        self, path: bytes, st: os.stat_result, check_device: bool = True
    ) -> CachedFile | None:
        """The cached entry if the file looks unchanged. Snapshots get a new device number each
        time, so backups of snapshots compare everything but the device."""
        entry = self._old.get(path)
        return entry if entry is not None and entry.matches(st, check_device) else None

    def knows(self, path: bytes) -> bool:
        return path in self._old

    def remember(self, path: bytes, st: os.stat_result, content: list[bytes]) -> None:
        self._new[path] = CachedFile(
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, tuple(content)
        )

    def load(self) -> None:
        """Read the cache; a missing or unreadable cache is simply empty."""
        try:
            raw = zstandard.ZstdDecompressor().decompress(
                self.path.read_bytes(), max_output_size=1 << 32
            )
            self._old = _decode(raw)
        except (OSError, zstandard.ZstdError, struct.error, ValueError):
            self._old = {}

    def save(self) -> None:
        """Write this run's entries plus unseen older ones (aged), atomically."""
        merged = dict(self._new)
        for path, entry in self._old.items():
            if path not in merged and entry.age + 1 < MAX_AGE:
                merged[path] = CachedFile(
                    entry.device,
                    entry.inode,
                    entry.size,
                    entry.mtime_ns,
                    entry.ctime_ns,
                    entry.content,
                    entry.age + 1,
                )
        data = zstandard.ZstdCompressor(level=1).compress(_encode(merged))
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _encode(entries: dict[bytes, CachedFile]) -> bytes:
    parts = [_MAGIC]
    for path, e in entries.items():
        parts.append(
            _HEAD.pack(
                len(path), e.device, e.inode, e.size, e.mtime_ns, e.ctime_ns, e.age, len(e.content)
            )
        )
        parts.append(path)
        parts.extend(e.content)
    return b"".join(parts)


def _decode(raw: bytes) -> dict[bytes, CachedFile]:
    if not raw.startswith(_MAGIC):
        raise ValueError("unknown files cache format")
    entries: dict[bytes, CachedFile] = {}
    pos = len(_MAGIC)
    view = memoryview(raw)
    while pos < len(raw):
        path_len, dev, ino, size, mtime, ctime, age, count = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        path = bytes(view[pos : pos + path_len])
        pos += path_len
        content = tuple(bytes(view[pos + i * _ID : pos + (i + 1) * _ID]) for i in range(count))
        pos += count * _ID
        if pos > len(raw):
            raise ValueError("files cache is truncated")
        entries[path] = CachedFile(dev, ino, size, mtime, ctime, content, age)
    return entries
