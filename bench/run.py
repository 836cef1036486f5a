"""Benchmark freezeframe against restic and borg on identical, deterministic datasets.

Usage: python bench/run.py [--sizes 256M,2G] [--small-files 200000] [--work DIR]
                           [--tools freezeframe,restic,borg] [--json OUT]

Per dataset and tool: fresh repo, initial backup, no-change backup, backup after modifying 2 % of
the files, full restore into an empty directory (verified against the source by full hash).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dataset as ds_mod
from measure import Measurement, dir_bytes, drop_caches, log_tail, run_measured
from tools import ALL_TOOLS, Step, Tool, ensure_installed

MIB = 1024 * 1024
DEFAULT_WORK = Path(__file__).resolve().parent / "work"
STEPS = ("init", "backup initial", "backup nochange", "backup modified", "restore")
# Exit codes meaning "finished, with warnings" (unreadable files etc.): keep going but flag it.
WARNING_CODES = {"restic": {3}, "borg": {1}, "freezeframe": {3}}
MULTICORE = 1.2


@dataclass
class Row:
    """One step of one tool on one dataset."""

    tool: str
    step: str
    m: Measurement
    repo_bytes: int | None
    data_bytes: int

    @property
    def mib_s(self) -> float | None:
        """Throughput over the whole dataset (backup scans it all, restore writes it all)."""
        if self.step == "init" or self.m.wall_s <= 0:
            return None
        return self.data_bytes / MIB / self.m.wall_s

    def to_json(self) -> dict[str, Any]:
        """Flat record for --json."""
        return {
            "tool": self.tool,
            "step": self.step,
            "wall_s": round(self.m.wall_s, 3),
            "cpu_s": round(self.m.cpu_s, 3),
            "user_s": round(self.m.user_s, 3),
            "sys_s": round(self.m.sys_s, 3),
            "max_rss_mib": round(self.m.max_rss_kib / 1024, 1),
            "repo_bytes": self.repo_bytes,
            "mib_per_s": None if self.mib_s is None else round(self.mib_s, 1),
            "exit_code": self.m.exit_code,
            "argv": self.m.argv,
            "log": self.m.log,
        }


@dataclass
class DatasetResult:
    """Everything measured on one dataset."""

    ds: ds_mod.Dataset
    rows: list[Row] = field(default_factory=list)
    verify: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    modified_files: int = 0

    def get(self, tool: str, step: str) -> Row | None:
        """The row for (tool, step) if that step ran."""
        return next((r for r in self.rows if r.tool == tool and r.step == step), None)


# ---------------------------------------------------------------------------------------------
# Running


def _fresh_dir(path: Path) -> Path:
    """Remove and recreate a directory: every repo/home/restore target starts empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def verify_restore(expected: dict[str, tuple[int, str]], restored: Path) -> dict[str, Any]:
    """Compare the restored tree with the source manifest (file set, sizes, full content hash)."""
    got = ds_mod.manifest(restored) if restored.is_dir() else {}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    return {
        "ok": not (missing or extra or differ),
        "files_expected": len(expected),
        "files_restored": len(got),
        "missing": missing[:20],
        "extra": extra[:20],
        "differ": differ[:20],
        "counts": {"missing": len(missing), "extra": len(extra), "differ": len(differ)},
    }


class Runner:
    """Runs all steps of all tools on one dataset; holds the shared settings."""

    def __init__(self, work: Path, drop: bool, keep_repos: bool) -> None:
        """Settings shared by all datasets."""
        self.work = work
        self.drop = drop
        self.keep_repos = keep_repos

    def _step(
        self,
        res: DatasetResult,
        tool: Tool,
        env: dict[str, str],
        name: str,
        step: Step,
        *,
        repo: Path | None,
    ) -> Row:
        """Drop caches, run one timed step, record it, and print a progress line."""
        if self.drop:
            drop_caches()
        log = self.work / "logs" / res.ds.name / tool.name / f"{name.replace(' ', '-')}.log"
        cwd = step.cwd or self.work
        m = run_measured(step.argv, env, cwd, log)
        row = Row(tool.name, name, m, dir_bytes(repo) if repo else None, res.ds.bytes)
        res.rows.append(row)
        print(
            f"  [{res.ds.name}] {tool.name:<11} {name:<16} {m.wall_s:8.2f} s  exit {m.exit_code}",
            flush=True,
        )
        return row

    def _ok(self, res: DatasetResult, tool: Tool, row: Row) -> bool:
        """False (after shouting) if the step failed; warnings are recorded but let us go on."""
        code = row.m.exit_code
        if code == 0:
            return True
        kind = "WARNING" if code in WARNING_CODES.get(tool.name, set()) else "FAILED"
        msg = f"{kind}: {tool.name} {row.step} on {res.ds.name} exited {code} (log {row.m.log})"
        res.failures.append(msg)
        print(f"!!! {msg}\n{log_tail(row.m.log)}", file=sys.stderr, flush=True)
        return kind == "WARNING"

    def run_tool(self, res: DatasetResult, tool: Tool, expected: list[dict[str, Any]]) -> None:
        """init, three backups (modifying 2 % before the third), restore, verify."""
        ds = res.ds
        ds_mod.reset(ds)
        repo = self.work / "repos" / ds.name / tool.name
        if repo.exists():
            shutil.rmtree(repo)
        repo.parent.mkdir(parents=True, exist_ok=True)
        home = _fresh_dir(self.work / "home" / tool.name)
        (home / "tmp").mkdir()
        env = tool.env(home, repo)
        plan = [
            ("init", tool.init(repo)),
            ("backup initial", tool.backup(repo, ds.root, 1)),
            ("backup nochange", tool.backup(repo, ds.root, 2)),
            ("backup modified", tool.backup(repo, ds.root, 3)),
        ]
        for name, step in plan:
            if name == "backup modified":
                res.modified_files = ds_mod.modify(ds)
            if not self._ok(res, tool, self._step(res, tool, env, name, step, repo=repo)):
                return
        target = _fresh_dir(self.work / "restore" / ds.name / tool.name)
        row = self._step(res, tool, env, "restore", tool.restore(repo, target, 3), repo=None)
        if self._ok(res, tool, row):
            if not expected:
                expected.append(ds_mod.manifest(ds.root))
            res.verify[tool.name] = verify_restore(
                expected[0], target / ds.root.relative_to(ds.root.anchor)
            )
            if not res.verify[tool.name]["ok"]:
                msg = f"RESTORE MISMATCH: {tool.name} on {ds.name}: {res.verify[tool.name]}"
                res.failures.append(msg)
                print(f"!!! {msg}", file=sys.stderr, flush=True)
        shutil.rmtree(target)
        if not self.keep_repos:
            shutil.rmtree(repo)

    def run_dataset(self, ds: ds_mod.Dataset, tools: list[Tool]) -> DatasetResult:
        """All tools on one dataset, leaving the dataset pristine afterwards."""
        res = DatasetResult(ds)
        expected: list[dict[str, Any]] = []  # source manifest after the 2 % change, hashed once
        try:
            for tool in tools:
                self.run_tool(res, tool, expected)
        finally:
            ds_mod.reset(ds)
        return res


# ---------------------------------------------------------------------------------------------
# Reporting


def _fmt(value: float | None, spec: str) -> str:
    """Format a number or show a dash for 'not applicable'."""
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b when both are known and b is non-zero."""
    return None if a is None or b is None or b == 0 else a / b


def ratios(res: DatasetResult, peers: list[str]) -> dict[str, dict[str, float | None]]:
    """freezeframe / peer for wall time, peak RSS and repo size, per step."""
    out: dict[str, dict[str, float | None]] = {}
    for step in STEPS:
        ff = res.get("freezeframe", step)
        if ff is None:
            continue
        cols: dict[str, float | None] = {}
        for peer in peers:
            p = res.get(peer, step)
            if p is None:
                continue
            cols[f"wall/{peer}"] = _ratio(ff.m.wall_s, p.m.wall_s)
            cols[f"rss/{peer}"] = _ratio(ff.m.max_rss_kib, p.m.max_rss_kib)
            # A fresh repo's size says nothing about storage efficiency: backups only.
            if step.startswith("backup"):
                cols[f"repo/{peer}"] = _ratio(ff.repo_bytes, p.repo_bytes)
        out[step] = cols
    return out


def print_table(res: DatasetResult, tools: list[str]) -> None:
    """Rows step x tool; then freezeframe's ratios to each peer and the restore verification."""
    ds = res.ds
    print(f"\n=== {ds.name}: {ds.files} files, {ds.bytes / MIB:.1f} MiB ({ds.root}) ===")
    print(f"    2 % modification touched {res.modified_files} files before 'backup modified'")
    head = f"{'step':<16} {'tool':<12} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>8}"
    print(head + f" {'peak RSS MiB':>12} {'repo MiB':>10} {'MiB/s':>8}  exit")
    for step in STEPS:
        for tool in tools:
            r = res.get(tool, step)
            if r is None:
                continue
            repo = None if r.repo_bytes is None else r.repo_bytes / MIB
            print(
                f"{step:<16} {tool:<12} {r.m.wall_s:8.2f} {r.m.cpu_s:8.2f} "
                f"{_ratio(r.m.cpu_s, r.m.wall_s) or 0:8.2f} {r.m.max_rss_kib / 1024:12.1f} "
                f"{_fmt(repo, '10.1f'):>10} {_fmt(r.mib_s, '8.1f'):>8}  {r.m.exit_code}"
            )
    _print_ratios(res, [t for t in tools if t != "freezeframe"])
    _print_multicore(res)
    for tool, v in res.verify.items():
        state = "OK" if v["ok"] else "!!! MISMATCH !!!"
        print(
            f"restore verify {tool:<12} {state} ({v['files_restored']}/{v['files_expected']}"
            f" files, full content hash) {v['counts'] if not v['ok'] else ''}"
        )
    for msg in res.failures:
        print(f"!!! {msg}")


def _print_ratios(res: DatasetResult, peers: list[str]) -> None:
    """The ff/peer table; < 1 means freezeframe is better (faster, leaner, smaller)."""
    table = ratios(res, peers)
    if not table or not any(table.values()):
        return
    cols = [f"{kind}/{p}" for kind in ("wall", "rss", "repo") for p in peers]
    print(
        "\nfreezeframe / peer ratios (< 1 means freezeframe is better: faster, less RAM, smaller)"
    )
    print(f"{'step':<16} " + " ".join(f"{c:>12}" for c in cols))
    for step, vals in table.items():
        print(f"{step:<16} " + " ".join(f"{_fmt(vals.get(c), '12.2f'):>12}" for c in cols))


def _print_multicore(res: DatasetResult) -> None:
    """Say, per step, whether freezeframe kept more than one core busy (CPU/wall > 1.2)."""
    notes = []
    for step in STEPS:
        r = res.get("freezeframe", step)
        if r is not None and r.m.wall_s > 0:
            par = r.m.cpu_s / r.m.wall_s
            notes.append(f"{step}: {par:.2f}{' (multi-core)' if par > MULTICORE else ''}")
    if notes:
        print(
            f"freezeframe CPU/wall (> {MULTICORE} = used more than one core): " + "; ".join(notes)
        )


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line; defaults are the full benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="256M,2G", help="mixed dataset sizes, or 'none'")
    p.add_argument("--small-files", type=int, default=200_000, help="0 skips that dataset")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="datasets, repos, logs")
    p.add_argument("--tools", default="freezeframe,restic,borg")
    p.add_argument("--json", type=Path, help="also write machine-readable results here")
    p.add_argument("--keep-repos", action="store_true", help="keep repositories afterwards")
    p.add_argument("--no-drop-caches", action="store_true", help="measure with a warm cache")
    return p.parse_args(argv)


def select_tools(names: list[str]) -> list[Tool]:
    """Install what apt can provide, then keep only the tools that actually run."""
    unknown = [n for n in names if n not in ALL_TOOLS]
    if unknown:
        raise SystemExit(f"unknown tools: {unknown}; choose from {list(ALL_TOOLS)}")
    ensure_installed(names)
    tools = []
    for name in names:
        tool = ALL_TOOLS[name]()
        if tool.available():
            tools.append(tool)
        else:
            print(f"!!! {name} is not available; skipping it", file=sys.stderr)
    return tools


def machine_info(tools: list[Tool], drop: bool) -> dict[str, Any]:
    """What the numbers depend on: CPUs, kernel, versions, cache dropping."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "drop_caches": drop,
        "versions": {t.name: t.version() for t in tools},
        "notes": {t.name: t.note for t in tools},
    }


def main(argv: list[str] | None = None) -> int:
    """Generate/reuse datasets, run every tool on each, print tables, write JSON."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tools = select_tools([t.strip() for t in args.tools.split(",") if t.strip()])
    if not tools:
        return 1
    drop = not args.no_drop_caches and drop_caches()
    info = machine_info(tools, drop)
    load = ", ".join(f"{x:.2f}" for x in info["loadavg_at_start"])
    print(f"CPUs: {info['cpu_count']} (usable {info['cpus_usable']}), kernel {info['kernel']}")
    print(f"load average at start: {load} (other work on the machine skews every number)")
    for t in tools:
        print(f"{t.name}: {info['versions'][t.name]} — {t.note}")
    print(
        "page cache: dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step"
        if drop
        else "page cache: NOT dropped (not writable or --no-drop-caches): steps may hit warm cache"
    )
    sizes = [] if args.sizes.strip().lower() in ("", "none") else args.sizes.split(",")
    datasets = [ds_mod.ensure_mixed(work, ds_mod.parse_size(s)) for s in sizes]
    if args.small_files > 0:
        datasets.append(ds_mod.ensure_small_files(work, args.small_files))
    runner = Runner(work, drop, args.keep_repos)
    names = [t.name for t in tools]
    results = []
    for ds in datasets:
        print(f"\n--- {ds.name}: {ds.files} files, {ds.bytes / MIB:.1f} MiB", flush=True)
        res = runner.run_dataset(ds, tools)
        print_table(res, names)
        results.append(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(info, results, names), indent=1) + "\n")
        print(f"\nJSON written to {args.json}")
    bad = [m for r in results for m in r.failures if not m.startswith("WARNING")]
    if bad:
        print(f"\n!!! {len(bad)} failure(s):\n  " + "\n  ".join(bad), file=sys.stderr)
    return 1 if bad else 0


def to_json(info: dict[str, Any], results: list[DatasetResult], names: list[str]) -> Any:
    """Machine-readable report: meta, then per dataset its rows, ratios and verification."""
    peers = [n for n in names if n != "freezeframe"]
    return {
        "meta": info,
        "datasets": [
            {
                "name": r.ds.name,
                "path": str(r.ds.root),
                "files": r.ds.files,
                "bytes": r.ds.bytes,
                "modified_files": r.modified_files,
                "rows": [row.to_json() for row in r.rows],
                "ratios_ff_over_peer": ratios(r, peers),
                "ff_cpu_over_wall": {
                    row.step: round(row.m.cpu_s / row.m.wall_s, 2)
                    for row in r.rows
                    if row.tool == "freezeframe" and row.m.wall_s > 0
                },
                "verify": r.verify,
                "failures": r.failures,
            }
            for r in results
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
