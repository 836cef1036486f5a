"""Run inside the LVM lab's guest (tests/vmlvmlab.py) by tests/system/test_lvm_lab.py: drives
freezeframe's LVM provider on a mounted LV the way a backup does and prints one JSON line.

    snapshot MOUNT [--size BYTES] [--scribble MIB] [--hold]
        hashes every file under MOUNT, takes the snapshot, then changes MOUNT (rewrites
        ``marker``, adds ``after-snapshot``), mounts the snapshot and hashes what it shows;
        ``--scribble`` writes MIB MiB of new data to MOUNT before the snapshot is checked (to
        overflow a small thick snapshot); ``--hold`` writes the view and its pid to HOLD_FILE
        once the snapshot is mounted and sleeps (to be killed). Also reports whether the
        snapshot's ext4 needed journal replay (and the origin's), and the kernel's lines about
        mounting the snapshot (XFS says whether it recovered its log).
        Then checks the snapshot is intact and removes it.
    cleanup MOUNT
        removes the snapshots and mounts of dead runs on MOUNT's LV, as the next run does.
    backup [--scribble PATH:MIB] [--hold] [--at-readable SH] [--at-read SH] -- ARGS...
        runs the freezeframe command in this process; once its snapshots are readable (before
        they are read) it writes MIB MiB to PATH (to overflow a thick snapshot), or with
        ``--hold`` writes its pid to HOLD_FILE and sleeps (to be killed); ``--at-readable``
        and ``--at-read`` run shell commands there and once they are read (before they are
        confirmed): to make the disk fail under a read and heal it. Exits as the command.
    trials --trials N [--check LOG_DIR:COMMIT_DIR] -- BACKUP ARGS...
        runs ``backup BACKUP ARGS`` N times in this one process (no interpreter start per
        backup: under TCG that start costs more than the backup); with ``--check``, restores
        each snapshot and checks the dependent-write invariant between the restored copies of
        LOG_DIR and COMMIT_DIR; prints one JSON line per trial.
    kill-in-suspend MOUNT [--timeout S] -- ARGS...
        starts the freezeframe command in a session of its own and SIGKILLs that session the
        moment MOUNT's device-mapper device reads suspended (lvcreate's suspend, the file
        system frozen under it); prints whether it did, and how long after the kill the
        device still read suspended (``resumed_after_ms``, sampled every millisecond).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from freezeframe.capture.providers.base import new_run_id
from freezeframe.capture.providers.lvm import LvmProvider
from freezeframe.capture.providers.lvm_report import DEFAULT_SNAPSHOT_SIZE, SnapshotSize
from freezeframe.capture.volumes import resolve_volume
from freezeframe.errors import FreezeframeError

HOLD_FILE = "/run/lvm-hold.json"  # --hold: the view and this process's pid, once mounted


def tree_hashes(root: str) -> dict[str, str]:
    hashes = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "lost+found"]
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def needs_recovery(fs_type: str, device: str) -> bool | None:
    """ext4: whether the superblock says the journal must be replayed (always so on a mounted
    ext4, never on a frozen one: freezing flushes the journal). None for other file systems."""
    if fs_type != "ext4":
        return None
    done = subprocess.run(["dumpe2fs", "-h", device], capture_output=True, text=True, check=True)
    return "needs_recovery" in done.stdout


def _kernel_log() -> list[str]:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()


def snapshot(args: argparse.Namespace) -> int:
    size = SnapshotSize(args.size) if args.size is not None else DEFAULT_SNAPSHOT_SIZE
    provider = LvmProvider(snapshot_size=size)
    volume = resolve_volume(args.mount)
    reason = provider.unsupported_reason(volume)
    if reason is not None:
        print(json.dumps({"refused": reason}))
        return 3
    before = tree_hashes(args.mount)
    view = provider.take(volume, new_run_id())
    result: dict[str, object] = {"handle": view.handle, "create_ms": view.create_ms}
    try:
        with open(os.path.join(args.mount, "marker"), "w") as f:
            f.write(f"after the snapshot {time.time()}\n")
        with open(os.path.join(args.mount, "after-snapshot"), "w") as f:
            f.write("not in the snapshot\n")
        os.sync()
        result["needs_recovery"] = needs_recovery(volume.fs_type, f"/dev/{view.handle}")
        result["origin_needs_recovery"] = needs_recovery(volume.fs_type, volume.mount.source)
        kernel_log = _kernel_log()
        provider.expose(view)
        # The kernel names it dm-<minor> (lvm without udev makes /dev/mapper nodes, not links).
        device = f"dm-{os.minor(os.stat(f'/dev/{view.handle}').st_rdev)}"
        result["mount_log"] = [
            line for line in _kernel_log()[len(kernel_log) :] if f"({device})" in line
        ]
        result["root"] = view.root
        if args.hold:
            result["pid"] = os.getpid()
            with open(HOLD_FILE + ".tmp", "w") as f:
                json.dump(result, f)
            os.rename(HOLD_FILE + ".tmp", HOLD_FILE)
            time.sleep(3600)
        seen = tree_hashes(view.root)
        result.update(before=before, seen=seen, origin_after=tree_hashes(args.mount))
        if args.scribble:
            with open(os.path.join(args.mount, "scribble"), "wb") as f:
                for _ in range(args.scribble):
                    f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
        try:
            provider.confirm(view)
            result["intact"] = True
        except FreezeframeError as exc:
            result["damaged"] = str(exc)
    finally:
        provider.remove(view)
    print(json.dumps(result))
    return 0


def cleanup(args: argparse.Namespace) -> int:
    provider = LvmProvider()
    volume = resolve_volume(args.mount)
    leftovers = provider.find_leftovers(volume)
    for path in leftovers:
        provider.remove_leftover(path)
    print(json.dumps({"removed": leftovers}))
    return 0


def backup(args: argparse.Namespace) -> int:
    from freezeframe import hooks
    from freezeframe.cli.main import main as freezeframe_main

    def at_readable(_point: hooks.Point) -> None:
        if args.at_readable:
            subprocess.run(["sh", "-c", args.at_readable], check=True)
        if args.scribble:
            path, mib = args.scribble.rsplit(":", 1)
            with open(path, "wb") as f:
                for _ in range(int(mib)):
                    f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
        if args.hold:
            with open(HOLD_FILE + ".tmp", "w") as f:
                json.dump({"pid": os.getpid()}, f)
            os.rename(HOLD_FILE + ".tmp", HOLD_FILE)
            time.sleep(3600)

    def at_read(_point: hooks.Point) -> None:
        subprocess.run(["sh", "-c", args.at_read], check=True)

    hooks.install(hooks.Point.SNAPSHOTS_READABLE, at_readable)
    if args.at_read:
        hooks.install(hooks.Point.SNAPSHOTS_READ, at_read)
    return freezeframe_main(_command(args.argv))


def _command(argv: list[str]) -> list[str]:
    return argv[1:] if argv[:1] == ["--"] else argv


def _json_command(argv: list[str]) -> tuple[int, dict[str, object]]:
    """The freezeframe command run here with --json: its status and document."""
    import contextlib
    import io

    from freezeframe.cli.main import main as freezeframe_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = freezeframe_main(["--json", "--no-progress", *argv])
    text = out.getvalue().strip()
    return status, json.loads(text) if text else {}


def _commit_of(directory: str) -> int:
    try:
        with open(os.path.join(directory, "b.commit")) as f:
            return int(f.read().strip() or "0")
    except (FileNotFoundError, ValueError):
        return 0


def trials(args: argparse.Namespace) -> int:
    from vmfixtures import check_dependent_writes

    target = "/run/trial-restore"
    log_dir, _, commit_dir = args.check.partition(":")
    for trial in range(args.trials):
        before = _commit_of(commit_dir) if args.check else 0
        started = time.monotonic()
        status, doc = _json_command(["backup", *_command(args.argv)])
        line: dict[str, object] = {"trial": trial, "status": status, "doc": doc,
                                   "backup_s": round(time.monotonic() - started, 3)}  # fmt: skip
        if status == 0 and args.check:
            subprocess.run(["rm", "-rf", target], check=True)
            restored, _ = _json_command(["restore", str(doc["snapshot_id"]), "--target", target])
            holds, why = check_dependent_writes(Path(target + log_dir), Path(target + commit_dir))
            line.update(holds=holds and restored == 0, why=why, committed_before=before,
                        restored_commit=_commit_of(target + commit_dir))  # fmt: skip
        print(json.dumps(line), flush=True)
        if status != 0:
            return status
    subprocess.run(["rm", "-rf", target], check=True)
    return 0


def kill_in_suspend(args: argparse.Namespace) -> int:
    st_dev = os.stat(args.mount).st_dev
    flag = f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}/dm/suspended"
    argv = [sys.executable, "-m", "freezeframe", *_command(args.argv)]
    quiet = subprocess.DEVNULL
    proc = subprocess.Popen(argv, start_new_session=True, stdin=quiet, stdout=quiet, stderr=quiet)
    deadline = time.monotonic() + args.timeout
    fd = os.open(flag, os.O_RDONLY)  # read afresh each time (sysfs), never from a buffer
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if os.pread(fd, 1, 0) == b"1":
                os.killpg(proc.pid, signal.SIGKILL)
                killed = time.monotonic()
                while os.pread(fd, 1, 0) == b"1" and time.monotonic() - killed < 30:
                    time.sleep(0.001)
                resumed_ms = (time.monotonic() - killed) * 1000
                proc.wait()
                print(json.dumps({"killed": "suspended", "resumed_after_ms": resumed_ms}))
                return 0
    finally:
        os.close(fd)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(json.dumps({"killed": None, "exit": proc.returncode}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("snapshot")
    take.add_argument("mount")
    take.add_argument("--size", type=int)
    take.add_argument("--scribble", type=int, default=0)
    take.add_argument("--hold", action="store_true")
    clean = commands.add_parser("cleanup")
    clean.add_argument("mount")
    run = commands.add_parser("backup")
    run.add_argument("--scribble", default="")
    run.add_argument("--hold", action="store_true")
    run.add_argument("--at-readable", default="")
    run.add_argument("--at-read", default="")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    repeat = commands.add_parser("trials")
    repeat.add_argument("--trials", type=int, required=True)
    repeat.add_argument("--check", default="")
    repeat.add_argument("argv", nargs=argparse.REMAINDER)
    kill = commands.add_parser("kill-in-suspend")
    kill.add_argument("mount")
    kill.add_argument("--timeout", type=float, default=240.0)
    kill.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "backup":
        return backup(args)
    if args.command == "trials":
        return trials(args)
    if args.command == "kill-in-suspend":
        return kill_in_suspend(args)
    try:
        return snapshot(args) if args.command == "snapshot" else cleanup(args)
    except FreezeframeError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
