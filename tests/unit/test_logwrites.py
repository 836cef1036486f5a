"""tests/logwrites.py on synthetic dm-log-writes logs, written here as the kernel lays them out
(drivers/md/dm-log-writes.c): the super in block 0, each entry a block of head (and mark text)
followed by its data. What the LVM crash-image test relies on: every entry is read back as
logged, the flush and FUA entries after a mark are the boundaries, a replay through an entry
leaves the target as the device stood then (discards zeroing what was written, replays in
several calls the same as one), and a log that is not whole or not understood is refused."""

from __future__ import annotations

import io
import json
import os
import random
import struct
from pathlib import Path

import pytest

from logwrites import (
    LogError,
    ReplayState,
    iter_entries,
    main,
    read_super,
    replay,
    scan,
    spread,
)

MAGIC = 0x6A736677736872
FLUSH, FUA, DISCARD, MARK, METADATA = 1, 2, 4, 8, 16


def encode(entries: list[tuple[int, int, int, bytes]], blocksize: int = 512) -> bytes:
    """A log of ``entries`` (sector, sectors, flags, data: the mark's text for a mark, the
    written bytes for a write), as the target writes it once removed."""
    out = bytearray(struct.pack("<QQQI", MAGIC, 1, len(entries), blocksize).ljust(blocksize, b"\0"))
    for sector, sectors, flags, data in entries:
        text = data if flags & MARK else b""
        head = struct.pack("<QQQQ", sector, sectors, flags, len(text)) + text
        out += head.ljust(blocksize, b"\0")
        if not flags & (MARK | DISCARD):
            assert len(data) == sectors * blocksize
            out += data
    return bytes(out)


def block(byte: int, count: int = 1, blocksize: int = 512) -> bytes:
    return bytes([byte]) * (blocksize * count)


# A device of 16 blocks: setup writes, a mark, then writes in flush-delimited groups.
ENTRIES = [
    (0, 2, 0, block(1, 2)),  # 0: setup
    (0, 0, FLUSH, b""),  # 1
    (0, 0, MARK, b"setup"),  # 2
    (4, 1, 0, block(2)),  # 3
    (5, 1, METADATA, block(3)),  # 4
    (0, 0, FLUSH, b""),  # 5: boundary
    (4, 2, DISCARD, b""),  # 6: zeroes blocks 4, 5
    (8, 1, FLUSH | FUA, block(4)),  # 7: boundary with data
    (9, 3, FUA, block(5, 3)),  # 8: boundary
    (10, 1, 0, block(6)),  # 9
    (0, 0, MARK, b"dm-log-writes-end"),  # 10
]


def _expected(through: int, blocksize: int = 512) -> bytes:
    """The 16-block device after ENTRIES[: through + 1], computed independently."""
    device = bytearray(16 * blocksize)
    for sector, sectors, flags, data in ENTRIES[: through + 1]:
        if flags & MARK or not sectors:
            continue
        at = sector * blocksize
        device[at : at + sectors * blocksize] = (
            bytes(sectors * blocksize) if flags & DISCARD else data
        )
    return bytes(device)


def test_entries_are_read_back_as_logged() -> None:
    log = io.BytesIO(encode(ENTRIES))
    sup = read_super(log)
    assert (sup.entries, sup.blocksize) == (len(ENTRIES), 512)
    got = list(iter_entries(log, sup))
    assert [(e.sector, e.sectors, e.flags) for e, _ in got] == [e[:3] for e in ENTRIES]
    assert [e.number for e, _ in got] == list(range(len(ENTRIES)))
    assert got[2][0].mark == "setup" and got[10][0].mark == "dm-log-writes-end"
    assert got[8][1] == block(5, 3) and got[6][1] == b"" and got[5][1] == b""
    assert got[0][0].offset == 512 and got[1][0].offset == 512 * 4  # head + 2 blocks of data
    assert [e.boundary for e, _ in got] == [False, True, False, False, False, True, False,
                                           True, True, False, False]  # fmt: skip


def test_scan_finds_marks_and_the_boundaries_after_one() -> None:
    found = scan(io.BytesIO(encode(ENTRIES)))
    assert found.marks == {"setup": 2, "dm-log-writes-end": 10}
    assert found.boundaries == [1, 5, 7, 8]
    assert found.boundaries_after("setup") == [5, 7, 8]
    assert found.end == len(encode(ENTRIES))
    with pytest.raises(LogError, match="no mark 'later'"):
        found.boundaries_after("later")


def test_a_4k_block_log_is_read_in_its_blocks() -> None:
    entries = [(3, 2, FUA, block(7, 2, 4096)), (0, 0, MARK, b"m")]
    log = io.BytesIO(encode(entries, 4096))
    (write, data), (mark, _) = iter_entries(log, read_super(log))
    assert (write.sector, write.sectors, len(data)) == (3, 2, 8192)
    assert mark.offset == 4096 * 4 and mark.mark == "m"


@pytest.mark.parametrize("through", range(len(ENTRIES)))
def test_a_replay_through_an_entry_leaves_the_device_as_it_stood(
    tmp_path: Path, through: int
) -> None:
    target = tmp_path / "target"
    target.write_bytes(bytes(16 * 512))
    state = ReplayState()
    fd = os.open(target, os.O_WRONLY)
    try:
        replay(io.BytesIO(encode(ENTRIES)), fd, state, through)
    finally:
        os.close(fd)
    assert target.read_bytes() == _expected(through)
    assert state.next_entry == through + 1


def test_replays_in_steps_saved_between_calls_match_one_pass(tmp_path: Path) -> None:
    """The way the system test drives it: the CLI, the state in a file, boundary by boundary."""
    log, target, state = tmp_path / "log", tmp_path / "target", tmp_path / "state.json"
    log.write_bytes(encode(ENTRIES))
    target.write_bytes(bytes(16 * 512))
    for through in (1, 5, 7, 8, 10):
        assert main(["replay", str(log), str(target), str(state), "--to", str(through)]) == 0
        assert target.read_bytes() == _expected(through)
    assert ReplayState.load(str(state)).next_entry == len(ENTRIES)
    with pytest.raises(LogError, match="cannot replay from entry 11"):
        main(["replay", str(log), str(target), str(state), "--to", "10"])


def test_a_discard_zeroes_only_what_was_written(tmp_path: Path) -> None:
    """A blank target reads as zeros: a discard of what the replay never wrote writes
    nothing (mkfs discards whole volumes), and one over written blocks zeroes them."""
    entries = [(0, 8, DISCARD, b""), (2, 2, 0, block(9, 2)), (0, 8, DISCARD, b"")]
    target = tmp_path / "t"
    target.write_bytes(block(0xEE, 8))  # not blank: shows which bytes a replay touched
    fd = os.open(target, os.O_WRONLY)
    try:
        state = ReplayState()
        assert replay(io.BytesIO(encode(entries)), fd, state, 0) == 0
        assert replay(io.BytesIO(encode(entries)), fd, state, 2) == 2 * 512 + 2 * 512
    finally:
        os.close(fd)
    assert target.read_bytes() == block(0xEE, 2) + bytes(1024) + block(0xEE, 4)
    assert state.written == []


def test_written_ranges_merge_and_split() -> None:
    state = ReplayState()
    for start, end in [(10, 20), (30, 40), (20, 25), (50, 60), (0, 5), (35, 52)]:
        state.add(start, end)
    assert state.written == [[0, 5], [10, 25], [30, 60]]
    assert state.take(3, 33) == [(3, 5), (10, 25), (30, 33)]
    assert state.written == [[0, 3], [33, 60]]
    assert state.take(100, 200) == []


def test_the_cli_scan_prints_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    log.write_bytes(encode(ENTRIES))
    assert main(["scan", str(log)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["entries"] == 11 and doc["boundaries"] == [1, 5, 7, 8]
    assert doc["marks"] == {"setup": 2, "dm-log-writes-end": 10}


@pytest.mark.parametrize(
    ("log", "message"),
    [
        (b"\0" * 10, "shorter than its super"),
        (struct.pack("<QQQI", 0x1234, 1, 0, 512), "not a log-writes log"),
        (struct.pack("<QQQI", MAGIC, 2, 0, 512), "version 2"),
        (struct.pack("<QQQI", MAGIC, 1, 0, 1000), "block size 1000"),
        (encode(ENTRIES)[: 512 * 3], "ends inside its 1024 bytes of data"),
        (encode(ENTRIES)[: 512 * 4 + 100], "entry 1 at byte 2048: the log ends inside its head"),
        (encode([(0, 0, 1 << 9, b"")]), "unknown flags 0x200"),
        (encode([(0, 1, 0, block(1))])[:512] + struct.pack("<QQQQ", 0, 1, 0, 7).ljust(512, b"\0"),
         "inline data"),
    ],
)  # fmt: skip
def test_a_log_not_whole_or_not_understood_is_refused(log: bytes, message: str) -> None:
    with pytest.raises(LogError, match=message):
        scan(io.BytesIO(log))


def test_the_spread_covers_the_run_and_keeps_the_last() -> None:
    boundaries = list(range(100, 1100, 2))  # 500 boundaries
    picks = spread(boundaries, 10, random.Random(7))
    assert len(picks) == 10 and picks == sorted(picks) and len(set(picks)) == 10
    assert picks[-1] == boundaries[-1]
    for stratum, pick in enumerate(picks[:-1]):
        assert boundaries[stratum * 50] <= pick < boundaries[(stratum + 1) * 50]
    assert spread(boundaries, 10, random.Random(7)) == picks  # a seed reproduces it
    assert spread(boundaries, 10, random.Random(8)) != picks  # and another moves it
    assert spread([3, 5], 12, random.Random(1)) == [3, 5]
    assert spread(boundaries, 0, random.Random(1)) == []
