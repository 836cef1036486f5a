"""Authenticated encryption and keyed ids: the only place that touches key material.

Every stored object is ``nonce (12 bytes) || AES-256-GCM(ciphertext || tag)``; the associated data
binds a blob to its id and type, so a blob cannot be swapped for another one undetected. Blob ids
are BLAKE3 keyed with a per-repository secret, so ids reveal nothing about content.
"""

from __future__ import annotations

import os

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from freezeframe.errors import IntegrityError

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
KEY_SIZE = 32
ID_SIZE = 32


class Cipher:
    """AES-256-GCM with a fresh random nonce per object (well under 2^32 objects per key)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("encryption keys are 32 bytes")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, data: bytes, aad: bytes = b"", what: str = "object") -> bytes:
        """Decrypt and authenticate; any flipped bit raises IntegrityError naming ``what``."""
        if len(data) < OVERHEAD:
            raise IntegrityError(f"{what} is truncated")
        try:
            return self._aead.decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise IntegrityError(f"{what} failed authentication (corrupted or tampered)") from exc


class IdHasher:
    """Computes blob ids: BLAKE3 keyed with the repository's id key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("id keys are 32 bytes")
        self._key = key

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._key).digest()


CONFIG_MAC_CONTEXT = "freezeframe 2026-12-07 repository config MAC"


def config_mac_key(encryption_key: bytes) -> bytes:
    """A key of its own for the config's MAC, derived from the master encryption key."""
    return blake3.blake3(encryption_key, derive_key_context=CONFIG_MAC_CONTEXT).digest()


def config_mac(mac_key: bytes, values: bytes) -> bytes:
    """Keyed BLAKE3 of the config's canonical values."""
    return blake3.blake3(values, key=mac_key).digest()


def content_name(data: bytes) -> str:
    """The name of a stored file (pack, index, snapshot): unkeyed BLAKE3 of its stored bytes,
    so ``check`` can verify a file without the key and a rename is detected."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
