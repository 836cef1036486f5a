"""zstd compression that leaves incompressible data alone (saves CPU on restore and space)."""

from __future__ import annotations

import threading

import zstandard

from freezeframe.errors import IntegrityError

RAW = 0
ZSTD = 1
LEVEL = 3
# Keep the compressed form only when it saves at least 3 %.
_WORTHWHILE = 0.97

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # zstandard contexts are not thread-safe; one per thread.
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=LEVEL)
        _local.compressor = compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor()
        _local.decompressor = decompressor
    return decompressor


def compress(data: bytes) -> bytes:
    """One flag byte, then the payload: zstd when it pays, raw otherwise."""
    if len(data) >= 64:
        packed = _compressor().compress(data)
        if len(packed) < len(data) * _WORTHWHILE:
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + data


def decompress(data: bytes, raw_length: int) -> bytes:
    if not data:
        raise IntegrityError("empty blob payload")
    flag, payload = data[0], data[1:]
    if flag == RAW:
        out = bytes(payload)
    elif flag == ZSTD:
        try:
            # zstandard allocates the size a frame header declares, whatever max_output_size
            # says: a damaged header must not ask for terabytes.
            if zstandard.frame_content_size(payload) > raw_length:
                raise IntegrityError("blob is larger than its index entry says")
            out = _decompressor().decompress(payload, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from exc
    else:
        raise IntegrityError(f"unknown compression flag {flag}")
    if len(out) != raw_length:
        raise IntegrityError("blob has the wrong length after decompression")
    return out
