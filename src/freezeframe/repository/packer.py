"""Accumulates sealed blobs into packs and writes each full pack, then its index entries.

Data and tree blobs go to separate packs so that listing and checking trees never reads file data.
Index entries are written every few packs (and at the end), which bounds what an interrupted backup
has to upload again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from freezeframe.repository.crypto import Cipher, content_name
from freezeframe.repository.index import Index, encode_index
from freezeframe.repository.pack import BlobType, PackEntry, encode_header
from freezeframe.storage.base import Kind, Storage

INDEX_EVERY_PACKS = 4
INDEX_EVERY_SECONDS = 10.0


class _OpenPack:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.entries: list[PackEntry] = []


class Packer:
    """Thread-safe: workers add blobs concurrently; whoever fills a pack writes it."""

    def __init__(
        self,
        storage: Storage,
        cipher: Cipher,
        index: Index,
        pack_size: int,
        on_blob_stored: Callable[[list[PackEntry]], None],
    ) -> None:
        self._storage = storage
        self._cipher = cipher
        self._index = index
        self._pack_size = pack_size
        self._on_stored = on_blob_stored
        self._open = {t: _OpenPack() for t in BlobType}
        self._open_lock = threading.Lock()
        self._unindexed: dict[str, list[PackEntry]] = {}
        self._index_lock = threading.Lock()
        self._last_index_write = time.monotonic()
        self.packs_written = 0
        self.bytes_written = 0
        self.index_files_written: list[str] = []

    def add(self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        full: _OpenPack | None = None
        with self._open_lock:
            pack = self._open[blob_type]
            pack.entries.append(
                PackEntry(blob_type, blob_id, len(pack.buffer), len(sealed), raw_length)
            )
            pack.buffer += sealed
            if len(pack.buffer) >= self._pack_size:
                full = pack
                self._open[blob_type] = _OpenPack()
        if full is not None:
            self._write_pack(full)

    def adopt(self, pack: str, entries: list[PackEntry]) -> None:
        """Index a stored pack no index file names (found by its header) with the next index
        file written: a writer that dedups against its blobs must not leave a snapshot that
        refers to blobs only a header describes."""
        with self._index_lock:
            self._unindexed.setdefault(pack, entries)

    def flush(self) -> None:
        """Write every partly filled pack and all pending index entries."""
        with self._open_lock:
            pending = [p for p in self._open.values() if p.entries]
            self._open = {t: _OpenPack() for t in BlobType}
        for pack in pending:
            self._write_pack(pack, defer_index=True)
        self._write_index(force=True)

    def _write_pack(self, pack: _OpenPack, *, defer_index: bool = False) -> None:
        pack.buffer += encode_header(pack.entries, self._cipher)
        data = bytes(pack.buffer)
        name = content_name(data)
        self._storage.put(Kind.DATA, name, data)
        self._index.add_pack(name, pack.entries)
        with self._index_lock:
            self._unindexed[name] = pack.entries
            self.packs_written += 1
            self.bytes_written += len(data)
        self._on_stored(pack.entries)
        if not defer_index:
            self._write_index(force=False)

    def _write_index(self, *, force: bool) -> None:
        with self._index_lock:
            due = len(self._unindexed) >= INDEX_EVERY_PACKS or (
                time.monotonic() - self._last_index_write > INDEX_EVERY_SECONDS
            )
            if not self._unindexed or not (force or due):
                return
            batch, self._unindexed = self._unindexed, {}
            self._last_index_write = time.monotonic()
        data = encode_index(batch, self._cipher)
        name = content_name(data)
        self._storage.put(Kind.INDEX, name, data)
        with self._index_lock:
            self.index_files_written.append(name)
