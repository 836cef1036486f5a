"""The repository's ``config`` object: format version and parameters fixed at ``init``.

It is plaintext (it holds no secret) so that any version of freezeframe can tell whether it can
read a repository before asking for a password.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from freezeframe.errors import IntegrityError, UnsupportedFormat

FORMAT_NAME = "freezeframe"
FORMAT_VERSION = 1


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

    @classmethod
    def new(cls) -> RepositoryConfig:
        return cls(
            repository_id=os.urandom(32).hex(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            chunker=ChunkerParams(),
        )

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "id": self.repository_id,
            "created": self.created,
            "chunker": asdict(self.chunker),
            "pack_size": self.pack_size,
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RepositoryConfig:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise IntegrityError("the repository config is damaged") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise UnsupportedFormat("not a freezeframe repository")
        if doc.get("version") != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {doc.get('version')} is not supported by this "
                f"freezeframe (it reads version {FORMAT_VERSION}); upgrade freezeframe"
            )
        try:
            return cls(
                repository_id=str(doc["id"]),
                created=str(doc["created"]),
                chunker=ChunkerParams(**doc["chunker"]),
                pack_size=int(doc["pack_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"the repository config is damaged: {exc}") from exc
