"""The repository's ``config`` object: format version and parameters fixed at ``init``.

Its values are plaintext (they hold no secret) so that any version of freezeframe can tell
whether it can read a repository before asking for a password. Since format version 2 they are
bound to the master key by a MAC, checked once a key has opened: a chunker or pack parameter
changed by anyone without the key is refused instead of silently shaping the next backups.
Version 1 configs (no MAC) are still read; ``freezeframe migrate`` adds the MAC.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from freezeframe.errors import IntegrityError, UnsupportedFormat
from freezeframe.repository.crypto import config_mac

FORMAT_NAME = "freezeframe"
FORMAT_VERSION = 2
UNAUTHENTICATED_VERSION = 1
READABLE_VERSIONS = (UNAUTHENTICATED_VERSION, FORMAT_VERSION)

KiB = 1024
MiB = 1024 * KiB
# Bounds of the chunker (FastCDC's own: minimum at most 1 MiB, average 4 MiB, maximum 16 MiB)
# and of packs, which must fit in memory several times over.
MIN_CHUNK_RANGE = (4 * KiB, 1 * MiB)
AVG_CHUNK_MAX = 4 * MiB
MAX_CHUNK_MAX = 16 * MiB
PACK_SIZE_RANGE = (64 * KiB, 1024 * MiB)
_REPOSITORY_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC sizes in bytes; the mean chunk is about ``min + avg``."""

    min_size: int = 256 * 1024
    avg_size: int = 512 * 1024
    max_size: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class RepositoryConfig:
    repository_id: str
    created: str
    chunker: ChunkerParams
    pack_size: int = 16 * 1024 * 1024
    version: int = FORMAT_VERSION
    mac: str = ""
    """Hex MAC of the other values under the master key (version 2); empty in version 1."""

    @classmethod
    def new(cls) -> RepositoryConfig:
        return cls(
            repository_id=os.urandom(32).hex(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            chunker=ChunkerParams(),
        )

    @property
    def authenticated(self) -> bool:
        return self.version >= FORMAT_VERSION

    def _values(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "id": self.repository_id,
            "created": self.created,
            "chunker": {
                "min_size": self.chunker.min_size,
                "avg_size": self.chunker.avg_size,
                "max_size": self.chunker.max_size,
            },
            "pack_size": self.pack_size,
        }

    def _mac_input(self) -> bytes:
        return json.dumps(self._values(), sort_keys=True, separators=(",", ":")).encode()

    def sealed(self, mac_key: bytes) -> RepositoryConfig:
        """This config at the current format version, with its MAC under ``mac_key``."""
        upgraded = replace(self, version=FORMAT_VERSION, mac="")
        return replace(upgraded, mac=config_mac(mac_key, upgraded._mac_input()).hex())

    def verify(self, mac_key: bytes) -> None:
        """IntegrityError unless the MAC matches (a version 1 config has none to check)."""
        if not self.authenticated:
            return
        expected = config_mac(mac_key, self._mac_input()).hex()
        if not hmac.compare_digest(expected, self.mac):
            raise IntegrityError(
                "the repository config failed authentication: it was changed without the "
                "repository's key (tampered or damaged); `freezeframe repair config` rewrites it"
            )

    def to_bytes(self) -> bytes:
        doc = self._values()
        if self.authenticated:
            doc["mac"] = self.mac
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RepositoryConfig:
        """Parse and check a stored config; its MAC is checked later, with the key."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(_DAMAGED) from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise UnsupportedFormat("not a freezeframe repository (its config is not one)")
        version = doc.get("version")
        if type(version) is not int or version < 1:
            raise IntegrityError(f"{_DAMAGED}: its format version is {version!r}")
        if version not in READABLE_VERSIONS:
            raise UnsupportedFormat(
                f"the repository config says format version {version}, which this freezeframe "
                f"does not read (it reads {', '.join(map(str, READABLE_VERSIONS))}): upgrade "
                "freezeframe, or if the config is damaged, `freezeframe repair config` "
                "rewrites it"
            )
        try:
            chunker = doc["chunker"]
            config = cls(
                repository_id=_text(doc["id"]),
                created=_text(doc["created"]),
                chunker=ChunkerParams(
                    min_size=_integer(chunker["min_size"]),
                    avg_size=_integer(chunker["avg_size"]),
                    max_size=_integer(chunker["max_size"]),
                ),
                pack_size=_integer(doc["pack_size"]),
                version=version,
                mac=_text(doc["mac"]) if version >= FORMAT_VERSION else "",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{_DAMAGED}: {exc}") from exc
        problem = config.problem()
        if problem:
            raise IntegrityError(f"{_DAMAGED}: {problem}")
        if config.authenticated and config.to_bytes() != data:
            raise IntegrityError(f"{_DAMAGED}: it is not byte for byte what freezeframe writes")
        return config

    def problem(self) -> str:
        """Why these values cannot be a repository's (empty when they can)."""
        c = self.chunker
        if not _REPOSITORY_ID.fullmatch(self.repository_id):
            return "the repository id is not 64 hex digits"
        if not (
            MIN_CHUNK_RANGE[0] <= c.min_size <= MIN_CHUNK_RANGE[1]
            and c.min_size < c.avg_size <= AVG_CHUNK_MAX
            and c.avg_size < c.max_size <= MAX_CHUNK_MAX
        ):
            return (
                f"chunk sizes {c.min_size}/{c.avg_size}/{c.max_size} (minimum/average/maximum) "
                f"are not increasing within {MIN_CHUNK_RANGE[0]}..{MAX_CHUNK_MAX}"
            )
        if not PACK_SIZE_RANGE[0] <= self.pack_size <= PACK_SIZE_RANGE[1]:
            return (
                f"pack size {self.pack_size} is outside {PACK_SIZE_RANGE[0]}..{PACK_SIZE_RANGE[1]}"
            )
        return ""


_DAMAGED = "the repository config is damaged; `freezeframe repair config` rewrites it"


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _integer(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
