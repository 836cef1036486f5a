"""A storage that refuses every change, so a command that should only read (or an operator who
only wants to look) cannot alter the repository, whatever the code above it does."""

from __future__ import annotations

import builtins
from dataclasses import replace

from freezeframe.errors import StorageError
from freezeframe.storage.base import Capabilities, Kind
from freezeframe.storage.wrapper import StorageWrapper


class ReadOnlyStorage(StorageWrapper):
    """Reads pass through; put, delete, create_layout and remove_stale_temporaries fail."""

    @property
    def capabilities(self) -> Capabilities:
        return replace(self.inner.capabilities, writable=False, deletes=False)

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        raise _refused(f"cannot create a repository at {self.location}")

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        raise _refused(f"cannot write {kind.value}/{name}")

    def delete(self, kind: Kind, name: str) -> None:
        raise _refused(f"cannot delete {kind.value}/{name}")

    def remove_stale_temporaries(self) -> int:
        raise _refused("cannot remove temporary files")


def _refused(what: str) -> StorageError:
    return StorageError(f"the repository is opened read-only: {what}")
