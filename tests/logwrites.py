"""The log device-mapper's ``log-writes`` target keeps of every write to a device, read and
replayed, so a test can rebuild the device as it stood after any write and check the crash
image there (tests/system/test_lvm_crash_images.py) instead of trusting where one snapshot fell.

The log (drivers/md/dm-log-writes.c; Documentation/admin-guide/device-mapper/log-writes.rst):
block 0 holds the super (magic, version, the number of entries, the block size: the logged
device's logical block size); from block 1 on, each entry is one block whose head is four
little-endian u64 (sector, number of sectors, both in blocks; flags; the mark text's length,
the text following in the same block), then the data written, ``sectors`` blocks of it (none
for a discard or a mark). Writes are logged once they are known to be on the device: a plain
write at the next flush, so after replaying every entry up to a FLUSH or FUA entry the replay
holds what a crash at that instant could have left on the disk.

Run in the lab guest (the host's Python over 9p) as ``python -c 'import logwrites; ...main()'``
(so its byte code is cached, and its imports kept few: each costs seconds under TCG), one JSON
line out:

    scan LOG                           the log's block size, entry count, marks and boundaries
    replay LOG TARGET STATE --to N     entries from STATE's next one through N onto TARGET,
                                       fsynced; STATE (a JSON file, made on first use) says
                                       where the replay stands, so calls pick up in order
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

if TYPE_CHECKING:
    import random

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH = 1 << 0
FUA = 1 << 1
DISCARD = 1 << 2
MARK = 1 << 3
METADATA = 1 << 4
KNOWN_FLAGS = FLUSH | FUA | DISCARD | MARK | METADATA
END_MARK = "dm-log-writes-end"  # the mark the target logs when it is removed

SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")


class LogError(ValueError):
    """The log is not one this reader understands (or is cut short)."""


class Entry(NamedTuple):
    """One logged write (or flush, discard, mark); ``offset`` is its head's place in the log."""

    number: int  # its place in the log, from 0
    offset: int
    end: int  # the byte after its data: the next entry's head
    sector: int  # in the log's blocks
    sectors: int
    flags: int
    mark: str | None = None

    @property
    def boundary(self) -> bool:
        """Whether a crash right after this entry is one the replay can show: a flush or FUA
        completed, so everything logged so far was on the disk."""
        return bool(self.flags & (FLUSH | FUA))

    @property
    def has_data(self) -> bool:
        return self.sectors > 0 and not self.flags & (DISCARD | MARK)


class Super(NamedTuple):
    entries: int
    blocksize: int


def read_super(log: BinaryIO) -> Super:
    log.seek(0)
    head = log.read(SUPER.size)
    if len(head) < SUPER.size:
        raise LogError("the log is shorter than its super")
    magic, version, entries, blocksize = SUPER.unpack(head)
    if magic != MAGIC:
        raise LogError(f"not a log-writes log (magic {magic:#x})")
    if version != VERSION:
        raise LogError(f"log-writes version {version} (this reader knows {VERSION})")
    if blocksize < 512 or blocksize & (blocksize - 1):
        raise LogError(f"block size {blocksize} is not a power of two of at least 512")
    return Super(entries, blocksize)


def iter_entries(
    log: BinaryIO, sup: Super, start: int = 0, offset: int | None = None, data: bool = True
) -> Iterator[tuple[Entry, bytes]]:
    """The entries from ``start`` (whose head is at ``offset``, block 1 for the first) to the
    super's count, each with its data (empty but for writes; empty too without ``data``: the
    data is skipped, not read, though the log must still hold it)."""
    offset = sup.blocksize if offset is None else offset
    total = log.seek(0, os.SEEK_END)
    for index in range(start, sup.entries):
        log.seek(offset)
        block = _read(log, sup.blocksize)
        if len(block) < sup.blocksize:
            raise LogError(f"entry {index} at byte {offset}: the log ends inside its head")
        sector, sectors, flags, data_len = ENTRY.unpack_from(block)
        if flags & ~KNOWN_FLAGS:
            raise LogError(f"entry {index} at byte {offset}: unknown flags {flags:#x}")
        mark = None
        if flags & MARK:
            if data_len > sup.blocksize - ENTRY.size:
                raise LogError(f"entry {index}: a mark of {data_len} bytes")
            mark = block[ENTRY.size : ENTRY.size + data_len].decode(errors="replace")
        elif data_len:
            raise LogError(f"entry {index}: inline data ({data_len} bytes) is not supported")
        size = sectors * sup.blocksize if sectors and not flags & (DISCARD | MARK) else 0
        entry = Entry(index, offset, offset + sup.blocksize + size, sector, sectors, flags, mark)
        if entry.end > total:
            raise LogError(f"entry {index}: the log ends inside its {size} bytes of data")
        content = _read(log, size) if size and data else b""
        offset = entry.end
        yield entry, content


def _read(log: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end of the log (an unbuffered read may return
    less than asked)."""
    chunks = []
    while size:
        chunk = log.read(size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Scan(NamedTuple):
    """What a pass over the whole log found (no data kept)."""

    blocksize: int
    entries: int
    marks: dict[str, int]  # mark text: its entry (the last of that text)
    boundaries: list[int]  # the FLUSH/FUA entries, in order
    end: int  # the byte after the last entry

    def boundaries_after(self, mark: str) -> list[int]:
        if mark not in self.marks:
            raise LogError(f"the log has no mark {mark!r} (it has {sorted(self.marks)})")
        first = self.marks[mark]
        return [index for index in self.boundaries if index > first]


def scan(log: BinaryIO) -> Scan:
    sup = read_super(log)
    marks: dict[str, int] = {}
    boundaries = []
    end = sup.blocksize
    for entry, _ in iter_entries(log, sup, data=False):
        if entry.mark is not None:
            marks[entry.mark] = entry.number
        if entry.boundary:
            boundaries.append(entry.number)
        end = entry.end
    return Scan(sup.blocksize, sup.entries, marks, boundaries, end)


def spread(boundaries: Sequence[int], count: int, rng: random.Random) -> list[int]:
    """``count`` of ``boundaries`` spread over the whole run: one at random from each of
    ``count`` equal strata (random within a stratum, so the picks do not fall in step with a
    workload's loop), the last boundary always among them; all of them if there are fewer."""
    if count >= len(boundaries):
        return list(boundaries)
    if count <= 0:
        return []
    picks = []
    for stratum in range(count - 1):
        low = stratum * len(boundaries) // count
        high = (stratum + 1) * len(boundaries) // count
        picks.append(boundaries[rng.randrange(low, high)])
    picks.append(boundaries[-1])
    return picks


class ReplayState:
    """Where a replay stands: the next entry (and its head's byte in the log), and the byte
    ranges of the target written so far (a discard zeroes what was written, the rest of a
    blank target reads as zeros already)."""

    def __init__(
        self, next_entry: int = 0, next_offset: int | None = None,
        written: list[list[int]] | None = None,
    ) -> None:  # fmt: skip
        self.next_entry = next_entry
        self.next_offset = next_offset
        self.written = written or []  # sorted, disjoint [start, end)

    def add(self, start: int, end: int) -> None:
        """Records [start, end) as written, merged with the ranges it touches."""
        starts = [r[0] for r in self.written]
        low = bisect.bisect_left([r[1] for r in self.written], start)
        high = bisect.bisect_right(starts, end)
        if low < high:
            start = min(start, self.written[low][0])
            end = max(end, self.written[high - 1][1])
        self.written[low:high] = [[start, end]]

    def take(self, start: int, end: int) -> list[tuple[int, int]]:
        """Removes [start, end) from the written ranges; the parts of it that were written."""
        taken = []
        kept = []
        for low, high in self.written:
            if high <= start or low >= end:
                kept.append([low, high])
                continue
            taken.append((max(low, start), min(high, end)))
            if low < start:
                kept.append([low, start])
            if high > end:
                kept.append([end, high])
        self.written = kept
        return taken

    @classmethod
    def load(cls, path: str) -> ReplayState:
        if not os.path.exists(path):
            return cls()
        with open(path) as f:
            doc = json.load(f)
        return cls(doc["next_entry"], doc["next_offset"], doc["written"])

    def save(self, path: str) -> None:
        doc = {"next_entry": self.next_entry, "next_offset": self.next_offset,
               "written": self.written}  # fmt: skip
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)


ZEROS = bytes(1 << 20)


def replay(log: BinaryIO, target: int, state: ReplayState, through: int) -> int:
    """Writes the entries from ``state.next_entry`` through ``through`` to the file descriptor
    ``target`` (a blank device or file the size of the logged one), in the log's order, and
    fsyncs it; advances ``state``. The bytes written (discards' zeros too)."""
    sup = read_super(log)
    if not state.next_entry <= through < sup.entries:
        raise LogError(f"cannot replay from entry {state.next_entry} through {through} "
                       f"of a log of {sup.entries}")  # fmt: skip
    written = 0
    for entry, data in iter_entries(log, sup, state.next_entry, state.next_offset):
        start = entry.sector * sup.blocksize
        end = start + entry.sectors * sup.blocksize
        if entry.has_data:
            os.pwrite(target, data, start)
            state.add(start, end)
            written += len(data)
        elif entry.flags & DISCARD:
            for low, high in state.take(start, end):
                for at in range(low, high, len(ZEROS)):
                    written += os.pwrite(target, ZEROS[: min(len(ZEROS), high - at)], at)
        state.next_entry = entry.number + 1
        state.next_offset = entry.end
        if entry.number == through:
            break
    os.fsync(target)
    return written


USAGE = "usage: logwrites.py scan LOG | replay LOG TARGET STATE --to ENTRY"


def main(argv: Sequence[str] | None = None) -> int:
    """The guest's command line (no argparse: its import alone takes seconds under TCG)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["scan"] and len(args) == 2:
        with _open_log(args[1]) as log:
            print(json.dumps(scan(log)._asdict()))
        return 0
    if args[:1] != ["replay"] or len(args) != 6 or args[4] != "--to" or not args[5].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    log_path, target, state_path, through = args[1], args[2], args[3], int(args[5])
    state = ReplayState.load(state_path)
    with _open_log(log_path) as log:
        fd = os.open(target, os.O_WRONLY)
        try:
            written = replay(log, fd, state, through)
        finally:
            os.close(fd)
    state.save(state_path)
    print(json.dumps({"next_entry": state.next_entry, "written": written}))
    return 0


def _open_log(path: str) -> BinaryIO:
    """Unbuffered and without read-ahead: either would read the data a scan skips."""
    log = open(path, "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
    os.posix_fadvise(log.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    return log


if __name__ == "__main__":
    sys.exit(main())
