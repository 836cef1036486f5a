"""A storage that hands every call to an inner one: the base of the stackable wrappers, each of
which overrides only the calls it changes (so each stays a whole ``Storage``)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from freezeframe.storage.base import Capabilities, Description, Kind, ObjectInfo, Storage


class StorageWrapper:
    """Delegates everything to ``inner``; a subclass changes what it is about."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.location = inner.location

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        return self.inner.create_layout(group_readable=group_readable)

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        self.inner.put(kind, name, data)

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(kind, name, offset, length)

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        return self.inner.list(kind)

    def delete(self, kind: Kind, name: str) -> None:
        self.inner.delete(kind, name)

    def exists(self, kind: Kind, name: str) -> bool:
        return self.inner.exists(kind, name)

    def remove_stale_temporaries(self) -> int:
        return self.inner.remove_stale_temporaries()

    def audit(self) -> builtins.list[str]:
        return self.inner.audit()

    def describe(self) -> Description:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
