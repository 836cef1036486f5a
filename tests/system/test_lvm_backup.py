"""`freezeframe backup` of ext4 and XFS on LVM, run inside the VM lab's guest (tests/vmlvmlab.py:
this host's kernel has no device-mapper, the guest's has), restored there and checked.

What a user relies on: a backup of an LV records the level it reached (`filesystem` from
lvcreate's frozen snapshot, `crash` when asked) and restores what the LV held; two LVs written by
one application (a log on a thick LV, its commit record on a thin one) are captured at one
instant, so the log never lags its commit, in every trial at both levels; a thick snapshot that
overflows while it is read fails the backup with one line and no snapshot is saved; `doctor`
says what the LV is and what it can reach. (A SIGKILL while a snapshot is read is in
test_lvm_lab.py.)

FREEZEFRAME_LVM_TRIALS sets the trials per level (default 2; bench/lvm.py runs more).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfixtures import Vm, check_dependent_writes
from vmlvmlab import (
    VG,
    committed,
    guest_freezeframe,
    init_repository,
    leftovers,
    lvm_lab,
    must,
    restore_in_guest,
    start_dependent_writes,
    stop_dependent_writes,
)

pytestmark = pytest.mark.privileged

TRIALS = int(os.environ.get("FREEZEFRAME_LVM_TRIALS", "2"))
LOG_LV, COMMIT_LV = "thick-ext4", "thin-xfs"
# lvcreate takes seconds under TCG (about 100 times a real host's time), and writers stay
# paused across two of them: caps a real host would not need.
TCG_CAPS = ("--pause-cap", "120", "--freeze-cap", "120")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    with lvm_lab(tmp_path_factory.mktemp("lvmbackup")) as vm:
        init_repository(vm)
        yield vm


def _tree(vm: Vm, root: str) -> dict[str, str]:
    """sha256 of every file under ``root`` in the guest (lost+found left out)."""
    text = must(vm, f"cd {shlex.quote(root)} && find . -path ./lost+found -prune -o -type f "
                    "-exec sha256sum {} + | sort -k 2")  # fmt: skip
    return {line.split(None, 1)[1]: line.split(None, 1)[0] for line in text.splitlines()}


@pytest.mark.parametrize("name", ["thick-ext4", "thin-xfs"])
def test_backup_of_an_lv_records_filesystem_and_restores_it(lab: Vm, name: str) -> None:
    mount = f"/mnt/lv/{name}"
    before = _tree(lab, mount)
    status, doc, err = guest_freezeframe(lab, "backup", mount, "--tag", f"lv-{name}", *TCG_CAPS)
    assert status == 0, err
    consistency = doc["consistency"]
    assert consistency["achieved"] == "filesystem", consistency
    (volume,) = consistency["volumes"]
    assert volume["provider"] == "lvm" and volume["mount_point"] == mount
    assert volume["freeze_ms"] > 0  # lvcreate's suspend, the window the file system was frozen
    print(f"lvmbackup: {name}: filesystem, origin suspended {volume['freeze_ms']:.1f} ms")
    target = f"/run/restore-{name}"
    restore_in_guest(lab, doc["snapshot_id"], target)
    assert _tree(lab, target + mount) == before
    assert leftovers(lab) == []


@pytest.fixture
def workload(lab: Vm) -> Iterator[Vm]:
    """DEPENDENT_WRITES flat out: the log on a thick LV, the commit on a thin one."""
    start_dependent_writes(lab, LOG_LV, COMMIT_LV)
    deadline = time.monotonic() + 120
    while committed(lab, COMMIT_LV) < 64 * 5:
        assert time.monotonic() < deadline, "the workload did not commit"
        time.sleep(0.5)
    yield lab
    stop_dependent_writes(lab)


@pytest.mark.parametrize("level", ["crash", "filesystem"])
def test_a_log_and_its_commit_on_two_lvs_are_captured_at_one_instant(
    workload: Vm, level: str, tmp_path: Path
) -> None:
    vm = workload
    paths = (f"/mnt/lv/{LOG_LV}", f"/mnt/lv/{COMMIT_LV}")
    windows = []
    for trial in range(TRIALS):
        before = committed(vm, COMMIT_LV)
        status, doc, err = guest_freezeframe(
            vm, "backup", *paths, "--consistency", level, *TCG_CAPS
        )
        assert status == 0, err
        consistency = doc["consistency"]
        assert consistency["achieved"] == level
        assert {v["provider"] for v in consistency["volumes"]} == {"lvm"}
        pause = consistency["pause"]
        assert pause["window_ms"] > 0  # two volumes: their writers were paused together
        windows.append(pause["window_ms"])
        target = f"/run/restore-{level}-{trial}"
        restore_in_guest(vm, doc["snapshot_id"], target)
        here = tmp_path / str(trial)
        for lv, name in ((LOG_LV, "a.log"), (COMMIT_LV, "b.commit")):
            (here / lv).mkdir(parents=True)
            data = vm.read_guest_file(f"{target}/mnt/lv/{lv}/{name}")
            (here / lv / name).write_bytes(data)
        holds, why = check_dependent_writes(here / LOG_LV, here / COMMIT_LV)
        assert holds, f"trial {trial} at {level}: {why}"
        restored_commit = int((here / COMMIT_LV / "b.commit").read_text())
        assert restored_commit >= before  # the snapshot is of the running workload, not stale
        must(vm, f"rm -rf {target}")
        print(
            f"lvmbackup: {level} trial {trial}: {why}; writers paused {pause['window_ms']:.0f} ms"
        )
    assert committed(vm, COMMIT_LV) > restored_commit  # the workload ran on through every backup
    windows.sort()
    print(f"lvmbackup: {level}: pause window p50 {windows[len(windows) // 2]:.0f} ms, "
          f"max {windows[-1]:.0f} ms over {TRIALS} trials")  # fmt: skip
    assert leftovers(vm) == []


def _snapshot_count(vm: Vm) -> int:
    status, doc, err = guest_freezeframe(vm, "snapshots")
    assert status == 0, err
    return len(doc)


def test_an_overflowing_thick_snapshot_fails_the_backup_and_saves_nothing(lab: Vm) -> None:
    """A 4 MiB copy-on-write store, and 16 MiB written to the origin while it is read."""
    count = _snapshot_count(lab)
    mount = f"/mnt/lv/{LOG_LV}"
    status, doc, err = guest_freezeframe(
        lab, "backup", mount, "--snapshot-size", "4M",
        driver=("--scribble", f"{mount}/scribble:16"),
    )  # fmt: skip
    assert status == 1, (doc, err)
    assert doc["error"]["code"] == "snapshot_damaged", doc
    message = doc["error"]["message"]
    assert (
        "\n" not in message
        and "overflowed" in message
        and "nothing read from it is kept" in (message)
    )
    assert "Traceback" not in err
    assert _snapshot_count(lab) == count  # no snapshot of the partial read
    assert leftovers(lab) == []
    must(lab, f"rm -f {mount}/scribble && sync")


def test_a_snapshot_the_vg_cannot_hold_is_refused_before_anything(lab: Vm) -> None:
    count = _snapshot_count(lab)
    status, doc, _err = guest_freezeframe(
        lab, "backup", "/mnt/lv/thick-xfs", "--snapshot-size", "4G", "--consistency", "crash"
    )
    assert status == 1 and doc["error"]["code"] == "consistency_unreachable", doc
    message = doc["error"]["message"]
    assert "\n" not in message
    assert f"cannot snapshot {VG}/thick-xfs: its snapshot needs 4096.0 MiB" in message
    assert _snapshot_count(lab) == count
    assert leftovers(lab) == []


def test_a_bad_snapshot_size_is_a_usage_error(lab: Vm) -> None:
    status, doc, _err = guest_freezeframe(
        lab, "backup", "/mnt/lv/thick-xfs", "--snapshot-size", "lots"
    )
    assert status == 2 and doc["error"]["code"] == "usage", doc


def test_doctor_says_what_the_lv_is_and_what_it_reaches(lab: Vm) -> None:
    status, doc, err = guest_freezeframe(lab, "doctor", "/mnt/lv/thin-ext4", "/mnt/lv/thick-xfs")
    assert status == 0, err
    thin, thick = doc
    assert thin["provider"] == "lvm" and thick["provider"] == "lvm"
    assert set(thin["reachable"]) >= {"filesystem", "crash"}
    assert thin["snapshot"]["kind"] == "thin" and thin["snapshot"]["thin_pool"] == f"{VG}/pool"
    assert 0 <= thin["snapshot"]["pool_data_percent"] < 90
    assert thick["snapshot"]["kind"] == "thick" and thick["snapshot"]["vg_free"] > 0
    assert thick["snapshot"]["snapshot_size"] == "20%"
