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

Run in the lab guest (the host's Python over 9p) as a script, one JSON line out:

    scan LOG                           the log's block size, entry count, marks and boundaries
    replay LOG TARGET STATE --to N     entries from STATE's next one through N onto TARGET,
                                       fsynced; STATE (a JSON file, made on first use) says
                                       where the replay stands, so calls pick up in order
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

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


@dataclass(frozen=True)
class Entry:
    """One logged write (or flush, discard, mark); ``offset`` is its head's place in the log."""

    index: int
    offset: int
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


@dataclass(frozen=True)
class Super:
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
    log: BinaryIO, sup: Super, start: int = 0, offset: int | None = None
) -> Iterator[tuple[Entry, bytes]]:
    """The entries from ``start`` (whose head is at ``offset``, block 1 for the first) to the
    super's count, each with its data (empty but for writes)."""
    offset = sup.blocksize if offset is None else offset
    for index in range(start, sup.entries):
        log.seek(offset)
        block = log.read(sup.blocksize)
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
        entry = Entry(index, offset, sector, sectors, flags, mark)
        offset += sup.blocksize
        data = b""
        if entry.has_data:
            size = sectors * sup.blocksize
            data = log.read(size)
            if len(data) < size:
                raise LogError(f"entry {index}: the log ends inside its {size} bytes of data")
            offset += size
        yield entry, data


@dataclass(frozen=True)
class Scan:
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

    def to_json(self) -> dict[str, object]:
        return {"blocksize": self.blocksize, "entries": self.entries, "marks": self.marks,
                "boundaries": self.boundaries, "end": self.end}  # fmt: skip


def scan(log: BinaryIO) -> Scan:
    sup = read_super(log)
    marks: dict[str, int] = {}
    boundaries = []
    end = sup.blocksize
    for entry, data in iter_entries(log, sup):
        if entry.mark is not None:
            marks[entry.mark] = entry.index
        if entry.boundary:
            boundaries.append(entry.index)
        end = entry.offset + sup.blocksize + len(data)
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


@dataclass
class ReplayState:
    """Where a replay stands: the next entry (and its head's byte in the log), and the byte
    ranges of the target written so far (a discard zeroes what was written, the rest of a
    blank target reads as zeros already)."""

    next_entry: int = 0
    next_offset: int | None = None
    written: list[list[int]] = field(default_factory=list)  # sorted, disjoint [start, end)

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
    def load(cls, path: Path) -> ReplayState:
        if not path.exists():
            return cls()
        doc = json.loads(path.read_text())
        return cls(doc["next_entry"], doc["next_offset"], doc["written"])

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        doc = {"next_entry": self.next_entry, "next_offset": self.next_offset,
               "written": self.written}  # fmt: skip
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)


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
        state.next_entry = entry.index + 1
        state.next_offset = entry.offset + sup.blocksize + len(data)
        if entry.index == through:
            break
    os.fsync(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    scanning = commands.add_parser("scan")
    scanning.add_argument("log")
    replaying = commands.add_parser("replay")
    replaying.add_argument("log")
    replaying.add_argument("target")
    replaying.add_argument("state", type=Path)
    replaying.add_argument("--to", type=int, required=True)
    args = parser.parse_args(argv)
    with open(args.log, "rb", buffering=1 << 20) as log:
        if args.command == "scan":
            print(json.dumps(scan(log).to_json()))
            return 0
        state = ReplayState.load(args.state)
        fd = os.open(args.target, os.O_WRONLY)
        try:
            written = replay(log, fd, state, args.to)
        finally:
            os.close(fd)
        state.save(args.state)
        print(json.dumps({"next_entry": state.next_entry, "written": written}))
        return 0


if __name__ == "__main__":
    sys.exit(main())
