"""Progress counters of a restore, and their totals for a progress display.

Totals come from the snapshot's summary when the whole snapshot is restored; for ``--include``
a background thread walks the selected trees, so the restore never waits for a count.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from freezeframe.errors import FreezeframeError
from freezeframe.restore.reader import Node, Snapshot, SnapshotReader
from freezeframe.restore.selection import Selection


@dataclass
class RestoreProgress:
    """Counters a progress display reads while the restore runs (totals may arrive late)."""

    files_done: int = 0
    bytes_done: int = 0
    total_files: int = 0
    total_bytes: int = 0
    errors: int = 0


def count_totals(
    reader: SnapshotReader, snapshot: Snapshot, selection: Selection, progress: RestoreProgress
) -> threading.Event:
    """Fill in the totals, now or in the background; set the returned event to stop."""
    stop = threading.Event()
    summary = snapshot.summary
    if selection is None and "bytes_total" in summary:
        counts = ("files_new", "files_changed", "files_unmodified")
        progress.total_files = sum(int(summary.get(key, 0)) for key in counts)
        progress.total_bytes = int(summary["bytes_total"])
    else:
        threading.Thread(
            target=_walk_totals,
            args=(reader, snapshot.tree, selection, progress, stop),
            daemon=True,
        ).start()
    return stop


def _walk_totals(
    reader: SnapshotReader,
    tree: bytes,
    selection: Selection,
    progress: RestoreProgress,
    stop: threading.Event,
) -> None:
    """Only progress depends on this, so a damaged tree just leaves the totals short."""
    try:
        roots: list[tuple[Node | None, bytes | None]] = []
        if selection is None:
            roots.append((None, tree))
        for components in selection or ():
            found = reader.find_node(tree, components)
            roots.append((found, found.subtree if found and found.type == "dir" else None))
        for found, subtree in roots:
            if found is not None and found.type == "file":
                progress.total_files += 1
                progress.total_bytes += found.size
            if subtree is None:
                continue
            for _path, node in reader.walk_tree(subtree):
                if stop.is_set():
                    return
                if node.type == "file":
                    progress.total_files += 1
                    progress.total_bytes += node.size
    except FreezeframeError:
        return
