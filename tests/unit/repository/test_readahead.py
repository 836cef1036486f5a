"""Read-ahead windows: never past a pack's last blob, never over a window already planned,
never more bytes than the budget; a window is read once however many runs it serves."""

from __future__ import annotations

import threading
from pathlib import Path

from freezeframe.repository.readahead import Windows
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage

KiB = 1024


def test_a_window_stops_at_the_packs_last_blob_and_serves_the_runs_inside() -> None:
    windows = Windows(budget=64 * KiB, window=16 * KiB)
    first = windows.place("p", 0, 1 * KiB, blobs_end=10 * KiB)
    assert first is not None and (first.start, first.end) == (0, 10 * KiB)
    assert windows.place("p", 4 * KiB, 9 * KiB, blobs_end=10 * KiB) is first
    assert first.pending == 2


def test_a_window_never_reads_into_the_next_one() -> None:
    windows = Windows(budget=64 * KiB, window=16 * KiB)
    later = windows.place("p", 8 * KiB, 9 * KiB, blobs_end=None)
    earlier = windows.place("p", 1 * KiB, 2 * KiB, blobs_end=None)
    assert later is not None and earlier is not None
    assert (earlier.start, earlier.end) == (1 * KiB, 8 * KiB)


def test_windows_stay_within_the_budget() -> None:
    windows = Windows(budget=32 * KiB, window=16 * KiB)
    placed = [windows.place(f"p{i}", 0, KiB, blobs_end=None) for i in range(3)]
    assert placed[0] is not None and placed[1] is not None
    assert placed[2] is None  # both still awaited: no room, a plain read instead
    windows.done(placed[0])
    again = windows.place("p2", 0, KiB, blobs_end=None)
    assert again is not None  # the done one made room
    assert windows.place("p0", 0, KiB, blobs_end=None) is None  # and is gone


def test_a_window_is_read_once_for_all_its_runs(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.create_layout()
    storage.put(Kind.DATA, "ab" * 32, bytes(range(256)) * 64)
    reads = []

    class Counting(LocalStorage):
        def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
            reads.append((offset, length))
            return super().get(kind, name, offset, length)

    counting = Counting(tmp_path)
    windows = Windows(budget=64 * KiB, window=16 * KiB)
    window = windows.place("ab" * 32, 0, 100, blobs_end=16 * KiB)
    assert window is not None
    for _ in range(5):
        assert windows.place("ab" * 32, 200, 300, blobs_end=16 * KiB) is window
    got = []
    threads = [threading.Thread(target=lambda: got.append(window.read(counting))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == [(0, 16 * KiB)]
    assert got == [(bytes(range(256)) * 64)[: 16 * KiB]] * 6
