"""What each consistency level is worth under live writes, beside what restic and borg give today.

Usage (root): python bench/consistency.py [--trials 20] [--work DIR] [--json OUT]
                                          [--tools freezeframe,restic,borg]

For each proof workload of the test suite (tests/workloads.py), on fresh loop-backed btrfs file
systems with the writers running flat out: freezeframe at `filesystem`, `crash` and `none`, then
restic and borg reading the same live directories; every backup is restored and its invariant
checked. The table gives violations per trials, and for freezeframe the capture windows under
load: the writers' pause (several volumes) or the snapshot itself (one volume), p50/p95/max.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from measure import percentiles
from tools import ALL_TOOLS, FREEZEFRAME, Tool, ensure_installed

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the workloads and loop fixtures the tests use

from cgroupfixtures import own_cgroup  # noqa: E402
from fsfixtures import loop_filesystem  # noqa: E402
from workloads import WORKLOADS, Workload  # noqa: E402

LEVELS = ("filesystem", "crash", "none")
VOLUME_MIB = 8192  # sparse; room for the rewrites that snapshots pin until they are deleted


@dataclass
class Row:
    workload: str
    reader: str
    trials: int = 0
    violations: int = 0
    windows_ms: list[float] = field(default_factory=list)
    window_kind: str = ""
    backup_s: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "reader": self.reader,
            "trials": self.trials,
            "violations": self.violations,
            "window": self.window_kind,
            "window_ms": percentiles(self.windows_ms),
            "backup_s_median": round(statistics.median(self.backup_s), 3)
            if self.backup_s
            else None,
        }


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1, 3):  # restic 3 / borg 1: finished with warnings
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def _restored(target: Path, sources: list[Path]) -> list[Path]:
    return [target / str(source).lstrip("/") for source in sources]


def _measure(
    row: Row,
    trials: int,
    *,
    backup: Callable[[int], dict[str, Any] | None],
    restore: Callable[[int, Path], None],
    holds: Callable[[Path], bool],
    scratch: Path,
) -> None:
    for trial in range(trials):
        started = time.monotonic()
        record = backup(trial)
        row.backup_s.append(time.monotonic() - started)
        if record is not None:
            if record.get("pause"):
                row.window_kind = "writers paused"
                row.windows_ms.append(record["pause"]["window_ms"])
            elif record["volumes"] and "snapshot_ms" in record["volumes"][0]:
                row.window_kind = "snapshot"
                row.windows_ms.append(record["volumes"][0]["snapshot_ms"])
        target = scratch / f"restore-{trial}"
        target.mkdir(parents=True)
        restore(trial, target)
        row.trials += 1
        row.violations += not holds(target)
        subprocess.run(["rm", "-rf", str(target)], check=True)


def _freezeframe_rows(
    name: str, work: Workload, sources: list[Path], trials: int, base: Path
) -> list[Row]:
    tool = ALL_TOOLS["freezeframe"]()
    repo = base / "ff-repo"
    env = tool.env(base / "ff-home", repo)
    (base / "ff-home" / "tmp").mkdir(parents=True, exist_ok=True)
    _run(tool.init(repo).argv, env)
    rows = []
    for level in LEVELS:
        row = Row(name, f"freezeframe {level}")

        def backup(_trial: int, level: str = level) -> dict[str, Any]:
            argv = [str(FREEZEFRAME), "--repo", str(repo), "--no-progress", "--json", "backup"]
            out = json.loads(_run([*argv, *map(str, sources), "--consistency", level], env))
            assert out["consistency"]["achieved"] == level, out["consistency"]
            return dict(out["consistency"])

        def restore(_trial: int, target: Path) -> None:
            _run(tool.restore(repo, target, 0).argv, env)

        _measure(
            row,
            trials,
            backup=backup,
            restore=restore,
            holds=lambda t: work.holds(_restored(t, sources)),
            scratch=base / "scratch",
        )
        rows.append(row)
    return rows


def _other_row(
    tool: Tool, name: str, work: Workload, sources: list[Path], *, trials: int, base: Path
) -> Row:
    repo = base / f"{tool.name}-repo"
    home = base / f"{tool.name}-home"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = tool.env(home, repo)
    _run(tool.init(repo).argv, env)
    row = Row(name, f"{tool.name} (live read)")

    def backup(trial: int) -> None:
        step = tool.backup(repo, sources[0], trial)
        argv = step.argv + [str(s) for s in sources[1:]]
        _run(argv, env, step.cwd)

    def restore(trial: int, target: Path) -> None:
        step = tool.restore(repo, target, trial)
        _run(step.argv, env, step.cwd)

    _measure(
        row,
        trials,
        backup=backup,
        restore=restore,
        holds=lambda t: work.holds(_restored(t, sources)),
        scratch=base / "scratch",
    )
    return row


def _workload_rows(
    name: str, work: Workload, tools: list[str], trials: int, base: Path
) -> list[Row]:
    rows: list[Row] = []
    with ExitStack() as stack:
        sources = []
        for index in range(work.volumes):
            mnt = stack.enter_context(
                loop_filesystem(base, "btrfs", size_mib=VOLUME_MIB, name=f"vol{index}")
            )
            (mnt / "db").mkdir()
            sources.append(mnt / "db")
        # The writer gets a cgroup of its own, as a service would: paused by the cgroup freezer.
        cgroup = stack.enter_context(own_cgroup("bench"))
        stack.enter_context(work.start(sources, cgroup))
        time.sleep(0.5)
        if "freezeframe" in tools:
            rows += _freezeframe_rows(name, work, sources, trials, base)
        for tool_name in tools:
            if tool_name != "freezeframe":
                tool = ALL_TOOLS[tool_name]()
                rows.append(_other_row(tool, name, work, sources, trials=trials, base=base))
    return rows


def _table(rows: list[Row]) -> str:
    lines = [
        "| workload | reader | broken restores | capture window (ms) p50 / p95 / max "
        "| backup s (median) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        p = percentiles(row.windows_ms)
        window = f"{row.window_kind}: {p['p50']} / {p['p95']} / {p['max']}" if p else "-"
        median = statistics.median(row.backup_s) if row.backup_s else 0
        lines.append(
            f"| {row.workload} | {row.reader} | {row.violations} of {row.trials} | {window} "
            f"| {median:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--work", type=Path, default=PROJECT / "bench" / "work" / "consistency")
    parser.add_argument("--tools", default="freezeframe,restic,borg")
    parser.add_argument("--workloads", default="a,b,c", help="letters of the workloads to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: writers killed, volumes unmounted, cgroups removed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    tools = args.tools.split(",")
    ensure_installed(tools)
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    rows: list[Row] = []
    by_letter = {name.split(":")[0]: name for name in WORKLOADS}
    for index, name in enumerate(by_letter[letter] for letter in args.workloads.split(",")):
        base = args.work / f"w{index}"
        base.mkdir(parents=True)
        print(f"workload {name}: {args.trials} trials per reader", flush=True)
        rows += _workload_rows(name, WORKLOADS[name], tools, args.trials, base)
        print(_table(rows[-(len(LEVELS) + len(tools) - 1) :]), flush=True)
    print("\n" + _table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
