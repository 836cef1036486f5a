"""Restored VM images: which paths of a VM snapshot hold a disk, and turning the sparse raw
images a restore writes into another format."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from freezeframe.errors import FreezeframeError, UsageError

FORMATS = ("raw", "qcow2")


def vm_root(paths: list[str]) -> str | None:
    """The snapshot's ``/vm/NAME`` when it is a VM's snapshot."""
    if len(paths) == 1 and paths[0].startswith("/vm/") and paths[0].count("/") == 2:
        return paths[0]
    return None


def disk_includes(paths: list[str], disks: list[str]) -> list[str]:
    """``--disk NAME``: the paths to restore, the definition included."""
    root = vm_root(paths)
    if root is None:
        raise UsageError("--disk applies to a VM's snapshot (made with backup --vm)")
    return [f"{root}/definition.json", *(f"{root}/{disk}.raw" for disk in disks)]


def convert_images(directory: Path, fmt: str) -> list[Path]:
    """Every ``*.raw`` in ``directory`` converted to ``fmt`` beside it, the raw one removed."""
    if fmt == "raw":
        return sorted(directory.glob("*.raw"))
    converted = []
    for raw in sorted(directory.glob("*.raw")):
        out = raw.with_suffix(f".{fmt}")
        result = subprocess.run(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise FreezeframeError(f"converting {raw} to {fmt}: {result.stderr.strip()}")
        os.unlink(raw)
        converted.append(out)
    return converted
