"""A regular file being restored: where each chunk of its content goes, and writing it there.

Content is the concatenation of the node's blobs. A plain file receives it from offset 0; a
sparse file receives it in the data extents of its ``sparse_map`` (holes between and after stay
holes, since the file is truncated to its size first and nothing is written there).
"""

from __future__ import annotations

import bisect
import errno
import os
from dataclasses import dataclass, field

from freezeframe.errors import IntegrityError, MissingContent
from freezeframe.restore.metadata import Fresh
from freezeframe.restore.reader import BlobReader, Node


@dataclass(eq=False)
class FileJob:
    """A file created by the walk, open until its last chunk is written.

    ``writes`` are (blob id, its length, content offset); ``extents`` maps content onto a sparse
    file as (content offset, file offset, length), None for a plain file.
    """

    fd: int
    node: Node
    path: bytes  # as recorded
    writes: list[tuple[bytes, int, int]]
    extents: list[tuple[int, int, int]] | None
    data_bytes: int
    fresh: Fresh | None = None
    pending: int = 0  # writes not done yet
    error: str | None = None
    starts: list[int] | None = None  # content offsets of ``extents``, for bisect
    rel: tuple[bytes, ...] = ()  # the directory's names from the target down
    parent_times: tuple[int, int] | None = None  # its recorded (atime, mtime), to put back
    damaged: list[tuple[int, int]] = field(default_factory=list)
    """Content ranges whose blobs could not be read or failed verification."""

    def damaged_file_ranges(self) -> list[tuple[int, int]]:
        return file_ranges(self.damaged, self.extents)

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


def plan_file(blobs: BlobReader, node: Node) -> tuple[list[tuple[bytes, int, int]], int]:
    """(blob id, length, content offset) for each chunk of a file, and the content length;
    MissingContent when blobs are missing, IntegrityError when the node contradicts itself."""
    writes = []
    offset = 0
    missing: list[int] = []  # positions in node.content
    for position, blob_id in enumerate(node.content):
        length = blobs.blob_size(blob_id)
        if length is None:
            missing.append(position)
            continue
        writes.append((blob_id, length, offset))
        offset += length
    if missing:
        raise _missing(node, writes, missing)
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


def _missing(node: Node, found: list[tuple[bytes, int, int]], missing: list[int]) -> MissingContent:
    """Where missing blobs sat: exact when one is missing (the size gives its length), else
    from the first missing one to the end."""
    lengths = {blob_id: length for blob_id, length, _ in found}
    before = 0
    for blob_id in node.content[: missing[0]]:
        before += lengths[blob_id]
    known = sum(lengths.get(blob_id, 0) for blob_id in node.content)
    content_size = node.size if node.sparse_map is None else sum(n for _, n in node.sparse_map)
    end = before + (content_size - known) if len(missing) == 1 else content_size
    first = node.content[missing[0]].hex()[:16]
    message = (
        f"{len(missing)} of its {len(node.content)} blobs are missing from the repository "
        f"(first: {first})"
    )
    return MissingContent(message, [(before, max(before, end))])


def file_ranges(
    content_ranges: list[tuple[int, int]], extents: list[tuple[int, int, int]] | None
) -> list[tuple[int, int]]:
    """Content ranges as byte ranges of the file (a sparse file's content sits in its data
    extents), merged and sorted."""
    ranges: list[tuple[int, int]] = []
    for start, end in content_ranges:
        if extents is None:
            ranges.append((start, end))
            continue
        for content, file_offset, length in extents:
            low, high = max(start, content), min(end, content + length)
            if low < high:
                ranges.append((file_offset + low - content, file_offset + high - content))
    return merge_ranges(ranges)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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
