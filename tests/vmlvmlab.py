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
from collections.abc import Iterator
from pathlib import Path

from vmfixtures import GuestExec, Vm, make_disks
from vmguestlab import APP_MODULES, APP_SETUP, PYCACHE_PREFIX, STUB_HOOK, running_app_vm

LVM_MODULES = (*APP_MODULES, "dm_mod", "dm_snapshot", "dm_thin_pool", "xfs")
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
