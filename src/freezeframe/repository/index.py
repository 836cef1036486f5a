"""The index: blob id -> (pack, offset, length), so a look-up never reads a pack.

Index files are zstd-compressed, encrypted binary lists of packs and their blobs. The in-memory
index is the union of all index files; new entries are written in a new index file every few packs
during a backup, so an interrupted backup leaves its packs indexed and reusable.
"""

from __future__ import annotations

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
_MAGIC = b"FFIX"
_PACK = struct.Struct("<32sI")
_ENTRY = struct.Struct("<BIII32s")


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
        self._pack_names: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        found = self._blobs.get(blob_id)
        if found is None:
            return None
        pack_no, blob_type, offset, length, raw_length = found
        return BlobLocation(
            self._pack_names[pack_no], BlobType(blob_type), offset, length, raw_length
        )

    def add_pack(self, pack: str, entries: Iterable[PackEntry]) -> None:
        with self._lock:
            pack_no = self._pack_numbers.get(pack)
            if pack_no is None:
                pack_no = len(self._pack_names)
                self._pack_names.append(pack)
                self._pack_numbers[pack] = pack_no
            for e in entries:
                self._blobs.setdefault(
                    e.blob_id, (pack_no, e.blob_type, e.offset, e.length, e.raw_length)
                )

    def pack_names(self) -> set[str]:
        """Every pack an index file named (also those whose blobs are all found elsewhere)."""
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


def encode_index(packs: dict[str, list[PackEntry]], cipher: Cipher) -> bytes:
    parts = [_MAGIC, bytes((INDEX_FORMAT_VERSION,))]
    for pack, entries in packs.items():
        parts.append(_PACK.pack(bytes.fromhex(pack), len(entries)))
        parts.extend(
            _ENTRY.pack(e.blob_type, e.offset, e.length, e.raw_length, e.blob_id) for e in entries
        )
    plain = zstandard.ZstdCompressor(level=3).compress(b"".join(parts))
    return cipher.encrypt(plain, INDEX_AAD)


_MAX_PLAIN = 1 << 31


def decode_index(data: bytes, cipher: Cipher, name: str) -> dict[str, list[PackEntry]]:
    compressed = cipher.decrypt(data, INDEX_AAD, f"index {name}")
    try:
        # zstandard allocates what a frame header declares, whatever max_output_size says.
        if zstandard.frame_content_size(compressed) > _MAX_PLAIN:
            raise IntegrityError(f"index {name} declares more than {_MAX_PLAIN >> 30} GiB")
        plain = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=_MAX_PLAIN)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"index {name} does not decompress") from exc
    if len(plain) < 5 or plain[:4] != _MAGIC or plain[4] != INDEX_FORMAT_VERSION:
        raise IntegrityError(f"index {name} has an unknown format")
    packs: dict[str, list[PackEntry]] = {}
    pos = 5
    try:
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
    return packs
