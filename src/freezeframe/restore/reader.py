"""What a restore reads, as the restore needs it: snapshot trees and file content.

This is the role, declared by its consumer. ``restore`` (and the readers to come: a FUSE mount,
``dump``, file-level restore from VM disks) ask for nothing else of a repository, so they can run
over anything that provides it; ``freezeframe.repository.reader.RepositoryReader`` provides it
over an open repository, structurally (the repository layer does not import this module).

Content is read in groups, planned by the reader for locality: one group is one storage request
(nearby blobs of one pack, say), fetched on any thread (the I/O), then opened blob by blob (the
decryption and verification) on any thread. A group that cannot be fetched fails all its blobs;
a blob that fails verification fails alone (IntegrityError), so a restore can name exactly the
files and byte ranges that are damaged.

The data types a reader hands out are the repository's own records (``Node``, ``Snapshot``),
named here so that the rest of ``restore`` depends on this one module.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Protocol

from freezeframe.repository.snapshot import Snapshot
from freezeframe.repository.tree import Node

__all__ = ["BlobGroup", "BlobReader", "FetchedBlobs", "Node", "Snapshot", "SnapshotReader"]


class FetchedBlobs(Protocol):
    """A group's stored bytes, read; each blob is opened on demand."""

    def open(self, blob_id: bytes) -> bytes:
        """The blob's content, decrypted and verified against its id: IntegrityError when it
        is damaged (FreezeframeError in general), affecting this blob only."""
        ...


class BlobGroup(Protocol):
    """Blobs a reader reads with one request."""

    @property
    def blob_ids(self) -> Sequence[bytes]:
        """The group's blobs, each once, in the order they are stored."""
        ...

    def fetch(self) -> FetchedBlobs:
        """Read the group (the I/O; thread-safe); FreezeframeError when it cannot be read
        (then every blob of the group is lost)."""
        ...


class BlobReader(Protocol):
    """File content: the blobs a file node lists, in order, make up its content.

    ``fetch_threads``: how many group fetches are worth running at once (1 where a fetch is a
    local read, more where each pays a round trip)."""

    fetch_threads: int

    def blob_size(self, blob_id: bytes) -> int | None:
        """The length of a content blob's data, without reading it; None when there is no
        such content blob."""
        ...

    def plan_reads(self, blob_ids: Collection[bytes]) -> Sequence[BlobGroup]:
        """Groups that hold each of ``blob_ids`` (distinct) exactly once, ordered for locality.
        A blob that cannot be found is in a group whose ``fetch`` fails."""
        ...


class SnapshotReader(BlobReader, Protocol):
    """Snapshot trees and file content. Safe to share between threads."""

    def load_tree(self, tree_id: bytes) -> list[Node]:
        """One directory's nodes, sorted by name; IntegrityError or NotFound if its tree
        cannot be read intact."""
        ...

    def find_node(self, tree_id: bytes, components: Sequence[bytes]) -> Node | None:
        """The node at a path given as name components below a tree; None if there is none."""
        ...

    def walk_tree(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Every node below a tree with its path (``prefix + b"/" + name`` at each level),
        depth-first, a directory before its contents, trees loaded as the walk reaches them."""
        ...
