"""Real loop-backed file systems for tests: an image file, mkfs, `mount -o loop`, and always an
unmount afterwards. Needs root and the mkfs tool; otherwise the test skips (or fails under
FREEZEFRAME_TEST_PRIVILEGED=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ffharness import is_root, privileged_required


@contextmanager
def small_tmpfs(mount: Path, size_mib: int = 24, *, lazy: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on ``mount`` (made if missing), for a full disk;
    unmounted afterwards (``lazy``: even while a server still has files open on it)."""
    if not is_root():
        privileged_required("mounting a small tmpfs needs root")
    mount.mkdir(exist_ok=True)
    options = f"size={size_mib}m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", *(["-l"] if lazy else []), str(mount)], check=True)


MKFS = {
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
}


@contextmanager
def loop_filesystem(
    workdir: Path,
    fs_type: str,
    size_mib: int = 256,
    name: str | None = None,
    image_dir: Path | None = None,
) -> Iterator[Path]:
    """A fresh ``fs_type`` file system mounted at ``workdir/<name>`` (default
    ``<fs_type>-mnt``), its image file in ``image_dir`` (default ``workdir``)."""
    if not is_root():
        privileged_required(f"mounting a loop {fs_type} file system needs root")
    tool = MKFS[fs_type]
    if shutil.which(tool[0]) is None and not Path("/usr/sbin", tool[0]).exists():
        privileged_required(f"{tool[0]} is not installed (make setup installs it)")
    name = name or f"{fs_type}-mnt"
    image = (image_dir or workdir) / f"{name}.img"
    mount_point = workdir / name
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run([*tool, str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        result = subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)
        os.unlink(image)


@contextmanager
def shared_workdir(prefix: str = "ffsrv") -> Iterator[Path]:
    """A directory under /tmp that service users (postgres, mysql) can traverse, removed
    afterwards: pytest's tmp_path is private to root, and servers run as their own user."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    work.chmod(0o711)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def writable_within(mount: Path, seconds: float) -> bool:
    """Whether a write to ``mount`` completes within ``seconds`` (a write to a frozen file
    system blocks, so it runs in a child that can be abandoned)."""
    probe = subprocess.Popen(["sh", "-c", f"echo x > {mount}/probe-$$ && sync -f {mount}"])
    try:
        return probe.wait(timeout=seconds) == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        return False
