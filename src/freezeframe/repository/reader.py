"""Reading snapshots out of an open repository for restore-like consumers (restore, and later a
FUSE mount, ``dump``, file-level restore from VM disks).

``RepositoryReader`` provides, structurally, the reader role those consumers declare (see
``freezeframe.restore.reader``): trees by id, content blobs' sizes from the index, and content
read in pack ranges. Blobs to read are grouped by pack and sorted by offset; nearby blobs form
one run read with one storage request, and each blob of a run is then opened (decrypted,
decompressed, verified against its id) on its own, so one damaged blob fails alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from freezeframe.errors import NotFound
from freezeframe.repository.index import BlobLocation
from freezeframe.repository.pack import BlobType
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node
from freezeframe.repository.walk import find_node, load_tree, walk_tree
from freezeframe.storage.base import Kind

MiB = 1024 * 1024
# Reading across a gap this small costs less than another request.
MAX_GAP = 256 * 1024
MAX_RUN = 8 * MiB
# Locations ``blob_size`` found, kept for the ``plan_reads`` that usually follows (one index
# look-up per blob instead of two); a hint only, dropped wholesale when this many pile up.
_SIZED_HINTS = 1 << 14

_Located = tuple[BlobLocation, bytes]
_DATA = BlobType.DATA


class RepositoryReader:
    """Snapshot trees and file content of an open repository. Safe to share between threads
    (as the repository is)."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._sized: dict[bytes, BlobLocation] = {}

    # -- trees ------------------------------------------------------------------------------

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return load_tree(self._repo, tree_id)

    def find_node(self, tree_id: bytes, components: Sequence[bytes]) -> Node | None:
        return find_node(self._repo, tree_id, components)

    def walk_tree(self, tree_id: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        return walk_tree(self._repo, tree_id, prefix)

    # -- content ----------------------------------------------------------------------------

    def blob_size(self, blob_id: bytes) -> int | None:
        location = self._repo.locate(blob_id)
        if location is None or location.blob_type != _DATA:
            return None
        if len(self._sized) >= _SIZED_HINTS:
            self._sized.clear()
        self._sized[blob_id] = location
        return location.raw_length

    def plan_reads(self, blob_ids: Collection[bytes]) -> list[PackRun | MissingBlobs]:
        by_pack: dict[str, list[_Located]] = {}
        missing: list[bytes] = []
        sized = self._sized
        locate = self._repo.locate
        for blob_id in blob_ids:
            location = sized.pop(blob_id, None) or locate(blob_id)
            if location is None or location.blob_type != _DATA:
                missing.append(blob_id)
            else:
                by_pack.setdefault(location.pack, []).append((location, blob_id))
        groups: list[PackRun | MissingBlobs] = []
        for pack, blobs in by_pack.items():
            blobs.sort(key=lambda item: item[0].offset)
            groups += [PackRun(self._repo, pack, run) for run in _runs(blobs)]
        if missing:
            groups.append(MissingBlobs(tuple(missing)))
        return groups


class PackRun:
    """Blobs of one pack close enough together to be read with one ranged request."""

    __slots__ = ("_length", "_pack", "_repo", "_start", "_where", "blob_ids")

    def __init__(self, repo: Repository, pack: str, blobs: list[_Located]) -> None:
        # Everything but the read itself is done here, on the planning thread: ``fetch`` may
        # run on a reader thread, which should hold the GIL as briefly as it can.
        self._repo = repo
        self._pack = pack
        self._where = {blob_id: location for location, blob_id in blobs}
        self.blob_ids = list(self._where)
        self._start = blobs[0][0].offset
        end = max(location.offset + location.length for location, _ in blobs)
        self._length = end - self._start

    def fetch(self) -> FetchedRun:
        data = self._repo.storage.get(Kind.DATA, self._pack, self._start, self._length)
        return FetchedRun(self, data)


class FetchedRun:
    """A pack range as stored; ``open`` cuts one blob out of it and opens it."""

    __slots__ = ("_run", "_view")

    def __init__(self, run: PackRun, data: bytes) -> None:
        self._run = run
        self._view = memoryview(data)

    def open(self, blob_id: bytes) -> bytes:
        run = self._run
        location = run._where[blob_id]
        begin = location.offset - run._start
        return run._repo.open_blob(
            bytes(self._view[begin : begin + location.length]),
            location.blob_type,
            blob_id,
            location.raw_length,
        )


@dataclass(frozen=True)
class MissingBlobs:
    """Blobs the repository does not hold (as content): fetching them fails."""

    blob_ids: tuple[bytes, ...]

    def fetch(self) -> FetchedRun:
        first = self.blob_ids[0].hex()[:16]
        raise NotFound(f"blob {first} is not in the index")


def _runs(blobs: list[_Located]) -> list[list[_Located]]:
    """Group blobs sorted by offset into runs read with one request each."""
    runs: list[list[_Located]] = []
    run_start = run_end = -1
    for item in blobs:
        location = item[0]
        end = location.offset + location.length
        if runs and location.offset - run_end <= MAX_GAP and end - run_start <= MAX_RUN:
            runs[-1].append(item)
            run_end = max(run_end, end)
        else:
            runs.append([item])
            run_start, run_end = location.offset, end
    return runs
