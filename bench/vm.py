"""What a backup of a running QEMU VM costs and what it is worth: full-backup throughput against
the disk's own read speed, restic and borg; an incremental after the guest rewrote 1 % of a
disk; the guest's freeze window under load; and how many restores break, beside naive copies.

Usage (root): python bench/vm.py [--trials 10] [--disk-mib 2048] [--fill-mib 1024] [--work DIR]
                                 [--json OUT] [--skip restic,borg]

Uses the test suite's VM lab (tests/vmfixtures.py): a tiny guest with two ext4 disks (qcow2)
and the dependent-write workload (a log on vda, a commit on vdb after the log is durable).

1. Throughput VM: both disks get --fill-mib MiB of /dev/urandom data written by the guest
   (make_disks' own filler repeats one 1 MiB block, which deduplication would make free). With
   the page cache dropped before each reader: `cat` of the image files (the limit), the first
   freezeframe backup (wall time of the whole run), then restic and borg of the same image
   files with the VM paused (`stop`, so they read still files; `cont` after).
2. The guest writes 1 % of vda's size as a new random file (fsync), then an incremental
   backup: bytes read against bytes changed (target: at most 2x).
3./4. Proof VM (2 x 128 MiB disks, 64 MiB filler each, as in tests/system/test_vm_lab.py),
   workload running: TRIALS backups at `crash` and at `filesystem`, each restored and checked
   (invariant + e2fsck); the freeze window is the `filesystem` trials' freeze_ms. Then TRIALS
   naive copies of the live images (cp vda, 0.3 s pause, cp vdb), checked the same way.
virtnbdbackup is not run: it needs libvirt, which the lab does not use (plain QEMU + QMP).
Results go to bench/results/vm-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools import FREEZEFRAME, Borg, Freezeframe, Restic, Tool

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the VM lab the tests use

from ffharness import FAST_INIT  # noqa: E402
from vmfixtures import Vm, check_images, make_disks, running_vm  # noqa: E402

PROOF_DISK_MIB = 128  # small: every proof trial restores and checks both images
PROOF_FILL_MIB = 64  # as the lab test: a cp of the image spans a few commits
NAIVE_PAUSE_S = 0.3  # the lab test's "slower copy": time a real disk A's copy would take
CHANGED_SHARE = 0.01  # the incremental: the guest rewrites 1 % of vda
BLOCK = 64 * 1024  # dd block size in the guest
MB = 1_000_000


def _drop_caches() -> None:
    """Each reader starts from disk, not from what the previous one left in the page cache."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _ff(repo: Path, env: dict[str, str], *args: str | Path) -> tuple[dict[str, Any], float]:
    """One freezeframe run with --json: its document and wall seconds; raises on failure."""
    argv = [str(FREEZEFRAME), "--repo", str(repo), "--no-progress", "--json", *map(str, args)]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"freezeframe {args[0]} failed: {(done.stdout + done.stderr)[-800:]}")
    return json.loads(done.stdout), wall


def _spec(vm: Vm, name: str) -> str:
    return f"qmp:{vm.qmp_socket},qga={vm.qga_socket},name={name}"


def _backup(vm: Vm, repo: Path, env: dict[str, str], name: str, level: str) -> dict[str, Any]:
    """A backup of the VM; the agent is released first (it serves one client at a time)."""
    vm.release_agent()
    doc, wall = _ff(repo, env, "backup", "--vm", _spec(vm, name), "--consistency", level)
    [snapshot] = doc["vms"]
    return dict(snapshot) | {"wall_s": wall}


def _guest(vm: Vm, script: str, timeout: float = 900.0) -> None:
    """A shell command in the guest; raises when it fails."""
    done = vm.guest_exec(["/bin/sh", "-c", script], timeout=timeout)
    vm.release_agent()
    if done.exitcode != 0:
        raise RuntimeError(f"guest `{script}` exit {done.exitcode}: {done.stderr[-300:]!r}")


def _percentiles(values: list[float]) -> dict[str, float] | None:
    """Nearest-rank p50 and p95, and the max."""
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 1)

    return {"p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 1)}


def _init_repo(base: Path) -> tuple[Path, dict[str, str]]:
    """A fresh freezeframe repository with the tests' cheap key derivation."""
    repo, home = base / "ff-repo", base / "ff-home"
    (home / "tmp").mkdir(parents=True)
    env = Freezeframe().env(home, repo)
    _ff(repo, env, *FAST_INIT)
    return repo, env


def _other_tool(tool: Tool, base: Path, src: Path) -> dict[str, Any]:
    """restic or borg: init (not timed), then one timed backup of the image directory."""
    repo, home = base / f"{tool.name}-repo", base / f"{tool.name}-home"
    (home / "tmp").mkdir(parents=True)
    env = tool.env(home, repo)
    subprocess.run(tool.init(repo).argv, env=env, capture_output=True, check=True)
    _drop_caches()
    step = tool.backup(repo, src, 1)
    started = time.monotonic()
    done = subprocess.run(
        step.argv, env=env, cwd=step.cwd, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{tool.name} backup exit {done.returncode}: {done.stderr[-500:]}")
    return {"version": tool.version(), "wall_s": round(wall, 2)}


def throughput(args: argparse.Namespace, base: Path, skip: set[str]) -> dict[str, Any]:
    """Sections 1 and 2 on a VM with --fill-mib MiB of random data per disk."""
    disks = make_disks(base / "disks", size_mib=args.disk_mib)
    repo, env = _init_repo(base)
    result: dict[str, Any] = {"disk_mib": args.disk_mib, "fill_mib": args.fill_mib}
    with running_vm(base / "vm", disks) as vm:
        result["accel"] = vm.accel
        print(
            f"throughput VM up ({vm.accel}); guest writes {args.fill_mib} MiB per disk", flush=True
        )
        for mount in ("/mnt/a", "/mnt/b"):
            _guest(vm, f"dd if=/dev/urandom of={mount}/fill bs=1M count={args.fill_mib} conv=fsync")
        vm.qmp("stop")  # images settled on the host before they are measured
        vm.qmp("cont")
        image_bytes = sum(d.stat().st_size for d in disks)
        _drop_caches()
        started = time.monotonic()
        for disk in disks:
            subprocess.run(["cat", str(disk)], stdout=subprocess.DEVNULL, check=True)
        cat_s = time.monotonic() - started
        result["image_bytes"] = image_bytes
        result["cat"] = {"wall_s": round(cat_s, 2), "mb_s": round(image_bytes / MB / cat_s, 1)}
        print(f"  cat of the images: {result['cat']}", flush=True)

        _drop_caches()
        full = _backup(vm, repo, env, "lab", "filesystem")
        s = full["summary"]
        result["freezeframe_full"] = {
            "wall_s": round(full["wall_s"], 2),
            "summary": s,
            "read_mb_s": round(s["bytes_read"] / MB / full["wall_s"], 1),
            "virtual_mb_s": round(s["bytes_total"] / MB / full["wall_s"], 1),
            "achieved": full["consistency"]["achieved"],
        }
        print(f"  freezeframe full: {result['freezeframe_full']}", flush=True)

        for tool in (Restic(), Borg()):
            if tool.name in skip:
                result[tool.name] = {"skipped": "--skip"}
            elif not tool.available():
                result[tool.name] = {"skipped": f"{tool.name} not on PATH"}
            else:
                vm.qmp("stop")  # a still VM: the files do not change under the reader
                try:
                    run = _other_tool(tool, base, disks[0].parent)
                finally:
                    vm.qmp("cont")
                run["mb_s"] = round(image_bytes / MB / run["wall_s"], 1)
                result[tool.name] = run
            print(f"  {tool.name}: {result[tool.name]}", flush=True)

        count = max(1, round(args.disk_mib * 2**20 * CHANGED_SHARE / BLOCK))
        _guest(vm, f"dd if=/dev/urandom of=/mnt/a/new bs={BLOCK} count={count} conv=fsync")
        changed = count * BLOCK
        _drop_caches()
        inc = _backup(vm, repo, env, "lab", "filesystem")
        modes = [
            "incremental" if "incremental" in v else f"full: {v.get('full_read')}"
            for v in inc["consistency"]["volumes"]
        ]
        result["incremental"] = {
            "bytes_changed": changed,
            "bytes_read": inc["summary"]["bytes_read"],
            "read_vs_changed": round(inc["summary"]["bytes_read"] / changed, 2),
            "wall_s": round(inc["wall_s"], 2),
            "summary": inc["summary"],
            "volumes": modes,
        }
        print(f"  incremental: {result['incremental']}", flush=True)
    return result


def proof(trials: int, base: Path) -> dict[str, Any]:
    """Sections 3 and 4 on a small VM: restored backups at crash/filesystem, naive copies."""
    disks = make_disks(base / "disks", size_mib=PROOF_DISK_MIB, fill_mib=PROOF_FILL_MIB)
    repo, env = _init_repo(base)
    rows: dict[str, Any] = {}
    with running_vm(base / "vm", disks) as vm:
        time.sleep(2)  # the workload is committing
        for level in ("crash", "filesystem"):
            broken, freeze, details = 0, [], []
            for trial in range(trials):
                snap = _backup(vm, repo, env, "proof", level)
                volumes = snap["consistency"]["volumes"]
                if level == "filesystem":
                    freeze.append(max(v.get("freeze_ms") or 0 for v in volumes))
                target = base / "restore"
                _ff(repo, env, "restore", snap["snapshot_id"][:12], "--target", target)
                images = [target / "vm" / "proof" / f"{d}.raw" for d in vm.drive_ids]
                ok, detail = check_images(images, base / f"check-{level}-{trial}", fmt="raw")
                shutil.rmtree(target)
                broken += not ok
                details.append(f"{snap['consistency']['achieved']}: {detail}")
                print(f"  {level} {trial + 1}: {'ok' if ok else 'BROKEN'}: {detail}", flush=True)
            rows[level] = {"trials": trials, "broken": broken, "details": details}
            if freeze:
                rows[level]["freeze_ms"] = _percentiles(freeze)
                rows[level]["freeze_ms_all"] = freeze
        broken, details = 0, []
        for trial in range(trials):
            copies = [base / f"copy-{d.name}" for d in disks]
            subprocess.run(["cp", str(disks[0]), str(copies[0])], check=True)
            time.sleep(NAIVE_PAUSE_S)
            subprocess.run(["cp", str(disks[1]), str(copies[1])], check=True)
            ok, detail = check_images(copies, base / f"check-naive-{trial}", vm.disk_format)
            for copy in copies:
                copy.unlink()
            broken += not ok
            details.append(detail)
            print(f"  naive cp {trial + 1}: {'ok' if ok else 'BROKEN'}: {detail}", flush=True)
        rows["naive cp"] = {"trials": trials, "broken": broken, "details": details}
    return rows


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def tables(tp: dict[str, Any], pr: dict[str, Any]) -> str:
    """The four sections as markdown tables."""
    full, cat = tp["freezeframe_full"], tp["cat"]
    s = full["summary"]
    lines = [
        f"Throughput VM: 2 x {tp['disk_mib']} MiB qcow2, {tp['fill_mib']} MiB random data "
        f"each ({tp['image_bytes'] / MB:.0f} MB of image files), {tp['accel']}",
        "",
        "| reader | MB | wall s | MB/s | freezeframe vs it |",
        "|---|---|---|---|---|",
        f"| cat of the image files (limit) | {tp['image_bytes'] / MB:.0f} | {cat['wall_s']} "
        f"| {cat['mb_s']} | {_ratio(full['read_mb_s'], cat['mb_s'])} |",
        f"| freezeframe full backup (bytes read) | {s['bytes_read'] / MB:.0f} "
        f"| {full['wall_s']} | {full['read_mb_s']} | - |",
    ]
    for name in ("restic", "borg"):
        run = tp[name]
        if "skipped" in run:
            lines.append(f"| {name} | skipped: {run['skipped']} | | | |")
        else:
            lines.append(
                f"| {name} (VM paused) | {tp['image_bytes'] / MB:.0f} | {run['wall_s']} "
                f"| {run['mb_s']} | {_ratio(full['read_mb_s'], run['mb_s'])} |"
            )
    lines.append("| virtnbdbackup | skipped: needs libvirt, the lab runs plain QEMU | | | |")
    inc = tp["incremental"]
    lines += [
        "",
        "| incremental after 1 % of vda rewritten | bytes changed | bytes read | read/changed "
        "| wall s | volumes |",
        "|---|---|---|---|---|---|",
        f"| filesystem | {inc['bytes_changed']} | {inc['bytes_read']} "
        f"| {inc['read_vs_changed']} ({'<= 2 ok' if inc['read_vs_changed'] <= 2 else '> 2'}) "
        f"| {inc['wall_s']} | {', '.join(inc['volumes'])} |",
        "",
    ]
    fz = pr["filesystem"].get("freeze_ms")
    lines += [
        "| freeze window at filesystem, under load | trials | freeze ms p50 / p95 / max |",
        "|---|---|---|",
        f"| proof VM | {pr['filesystem']['trials']} "
        f"| {' / '.join(str(fz[k]) for k in ('p50', 'p95', 'max')) if fz else '-'} |",
        "",
        "| level | trials | broken |",
        "|---|---|---|",
    ]
    for level, row in pr.items():
        lines.append(f"| {level} | {row['trials']} | {row['broken']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--disk-mib", type=int, default=2048)
    parser.add_argument("--fill-mib", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=PROJECT / "bench" / "work" / "vm")
    parser.add_argument("--json", type=Path, help="default bench/results/vm-<time>.json")
    parser.add_argument("--skip", default="", help="comma-separated: restic,borg")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("vm.py needs root: the VM lab uses KVM, loop mounts and drop_caches")
    if args.fill_mib > args.disk_mib * 0.8:
        sys.exit("--fill-mib must leave room on the disk (at most 80 % of --disk-mib)")
    # SIGTERM unwinds like Ctrl-C: the VMs are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    skip = {s for s in args.skip.split(",") if s}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"vm-{stamp}.json"
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    tp = throughput(args, args.work / "throughput", skip)
    shutil.rmtree(args.work / "throughput")
    print(f"proof VM: {args.trials} trials each at crash and filesystem, then naive copies")
    pr = proof(args.trials, args.work / "proof")
    table = tables(tp, pr)
    print("\n" + table)
    print("\nvirtnbdbackup skipped: it drives libvirt, which this lab does not set up.")
    doc = {
        "started": stamp,
        "command": sys.argv,
        "freezeframe": Freezeframe().version(),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "throughput": tp,
        "proof": pr,
        "virtnbdbackup": "skipped: needs libvirt, the lab runs plain QEMU with QMP",
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0 if pr["crash"]["broken"] == 0 and pr["filesystem"]["broken"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
