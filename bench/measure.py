"""Running one timed step: wall time, the child's CPU time and peak RSS, cache dropping, du;
and the percentiles a table reports of many such measurements."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Measurement:
    """What one child process cost; rusage comes from wait4, so it covers its reaped children."""

    argv: list[str]
    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    log: str

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds: compared with wall time it shows parallelism."""
        return self.user_s + self.sys_s


def drop_caches() -> bool:
    """sync and drop the page cache so each step reads from disk; False when not permitted."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def run_measured(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Measurement:
    """Run argv through a small launcher process and return what it measured.

    Why the launcher: Linux carries a process's peak RSS across fork/vfork+exec, so a tool spawned
    straight from this (large) benchmark process would report *our* RSS as its peak. The launcher
    is a fresh, small Python (~10 MiB), so the floor it imposes is below any real tool's peak.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    result = log.with_name(log.name + ".rusage.json")
    result.unlink(missing_ok=True)
    launcher = [sys.executable, "-S", str(Path(__file__).resolve()), str(result), str(log)]
    subprocess.run([*launcher, str(cwd), "--", *argv], env=env, check=False)
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError) as exc:
        data = {"exit_code": 255, "wall_s": 0.0, "user_s": 0.0, "sys_s": 0.0, "max_rss_kib": 0}
        with log.open("a") as out:
            out.write(f"bench launcher produced no result: {exc}\n")
    return Measurement(argv=argv, log=str(log), **data)


def _launch(result: str, log: str, cwd: str, argv: list[str]) -> None:
    """Launcher body: spawn argv (output to log), wait4 it, write wall/CPU/RSS as JSON.

    Output goes to a file, not a pipe, so a chatty tool cannot block while we sit in wait4.
    """
    os.chdir(cwd)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
        ]
        start = time.perf_counter()
        try:
            pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)
        except OSError as exc:
            out.write(f"cannot start: {exc}\n".encode())
            code, usage = 127, resource.getrusage(resource.RUSAGE_CHILDREN)
        else:
            _pid, status, usage = os.wait4(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
    data = {
        "exit_code": code,
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
    }
    Path(result).write_text(json.dumps(data))


def dir_bytes(root: Path) -> int:
    """Apparent size of all files under root (like `du -sb` without directory entries)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


def log_tail(path: str, lines: int = 15) -> str:
    """Last lines of a step's log, to show when a step fails."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


if __name__ == "__main__":
    # Launcher mode: measure.py RESULT LOG CWD -- ARGV...
    _launch(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5:])


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50, p95 and max of ``values`` (ms, rounded to 0.01), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 2)}
