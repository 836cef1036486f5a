"""Pack files: many encrypted blobs followed by an encrypted header that lists them.

Layout: ``blob_1 .. blob_n || encrypted header || header length (u32 little-endian)``.
A header entry is ``type (u8) | stored length (u32) | raw length (u32) | id (32 bytes)``.
The header makes a pack self-describing, so the index can be rebuilt from packs alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from freezeframe.errors import IntegrityError
from freezeframe.repository.crypto import ID_SIZE, OVERHEAD, Cipher
from freezeframe.storage.base import Kind, Storage

_ENTRY = struct.Struct("<BII32s")
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"freezeframe-pack-header"
# Read from a pack's end to find its header in one request (a header holds 41 bytes a blob).
TAIL_READ = 64 * 1024


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


_BLOB_TYPES = frozenset(int(t) for t in BlobType)


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob sits inside a pack."""

    blob_type: BlobType
    blob_id: bytes
    offset: int
    length: int
    raw_length: int


def blob_aad(blob_type: BlobType, blob_id: bytes) -> bytes:
    """Binds a stored blob to its type and id."""
    return bytes((blob_type,)) + blob_id


def encode_header(entries: list[PackEntry], cipher: Cipher) -> bytes:
    plain = b"".join(_ENTRY.pack(e.blob_type, e.length, e.raw_length, e.blob_id) for e in entries)
    sealed = cipher.encrypt(plain, HEADER_AAD)
    return sealed + _TRAILER.pack(len(sealed))


def stored_header_size(count: int) -> int:
    """Bytes a pack of ``count`` blobs spends after its blobs: the sealed header and trailer."""
    return count * _ENTRY.size + OVERHEAD + _TRAILER.size


def decode_header(pack: bytes, cipher: Cipher, name: str) -> list[PackEntry]:
    """The entries of a whole pack, checked to tile the blob area exactly."""
    if len(pack) < _TRAILER.size:
        raise IntegrityError(f"pack {name} is truncated")
    (header_length,) = _TRAILER.unpack_from(pack, len(pack) - _TRAILER.size)
    header_start = len(pack) - _TRAILER.size - header_length
    if header_start < 0:
        raise IntegrityError(f"pack {name} has an impossible header length")
    return _entries(pack[header_start : -_TRAILER.size], header_start, cipher, name)


def read_header(storage: Storage, cipher: Cipher, name: str, size: int) -> list[PackEntry]:
    """The entries of a stored pack of ``size`` bytes, reading only its end: the header of a
    16 MiB pack is a few KiB, so an index can be rebuilt without reading the data."""
    if size < _TRAILER.size + OVERHEAD:
        raise IntegrityError(f"pack {name} is truncated")
    tail_length = min(size, TAIL_READ)
    tail = storage.get(Kind.DATA, name, size - tail_length, tail_length)
    (header_length,) = _TRAILER.unpack_from(tail, len(tail) - _TRAILER.size)
    header_start = size - _TRAILER.size - header_length
    if header_start < 0:
        raise IntegrityError(f"pack {name} has an impossible header length")
    if header_length + _TRAILER.size <= tail_length:
        sealed = tail[tail_length - _TRAILER.size - header_length : -_TRAILER.size]
    else:
        sealed = storage.get(Kind.DATA, name, header_start, header_length)
    return _entries(sealed, header_start, cipher, name)


def _entries(sealed: bytes, header_start: int, cipher: Cipher, name: str) -> list[PackEntry]:
    plain = cipher.decrypt(sealed, HEADER_AAD, f"pack {name} header")
    if len(plain) % _ENTRY.size:
        raise IntegrityError(f"pack {name} header has a partial entry")
    entries = []
    offset = 0
    for blob_type, length, raw_length, blob_id in _ENTRY.iter_unpack(plain):
        if blob_type not in _BLOB_TYPES:
            raise IntegrityError(f"pack {name} header names an unknown blob type {blob_type}")
        entries.append(PackEntry(BlobType(blob_type), blob_id, offset, length, raw_length))
        offset += length
    if offset != header_start:
        raise IntegrityError(f"pack {name} header does not match its blobs")
    return entries


assert _ENTRY.size == 1 + 4 + 4 + ID_SIZE
