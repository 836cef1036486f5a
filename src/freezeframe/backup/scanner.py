"""A quick pre-scan that counts files and bytes, so the progress display can show an ETA."""

from __future__ import annotations

import os
import stat
import threading

from freezeframe.backup.progress import BackupProgress


def scan_totals(paths: list[bytes], progress: BackupProgress, stop: threading.Event) -> None:
    """Count regular files and their sizes under ``paths`` until done or told to stop."""
    stack = list(paths)
    while stack and not stop.is_set():
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            progress.total_files += 1
            progress.total_bytes += st.st_size
        elif stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    stack.extend(entry.path for entry in entries)
            except OSError:
                continue
    progress.scan_finished = not stop.is_set()
