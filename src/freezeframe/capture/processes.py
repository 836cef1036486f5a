"""What /proc says about processes: who can write to a set of volumes, which freezer cgroup a
process sits in, and whether it is stopped. The writer pause is built on these facts.

A process counts as a writer of a volume when it holds a file there open for writing, maps one
shared and writable, or has its working directory there (where programs create their files).
A process that opens, writes and closes a file between two looks is not seen; the pause
re-checks while the others are paused, and operators name such writers explicitly.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from freezeframe.capture.volumes import MOUNTINFO, Mount, parse_mountinfo

PROC = Path("/proc")
O_ACCMODE = 0o3
PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class Process:
    pid: int
    start_time: int  # clock ticks after boot: with the pid, names one process for good
    comm: str

    @property
    def key(self) -> str:
        return f"{self.pid}:{self.start_time}"


def describe(pid: int) -> Process | None:
    """The process ``pid``, or None if it is gone or a kernel thread."""
    fields = _stat_fields(pid)
    if fields is None or int(fields[6]) & PF_KTHREAD:
        return None
    comm = (PROC / str(pid) / "comm").read_text().strip() if _exists(pid) else "?"
    return Process(pid=pid, start_time=int(fields[19]), comm=comm)


def same_process(pid: int, start_time: int) -> bool:
    """Whether ``pid`` still names the process that started at ``start_time`` (not a reuse)."""
    fields = _stat_fields(pid)
    return fields is not None and int(fields[19]) == start_time


def state(pid: int) -> str | None:
    """The one-letter scheduler state (R, S, D, T, t, Z...), None if the process is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields is not None else None


def writers_of(devices: set[int], exclude: set[int]) -> list[Process]:
    """Processes that can write to files on ``devices`` (``st_dev`` values), except ``exclude``."""
    found = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        pid = int(entry.name)
        try:
            if _writes_to(pid, devices):
                process = describe(pid)
                if process is not None:
                    found.append(process)
        except OSError:
            continue  # gone while looked at, or not ours to inspect
    return sorted(found, key=lambda p: p.pid)


def freezer_cgroup_of(pid: int, mounts: list[Mount] | None = None) -> str | None:
    """The directory of the cgroup whose freezer would pause ``pid``: its cgroup v2 group when
    that can freeze (not the root), else its v1 freezer group; None when neither fits."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = next((line[3:] for line in lines if line.startswith("0::")), None)
    v1 = next(
        (line.split(":", 2)[2] for line in lines if "freezer" in line.split(":", 2)[1].split(",")),
        None,
    )
    if mounts is None:
        mounts = parse_mountinfo(MOUNTINFO.read_text())
    candidates = (("cgroup2", v2, "cgroup.freeze"), ("cgroup", v1, "freezer.state"))
    for fs_type, relative, marker in candidates:
        if relative is None or relative == "/":
            continue
        for mount in mounts:
            if mount.fs_type != fs_type:
                continue
            path = os.path.join(mount.mount_point, relative.lstrip("/"))
            if os.path.exists(os.path.join(path, marker)):
                return path
    return None


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def cont(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def ancestors(pid: int) -> set[int]:
    """``pid``'s parent, grandparent... up to PID 1 (they wait for us; never pause them)."""
    found: set[int] = set()
    current = pid
    while current > 1:
        fields = _stat_fields(current)
        if fields is None:
            break
        current = int(fields[1])
        found.add(current)
    return found


def _writes_to(pid: int, devices: set[int]) -> bool:
    base = PROC / str(pid)
    for link in ("cwd", "root"):
        if link == "root" and os.readlink(base / link) == "/":
            continue
        try:
            if os.stat(base / link).st_dev in devices:
                return True
        except OSError:
            pass
    fd_dir = base / "fd"
    for name in os.listdir(fd_dir):
        try:
            if os.stat(fd_dir / name).st_dev not in devices:
                continue
            flags = _fd_flags(base / "fdinfo" / name)
        except OSError:
            continue
        if flags & O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            return True
    return _maps_writable_shared(base, devices)


def _fd_flags(fdinfo: Path) -> int:
    for line in fdinfo.read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    return 0


def _maps_writable_shared(base: Path, devices: set[int]) -> bool:
    for line in (base / "maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[1][1] != "w" or parts[1][3] != "s":
            continue
        path = parts[5]
        if not path.startswith("/"):
            continue
        try:
            if os.stat(path.removesuffix(" (deleted)")).st_dev in devices:
                return True
        except OSError:
            continue
    return False


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; field 0 here is field 3 of
    proc(5), so flags is index 6 and starttime index 19."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _exists(pid: int) -> bool:
    return (PROC / str(pid)).exists()
