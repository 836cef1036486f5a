"""Reading snapshots out of an open repository for restore-like consumers (restore, and later a
FUSE mount, ``dump``, file-level restore from VM disks).

``RepositoryReader`` provides, structurally, the reader role those consumers declare (see
``freezeframe.restore.reader``): trees by id, content blobs' sizes from the index, and content
read in pack ranges. Blobs to read are grouped by pack and sorted by offset; nearby blobs form
one run read with one storage request, and each blob of a run is then opened (decrypted,
decompressed, verified against its id) on its own, so one damaged blob fails alone.

Over a storage with latency (anything but a local directory) a run is served from a read-ahead
window of its pack (``repository.readahead``): the runs of the batches that follow, reading the
next blobs of the same pack, need no request of their own; and ``fetch_threads`` tells the
consumer to keep several requests in flight. A window that cannot be read leaves each run to
read its own range, as without windows (so does a run a short window does not hold), so a
damaged range still fails only its blobs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

from freezeframe.errors import FreezeframeError, IntegrityError, NotFound, TransientStorageError
from freezeframe.repository.index import BlobLocation
from freezeframe.repository.pack import BlobType
from freezeframe.repository.readahead import Window, Windows
from freezeframe.repository.repository import Repository
from freezeframe.repository.tree import Node, decode_tree
from freezeframe.repository.walk import find_node, load_tree, walk_tree
from freezeframe.storage.base import Kind

MiB = 1024 * 1024
# Reading across a gap this small costs less than another request.
MAX_GAP = 256 * 1024
MAX_RUN = 8 * MiB
# Locations ``blob_size`` found, kept for the ``plan_reads`` that usually follows (one index
# look-up per blob instead of two); a hint only, dropped wholesale when this many pile up.
_SIZED_HINTS = 1 << 14
# Requests in flight that pay off on a storage with latency; one on a local disk, where more
# threads only contend for the GIL.
REMOTE_FETCH_THREADS = 8

_Located = tuple[BlobLocation, bytes]
_DATA = BlobType.DATA


class RepositoryReader:
    """Snapshot trees and file content of an open repository. Safe to share between threads
    (as the repository is). ``read_ahead``: serve runs from windows of their packs; None
    decides by the storage (on unless it is a local directory)."""

    def __init__(self, repo: Repository, *, read_ahead: bool | None = None) -> None:
        self._repo = repo
        self._sized: dict[bytes, BlobLocation] = {}
        if read_ahead is None:
            read_ahead = repo.storage.capabilities.local_directory is None
        self._windows = Windows() if read_ahead else None
        self.fetch_threads = REMOTE_FETCH_THREADS if read_ahead else 1

    # -- trees ------------------------------------------------------------------------------

    def load_tree(self, tree_id: bytes) -> list[Node]:
        if self._windows is None:
            return load_tree(self._repo, tree_id)
        # Trees sit together in their packs: a window serves the directories that follow.
        location = self._repo.locate(tree_id)
        if location is None:
            raise NotFound(f"blob {tree_id.hex()[:16]} is not in the index")
        if location.blob_type != BlobType.TREE:
            raise IntegrityError(f"blob {tree_id.hex()[:16]} has the wrong type")
        (run,) = self._runs(location.pack, [(location, tree_id)])
        return decode_tree(run.fetch().open(tree_id))

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
            groups += self._runs(pack, blobs)
        if missing:
            groups.append(MissingBlobs(tuple(missing)))
        return groups

    def _runs(self, pack: str, blobs: list[_Located]) -> list[PackRun]:
        """The runs of a pack's blobs (sorted by offset), each in a window if reading ahead."""
        runs = [PackRun(self._repo, pack, run) for run in _runs(blobs)]
        windows = self._windows
        if windows is not None:
            end = self._repo.index.blobs_end(pack)
            for run in runs:
                run.window = windows.place(pack, run._start, run._start + run._length, end)
                run.windows = windows
        return runs


class PackRun:
    """Blobs of one pack close enough together to be read with one ranged request."""

    __slots__ = ("_length", "_pack", "_repo", "_start", "_where", "blob_ids", "window", "windows")

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
        self.window: Window | None = None  # the read-ahead window that serves it, if any
        self.windows: Windows | None = None

    def fetch(self) -> FetchedRun:
        window, storage = self.window, self._repo.storage
        if window is not None and self.windows is not None:
            try:
                data = window.read(storage)
            except TransientStorageError:
                raise  # the storage stopped answering: so would the run's own read
            except FreezeframeError:
                pass  # the window is unreadable: the run reads its own range, as without one
            else:
                begin = self._start - window.start
                if len(data) >= begin + self._length:
                    return FetchedRun(self, memoryview(data)[begin : begin + self._length])
                # Short (a pack cut short): the run's own read fails only what it lacks.
            finally:
                self.windows.done(window)
                self.window = None
        return FetchedRun(self, storage.get(Kind.DATA, self._pack, self._start, self._length))


class FetchedRun:
    """A pack range as stored; ``open`` cuts one blob out of it and opens it."""

    __slots__ = ("_run", "_view")

    def __init__(self, run: PackRun, data: bytes | memoryview) -> None:
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
