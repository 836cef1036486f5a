"""Counters a running backup updates and a progress display reads (no locking: only the walker
writes them, and a display tolerates a value that is one update old)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BackupProgress:
    files_done: int = 0
    dirs_done: int = 0
    bytes_done: int = 0
    bytes_added: int = 0
    errors: int = 0
    total_files: int = 0
    total_bytes: int = 0
    scan_finished: bool = False
    current_path: str = ""
