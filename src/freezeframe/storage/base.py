"""The storage interface: named objects grouped by kind, with atomic puts.

Everything above this layer is backend-agnostic, so an S3-compatible backend only has to implement
this Protocol (restic's backend and kopia's blob.Storage are the models).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Kind(StrEnum):
    """The kinds of objects a repository stores; each kind is its own namespace."""

    CONFIG = "config"
    KEYS = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOTS = "snapshots"
    LOCKS = "locks"


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object: its name and size, so callers can plan reads without opening it."""

    name: str
    size: int


@dataclass(frozen=True)
class Capabilities:
    """What a backend (or a stack of wrappers) can do, stated rather than discovered, so no
    caller has to probe a backend for methods of its own."""

    writable: bool = True
    """False when the storage refuses every change (``ReadOnlyStorage``)."""

    deletes: bool = True
    """False when the storage refuses to delete or replace what it holds (a read-only one, an
    append-only account of ``freezeframe serve``): prune refuses before it writes anything."""

    local_modes: bool = False
    """Objects are files with owner/group modes that ``create_layout`` sets (and
    ``group_readable`` means something) and ``audit`` reports; an object store has none."""

    local_directory: str | None = None
    """The directory on this machine that holds the objects (a local backend): a backup must
    never freeze or snapshot the file system it writes to. None when they live elsewhere."""


PROBE_PREFIX = "probe-"
"""Objects of kind LOCKS whose names start with this are ``doctor --repo``'s short-lived test
objects (written, read, listed and deleted again), never locks: readers of locks skip them, so
a backup that starts meanwhile does not take one for a lock it cannot read. Lock names are
hex digits, so none starts with it."""


@dataclass(frozen=True)
class Description:
    """Where a storage keeps its objects, as a user may be shown it (never a secret), and the
    room left there when the backend can tell: what ``doctor --repo`` reports.

    A backend fills what applies to it; ``details`` holds its own fields, e.g. a local
    directory's ``directory``, an S3 bucket's ``endpoint``, ``bucket``, ``prefix`` and where its
    ``credentials`` come from (``env``, a profile..., never the keys)."""

    backend: str
    """The scheme of its locations: ``local``, ``s3``, ..."""

    details: dict[str, str] = field(default_factory=dict)

    filesystem: str | None = None
    """A local directory's file system type (``ext4``, ``nfs4``...); None for a remote store."""

    free_bytes: int | None = None
    """Bytes this user may still write there; None when the backend cannot tell (a bucket)."""

    total_bytes: int | None = None


class Storage(Protocol):
    """Named objects of a kind. A put is atomic: readers see the whole object or none of it."""

    location: str

    @property
    def capabilities(self) -> Capabilities:
        """What this storage can do; wrappers pass their inner storage's on (or narrow it)."""

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        """Prepare the place of a new, empty repository (private to its owner, or readable by
        its group); returns what it had to correct in a place that existed already."""

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``; fails if it cannot be made durable."""

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object, or ``length`` bytes of it from ``offset``; NotFound if absent."""

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        """Every object of a kind, in no particular order."""

    def delete(self, kind: Kind, name: str) -> None:
        """Remove an object; removing an absent object is not an error."""

    def exists(self, kind: Kind, name: str) -> bool:
        """Whether an object is present."""

    def remove_stale_temporaries(self) -> int:
        """Remove what writers that crashed left half-written (only under the exclusive
        lock, when no writer runs); returns how many objects."""

    def audit(self) -> builtins.list[str]:
        """Problems of the storage itself that a user should fix although the repository
        works (for a directory: modes that let other users in); ``check`` reports them."""

    def describe(self) -> Description:
        """Where the objects are and how much room is left, for ``doctor --repo``: no request
        beyond what that needs (a statvfs), so it works without the repository's password and
        where no repository exists yet; it raises nothing for a place that is unreachable."""

    def close(self) -> None:
        """Release cached handles."""
