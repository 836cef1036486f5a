"""What a backup of a running QEMU VM costs and what it is worth: full-backup throughput against
the disk's own read speed, restic and borg; an incremental after the guest rewrote 1 % of a
disk; the guest's freeze window under load; and how many restores break, beside naive copies.

Usage (root): python bench/vm.py [--trials 10] [--disk-mib 2048] [--fill-mib 1024] [--work DIR]
                                 [--json OUT]
                                 [--skip restic,borg,virtnbdbackup,throughput,proof,app]

Uses the test suite's VM lab (tests/vmfixtures.py): a tiny guest with two ext4 disks (qcow2)
and the dependent-write workload (a log on vda, a commit on vdb after the log is durable).

1. Throughput VM (idle but for what the bench asks of it): both disks get --fill-mib MiB of
   /dev/urandom data written by the guest
   (make_disks' own filler repeats one 1 MiB block, which deduplication would make free). With
   the page cache dropped before each reader: `cat` of the image files (the limit), the first
   freezeframe backup (wall time of the whole run), then restic and borg of the same image
   files with the VM paused (`stop`, so they read still files; `cont` after). Then Debian's
   virtnbdbackup (libvirt's backup API over NBD) on copies of those paused images (the same
   bytes), once the plain-QEMU VM is stopped: a transient libvirt domain (type qemu, the same
   guest, kernel, idle workload, virtio-blk vda/vdb and agent channel; kvm when the lab VM had
   KVM) boots on the copies and `virtnbdbackup -l full` backs it up, page cache dropped first
   (the agent freezes the guest's file systems). Needs libvirtd (apt: virtnbdbackup
   libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients); when none answers on
   qemu:///system the bench starts one in a private mount namespace with its own qemu.conf
   (see _libvirtd: no file in /etc changes; libvirtd itself creates its state directories
   /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, where the
   domain's QEMU log goes) and stops it after; the domain is destroyed even on failure.
2. The guest writes 1 % of vda's size as a new random file (fsync), then an incremental
   backup: bytes read against bytes changed (target: at most 2x), and what the guest wrote to
   its disks meanwhile as QEMU counts it (the file system's metadata and journal too).
3./4. Proof VM (2 x 128 MiB disks, 64 MiB filler each, as in tests/system/test_vm_lab.py),
   workload running: TRIALS backups at `crash` and at `filesystem`, each restored and checked
   (invariant + e2fsck); the freeze window is the `filesystem` trials' freeze_ms. Then TRIALS
   naive copies of the live images (cp vda, 0.3 s pause, cp vdb), checked the same way.
5. Application VM (tests/vmguestlab.py: the host's userland over 9p, PostgreSQL 15 under
   pgbench with its data directory on vdb and its WAL on vda, beside the dependent writes, and
   freezeframe's guest hook as the agent's fsfreeze hook): at `application`, `filesystem` and
   `crash`, TRIALS backups while pgbench and the dependent writes run flat out; then, with that
   VM paused (`stop`, so the 2 cores go to the checks), each restored, checked offline
   (invariant, e2fsck, dumpe2fs needs_recovery) and booted (vmguestlab.boot_restored): did
   PostgreSQL start, from the backup label or by crash recovery, consistent at the recorded
   stop LSN, with pgbench's sums equal and every transaction committed before the backup
   (pgbench_history's rows counted just before it). Freeze window (the agent's freeze call,
   hook included) and, at `application`, the hold window (how long PostgreSQL was held).
   Once: how long the guest's Python takes to start and to import psycopg, the hook's fixed
   cost (under TCG).
--skip takes restic, borg, virtnbdbackup, throughput (sections 1-2), proof (3-4) and app (5).
Results go to bench/results/vm-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import math
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools import FREEZEFRAME, Borg, Freezeframe, Restic, Tool

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))  # the VM lab the tests use

from ffharness import FAST_INIT  # noqa: E402
from vmfixtures import (  # noqa: E402
    AGENT_PORT_NAME,
    KERNEL_APPEND,
    READY_MARKER,
    Vm,
    check_dependent_writes,
    check_images,
    guest_initramfs,
    guest_kernel,
    make_disks,
    mounted_images,
    needs_journal_replay,
    running_vm,
)
from vmguestlab import (  # noqa: E402
    GUEST_CONFIG_PATH,
    HOOK_PATH,
    PYCACHE_PREFIX,
    boot_restored,
    make_app_disks,
    pgbench_progress,
    running_app_vm,
    wait_pg_ready,
)

PROOF_DISK_MIB = 128  # small: every proof trial restores and checks both images
PROOF_FILL_MIB = 64  # as the lab test: a cp of the image spans a few commits
NAIVE_PAUSE_S = 0.3  # the lab test's "slower copy": time a real disk A's copy would take
CHANGED_SHARE = 0.01  # the incremental: the guest rewrites 1 % of vda
BLOCK = 64 * 1024  # dd block size in the guest
MB = 1_000_000
SECTIONS = ("restic", "borg", "virtnbdbackup", "throughput", "proof", "app")  # what --skip knows
# The VMs' names for freezeframe: not the tests' (lab, pg, ...), since a backup first clears
# what earlier runs left under its VM's name (/var/tmp/freezeframe-vm/NAME), and a test
# running beside the bench would clear the bench's scratch directory mid-run, and back.
TP_VM, PROOF_VM, APP_VM = "bench-lab", "bench-proof", "bench-pg"
APP_LEVELS = ("application", "filesystem", "crash")
# The guest's freezeframe config, as tests/system/test_vm_application.py has it.
APP_CONFIG = """cap_s = 60
timeout_s = 60
quiesce = ["postgresql:host=/run/pg dbname=postgres user=postgres"]
"""
# What the hook's Python pays before it holds anything, timed in the guest with the hook's
# environment (its PYTHONPYCACHEPREFIX: byte code vmguestlab.warm_pycache compiled on the
# host, which the guest cannot add to); "own" runs without the prefix, so Python reads the
# site-packages' own __pycache__ (written by pip on the host).
GUEST_IMPORTS = {
    "python -c pass": "pass",
    "import psycopg": "import psycopg",
    "import psycopg (own __pycache__)": "import psycopg",
    "import freezeframe.cli.main": "import freezeframe.cli.main",
    "import freezeframe.quiesce.postgresql": "import freezeframe.quiesce.postgresql",
}


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


IDLE_GUEST = "exec sleep 2147483647\n"


def _bytes_written(vm: Vm) -> int:
    """What the guest wrote to its disks so far, as QEMU counts it."""
    return sum(device["stats"]["wr_bytes"] for device in vm.qmp("query-blockstats"))


# --- virtnbdbackup: the same guest as a transient libvirt domain --------------------------

LIBVIRT_URI = "qemu:///system"
VNB_APT = "virtnbdbackup libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
# qemu.conf of the libvirtd the bench starts itself (bind-mounted over /etc/libvirt in the
# daemon's own mount namespace, so the host's configuration is left alone): QEMU runs as root
# and nothing relabels or chowns the lab's files (no security driver, no dynamic ownership),
# and QEMU's stdout/stderr go to a plain file, so no virtlogd is needed.
VNB_QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""
# Debian's libvirt looks up the user and group it was built for (libvirt-qemu, kvm) before it
# reads qemu.conf and fails when they do not exist; libvirt-daemon-system creates them, but it
# also pulls in systemd. Missing ones are added to copies of /etc/passwd and /etc/group that
# only the daemon's mount namespace sees.
VNB_IDS = {"libvirt-qemu": 64055, "kvm": 64056}


def _virsh(
    *args: str, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["virsh", "-c", LIBVIRT_URI, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {(done.stdout + done.stderr).strip()[-500:]}")
    return done


def _libvirt_answers() -> bool:
    try:
        return _virsh("version", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _missing_ids() -> tuple[list[str], list[str]]:
    """The libvirt-qemu user and the libvirt-qemu and kvm groups this host lacks."""
    users, groups = [], []
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        users.append("libvirt-qemu")
    for name in VNB_IDS:
        try:
            grp.getgrnam(name)
        except KeyError:
            groups.append(name)
    return users, groups


@contextlib.contextmanager
def _libvirtd(workdir: Path) -> Iterator[str]:
    """A libvirtd on qemu:///system: the one running (left as found), or one started here in
    its own mount namespace (the bench's qemu.conf and, if needed, passwd/group bind-mounted;
    its log in workdir), stopped on exit. Yields how the daemon came to be."""
    if _libvirt_answers():
        yield "already running (left as found)"
        return
    etc = workdir / "etc-libvirt"
    etc.mkdir(parents=True)
    for conf in Path("/etc/libvirt").glob("*.conf"):
        shutil.copy(conf, etc)
    (etc / "qemu.conf").write_text(VNB_QEMU_CONF)
    daemon_conf = workdir / "libvirtd.conf"
    daemon_conf.write_text(f'log_outputs = "3:file:{workdir / "libvirtd.log"}"\n')
    mounts = [(etc, "/etc/libvirt")]
    users, groups = _missing_ids()
    if users:
        passwd = workdir / "passwd"
        passwd.write_text(
            Path("/etc/passwd").read_text()
            + "".join(
                f"{u}:x:{VNB_IDS[u]}:{VNB_IDS[u]}::/var/lib/libvirt:/bin/false\n" for u in users
            )
        )
        mounts.append((passwd, "/etc/passwd"))
    if groups:
        group = workdir / "group"
        group.write_text(
            Path("/etc/group").read_text() + "".join(f"{g}:x:{VNB_IDS[g]}:\n" for g in groups)
        )
        mounts.append((group, "/etc/group"))
    script = " && ".join(
        [f"mount --bind {shlex.quote(str(src))} {dst}" for src, dst in mounts]
        + [f"exec libvirtd -f {shlex.quote(str(daemon_conf))}"]
    )
    with (workdir / "libvirtd.out").open("ab") as out:
        # unshare and sh exec: the process is libvirtd itself (not daemonized), so it is ours
        # to stop by its pid.
        daemon = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while not _libvirt_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                log = workdir / "libvirtd.log"
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                raise RuntimeError(f"libvirtd did not come up (exit {daemon.poll()}): {tail}")
            time.sleep(0.2)
        yield f"started for the bench (own mount namespace), stopped after (pid {daemon.pid})"
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _domain_xml(name: str, accel: str, disks: list[Path], serial_log: Path) -> str:
    """The lab guest as a transient libvirt domain, as running_vm boots it: the lab VM's accel
    (type qemu is TCG), q35, 2 vCPUs, 512 MiB, the lab's kernel, idle initramfs and command
    line, virtio-blk vda/vdb (qcow2), the agent's virtio channel; QEMU runs as root and
    libvirt leaves the files' owners alone (the seclabel), whatever the daemon's qemu.conf."""
    kernel = guest_kernel()
    initramfs = guest_initramfs(IDLE_GUEST)
    disk_xml = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vd{"abcdefgh"[index]}' bus='virtio'/>
    </disk>"""
        for index, disk in enumerate(disks)
    )
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel.vmlinux or kernel.vmlinuz}</kernel>
    <initrd>{initramfs}</initrd>
    <cmdline>{KERNEL_APPEND}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{serial_log}'/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='{AGENT_PORT_NAME}'/>
    </channel>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
"""


def _wait_domain(name: str, serial_log: Path, timeout: float = 180.0) -> float:
    """Waits for the guest's ready marker and its agent; the seconds it took."""
    started = time.monotonic()
    while READY_MARKER not in (
        serial_log.read_text(errors="replace") if serial_log.exists() else ""
    ):
        if time.monotonic() > started + timeout:
            raise TimeoutError(f"libvirt guest not ready in {timeout} s")
        time.sleep(0.1)
    while _virsh("qemu-agent-command", name, '{"execute":"guest-ping"}', check=False).returncode:
        if time.monotonic() > started + timeout:
            raise TimeoutError(f"libvirt guest's agent not answering in {timeout} s")
        time.sleep(0.2)
    return time.monotonic() - started


def _vnb_available() -> str | None:
    """Why virtnbdbackup cannot run here, or None."""
    missing = [t for t in ("virtnbdbackup", "virsh", "libvirtd", "unshare") if not shutil.which(t)]
    return f"{', '.join(missing)} not on PATH (apt: {VNB_APT})" if missing else None


def _virtnbdbackup(base: Path, accel: str, disks: list[Path], image_bytes: int) -> dict[str, Any]:
    """A full virtnbdbackup of the guest booted by libvirt on ``disks``; the domain is
    destroyed (and a libvirtd started here stopped) whatever happens."""
    work = base / "virtnbdbackup"
    work.mkdir()
    version = subprocess.run(
        ["virtnbdbackup", "--version"], capture_output=True, text=True, check=False
    )
    result: dict[str, Any] = {"version": (version.stdout + version.stderr).strip()}
    name = f"ffbench-vnb-{os.getpid()}"
    serial_log = work / "serial.log"
    xml = work / "domain.xml"
    xml.write_text(_domain_xml(name, accel, disks, serial_log))
    with _libvirtd(work / "libvirtd") as daemon:
        result["libvirtd"] = daemon
        result["libvirt"] = " / ".join(
            line.split(":", 1)[1].strip()
            for line in _virsh("version").stdout.splitlines()
            if line.startswith(("Using library", "Running hypervisor"))
        )
        _virsh("create", str(xml))
        try:
            result["boot_s"] = round(_wait_domain(name, serial_log), 1)
            out = work / "out"
            argv = [
                "virtnbdbackup", "-U", LIBVIRT_URI, "-d", name, "-l", "full", "-o", str(out),
                "-n", "-f", str(work / "nbd.sock"), "-S", str(work),
            ]  # fmt: skip
            _drop_caches()
            started = time.monotonic()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            wall = time.monotonic() - started
            (work / "virtnbdbackup.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise RuntimeError(
                    f"virtnbdbackup exit {done.returncode}: {(done.stdout + done.stderr)[-800:]}"
                )
        finally:
            _virsh("destroy", name, check=False)
    log = done.stdout + done.stderr
    result |= {
        "wall_s": round(wall, 2),
        "mb_s": round(image_bytes / MB / wall, 1),
        "data_bytes": sum(f.stat().st_size for f in out.glob("*.data")),  # its disk streams
        "froze": "Freezed [" in log and "Thawed [" in log,
        "command": " ".join(argv),
    }
    return result


def throughput(args: argparse.Namespace, base: Path, skip: set[str]) -> dict[str, Any]:
    """Sections 1 and 2 on a VM with --fill-mib MiB of random data per disk."""
    disks = make_disks(base / "disks", size_mib=args.disk_mib)
    repo, env = _init_repo(base)
    result: dict[str, Any] = {"disk_mib": args.disk_mib, "fill_mib": args.fill_mib}
    # An idle guest: restic and borg read the image files of a stopped VM, so freezeframe's
    # reader gets the cores to itself too, and the incremental sees only the 1 % rewrite (and
    # the file system's own writes for it), not a workload writing all along.
    with running_vm(base / "vm", disks, workload=IDLE_GUEST) as vm:
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
        full = _backup(vm, repo, env, TP_VM, "filesystem")
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

        vnb_copies: list[Path] = []
        if "virtnbdbackup" in skip:
            result["virtnbdbackup"] = {"skipped": "--skip"}
        elif why := _vnb_available():
            result["virtnbdbackup"] = {"skipped": why}
        else:  # copies of the paused images, the bytes restic and borg read, for libvirt's VM
            (base / "vnb-disks").mkdir()
            vm.qmp("stop")
            try:
                for disk in disks:
                    vnb_copies.append(base / "vnb-disks" / disk.name)
                    subprocess.run(["cp", str(disk), str(vnb_copies[-1])], check=True)
            finally:
                vm.qmp("cont")

        count = max(1, round(args.disk_mib * 2**20 * CHANGED_SHARE / BLOCK))
        written_before = _bytes_written(vm)
        _guest(vm, f"dd if=/dev/urandom of=/mnt/a/new bs={BLOCK} count={count} conv=fsync")
        changed = count * BLOCK
        written = _bytes_written(vm) - written_before
        _drop_caches()
        inc = _backup(vm, repo, env, TP_VM, "filesystem")
        modes = [
            "incremental" if "incremental" in v else f"full: {v.get('full_read')}"
            for v in inc["consistency"]["volumes"]
        ]
        result["incremental"] = {
            "bytes_changed": changed,
            "bytes_written_by_guest": written,  # QEMU's count: the data, metadata, journal
            "bytes_read": inc["summary"]["bytes_read"],
            "read_vs_changed": round(inc["summary"]["bytes_read"] / changed, 2),
            "wall_s": round(inc["wall_s"], 2),
            "summary": inc["summary"],
            "volumes": modes,
        }
        print(f"  incremental: {result['incremental']}", flush=True)
    if vnb_copies:  # after the plain-QEMU VM stopped: one guest at a time, as for freezeframe
        try:
            result["virtnbdbackup"] = _virtnbdbackup(base, result["accel"], vnb_copies, image_bytes)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            result["virtnbdbackup"] = {"failed": str(error)[-1000:]}
        shutil.rmtree(base / "vnb-disks")
        print(f"  virtnbdbackup: {result['virtnbdbackup']}", flush=True)
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
                snap = _backup(vm, repo, env, PROOF_VM, level)
                volumes = snap["consistency"]["volumes"]
                if level == "filesystem":
                    freeze.append(max(v.get("freeze_ms") or 0 for v in volumes))
                target = base / "restore"
                _ff(repo, env, "restore", snap["snapshot_id"][:12], "--target", target)
                images = [target / "vm" / PROOF_VM / f"{d}.raw" for d in vm.drive_ids]
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


def _offline_check(images: list[Path], workdir: Path) -> tuple[bool, bool, str]:
    """check_images, its two verdicts apart: (invariant holds, e2fsck clean, detail)."""
    try:
        with mounted_images(images, workdir, "raw") as (mount_a, mount_b):
            invariant, detail = check_dependent_writes(mount_a, mount_b)
    except RuntimeError as error:
        invariant, detail = False, f"could not mount: {error}"
    clean = True
    for raw in sorted(workdir.glob("scratch*.raw")):
        fsck = subprocess.run(["e2fsck", "-fn", raw], capture_output=True, text=True, check=False)
        if fsck.returncode != 0:
            clean, detail = False, f"{detail}; e2fsck {raw.name}: exit {fsck.returncode}"
        raw.unlink()
    return invariant, clean, detail


def _guest_python_ms(vm: Vm, rounds: int = 2) -> dict[str, list[int]]:
    """Wall ms in the guest of `python -c ...` (GUEST_IMPORTS), with the hook's environment."""
    lines = [
        f"export PYTHONPYCACHEPREFIX={PYCACHE_PREFIX} FREEZEFRAME_GUEST_CONFIG={GUEST_CONFIG_PATH}",
        't() { a=$(date +%s%N); "$@" >/dev/null 2>&1 || echo "failed: $*" >&2;'
        " b=$(date +%s%N); echo $(( (b - a) / 1000000 )); }",
    ]
    for _round in range(rounds):
        lines += [
            f"t {'env -u PYTHONPYCACHEPREFIX ' if 'own' in name else ''}"
            f"{sys.executable} -c '{code}'"
            for name, code in GUEST_IMPORTS.items()
        ]
    done = vm.guest_exec(["/bin/sh", "-c", "\n".join(lines)], timeout=600)
    vm.release_agent()
    if done.exitcode != 0 or done.stderr:
        raise RuntimeError(f"timing Python in the guest: {done.stderr[-300:]!r}")
    values = [int(v) for v in done.stdout.split()]
    names = list(GUEST_IMPORTS)
    return {name: values[i :: len(names)] for i, name in enumerate(names)}


def _verify_app(
    repo: Path, env: dict[str, str], vm: Vm, snap: dict[str, Any], work: Path
) -> dict[str, Any]:
    """Restore one backup of the PostgreSQL VM, check its images offline, boot them."""
    target = work / "restore"
    _ff(repo, env, "restore", snap["snapshot_id"][:12], "--target", target)
    images = [target / "vm" / APP_VM / f"{drive}.raw" for drive in vm.drive_ids]
    try:
        replay = [
            d for d, image in zip(vm.drive_ids, images, strict=True) if needs_journal_replay(image)
        ]
        invariant, clean, detail = _offline_check(images, work / "check")
        restored = boot_restored(work / "boot", images)
    finally:
        subprocess.run(["rm", "-rf", str(target), str(work)], check=True)
    rec = restored.recovery
    positions = snap.get("positions") or {}
    return {
        "invariant": invariant,
        "e2fsck_clean": clean,
        "needs_recovery": replay,
        "detail": detail,
        "pg_started": restored.started,
        "backup_recovery": rec.backup_recovery,
        "crash_recovery": rec.crash_recovery,
        "redo_start": rec.redo_start,
        "consistent_at": rec.consistent_at,
        "redo_at_start_lsn": bool(positions) and rec.redo_start == positions.get("start_lsn"),
        "consistent_at_stop_lsn": bool(positions)
        and rec.consistent_at == positions.get("stop_lsn"),
        "sums_equal": restored.consistent,
        "kept_committed": (restored.history_rows or 0) >= snap["committed_before"],
        "balances": restored.balances,
        "history_rows": restored.history_rows,
        "boot_s": round(restored.boot_seconds, 1),
        "pg_ready_s": round(restored.ready_seconds, 1),
        "log_tail": "" if restored.started and restored.consistent else restored.log[-1500:],
    }


def _app_backup(vm: Vm, repo: Path, env: dict[str, str], level: str) -> dict[str, Any]:
    """One backup at ``level`` and what the bench keeps of its record (or why it failed)."""
    committed = pgbench_progress(vm)  # pgbench's transactions committed before the backup
    vm.release_agent()
    try:
        snap = _backup(vm, repo, env, APP_VM, level)
    except RuntimeError as error:
        return {"failed": str(error)[-500:]}
    record = snap["consistency"]
    freezes = [v["freeze_ms"] for v in record["volumes"] if v.get("freeze_ms") is not None]
    quiesce = record.get("quiesce") or {}
    held = (quiesce.get("quiescers") or [{}])[0]
    return {
        "snapshot_id": snap["snapshot_id"],
        "achieved": record["achieved"],
        "wall_s": round(snap["wall_s"], 2),
        "freeze_ms": max(freezes) if freezes else None,
        "window_ms": quiesce.get("window_ms"),
        "held": held.get("result"),
        "positions": held.get("positions"),
        "committed_before": committed,
    }


def _app_counts(level: str, backups: list[dict[str, Any]]) -> dict[str, Any]:
    """The table's counts for one level's trials."""
    checked = [b["check"] for b in backups if "check" in b]

    def count(key: str) -> int:
        return sum(bool(c[key]) for c in checked)

    row: dict[str, Any] = {
        "trials": len(backups),
        "backup_failed": sum("failed" in b for b in backups),
        "not_achieved": sum(b.get("achieved") not in (None, level) for b in backups),
        "broken_invariant": sum(not c["invariant"] for c in checked),
        "e2fsck_failed": sum(not c["e2fsck_clean"] for c in checked),
        "journal_replay": sum(bool(c["needs_recovery"]) for c in checked),
        "pg_started": count("pg_started"),
        "from_label": count("backup_recovery"),
        "crash_recovery": sum(c["crash_recovery"] and not c["backup_recovery"] for c in checked),
        "consistent_at_stop_lsn": count("consistent_at_stop_lsn")
        if level == "application"
        else None,
        "sums_equal": count("sums_equal"),
        "kept_committed": count("kept_committed"),
    }
    freeze = [b["freeze_ms"] for b in backups if b.get("freeze_ms") is not None]
    hold = [b["window_ms"] for b in backups if b.get("window_ms") is not None]
    row["freeze_ms"] = _percentiles(freeze) if level != "crash" else None
    row["hold_ms"] = _percentiles(hold) if level == "application" else None
    return row


def _app_failures(level: str, row: dict[str, Any]) -> list[str]:
    """What in a level's counts is not as a backup at that level promises."""
    n = row["trials"] - row["backup_failed"]  # the restores checked
    bad = [
        f"{row[key]} {key}"
        for key in ("backup_failed", "not_achieved", "broken_invariant", "e2fsck_failed")
        if row[key]
    ]
    bad += [
        f"{n - row[key]} not {key}"
        for key in ("pg_started", "sums_equal", "kept_committed")
        if row[key] < n
    ]
    if level != "crash" and row["journal_replay"]:
        bad.append(f"{row['journal_replay']} journal_replay")
    if level == "application":
        bad += [
            f"{n - row[key]} not {key}"
            for key in ("from_label", "consistent_at_stop_lsn")
            if row[key] < n
        ]
    return bad


def app_proof(trials: int, base: Path) -> dict[str, Any]:
    """Section 5: the PostgreSQL guest, TRIALS backups per level, each restored and booted."""
    started = time.monotonic()
    disks = make_app_disks(base / "disks")
    repo, env = _init_repo(base)
    result: dict[str, Any] = {"levels": {}}
    with running_app_vm(base / "vm", disks, guest_config=APP_CONFIG) as vm:
        result["accel"] = vm.accel
        result["boot_s"] = round(vm.boot_seconds, 1)
        result["pg_ready_s"] = round(wait_pg_ready(vm), 1)
        installed = vm.guest_exec(
            [sys.executable, "-m", "freezeframe", "--json", "guest-hook", "install",
             "--hook", HOOK_PATH, "--config", GUEST_CONFIG_PATH],
            timeout=300,
        )  # fmt: skip
        vm.release_agent()
        if installed.exitcode != 0:
            raise RuntimeError(f"guest-hook install: {installed.stderr[-500:]!r}")
        result["quiescers"] = json.loads(installed.stdout)["quiescers"]
        result["guest_python_ms"] = _guest_python_ms(vm)
        print(
            f"application VM up ({vm.accel}), PostgreSQL ready {result['pg_ready_s']} s, hook "
            f"installed; guest Python ms: {result['guest_python_ms']}",
            flush=True,
        )
        for level in APP_LEVELS:
            backups = []
            for trial in range(trials):
                taken = _app_backup(vm, repo, env, level)
                backups.append(taken)
                print(f"  {level} backup {trial + 1}: {taken}", flush=True)
            vm.qmp("stop")  # the checks and boots get the cores; the workload waits
            try:
                for trial, taken in enumerate(backups):
                    if "failed" in taken:
                        continue
                    taken["check"] = _verify_app(repo, env, vm, taken, base / "verify")
                    c = taken["check"]
                    print(
                        f"  {level} restore {trial + 1}: invariant {c['invariant']}, e2fsck "
                        f"clean {c['e2fsck_clean']}, replay {c['needs_recovery']}, PG started "
                        f"{c['pg_started']} (label {c['backup_recovery']}, crash recovery "
                        f"{c['crash_recovery']}, consistent at {c['consistent_at']}), sums "
                        f"equal {c['sums_equal']}, boot {c['boot_s']} s + {c['pg_ready_s']} s",
                        flush=True,
                    )
            finally:
                vm.qmp("cont")
            row = _app_counts(level, backups)
            row["failures"] = _app_failures(level, row)
            row["backups"] = backups
            result["levels"][level] = row
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _ms(p: dict[str, float] | None) -> str:
    return " / ".join(f"{p[k]:.0f}" for k in ("p50", "p95", "max")) if p else "-"


def app_table(app: dict[str, Any]) -> str:
    """Section 5 as a markdown table, with the guest's Python costs below it."""
    lines = [
        f"Application VM: PostgreSQL 15 + pgbench (2 clients) and the dependent writes, "
        f"2 x 256 MiB qcow2, {app['accel']}",
        "",
        "| level | trials | broken invariant | e2fsck | journal replay | PG started "
        "| from label / crash recovery | consistent at stop LSN | sums equal "
        "| freeze p50/p95/max ms | hold p50/p95/max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, row in app["levels"].items():
        trials = str(row["trials"])
        if row["backup_failed"] or row["not_achieved"]:
            trials += f" ({row['backup_failed']} failed, {row['not_achieved']} lower level)"
        stop = row["consistent_at_stop_lsn"]
        lines.append(
            f"| {level} | {trials} | {row['broken_invariant']} | {row['e2fsck_failed']} "
            f"| {row['journal_replay']} | {row['pg_started']} "
            f"| {row['from_label']} / {row['crash_recovery']} "
            f"| {'-' if stop is None else stop} | {row['sums_equal']} "
            f"| {_ms(row['freeze_ms'])} | {_ms(row['hold_ms'])} |"
        )
    kept = ", ".join(
        f"{level} {row['kept_committed']}/{row['trials'] - row['backup_failed']}"
        for level, row in app["levels"].items()
    )
    lines += [
        "",
        f"Restores that kept every pgbench transaction committed before the backup: {kept}.",
    ]
    timed = app.get("guest_python_ms") or {}
    if timed:
        lines += ["", "| in the guest, under pgbench (hook's env) | wall ms per run |", "|---|---|"]
        lines += [f"| `{name}` | {', '.join(map(str, ms))} |" for name, ms in timed.items()]
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def throughput_tables(tp: dict[str, Any]) -> str:
    """Sections 1 and 2 as markdown tables."""
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
    vnb = tp.get("virtnbdbackup") or {"skipped": "not run"}
    if "wall_s" in vnb:
        lines.append(
            f"| virtnbdbackup -l full (libvirt, same images) | {tp['image_bytes'] / MB:.0f} "
            f"| {vnb['wall_s']} | {vnb['mb_s']} | {_ratio(full['read_mb_s'], vnb['mb_s'])} |"
        )
    else:
        reason = vnb.get("skipped") or f"failed: {vnb.get('failed', '')[-200:]}"
        lines.append(f"| virtnbdbackup | {reason.replace('|', '/')} | | | |")
    inc = tp["incremental"]
    lines += [
        "",
        "| incremental after 1 % of vda rewritten | bytes changed (guest wrote) | bytes read "
        "| read/changed | wall s | volumes |",
        "|---|---|---|---|---|---|",
        f"| filesystem | {inc['bytes_changed']} ({inc['bytes_written_by_guest']}) "
        f"| {inc['bytes_read']} "
        f"| {inc['read_vs_changed']} ({'<= 2 ok' if inc['read_vs_changed'] <= 2 else '> 2'}) "
        f"| {inc['wall_s']} | {', '.join(inc['volumes'])} |",
    ]
    return "\n".join(lines)


def proof_tables(pr: dict[str, Any]) -> str:
    """Sections 3 and 4 as markdown tables."""
    fz = pr["filesystem"].get("freeze_ms")
    lines = [
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
    parser.add_argument("--skip", default="", help=f"comma-separated, of: {','.join(SECTIONS)}")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("vm.py needs root: the VM lab uses KVM, loop mounts and drop_caches")
    if args.fill_mib > args.disk_mib * 0.8:
        sys.exit("--fill-mib must leave room on the disk (at most 80 % of --disk-mib)")
    # SIGTERM unwinds like Ctrl-C: the VMs are stopped by their context managers.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    skip = {s for s in args.skip.split(",") if s}
    if skip - set(SECTIONS):
        sys.exit(f"--skip: unknown {','.join(sorted(skip - set(SECTIONS)))}; know {SECTIONS}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.json or PROJECT / "bench" / "results" / f"vm-{stamp}.json"
    subprocess.run(["rm", "-rf", str(args.work)], check=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    tp = pr = app = None
    parts = []
    if "throughput" not in skip:
        tp = throughput(args, args.work / "throughput", skip)
        shutil.rmtree(args.work / "throughput")
        parts.append(throughput_tables(tp))
    if "proof" not in skip:
        print(f"proof VM: {args.trials} trials each at crash and filesystem, then naive copies")
        pr = proof(args.trials, args.work / "proof")
        shutil.rmtree(args.work / "proof")
        parts.append(proof_tables(pr))
    if "app" not in skip:
        print(f"application VM: {args.trials} trials each at {', '.join(APP_LEVELS)}")
        app = app_proof(args.trials, args.work / "app")
        shutil.rmtree(args.work / "app")
        parts.append(app_table(app))
    table = "\n\n".join(parts)
    print("\n" + table)
    if tp is not None:
        versions = [tp[n]["version"] for n in ("restic", "borg") if "version" in tp[n]]
        vnb = tp.get("virtnbdbackup") or {}
        if "version" in vnb:
            versions.append(f"virtnbdbackup {vnb['version']} ({vnb.get('libvirt', '?')})")
        if versions:
            print("\n" + "; ".join(versions))
    failures = []
    if tp is not None and "failed" in (tp.get("virtnbdbackup") or {}):
        failures.append(f"virtnbdbackup: {tp['virtnbdbackup']['failed'][-300:]}")
    if pr is not None:
        failures += [f"proof {lv}: {pr[lv]['broken']} broken" for lv in ("crash", "filesystem")]
        failures = [f for f in failures if not f.endswith(": 0 broken")]
    if app is not None:
        failures += [
            f"application VM {level}: {', '.join(row['failures'])}"
            for level, row in app["levels"].items()
            if row["failures"]
        ]
    doc = {
        "started": stamp,
        "command": sys.argv,
        "freezeframe": Freezeframe().version(),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "skipped": sorted(skip),
        "throughput": tp,
        "proof": pr,
        "application": app,
        "failures": failures,
        "table": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nelapsed {doc['elapsed_s']} s; written to {out}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
