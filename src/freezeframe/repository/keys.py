"""Master keys wrapped by passwords: several passwords (key files) can open one repository.

A key file is plaintext JSON holding the Argon2id parameters, a salt, and the master key material
encrypted with the key derived from the password. Changing or adding a password rewrites only a
key file; data never needs re-encryption.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2.low_level import Type, hash_secret_raw

from freezeframe.errors import IntegrityError, UnsupportedFormat, WrongPassword
from freezeframe.repository.crypto import KEY_SIZE, Cipher

KEY_FORMAT_VERSION = 1
KDF_TIME_RANGE = (1, 64)
KDF_MEMORY_KIB_RANGE = (8, 4 * 1024 * 1024)
KDF_PARALLELISM_RANGE = (1, 64)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. Defaults follow RFC 9106's second recommendation (64 MiB, 3 passes)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 2

    def derive(self, password: bytes, salt: bytes) -> bytes:
        return hash_secret_raw(
            password,
            salt,
            time_cost=self.time_cost,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            hash_len=KEY_SIZE,
            type=Type.ID,
        )


@dataclass(frozen=True)
class MasterKey:
    """The secrets of a repository: one random value each, created once at ``init``.

    ``config_format`` is the lowest config format version this key accepts: a key made for an
    authenticated config (version 2) refuses a config rewritten as version 1 without its MAC."""

    repository_id: str
    encryption_key: bytes
    id_key: bytes
    chunker_seed: int
    config_format: int = 1

    @classmethod
    def generate(cls, repository_id: str, config_format: int) -> MasterKey:
        return cls(
            repository_id=repository_id,
            encryption_key=os.urandom(KEY_SIZE),
            id_key=os.urandom(KEY_SIZE),
            chunker_seed=int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF,
            config_format=config_format,
        )

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "repository_id": self.repository_id,
            "encryption_key": _b64(self.encryption_key),
            "id_key": _b64(self.id_key),
            "chunker_seed": self.chunker_seed,
        }
        if self.config_format > 1:
            doc["config_format"] = self.config_format
        return json.dumps(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterKey:
        try:
            doc = json.loads(data)
            master = cls(
                repository_id=str(doc["repository_id"]),
                encryption_key=_unb64(doc["encryption_key"]),
                id_key=_unb64(doc["id_key"]),
                chunker_seed=int(doc["chunker_seed"]),
                config_format=int(doc.get("config_format", 1)),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            OverflowError,
        ) as exc:
            raise IntegrityError(f"the master key is malformed: {exc}") from exc
        if len(master.encryption_key) != KEY_SIZE or len(master.id_key) != KEY_SIZE:
            raise IntegrityError("the master key is malformed: keys must be 32 bytes")
        if not 0 <= master.chunker_seed <= 0x7FFFFFFF or master.config_format < 1:
            raise IntegrityError("the master key is malformed: a value is out of range")
        return master


@dataclass(frozen=True)
class KeyFile:
    """One password's wrapping of the master key, as stored in ``keys/<name>``."""

    kdf: KdfParams
    salt: bytes
    wrapped: bytes
    host: str
    user: str
    created: str

    @classmethod
    def wrap(cls, master: MasterKey, password: bytes, kdf: KdfParams) -> KeyFile:
        salt = os.urandom(16)
        wrapping = Cipher(kdf.derive(password, salt))
        return cls(
            kdf=kdf,
            salt=salt,
            wrapped=wrapping.encrypt(master.to_bytes(), b"freezeframe-key"),
            host=socket.gethostname(),
            user=getpass.getuser(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def unwrap(self, password: bytes) -> MasterKey:
        wrapping = Cipher(self.kdf.derive(password, self.salt))
        try:
            plain = wrapping.decrypt(self.wrapped, b"freezeframe-key")
        except IntegrityError as exc:
            raise WrongPassword(
                "wrong password, or no key of this repository opens with it"
            ) from exc
        return MasterKey.from_bytes(plain)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": KEY_FORMAT_VERSION,
            "kdf": {
                "algorithm": "argon2id",
                "time_cost": self.kdf.time_cost,
                "memory_kib": self.kdf.memory_kib,
                "parallelism": self.kdf.parallelism,
                "salt": _b64(self.salt),
            },
            "data": _b64(self.wrapped),
            "host": self.host,
            "user": self.user,
            "created": self.created,
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> KeyFile:
        try:
            doc = json.loads(data)
            if doc.get("version") != KEY_FORMAT_VERSION or doc["kdf"]["algorithm"] != "argon2id":
                raise UnsupportedFormat(f"key {name} has an unknown format; upgrade freezeframe")
            kdf = doc["kdf"]
            params = KdfParams(
                _bounded(kdf["time_cost"], KDF_TIME_RANGE, "time_cost"),
                _bounded(kdf["memory_kib"], KDF_MEMORY_KIB_RANGE, "memory_kib"),
                _bounded(kdf["parallelism"], KDF_PARALLELISM_RANGE, "parallelism"),
            )
            # Argon2 itself refuses less than 8 KiB of memory per lane and salts under 8 bytes.
            if params.memory_kib < 8 * params.parallelism:
                raise ValueError(f"memory_kib {params.memory_kib} is under 8 per lane")
            salt = _unb64(kdf["salt"])
            if not 8 <= len(salt) <= 1024:
                raise ValueError(f"a salt of {len(salt)} bytes")
            return cls(
                kdf=params,
                salt=salt,
                wrapped=_unb64(doc["data"]),
                host=doc.get("host", ""),
                user=doc.get("user", ""),
                created=doc.get("created", ""),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            OverflowError,
        ) as exc:
            raise IntegrityError(f"key {name[:8]} is damaged: {exc}") from exc


def _bounded(value: object, bounds: tuple[int, int], what: str) -> int:
    """A cost parameter within what a real key uses: a damaged or planted key file must not
    make opening the repository allocate terabytes or run for days."""
    if type(value) is not int or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} {value!r} is outside {bounds[0]}..{bounds[1]}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)
