"""An LVM lab on top of tests/vmguestlab.py: the application guest (Debian's kernel, the host's
userland over 9p, the agent chrooted into it) with device-mapper's modules loaded and a third,
blank disk (/dev/vdc) for a volume group. This host's kernel has no device-mapper; the guest's
has, and the host's lvm2 (installed by tools/bootstrap.sh) runs in it.

LVM runs without udev there: ``LVM_ENV`` points lvm at /run/lvm-lab/lvm.conf (udev sync and
rules off, so lvm makes its /dev nodes itself; no metadata backups on the read-only /etc).
``guest_sh`` runs a shell script in the guest's chroot with that environment and returns its
exit status and output.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import freezeframe
from ffharness import is_root, privileged_required
from vmfixtures import DEPENDENT_WRITES, GuestExec, Vm, make_disks
from vmguestlab import APP_MODULES, APP_SETUP, PYCACHE_PREFIX, STUB_HOOK, running_app_vm

LVM_MODULES = (
    *APP_MODULES,
    "dm_mod",
    "dm_snapshot",
    "dm_thin_pool",
    "dm_flakey",
    "xfs",
    "btrfs",
    "loop",
)
LVM_SYSTEM_DIR = "/run/lvm-lab"
LVM_CONF = """\
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
devices {
    obtain_device_list_from_udev = 0
    scan = [ "/dev" ]
    # A PV on a device-mapper device over a loop device would be seen twice.
    global_filter = [ "r|^/dev/loop|" ]
}
backup {
    backup = 0
    archive = 0
}
global {
    locking_dir = "/run/lock/lvm"
}
"""
LVM_ENV = {
    "LVM_SYSTEM_DIR": LVM_SYSTEM_DIR,
    "LVM_SUPPRESS_FD_WARNINGS": "1",
    "PYTHONPYCACHEPREFIX": str(PYCACHE_PREFIX),
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}
# Written by /init before the agent starts (in the guest, outside the chroot: /host/run).
LVM_SETUP = (
    APP_SETUP
    + f"""
mkdir -p /host{LVM_SYSTEM_DIR} /host/run/lock/lvm
cat >/host{LVM_SYSTEM_DIR}/lvm.conf <<'EOF'
{LVM_CONF}EOF
"""
)
IDLE = "while :; do sleep 60; done\n"
PV_DEVICE = "/dev/vdc"


@contextlib.contextmanager
def running_lvm_vm(workdir: Path, pv_mib: int = 768) -> Iterator[Vm]:
    """Boots the guest with two small ext4 disks (vda, vdb: the lab's /init mounts them) and a
    blank raw ``pv_mib`` MiB disk vdc for LVM, idle (no workload)."""
    disks = make_disks(workdir / "disks", size_mib=32, fmt="raw")
    blank = workdir / "disks" / "pv.raw"
    with blank.open("wb") as f:
        f.truncate(pv_mib << 20)
    with running_app_vm(
        workdir / "vm", [*disks, blank], hook=STUB_HOOK, workload=IDLE, fmt="raw",
        modules=LVM_MODULES, setup=LVM_SETUP,
    ) as vm:  # fmt: skip
        yield vm


def guest_sh(vm: Vm, script: str, timeout: float = 120.0) -> GuestExec:
    """Runs ``script`` with /bin/sh in the guest's chroot, with LVM_ENV."""
    env = [f"{k}={v}" for k, v in LVM_ENV.items()]
    return vm.guest_exec(["/usr/bin/env", *env, "/bin/sh", "-c", script], timeout=timeout)


def must(vm: Vm, script: str, timeout: float = 120.0) -> str:
    """``guest_sh`` that raises with the output unless the script exits 0; its stdout."""
    result = guest_sh(vm, script, timeout)
    if result.exitcode != 0:
        raise RuntimeError(
            f"guest script exited {result.exitcode}:\n{script}\n"
            f"stdout: {result.stdout.decode(errors='replace')}\n"
            f"stderr: {result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode(errors="replace")


VG = "lab"
SRC = str(Path(freezeframe.__file__).parent.parent)
DRIVER = str(Path(__file__).parent / "lvmguestdriver.py")
HOLD_FILE = "/run/lvm-hold.json"
# name: (thin?, file system, size MiB: the LV's, or the thin volume's virtual size)
VOLUMES = {
    "thick-ext4": (False, "ext4", 64),
    "thick-xfs": (False, "xfs", 304),
    "thin-ext4": (True, "ext4", 256),
    "thin-xfs": (True, "xfs", 512),
}


def lab_setup_script() -> str:
    """The VG on vdc with a 256 MiB thin pool, VOLUMES made, mounted at /mnt/lv/NAME and given
    a little content (dir/big, marker, dir/sub/name)."""
    lines = ["set -e", f"pvcreate -q {PV_DEVICE}", f"vgcreate -q {VG} {PV_DEVICE}",
             f"lvcreate -q --type thin-pool -n pool -L 256m {VG}"]  # fmt: skip
    for name, (thin, fs, size) in VOLUMES.items():
        if thin:
            lines.append(f"lvcreate -q -n {name} -V {size}m --thinpool pool {VG}")
        else:
            lines.append(f"lvcreate -q -n {name} -L {size}m {VG}")
        lines.append(f"mkfs.{fs} -q /dev/{VG}/{name}")
        lines.append(f"mkdir -p /mnt/lv/{name} && mount /dev/{VG}/{name} /mnt/lv/{name}")
        lines.append(
            f"cd /mnt/lv/{name} && mkdir -p dir/sub && head -c 3000000 /dev/urandom >dir/big "
            f"&& echo before >marker && echo {name} >dir/sub/name && cd /"
        )
    lines.append("sync")
    return "\n".join(lines)


@contextlib.contextmanager
def lvm_lab(workdir: Path) -> Iterator[Vm]:
    """The lab guest booted with its VG and VOLUMES set up (or a skip, failing when
    privileged tests are required, where this cannot run)."""
    if not is_root():
        privileged_required("the LVM lab needs root (qemu, the guest's device-mapper)")
    with running_lvm_vm(workdir, pv_mib=1024) as vm:
        print(f"\nlvmlab: booted in {vm.boot_seconds:.1f} s ({vm.accel})")
        started = time.monotonic()
        if guest_sh(vm, "test -c /dev/mapper/control").exitcode != 0:
            privileged_required("the lab guest has no device-mapper")
        must(vm, lab_setup_script(), timeout=300)
        print(f"lvmlab: VG with {len(VOLUMES)} LVs made in {time.monotonic() - started:.1f} s")
        yield vm


def driver(vm: Vm, *args: str, timeout: float = 300.0) -> tuple[int, dict[str, object]]:
    """tests/lvmguestdriver.py run in the guest: its exit status and its last JSON line."""
    argv = " ".join(shlex.quote(a) for a in (sys.executable, DRIVER, *args))
    result = guest_sh(vm, f"PYTHONPATH={shlex.quote(SRC)} exec {argv}", timeout)
    out = result.stdout.decode(errors="replace").strip().splitlines()
    assert out, f"the driver printed nothing: {result.stderr.decode(errors='replace')}"
    return result.exitcode, json.loads(out[-1])


def leftovers(vm: Vm) -> list[str]:
    """ff-* LVs, mounts under /run/freezeframe, suspended dm devices: all should be none."""
    found = []
    lvs = must(vm, f"lvs --noheadings -o lv_name {VG}").split()
    found += [f"LV {name}" for name in lvs if name.startswith("ff-")]
    mounts = must(vm, "cat /proc/mounts").splitlines()
    found += [f"mount {line}" for line in mounts if "/run/freezeframe" in line]
    suspended = must(vm, SUSPENDED_DEVICES).split()
    found += [f"suspended {name}" for name in suspended]
    # A snapshot's devices (the lab has no snapshots of its own): its, its -cow, the origin's
    # -real, left by an lvcreate killed before lvm recorded the snapshot.
    devices = must(vm, "dmsetup info -c --noheadings -o name").split()
    found += [f"device {name}" for name in devices if "-ff--" in name or
              name.endswith(("-real", "-cow"))]  # fmt: skip
    return found


# The kernel's own word on which device-mapper devices are suspended.
SUSPENDED_DEVICES = """
for dm in /sys/block/dm-*/dm; do
  [ "$(cat $dm/suspended 2>/dev/null)" = 1 ] && cat $dm/name
done
true
"""


REPO = "/run/ffrepo"
# What freezeframe runs with in the guest: the repository and its password through the
# environment (never the command line), the cache and temporary files on the guest's tmpfs.
GUEST_ENV = {
    "FREEZEFRAME_REPOSITORY": REPO,
    "FREEZEFRAME_PASSWORD": "lvm-lab-password",
    "XDG_CACHE_HOME": "/run/ffcache",
    "TMPDIR": "/run/fftmp",
    "PYTHONPATH": SRC,
}
WORKLOAD = "/run/dependent-writes.sh"
WORKLOAD_PID = "/run/dependent-writes.pid"


def init_repository(vm: Vm) -> None:
    must(vm, "mkdir -p /run/ffcache /run/fftmp")
    status, _doc, err = guest_freezeframe(vm, "init")
    if status != 0:
        raise RuntimeError(f"init in the guest failed: {err}")


def guest_freezeframe(
    vm: Vm, *args: str, driver: tuple[str, ...] = (), timeout: float = 600.0
) -> tuple[int, Any, str]:
    """The freezeframe command in the guest, with --json, through the driver (which can act
    once the snapshots are readable): exit status, its JSON document, stderr."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GUEST_ENV.items())
    argv = [sys.executable, DRIVER, "backup", *driver, "--", "--json", "--no-progress", *args]
    result = guest_sh(vm, f"export {env}; exec {shlex.join(argv)}", timeout)
    out = result.stdout.decode(errors="replace").strip()
    return result.exitcode, json.loads(out) if out else None, result.stderr.decode(errors="replace")


def guest_trials(
    vm: Vm, trials: int, *backup_args: str, check: tuple[str, str] | None = None
) -> list[dict[str, Any]]:
    """``backup BACKUP_ARGS`` run ``trials`` times by one process in the guest (the driver's
    ``trials``); with ``check`` (the log's and the commit's directories), each snapshot
    restored and the dependent-write invariant checked on it there. One dict per trial
    (``status``, ``doc``, ``backup_s``; with ``check`` also ``holds``, ``why``)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GUEST_ENV.items())
    argv = [sys.executable, DRIVER, "trials", "--trials", str(trials)]
    if check is not None:
        argv += ["--check", ":".join(check)]
    argv += ["--", *backup_args]
    out = must(vm, f"export {env}; exec {shlex.join(argv)}", timeout=120.0 + 240.0 * trials)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def restore_in_guest(vm: Vm, snapshot_id: str, target: str) -> None:
    must(vm, f"rm -rf {target}")
    status, _doc, err = guest_freezeframe(vm, "restore", snapshot_id, "--target", target)
    if status != 0:
        raise RuntimeError(f"restore in the guest failed: {err}")


def start_dependent_writes(vm: Vm, log_lv: str, commit_lv: str) -> None:
    """DEPENDENT_WRITES flat out, the log on /mnt/lv/LOG_LV, the commit on /mnt/lv/COMMIT_LV;
    its working directory on the log's LV makes it a writer of that volume (as a database's
    data directory does): freezeframe finds writers by their open files and directories."""
    script = DEPENDENT_WRITES.replace("log=/mnt/a/a.log", f"log=/mnt/lv/{log_lv}/a.log").replace(
        "dir=/mnt/b", f"dir=/mnt/lv/{commit_lv}"
    )
    assert f"/mnt/lv/{log_lv}/a.log" in script and f"dir=/mnt/lv/{commit_lv}" in script
    must(vm, f"cat >{WORKLOAD} <<'EOF'\n{script}\nEOF")
    must(vm, f"cd /mnt/lv/{log_lv}; setsid sh {WORKLOAD} </dev/null >/dev/null 2>&1 & "
             f"echo $! >{WORKLOAD_PID}")  # fmt: skip


def stop_dependent_writes(vm: Vm) -> None:
    must(vm, f"kill $(cat {WORKLOAD_PID}) 2>/dev/null; sleep 0.5; true")


def committed(vm: Vm, commit_lv: str) -> int:
    """The log length the workload has committed so far."""
    text = must(vm, f"cat /mnt/lv/{commit_lv}/b.commit 2>/dev/null || echo 0").strip()
    return int(text or "0")
