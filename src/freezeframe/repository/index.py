"""The index: blob id -> (pack, offset, length), so a look-up never reads a pack.

Index files are zstd-compressed, encrypted binary lists of packs and their blobs. The in-memory
index is the union of all index files; new entries are written in a new index file every few packs
during a backup, so an interrupted backup leaves its packs indexed and reusable.

A *mark file* (format 2) is an index file that also names packs a prune marked for deletion, with
the time of the mark (see ``prune.py``): their blobs can still be read (a snapshot written by a
backup that began before the mark may use them) but are never offered for deduplication, so no
backup that began after the mark comes to depend on them.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import zstandard

from freezeframe.errors import IntegrityError
from freezeframe.repository.crypto import Cipher
from freezeframe.repository.pack import BlobType, PackEntry

INDEX_AAD = b"freezeframe-index"
INDEX_FORMAT_VERSION = 1
MARK_FORMAT_VERSION = 2
_MAGIC = b"FFIX"
_PACK = struct.Struct("<32sI")
_ENTRY = struct.Struct("<BIII32s")
_MARK = struct.Struct("<dI")
_PACK_ID = struct.Struct("<32s")


@dataclass(frozen=True)
class IndexFile:
    """One decoded index file: the packs it names as live and, for a mark file, the packs it
    marks for deletion (with their blobs where known; an unindexed pack's list is empty)."""

    packs: dict[str, list[PackEntry]]
    marked: dict[str, list[PackEntry]]
    mark_time: float | None = None


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where a blob lives; ``pack`` is the pack's hex name."""

    pack: str
    blob_type: BlobType
    offset: int
    length: int
    raw_length: int


class Index:
    """All known blobs. Thread-safe for concurrent look-ups and additions during a backup."""

    def __init__(self) -> None:
        self._blobs: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._marked_blobs: dict[bytes, tuple[int, int, int, int, int]] = {}
        self._marked_packs: set[str] = set()
        self._pack_names: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._pack_ends: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        """Whether a live copy exists: what deduplication asks (never a marked copy)."""
        return blob_id in self._blobs

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        """Where to read a blob: a live copy, else one in a pack marked for deletion."""
        found = self._blobs.get(blob_id) or self._marked_blobs.get(blob_id)
        if found is None:
            return None
        pack_no, blob_type, offset, length, raw_length = found
        return BlobLocation(
            self._pack_names[pack_no], BlobType(blob_type), offset, length, raw_length
        )

    def _number(self, pack: str) -> int:
        pack_no = self._pack_numbers.get(pack)
        if pack_no is None:
            pack_no = len(self._pack_names)
            self._pack_names.append(pack)
            self._pack_numbers[pack] = pack_no
        return pack_no

    def add_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            pack_no = self._number(pack)
            end = self._pack_ends.get(pack_no, 0)
            for e in entries:
                self._blobs.setdefault(
                    e.blob_id, (pack_no, e.blob_type, e.offset, e.length, e.raw_length)
                )
                end = max(end, e.offset + e.length)
            self._pack_ends[pack_no] = end

    def add_marked_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        """A pack a prune marked for deletion: readable, never deduplicated against; call after
        every live pack is added (a pack also named live is live)."""
        with self._lock:
            pack_no = self._number(pack)
            self._marked_packs.add(pack)
            end = self._pack_ends.get(pack_no, 0)
            for e in entries:
                end = max(end, e.offset + e.length)
                if e.blob_id not in self._blobs:
                    self._marked_blobs.setdefault(
                        e.blob_id, (pack_no, e.blob_type, e.offset, e.length, e.raw_length)
                    )
            self._pack_ends[pack_no] = end

    def blobs_end(self, pack: str) -> int | None:
        """Where the last blob an index file places in ``pack`` ends (the pack's header
        follows): a read ahead never goes past it. None for a pack no index file names."""
        pack_no = self._pack_numbers.get(pack)
        return None if pack_no is None else self._pack_ends.get(pack_no)

    def marked_packs(self) -> set[str]:
        """Packs marked for deletion (and named live by no index file)."""
        with self._lock:
            return set(self._marked_packs)

    def pack_names(self) -> set[str]:
        """Every pack an index file named (also those whose blobs are all found elsewhere, and
        those marked for deletion)."""
        with self._lock:
            return set(self._pack_names)

    def packs(self) -> set[str]:
        """Packs that hold at least one indexed blob."""
        used = {entry[0] for entry in self._blobs.values()}
        return {self._pack_names[n] for n in used}

    def by_pack(self) -> dict[str, list[PackEntry]]:
        """Every pack with the blobs the index places in it, sorted by offset."""
        result: dict[str, list[PackEntry]] = {}
        for blob_id, (pack_no, blob_type, offset, length, raw_length) in self._blobs.items():
            result.setdefault(self._pack_names[pack_no], []).append(
                PackEntry(BlobType(blob_type), blob_id, offset, length, raw_length)
            )
        for entries in result.values():
            entries.sort(key=lambda e: e.offset)
        return result


def encode_index(
    packs: dict[str, list[PackEntry]],
    cipher: Cipher,
    *,
    marked: dict[str, list[PackEntry]] | None = None,
    mark_time: float = 0.0,
) -> bytes:
    """An index file naming ``packs``; with ``marked``, a mark file (format 2) that also marks
    those packs for deletion at ``mark_time``. Without marks it is format 1, which every
    version reads."""
    if not marked:
        return _seal([_MAGIC, bytes((INDEX_FORMAT_VERSION,)), *_pack_parts(packs)], cipher)
    parts = [_MAGIC, bytes((MARK_FORMAT_VERSION,)), _MARK.pack(mark_time, len(marked))]
    parts.extend(_PACK_ID.pack(bytes.fromhex(pack)) for pack in marked)
    return _seal([*parts, *_pack_parts({**packs, **marked})], cipher)


def _pack_parts(packs: dict[str, list[PackEntry]]) -> list[bytes]:
    parts: list[bytes] = []
    for pack, entries in packs.items():
        parts.append(_PACK.pack(bytes.fromhex(pack), len(entries)))
        parts.extend(
            _ENTRY.pack(e.blob_type, e.offset, e.length, e.raw_length, e.blob_id) for e in entries
        )
    return parts


def _seal(parts: list[bytes], cipher: Cipher) -> bytes:
    plain = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    return cipher.encrypt(plain, INDEX_AAD)


_MAX_PLAIN = 1 << 31


def decode_index(data: bytes, cipher: Cipher, name: str) -> dict[str, list[PackEntry]]:
    """The packs an index file names as live (a mark file's marked packs left out)."""
    return decode_index_file(data, cipher, name).packs


def decode_index_file(data: bytes, cipher: Cipher, name: str) -> IndexFile:
    compressed = cipher.decrypt(data, INDEX_AAD, f"index {name}")
    try:
        # zstandard allocates what a frame header declares, whatever max_output_size says.
        if zstandard.frame_content_size(compressed) > _MAX_PLAIN:
            raise IntegrityError(f"index {name} declares more than {_MAX_PLAIN >> 30} GiB")
        plain = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=_MAX_PLAIN)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"index {name} does not decompress") from exc
    if len(plain) < 5 or plain[:4] != _MAGIC or plain[4] not in (1, MARK_FORMAT_VERSION):
        raise IntegrityError(f"index {name} has an unknown format")
    packs: dict[str, list[PackEntry]] = {}
    marked_ids: list[str] = []
    mark_time: float | None = None
    pos = 5
    try:
        if plain[4] == MARK_FORMAT_VERSION:
            mark_time, count = _MARK.unpack_from(plain, pos)
            pos += _MARK.size
            if not math.isfinite(mark_time) or count > (len(plain) - pos) // _PACK_ID.size:
                raise IntegrityError(f"index {name} is malformed")
            for _ in range(count):
                marked_ids.append(_PACK_ID.unpack_from(plain, pos)[0].hex())
                pos += _PACK_ID.size
        while pos < len(plain):
            pack_raw, count = _PACK.unpack_from(plain, pos)
            pos += _PACK.size
            entries = []
            for _ in range(count):
                blob_type, offset, length, raw_length, blob_id = _ENTRY.unpack_from(plain, pos)
                pos += _ENTRY.size
                entries.append(PackEntry(BlobType(blob_type), blob_id, offset, length, raw_length))
            packs[pack_raw.hex()] = entries
    except (struct.error, ValueError) as exc:
        raise IntegrityError(f"index {name} is malformed") from exc
    marked = {pack: packs.pop(pack, []) for pack in marked_ids}
    return IndexFile(packs, marked, mark_time)
