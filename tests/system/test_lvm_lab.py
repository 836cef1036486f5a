"""freezeframe's LVM provider inside the VM lab's guest (tests/vmlvmlab.py), whose Debian kernel
has device-mapper (this host's has not): a volume group on a blank virtio disk with thick LVs
and a thin pool with thin LVs, ext4 and XFS on them. tests/lvmguestdriver.py runs in the guest
with the host's Python and lvm2 over 9p and takes, mounts, reads and removes each snapshot.

What a user relies on: the snapshot shows each LV as it was at the snapshot instant (not the
writes after it); a thick snapshot that overflows is reported, not trusted; a thick snapshot
that does not fit in the VG is refused in one line before anything is created; nothing (no ff-
LV, no mount, no suspended device-mapper device) is left behind, also when the run is killed
with SIGKILL while it reads (the next run removes its snapshot).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import cast

import pytest

from vmfixtures import Vm
from vmlvmlab import DRIVER, HOLD_FILE, SRC, VG, VOLUMES, driver, guest_sh, leftovers, lvm_lab, must

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def lvm_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    with lvm_lab(tmp_path_factory.mktemp("lvmlab")) as vm:
        yield vm


@pytest.mark.parametrize("name", list(VOLUMES))
def test_snapshot_shows_the_lv_at_the_instant_and_leaves_nothing(lvm_vm: Vm, name: str) -> None:
    status, result = driver(lvm_vm, "snapshot", f"/mnt/lv/{name}")
    assert status == 0, result
    print(f"lvmlab: {name}: lvcreate took {float(str(result['create_ms'])):.0f} ms")
    before, seen, after = result["before"], result["seen"], result["origin_after"]
    assert isinstance(before, dict) and isinstance(seen, dict) and isinstance(after, dict)
    assert seen == before  # what the LV held when the snapshot was taken
    assert "after-snapshot" in after and after["marker"] != before["marker"]  # it did change
    assert result["intact"] is True
    # `filesystem`: lvcreate's suspend froze the file system, so the snapshot is clean.
    fs = VOLUMES[name][1]
    mount_log = cast(list[str], result["mount_log"])
    if fs == "ext4":
        assert result["origin_needs_recovery"] is True  # a mounted ext4's journal is live
        assert result["needs_recovery"] is False, mount_log
    else:
        # XFS (Linux 6.1) replays the log of a snapshot of its frozen self on mount, into the
        # snapshot; the data is still the frozen file system's (checked above). The mount
        # must have completed.
        ended = [line for line in mount_log if "Ending" in line]
        assert ended, mount_log
        print(f"lvmlab: {name}: {ended[-1].split(': ', 1)[-1]}")
    assert leftovers(lvm_vm) == []


def test_freezing_before_lvcreate_makes_it_fail_so_the_provider_never_does(lvm_vm: Vm) -> None:
    """Why ``needs_freeze`` is False: device-mapper's suspend freezes the file system itself,
    and on a file system already frozen with FIFREEZE it fails (EBUSY); nothing is left."""
    script = (
        "fsfreeze -f /mnt/lv/thin-ext4; "
        f"lvcreate -q --snapshot --setactivationskip n -n ff-probe {VG}/thin-ext4; "
        "echo status=$?; fsfreeze -u /mnt/lv/thin-ext4"
    )
    result = guest_sh(lvm_vm, script)
    out = result.stdout.decode() + result.stderr.decode()
    assert "status=5" in out and "Device or resource busy" in out, out
    assert leftovers(lvm_vm) == []


def test_overflowing_thick_snapshot_is_caught(lvm_vm: Vm) -> None:
    """A 4 MiB store and 16 MiB written to the origin while the snapshot is mounted."""
    status, result = driver(
        lvm_vm, "snapshot", "/mnt/lv/thick-ext4", "--size", str(4 << 20), "--scribble", "16"
    )
    assert status == 0, result
    assert "intact" not in result
    damaged = str(result["damaged"])
    assert damaged.startswith(f"snapshot {VG}/ff-") and "overflowed" in damaged, damaged
    assert damaged.endswith("nothing read from it is kept")
    assert leftovers(lvm_vm) == []
    must(lvm_vm, "rm -f /mnt/lv/thick-ext4/scribble && sync")


def test_thick_snapshot_too_big_for_the_vg_is_refused_before_anything(lvm_vm: Vm) -> None:
    status, result = driver(lvm_vm, "snapshot", "/mnt/lv/thick-xfs", "--size", str(4 << 30))
    assert status == 3, result
    refused = str(result["refused"])
    assert "\n" not in refused
    assert refused.startswith(f"cannot snapshot {VG}/thick-xfs: its snapshot needs 4096.0 MiB")
    assert f"volume group {VG} has" in refused
    assert leftovers(lvm_vm) == []


@pytest.mark.parametrize("name", ["thick-ext4", "thin-xfs"])
def test_sigkill_while_reading_leaves_what_the_next_run_removes(lvm_vm: Vm, name: str) -> None:
    guest_sh(lvm_vm, f"rm -f {HOLD_FILE}")
    argv = ["/usr/bin/env", f"PYTHONPATH={SRC}", "LVM_SYSTEM_DIR=/run/lvm-lab",
            "LVM_SUPPRESS_FD_WARNINGS=1", sys.executable, DRIVER, "snapshot",
            f"/mnt/lv/{name}", "--hold"]  # fmt: skip
    lvm_vm.qga("guest-exec", {"path": argv[0], "arg": argv[1:]})
    deadline = time.monotonic() + 240
    while guest_sh(lvm_vm, f"test -f {HOLD_FILE}").exitcode != 0:
        assert time.monotonic() < deadline, "the held snapshot never appeared"
        time.sleep(0.5)
    held = json.loads(lvm_vm.read_guest_file(HOLD_FILE))
    must(
        lvm_vm, f"kill -9 {int(held['pid'])}; while kill -0 {int(held['pid'])}; do sleep 0.1; done"
    )
    left = leftovers(lvm_vm)
    assert any(entry.startswith("LV ff-") for entry in left), left  # the killed run's
    assert any(entry.startswith("mount ") for entry in left), left
    status, result = driver(lvm_vm, "cleanup", f"/mnt/lv/{name}")
    assert status == 0, result
    handle = str(held["handle"])
    assert result["removed"] == [f"/run/freezeframe/snapshots/lvm/{handle}", handle]
    assert leftovers(lvm_vm) == []


def test_thin_pool_above_90_percent_is_refused_before_anything(lvm_vm: Vm) -> None:
    """Last in the file: it fills the pool (with a file on one thin LV) past 90 % of its data,
    then a snapshot of the other thin LV is refused in one line and none is made."""
    fill = (
        "i=0; while :; do "
        f"p=$(lvs --noheadings -o data_percent {VG}/pool | tr -d ' '); "
        'case "$p" in 9[1-9].*|100.*) echo "$p"; exit 0;; esac; '
        "i=$((i + 1)); [ $i -lt 100 ] || exit 1; "
        "dd if=/dev/urandom of=/mnt/lv/thin-xfs/fill$i bs=1M count=4 conv=fsync 2>/dev/null "
        "|| exit 2; done"
    )
    percent = float(must(lvm_vm, fill, timeout=600).strip())
    status, result = driver(lvm_vm, "snapshot", "/mnt/lv/thin-ext4")
    assert status == 3, result
    refused = str(result["refused"])
    assert refused == (
        f"cannot snapshot {VG}/thin-ext4: thin pool {VG}/pool is {percent:.1f}% full (data); "
        "above 90% a snapshot could fill it and stop its volumes"
    )
    assert leftovers(lvm_vm) == []
