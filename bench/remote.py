"""Backup and restore over S3: freezeframe against restic, both speaking S3 to one SeaweedFS
(``weed server``, the test suite's server from tests/servers/seaweedfs.py) on loopback.

Datasets (bench/dataset.py): the mixed set (--size, default 1G) and the small-files set
(--files, default 100,000 files of 1-8 KiB). Per trial, per dataset: freezeframe, then restic,
each into a fresh bucket of its own with a fresh HOME (so caches start empty): init, initial
backup, no-change backup, restore into a fresh directory, the restored tree compared file by
file (sizes and full content hashes) with the source, so a fast wrong restore cannot win.
Both read the same password from a file (RESTIC_PASSWORD_FILE / FREEZEFRAME_PASSWORD_FILE);
the keys are only in their environment. The page cache is dropped before every timed step
(root; --no-drop-caches to keep it).

Reported per dataset, tool and phase: the median over --trials of wall seconds, CPU seconds
(user + system of the client; the server's are not counted), peak RSS and MB/s (10^6 bytes of
the dataset per wall second), and freezeframe's wall time over restic's: a Markdown table on
stdout, everything (each trial too) in --json.

Usage: python bench/remote.py [--trials 3] [--size 1G] [--files 100000] [--work DIR]
                              [--json OUT] [--no-drop-caches]
(the freezeframe under test: the project's .venv, or the interpreter's venv with PYTHONPATH)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dataset as ds_mod
from measure import Measurement, drop_caches, log_tail, run_measured
from run import verify_restore
from tools import PASSWORD, PROJECT, Freezeframe, Restic, Tool, ensure_installed

sys.path.insert(0, str(PROJECT / "tests"))  # the test suite's servers

from servers.base import S3Server
from servers.seaweedfs import seaweedfs

MB = 1_000_000
MIB = 1024 * 1024
DEFAULT_WORK = Path(__file__).resolve().parent / "work"
PHASES = ("init", "backup initial", "backup nochange", "restore")
# Exit codes meaning "finished, with warnings" (a file unreadable): recorded, not fatal.
WARNING_CODES = {"restic": {3}, "freezeframe": {3}}


class RemoteTool:
    """One tool against one S3 server: its steps (tools.py) and its environment, the keys and
    the password file in it, never in argv."""

    def __init__(self, tool: Tool, server: S3Server, password_file: Path) -> None:
        """``tool``: the local benchmark's tool, whose argv the steps reuse."""
        self.tool = tool
        self.name = tool.name
        self.server = server
        self.password_file = password_file

    def env(self, home: Path, location: str) -> dict[str, str]:
        """HOME/XDG of its own, the server's keys, the password file, the repository."""
        env = self.tool.base_env(home) | self.server.env()
        if self.name == "restic":
            env |= {"RESTIC_PASSWORD_FILE": str(self.password_file), "RESTIC_REPOSITORY": location}
        else:
            env["FREEZEFRAME_PASSWORD_FILE"] = str(self.password_file)
            if os.environ.get("PYTHONPATH"):  # the freezeframe under test (a worktree's src)
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return env


@dataclass
class Step:
    """One measured phase of one tool in one trial."""

    phase: str
    m: Measurement
    data_bytes: int

    @property
    def mb_s(self) -> float | None:
        """Dataset bytes per wall second: backup reads it all, restore writes it all."""
        if self.phase == "init" or self.m.wall_s <= 0:
            return None
        return self.data_bytes / MB / self.m.wall_s

    def to_json(self) -> dict[str, Any]:
        """Flat record for --json (argv holds the location, never a key)."""
        return {
            "phase": self.phase,
            "wall_s": round(self.m.wall_s, 3),
            "cpu_s": round(self.m.cpu_s, 3),
            "user_s": round(self.m.user_s, 3),
            "sys_s": round(self.m.sys_s, 3),
            "max_rss_mib": round(self.m.max_rss_kib / 1024, 1),
            "mb_per_s": None if self.mb_s is None else round(self.mb_s, 1),
            "exit_code": self.m.exit_code,
            "argv": self.m.argv,
            "log": self.m.log,
        }


@dataclass
class Run:
    """One tool on one dataset in one trial."""

    tool: str
    dataset: str
    trial: int
    bucket: str
    steps: list[Step] = field(default_factory=list)
    stored_bytes: int | None = None
    verify: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)

    def get(self, phase: str) -> Step | None:
        """The phase's step if it ran and succeeded."""
        return next((s for s in self.steps if s.phase == phase and s.m.exit_code == 0), None)


def _fresh_dir(path: Path) -> Path:
    """Every home and restore target starts empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _stored_bytes(server: S3Server, bucket: str) -> int:
    """What the repository takes in its bucket (sum of object sizes)."""
    total = 0
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    for page in pages:
        total += sum(obj["Size"] for obj in page.get("Contents", []))
    return total


def _drop_bucket(server: S3Server, bucket: str) -> None:
    """Empty and delete a finished repository's bucket, so the server's disk stays small."""
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})
    client.delete_bucket(Bucket=bucket)


class Bench:
    """Runs every phase of one tool on one dataset against the server; holds the settings."""

    def __init__(self, work: Path, server: S3Server, drop: bool, keep: bool) -> None:
        """``keep``: leave buckets and restored trees in place (to look at them)."""
        self.work = work
        self.server = server
        self.drop = drop
        self.keep = keep

    def run(self, rt: RemoteTool, ds: ds_mod.Dataset, trial: int, expected: Any) -> Run:
        """init, backup, backup again, restore, verify; stops at the first failed phase."""
        bucket = f"bench-{rt.name}-{ds.name.lower()}-t{trial}"
        self.server.client().create_bucket(Bucket=bucket)
        location = f"s3:{self.server.endpoint}/{bucket}"
        run = Run(rt.name, ds.name, trial, bucket)
        home = _fresh_dir(self.work / "home" / rt.name)
        (home / "tmp").mkdir()
        env = rt.env(home, location)
        target = self.work / "restore" / ds.name / rt.name
        plan = [
            ("init", rt.tool.init(location)),
            ("backup initial", rt.tool.backup(location, ds.root, 1)),
            ("backup nochange", rt.tool.backup(location, ds.root, 2)),
            ("restore", rt.tool.restore(location, _fresh_dir(target), 2)),
        ]
        for phase, step in plan:
            if self.drop:
                drop_caches()
            log = (
                self.work
                / "logs"
                / f"t{trial}"
                / ds.name
                / rt.name
                / f"{phase.replace(' ', '-')}.log"
            )
            m = run_measured(step.argv, env, step.cwd or self.work, log)
            run.steps.append(Step(phase, m, ds.bytes))
            print(
                f"  [t{trial} {ds.name}] {rt.name:<11} {phase:<16} {m.wall_s:8.2f} s"
                f"  exit {m.exit_code}",
                flush=True,
            )
            if m.exit_code != 0:
                kind = "WARNING" if m.exit_code in WARNING_CODES[rt.name] else "FAILED"
                run.failures.append(
                    f"{kind}: {rt.name} {phase} on {ds.name} trial {trial} "
                    f"exited {m.exit_code} (log {m.log})"
                )
                print(f"!!! {run.failures[-1]}\n{log_tail(m.log)}", file=sys.stderr, flush=True)
                if kind == "FAILED":
                    break
            if phase == "backup initial":
                run.stored_bytes = _stored_bytes(self.server, bucket)
        else:
            run.verify = verify_restore(expected, target / ds.root.relative_to(ds.root.anchor))
            if not run.verify["ok"]:
                run.failures.append(
                    f"RESTORE MISMATCH: {rt.name} on {ds.name} trial {trial}: "
                    f"{run.verify['counts']}"
                )
                print(f"!!! {run.failures[-1]}", file=sys.stderr, flush=True)
        if not self.keep:
            shutil.rmtree(target, ignore_errors=True)
            _drop_bucket(self.server, bucket)
        return run


# ---------------------------------------------------------------------------------------------
# Summary


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[Run], ds: ds_mod.Dataset, tools: list[str]) -> list[dict[str, Any]]:
    """Per phase and tool, the medians over the trials whose phase succeeded (a run whose
    restore did not verify counts for no phase), and freezeframe's wall time over restic's."""
    rows = []
    for phase in PHASES:
        med: dict[str, dict[str, Any]] = {}
        for tool in tools:
            steps = [
                s
                for r in runs
                if r.tool == tool and r.dataset == ds.name and not r.failures
                for s in [r.get(phase)]
                if s is not None
            ]
            if not steps:
                continue
            wall = _median([s.m.wall_s for s in steps])
            assert wall is not None
            med[tool] = {
                "phase": phase,
                "tool": tool,
                "trials": len(steps),
                "wall_s": round(wall, 3),
                "cpu_s": round(_median([s.m.cpu_s for s in steps]) or 0, 3),
                "max_rss_mib": round((_median([s.m.max_rss_kib for s in steps]) or 0) / 1024, 1),
                "mb_per_s": None
                if phase == "init" or wall <= 0
                else round(ds.bytes / MB / wall, 1),
                "wall_s_each": [round(s.m.wall_s, 2) for s in steps],
            }
            if phase == "backup initial":
                stored = [r.stored_bytes for r in runs if r.tool == tool and r.dataset == ds.name]
                known = [b for b in stored if b is not None]
                med[tool]["stored_mb"] = round((_median(known) or 0) / MB, 1) if known else None
        ff, restic = med.get("freezeframe"), med.get("restic")
        ratio = None
        if ff and restic and restic["wall_s"] > 0:
            ratio = round(ff["wall_s"] / restic["wall_s"], 2)
        for row in med.values():
            row["wall_ff_over_restic"] = ratio if row["tool"] == "freezeframe" else None
            rows.append(row)
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(ds: ds_mod.Dataset, rows: list[dict[str, Any]], runs: list[Run]) -> str:
    """The dataset's table, then restore speed against backup speed per tool."""
    lines = [
        f"### {ds.name}: {ds.files:,} files, {ds.bytes / MB:,.1f} MB",
        "",
        "| phase | tool | wall s | MB/s | CPU s | peak RSS MiB | stored MB | ff/restic wall "
        "| trials |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['tool']} | {r['wall_s']:.2f} | {_fmt(r['mb_per_s'], '.1f')} "
            f"| {r['cpu_s']:.2f} | {r['max_rss_mib']:.0f} | {_fmt(r.get('stored_mb'), '.1f')} "
            f"| {_fmt(r['wall_ff_over_restic'], '.2f')} "
            f"| {r['trials']} |"
        )
    lines.append("")
    by = {(r["tool"], r["phase"]): r for r in rows}
    for tool in dict.fromkeys(r["tool"] for r in rows):
        backup, restore = by.get((tool, "backup initial")), by.get((tool, "restore"))
        if backup and restore and backup["mb_per_s"] and restore["mb_per_s"]:
            verdict = "not slower" if restore["mb_per_s"] >= backup["mb_per_s"] else "SLOWER"
            lines.append(
                f"- {tool}: restore {restore['mb_per_s']:.1f} MB/s beside initial backup "
                f"{backup['mb_per_s']:.1f} MB/s ({restore['mb_per_s'] / backup['mb_per_s']:.2f}x, "
                f"restore {verdict})"
            )
    for r in runs:
        if r.dataset == ds.name and r.verify is not None:
            v = r.verify
            state = "byte-exact" if v["ok"] else f"MISMATCH {v['counts']}"
            lines.append(
                f"- verify t{r.trial} {r.tool}: {state} "
                f"({v['files_restored']}/{v['files_expected']} files)"
            )
        for msg in r.failures if r.dataset == ds.name else []:
            lines.append(f"- !!! {msg}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command line; the defaults are the full benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=3, help="trials per tool (median reported)")
    p.add_argument("--size", default="1G", help="mixed dataset size (e.g. 64M), or 0 to skip")
    p.add_argument("--files", type=int, default=100_000, help="small files (0 skips them)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="datasets, server, logs")
    p.add_argument("--json", type=Path, help="also write machine-readable results here")
    p.add_argument("--keep", action="store_true", help="keep buckets, server data, restores")
    p.add_argument("--no-drop-caches", action="store_true", help="measure with a warm cache")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be at least 1")
    return args


def _freezeframe_source() -> str:
    """Which freezeframe source the benchmark runs (PYTHONPATH may put a worktree first)."""
    out = subprocess.run(
        [sys.executable, "-c", "import freezeframe; print(freezeframe.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or out.stderr.strip()[-200:]


def machine_info(tools: list[Tool], drop: bool, trials: int) -> dict[str, Any]:
    """What the numbers depend on."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "drop_caches": drop,
        "trials": trials,
        "server": "SeaweedFS weed server on loopback (tests/servers/seaweedfs.py)",
        "versions": {t.name: t.version() for t in tools},
        "notes": {t.name: t.note for t in tools},
        "freezeframe_source": _freezeframe_source(),
        "mb": "10^6 bytes of the dataset per wall second",
    }


def main(argv: list[str] | None = None) -> int:
    """Datasets, server, trials interleaved (freezeframe then restic), tables, JSON."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ensure_installed(["restic"])
    tools: list[Tool] = [Freezeframe(), Restic()]
    missing = [t.name for t in tools if not t.available()]
    if missing:
        print(f"bench/remote.py: not available: {', '.join(missing)}", file=sys.stderr)
        return 1
    datasets = []
    if ds_mod.parse_size(args.size) > 0:
        datasets.append(ds_mod.ensure_mixed(work, ds_mod.parse_size(args.size)))
    if args.files > 0:
        datasets.append(ds_mod.ensure_small_files(work, args.files))
    if not datasets:
        print("bench/remote.py: --size 0 and --files 0 leave nothing to back up", file=sys.stderr)
        return 2
    drop = not args.no_drop_caches and drop_caches()
    info = machine_info(tools, drop, args.trials)
    print(
        f"CPUs {info['cpu_count']}, load at start {info['loadavg_at_start']}, "
        f"page cache {'dropped before every step' if drop else 'NOT dropped'}"
    )
    for t in tools:
        print(f"{t.name}: {info['versions'][t.name]}")
    print(f"freezeframe source: {info['freezeframe_source']}", flush=True)
    expected = {ds.name: ds_mod.manifest(ds.root) for ds in datasets}
    password = work / "password"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        f.write(PASSWORD + "\n")
    server_dir = _fresh_dir(work / "seaweedfs")
    runs: list[Run] = []
    try:
        with seaweedfs(server_dir) as server:
            bench = Bench(work, server, drop, args.keep)
            remote = [RemoteTool(t, server, password) for t in tools]
            for trial in range(1, args.trials + 1):
                for ds in datasets:
                    for rt in remote:
                        runs.append(bench.run(rt, ds, trial, expected[ds.name]))
    finally:
        if not args.keep:
            shutil.rmtree(server_dir, ignore_errors=True)
    names = [t.name for t in tools]
    report: dict[str, Any] = {"meta": info, "datasets": []}
    print()
    for ds in datasets:
        rows = summarize(runs, ds, names)
        print(markdown(ds, rows, runs) + "\n")
        report["datasets"].append(
            {
                "name": ds.name,
                "files": ds.files,
                "bytes": ds.bytes,
                "summary": rows,
                "runs": [
                    {
                        "tool": r.tool,
                        "trial": r.trial,
                        "bucket": r.bucket,
                        "stored_bytes": r.stored_bytes,
                        "steps": [s.to_json() for s in r.steps],
                        "verify": r.verify,
                        "failures": r.failures,
                    }
                    for r in runs
                    if r.dataset == ds.name
                ],
            }
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"JSON written to {args.json}")
    bad = [m for r in runs for m in r.failures if not m.startswith("WARNING")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
