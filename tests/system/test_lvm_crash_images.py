"""The crash images of two LVs written by one application, checked at the disk's write
boundaries rather than wherever a snapshot happened to fall (test_lvm_backup.py checks those).

In the LVM lab's guest (tests/vmlvmlab.py: this host's kernel has no device-mapper) the
volume group sits on a dm-log-writes device over a blank disk, which logs every write to a
second disk: a thick ext4 LV holds DEPENDENT_WRITES' log, a thin XFS LV its commit record.
Once the workload has run and everything is taken down, tests/logwrites.py replays the log in
order onto a third, blank disk, stopping at a spread of the flush and FUA entries after the
setup: each is an instant a power cut could fall on, and what has been replayed is what the
disk held then. At each, a throw-away dm-snapshot of the replay disk (so recovery changes
nothing the next one replays onto) is the only device LVM may see; both LVs are activated and
mounted, which is crash recovery (ext4 replays its journal, XFS its log), and the commit must
never vouch for more log than the log holds.

What a user relies on: a crash-consistent (``crash``) capture of these volumes is sound at
every instant, not just the ones a few trials hit, because the file systems recover from any
crash point and the application's ordering survives it.

FREEZEFRAME_LVM_CRASH_IMAGES sets how many boundaries are checked (default 12),
FREEZEFRAME_LVM_CRASH_SECONDS how long the workload runs (default 30),
FREEZEFRAME_LVM_CRASH_SEED which boundaries are picked (default random, printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import is_root, privileged_required
from freezeframe.errors import QmpError
from logwrites import END_MARK, Scan, spread
from vmfixtures import RECORD, Vm, check_dependent_writes, make_disks
from vmguestlab import PYCACHE_PREFIX, STUB_HOOK, running_app_vm
from vmlvmlab import (
    IDLE,
    LVM_MODULES,
    LVM_SETUP,
    WORKLOAD_PID,
    committed,
    guest_sh,
    must,
    start_dependent_writes,
)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(3600)]

IMAGES = int(os.environ.get("FREEZEFRAME_LVM_CRASH_IMAGES", "12"))
RUN_SECONDS = float(os.environ.get("FREEZEFRAME_LVM_CRASH_SECONDS", "30"))
SEED = int(os.environ.get("FREEZEFRAME_LVM_CRASH_SEED") or random.randrange(1 << 32))

# vda, vdb: the lab's two small ext4 disks (its /init mounts them); then blank ones.
DATA, LOG, REPLAY, COW = "/dev/vdc", "/dev/vdd", "/dev/vde", "/dev/vdf"
BLANK_MIB = {"data": 512, "log": 1024, "replay": 512, "cow": 256}
VG = "crashlab"
LOG_LV, COMMIT_LV = "log", "commit"  # mounted at /mnt/lv/NAME, as start_dependent_writes wants
LOGGED = "lw"  # the dm-log-writes device
SNAP = "crashsnap"  # the dm-snapshot of the replay disk one image is checked on
CRASH_MOUNT = "/mnt/crash"
STATE = "/run/logwrites-replay.json"
TESTS = Path(__file__).resolve().parent.parent


def dm_create(name: str, table: str) -> str:
    """dmsetup create without udev (none runs in the guest): the node made by mknodes."""
    return (
        f'dmsetup --noudevrules --noudevsync create {name} --table "{table}"\n'
        f"dmsetup mknodes {name}\n"
    )


def dm_remove(name: str) -> str:
    return f"dmsetup --noudevrules --noudevsync remove {name}\ndmsetup mknodes\n"


def record_script() -> str:
    """The VG on the logging device, the two LVs made, mounted, synced, and the mark."""
    lvm = f"--devices /dev/mapper/{LOGGED}"  # not /dev/vdc, which shows the same PV
    table = f"0 $(blockdev --getsz {DATA}) log-writes {DATA} {LOG}"
    return "set -e\n" + dm_create(LOGGED, table) + f"""
pvcreate -q {lvm} /dev/mapper/{LOGGED}
vgcreate -q {lvm} {VG} /dev/mapper/{LOGGED}
lvcreate -q {lvm} -n {LOG_LV} -L 64m {VG}
lvcreate -q {lvm} --type thin-pool -n pool -L 160m {VG}
lvcreate -q {lvm} -n {COMMIT_LV} -V 512m --thinpool pool {VG}
mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/{VG}/{LOG_LV}
mkfs.xfs -q /dev/{VG}/{COMMIT_LV}
for lv in {LOG_LV} {COMMIT_LV}; do
    mkdir -p /mnt/lv/$lv && mount /dev/{VG}/$lv /mnt/lv/$lv
done
sync
dmsetup message {LOGGED} 0 mark setup
"""  # fmt: skip


def stop_script() -> str:
    """The workload stopped, its children too (its session's group: a sync or mv may be
    running) and gone, so the last commit is final and the LVs are free; the LVs unmounted,
    the VG deactivated and the logging device removed, which logs its end mark."""
    return f"""set -e
group=$(cat {WORKLOAD_PID})
kill -- -$group
i=0
while kill -0 -- -$group 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ]; sleep 0.1
done
echo "final $(cat /mnt/lv/{COMMIT_LV}/b.commit)"
for lv in {LOG_LV} {COMMIT_LV}; do umount /mnt/lv/$lv; done
vgchange -q -an --devices /dev/mapper/{LOGGED} {VG}
""" + dm_remove(LOGGED)


def check_script(out: str) -> str:
    """The image as it stands on the replay disk, seen through a fresh snapshot: activated,
    mounted (crash recovery), its two files copied to ``out``, then all of it taken down.
    The kernel's lines about the mounts follow the marker line."""
    lvm = f"--devices /dev/mapper/{SNAP}"
    table = f"0 $(blockdev --getsz {REPLAY}) snapshot {REPLAY} {COW} N 8"
    return "set -e\n" + dm_create(SNAP, table) + f"""
vgchange -q -ay {lvm} {VG} >/dev/null
dmesg -C
for lv in {LOG_LV} {COMMIT_LV}; do
    mkdir -p {CRASH_MOUNT}/$lv && mount /dev/{VG}/$lv {CRASH_MOUNT}/$lv
done
rm -rf {out} && mkdir -p {out}/{LOG_LV} {out}/{COMMIT_LV}
if [ -e {CRASH_MOUNT}/{LOG_LV}/a.log ]; then cp {CRASH_MOUNT}/{LOG_LV}/a.log {out}/{LOG_LV}/; fi
if [ -e {CRASH_MOUNT}/{COMMIT_LV}/b.commit ]; then
    cp {CRASH_MOUNT}/{COMMIT_LV}/b.commit {out}/{COMMIT_LV}/
fi
echo ---kernel---
dmesg
for lv in {LOG_LV} {COMMIT_LV}; do umount {CRASH_MOUNT}/$lv; done
vgchange -q -an {lvm} {VG} >/dev/null
""" + dm_remove(SNAP)  # fmt: skip


def logwrites(vm: Vm, *args: str, timeout: float = 600.0) -> dict[str, object]:
    """tests/logwrites.py in the guest (imported, so its byte code is the host's): its JSON."""
    call = "import logwrites, sys; sys.exit(logwrites.main())"
    argv = shlex.join([sys.executable, "-c", call, *args])
    out = must(vm, f"PYTHONPATH={shlex.quote(str(TESTS))} exec {argv}", timeout)
    doc: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return doc


@contextlib.contextmanager
def crash_lab(workdir: Path) -> Iterator[Vm]:
    """The LVM lab's guest with dm-log-writes loaded and four blank disks (vdc-vdf)."""
    if not is_root():
        privileged_required("the LVM lab needs root (qemu, the guest's device-mapper)")
    disks = make_disks(workdir / "disks", size_mib=32, fmt="raw")
    for name, mib in BLANK_MIB.items():
        blank = workdir / "disks" / f"{name}.raw"
        with blank.open("wb") as f:
            f.truncate(mib << 20)
        disks.append(blank)
    # The guest cannot write byte code to the 9p share: compile what it imports here.
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(PYCACHE_PREFIX), "PYTHONPATH": str(TESTS)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import logwrites"], env=env, check=True)
    with running_app_vm(
        workdir / "vm", disks, hook=STUB_HOOK, workload=IDLE, fmt="raw",
        modules=(*LVM_MODULES, "dm_log_writes"), setup=LVM_SETUP,
    ) as vm:  # fmt: skip
        print(f"\ncrashimages: booted in {vm.boot_seconds:.1f} s ({vm.accel})")
        if guest_sh(vm, "test -c /dev/mapper/control").exitcode != 0:
            privileged_required("the lab guest has no device-mapper")
        yield vm


def _read(vm: Vm, path: str) -> bytes | None:
    try:
        return vm.read_guest_file(path)
    except QmpError:
        return None  # not in the image


def test_every_crash_image_recovers_and_keeps_the_log_ahead_of_its_commit(
    tmp_path: Path,
) -> None:
    with crash_lab(tmp_path) as vm:
        started = time.monotonic()
        must(vm, record_script(), timeout=300)
        start_dependent_writes(vm, LOG_LV, COMMIT_LV)
        deadline = time.monotonic() + vm.wait_s(120)
        while committed(vm, COMMIT_LV) < RECORD * 5:
            assert time.monotonic() < deadline, "the workload did not commit"
            time.sleep(0.5)
        time.sleep(RUN_SECONDS)
        final = int(must(vm, stop_script(), timeout=300).split("final ", 1)[1].split()[0])
        recorded = time.monotonic() - started
        print(f"crashimages: recorded {final // RECORD} commits in {recorded:.0f} s")

        scan = Scan(**logwrites(vm, "scan", LOG))  # type: ignore[arg-type]
        assert scan.marks.get(END_MARK) == scan.entries - 1  # the log is whole, to its end
        boundaries = scan.boundaries_after("setup")
        picks = spread(boundaries, IMAGES, random.Random(SEED))
        print(f"crashimages: {scan.entries} entries ({scan.end >> 20} MiB), "
              f"{len(scan.boundaries)} flush/FUA boundaries, {len(boundaries)} after the setup; "
              f"checking {len(picks)} (seed {SEED})")  # fmt: skip

        checking = time.monotonic()
        commits = []
        recoveries = {"ext4": 0, "xfs": 0}
        for number, boundary in enumerate(picks):
            logwrites(vm, "replay", LOG, REPLAY, STATE, "--to", str(boundary))
            out = f"/run/crash-image/{number}"
            result = guest_sh(vm, check_script(out), timeout=300)
            text = result.stdout.decode(errors="replace")
            assert result.exitcode == 0, (
                f"the crash image at entry {boundary} did not recover and mount:\n{text}\n"
                f"{result.stderr.decode(errors='replace')}"
            )
            kernel = text.partition("---kernel---")[2]
            ext4 = "recovery complete" in kernel
            xfs = "Ending recovery" in kernel
            recoveries["ext4"] += ext4
            recoveries["xfs"] += xfs
            here = tmp_path / "images" / str(number)
            for lv, name in ((LOG_LV, "a.log"), (COMMIT_LV, "b.commit")):
                (here / lv).mkdir(parents=True)
                data = _read(vm, f"{out}/{lv}/{name}")
                if data is not None:
                    (here / lv / name).write_bytes(data)
            holds, why = check_dependent_writes(here / LOG_LV, here / COMMIT_LV)
            assert holds, f"the crash image at entry {boundary}: {why}"
            commit_file = here / COMMIT_LV / "b.commit"
            commit = int(commit_file.read_text()) if commit_file.exists() else 0
            commits.append(commit)
            print(f"crashimages: entry {boundary}: {why}; recovered: "
                  f"ext4 {'yes' if ext4 else 'no'}, xfs {'yes' if xfs else 'no'}")  # fmt: skip
        checked = time.monotonic() - checking

    mid_run = [c for c in commits if 0 < c < final]
    print(f"crashimages: {len(picks)} of {len(boundaries)} boundaries checked in {checked:.0f} s "
          f"({checked / max(1, len(picks)):.1f} s each), {len(mid_run)} mid-run; recovery ran "
          f"ext4 {recoveries['ext4']}, xfs {recoveries['xfs']} times")  # fmt: skip
    assert commits == sorted(commits)  # later crash points never lose a commit
    assert commits[-1] == final  # the replay ends where the device did, all of it recorded
    assert len(mid_run) >= len(picks) // 2  # the images are of the running workload
