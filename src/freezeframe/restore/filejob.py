"""A regular file being restored: where each chunk of its content goes, and writing it there.

Content is the concatenation of the node's blobs. A plain file receives it from offset 0; a
sparse file receives it in the data extents of its ``sparse_map`` (holes between and after stay
holes, since the file is truncated to its size first and nothing is written there).
"""

from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass

from freezeframe.errors import IntegrityError, NotFound
from freezeframe.repository.index import BlobLocation
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node
from freezeframe.restore.metadata import Fresh


@dataclass(eq=False)
class FileJob:
    """A file created by the walk, open until its last chunk is written.

    ``writes`` are (blob id, location, content offset); ``extents`` maps content onto a sparse
    file as (content offset, file offset, length), None for a plain file.
    """

    fd: int
    node: Node
    path: bytes  # as recorded
    writes: list[tuple[bytes, BlobLocation, int]]
    extents: list[tuple[int, int, int]] | None
    data_bytes: int
    fresh: Fresh | None = None
    pending: int = 0  # writes not done yet
    error: str | None = None
    starts: list[int] | None = None  # content offsets of ``extents``, for bisect

    def write(self, data: bytes, content_offset: int) -> None:
        """Write one chunk where it belongs."""
        if self.extents is None:
            _pwrite_all(self.fd, memoryview(data), content_offset)
            return
        if self.starts is None:
            self.starts = [content for content, _, _ in self.extents]
        view = memoryview(data)
        index = bisect.bisect_right(self.starts, content_offset) - 1
        while view:
            if index >= len(self.extents):
                raise OSError(errno.EFBIG, "the content runs past the recorded data extents")
            content_start, file_offset, length = self.extents[index]
            inside = content_offset - content_start
            n = min(length - inside, len(view))
            if n > 0:
                _pwrite_all(self.fd, view[:n], file_offset + inside)
                view = view[n:]
                content_offset += n
            index += 1


def plan_file(repo: Repository, node: Node) -> tuple[list[tuple[bytes, BlobLocation, int]], int]:
    """(blob id, location, content offset) for each chunk of a file, and the content length;
    NotFound/IntegrityError when a blob is missing or the node contradicts itself."""
    writes = []
    offset = 0
    for blob_id in node.content:
        location = repo.index.lookup(blob_id)
        if location is None:
            raise NotFound(f"blob {blob_id.hex()[:16]} of this file is missing from the repository")
        if location.blob_type != BlobType.DATA:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} is not a data blob")
        writes.append((blob_id, location, offset))
        offset += location.raw_length
    if node.size < 0:
        raise IntegrityError("the recorded size is negative")
    if node.sparse_map is None:
        if offset != node.size:
            raise IntegrityError(
                f"the content ({offset} bytes) does not match the size ({node.size})"
            )
    elif offset > sum(length for _, length in node.sparse_map):
        raise IntegrityError("the content is longer than the recorded data extents")
    return writes, offset


def sparse_extents(node: Node) -> list[tuple[int, int, int]]:
    """The sparse map as (content offset, file offset, length), checked to be ordered,
    disjoint and inside the file, so no write can land past the recorded size."""
    extents = []
    content = 0
    end = 0
    for start, length in node.sparse_map or ():
        if start < end or length < 0 or start + length > node.size:
            raise IntegrityError("the sparse map is out of order or beyond the file's size")
        extents.append((content, start, length))
        content += length
        end = start + length
    return extents


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, "the file system accepted no bytes")
        data = data[n:]
        offset += n
