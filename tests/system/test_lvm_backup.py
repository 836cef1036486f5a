"""`freezeframe backup` of ext4 and XFS on LVM, run inside the VM lab's guest (tests/vmlvmlab.py:
this host's kernel has no device-mapper, the guest's has), restored there and checked.

What a user relies on: a backup of an LV records the level it reached (`filesystem` from
lvcreate's frozen snapshot, `crash` when asked) and restores what the LV held; two LVs written by
one application (a log on a thick LV, its commit record on a thin one) are captured at one
instant, so the log never lags its commit, in every trial at both levels; a thick snapshot that
overflows while it is read fails the backup with one line and no snapshot is saved; a backup
killed with SIGKILL while lvcreate runs leaves no device suspended a second later and writers
to the LV are not stuck; one killed while it reads leaves what the next backup removes;
`doctor` says what the LV is and what it can reach.

FREEZEFRAME_LVM_TRIALS sets the trials per level (default 2; bench/lvm.py runs more).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterator

import pytest

from vmfixtures import Vm, slack
from vmlvmlab import (
    DRIVER,
    GUEST_ENV,
    HOLD_FILE,
    VG,
    committed,
    guest_freezeframe,
    guest_sh,
    guest_trials,
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


def _writing(lab: Vm, log_volume: str) -> Iterator[Vm]:
    """DEPENDENT_WRITES flat out, the log on /mnt/lv/LOG_VOLUME and the commit on COMMIT_LV,
    once it has committed a few records; stopped when the fixture ends."""
    start_dependent_writes(lab, log_volume, COMMIT_LV)
    deadline = time.monotonic() + 120
    while committed(lab, COMMIT_LV) < 64 * 5:
        assert time.monotonic() < deadline, "the workload did not commit"
        time.sleep(0.5)
    yield lab
    stop_dependent_writes(lab)


@pytest.fixture
def workload(lab: Vm) -> Iterator[Vm]:
    """DEPENDENT_WRITES flat out: the log on a thick LV, the commit on a thin one."""
    yield from _writing(lab, LOG_LV)


@pytest.mark.parametrize("level", ["crash", "filesystem"])
def test_a_log_and_its_commit_on_two_lvs_are_captured_at_one_instant(
    workload: Vm, level: str
) -> None:
    vm = workload
    paths = (f"/mnt/lv/{LOG_LV}", f"/mnt/lv/{COMMIT_LV}")
    results = guest_trials(vm, TRIALS, *paths, "--consistency", level, *TCG_CAPS, check=paths)
    assert len(results) == TRIALS, results
    windows = []
    for result in results:
        trial, doc = result["trial"], result["doc"]
        assert result["status"] == 0, doc
        consistency = doc["consistency"]
        assert consistency["achieved"] == level
        assert {v["provider"] for v in consistency["volumes"]} == {"lvm"}
        pause = consistency["pause"]
        assert pause["window_ms"] > 0  # two volumes: their writers were paused together
        windows.append(pause["window_ms"])
        assert result["holds"], f"trial {trial} at {level}: {result['why']}"
        # The snapshot is of the running workload, not a stale one.
        assert result["restored_commit"] >= result["committed_before"] > 0
        print(f"lvmbackup: {level} trial {trial}: {result['why']}; "
              f"writers paused {pause['window_ms']:.0f} ms")  # fmt: skip
    assert committed(vm, COMMIT_LV) > results[-1]["restored_commit"]  # it ran on throughout
    windows.sort()
    print(f"lvmbackup: {level}: pause window p50 {windows[len(windows) // 2]:.0f} ms, "
          f"max {windows[-1]:.0f} ms over {TRIALS} trials")  # fmt: skip
    assert leftovers(vm) == []


BTRFS = "btrfs-loop"  # not an LV: a btrfs on a loop device, mounted at /mnt/lv/btrfs-loop
BTRFS_SETUP = f"""
set -e
truncate -s 256M /run/btrfs.img
mkfs.btrfs -q /run/btrfs.img
mkdir -p /mnt/lv/{BTRFS} && mount -o loop /run/btrfs.img /mnt/lv/{BTRFS}
"""


@pytest.fixture
def mixed_workload(lab: Vm) -> Iterator[Vm]:
    """DEPENDENT_WRITES flat out: the log on btrfs, the commit on a thin XFS LV."""
    if guest_sh(lab, f"mountpoint -q /mnt/lv/{BTRFS}").exitcode != 0:
        must(lab, BTRFS_SETUP)
    yield from _writing(lab, BTRFS)


@pytest.mark.parametrize("level", ["crash", "filesystem"])
def test_a_log_on_btrfs_and_its_commit_on_an_lv_are_captured_at_one_instant(
    mixed_workload: Vm, level: str
) -> None:
    vm = mixed_workload
    paths = (f"/mnt/lv/{BTRFS}", f"/mnt/lv/{COMMIT_LV}")
    results = guest_trials(vm, TRIALS, *paths, "--consistency", level, *TCG_CAPS, check=paths)
    assert len(results) == TRIALS, results
    for result in results:
        assert result["status"] == 0, result["doc"]
        consistency = result["doc"]["consistency"]
        assert consistency["achieved"] == level
        assert sorted(v["provider"] for v in consistency["volumes"]) == ["btrfs", "lvm"]
        assert consistency["pause"]["window_ms"] > 0  # one writer pause across both
        assert result["holds"], f"trial {result['trial']} at {level}: {result['why']}"
        assert result["restored_commit"] >= result["committed_before"] > 0
        print(f"lvmbackup: btrfs + LV at {level}, trial {result['trial']}: {result['why']}; "
              f"writers paused {consistency['pause']['window_ms']:.0f} ms")  # fmt: skip
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


def _kill_in_suspend(vm: Vm, mount: str) -> float | None:
    """A backup of ``mount`` in a session of its own, SIGKILLed as a whole (watchdog aside:
    it has a session of its own) the moment the LV reads suspended, its file system frozen
    under lvcreate: how long (ms) after the kill the LV still read suspended, or None when the
    backup ended before the kill could land."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GUEST_ENV.items())
    argv = shlex.join([sys.executable, DRIVER, "kill-in-suspend", mount, "--",
                       "--json", "backup", mount])  # fmt: skip
    out = must(vm, f"export {env}; exec {argv}", timeout=300).strip().splitlines()
    result = json.loads(out[-1])
    return float(result["resumed_after_ms"]) if result["killed"] == "suspended" else None


STUCK = r"""
dmsetup info -c --noheadings -o name,attr,open
for dm in /sys/block/dm-*/dm; do echo "$(cat $dm/name) suspended=$(cat $dm/suspended)"; done
for p in /proc/[0-9]*; do
  [ "$(awk '{print $3}' $p/stat 2>/dev/null)" = D ] || continue
  echo "D: $(tr '\0' ' ' <$p/cmdline)"; head -8 $p/stack 2>/dev/null
done
ps -eo pid,pgid,sid,stat,wchan:32,args | grep -E "lvcreate|lvremove|flock|dmsetup|sh -c|freeze" |
  grep -v grep
dmesg | tail -8
"""


def _stuck(vm: Vm) -> str:
    """What a hung write waits on: device-mapper's devices, the blocked tasks' stacks."""
    return guest_sh(vm, STUCK, timeout=60).stdout.decode(errors="replace")


def _suspended(vm: Vm) -> list[str]:
    return [entry for entry in leftovers(vm) if entry.startswith("suspended")]


@pytest.mark.parametrize("name", [COMMIT_LV, LOG_LV])
def test_sigkill_while_lvcreate_suspends_leaves_nothing_suspended_and_is_cleaned_up(
    lab: Vm, name: str
) -> None:
    mount = f"/mnt/lv/{name}"
    resumed: list[float] = []
    for _trial in range(TRIALS):
        after_ms = _kill_in_suspend(lab, mount)
        if after_ms is not None:
            # lvcreate, in a session of its own, lives on and resumes the origin itself:
            # within 1 s on a host; TCG's emulation stretches that.
            assert after_ms < 1000 * slack(lab.accel), (
                f"suspended {after_ms:.0f} ms after: {_stuck(lab)}"
            )
            resumed.append(after_ms)
        assert _suspended(lab) == [], f"still suspended: {_stuck(lab)}"
        # Writers are not stuck: a write to the LV and its flush complete.
        wrote = guest_sh(lab, f"timeout 60 sh -c 'echo written >{mount}/after-kill && "
                              f"sync -f {mount}/after-kill'", timeout=90)  # fmt: skip
        assert wrote.exitcode == 0, f"a write to {mount} hung: {_stuck(lab)}"
    caught = len(resumed)
    assert caught > 0, "no kill landed while the LV was suspended"
    status, _doc, err = guest_freezeframe(lab, "backup", mount)
    assert status == 0, err
    assert leftovers(lab) == []
    print(
        f"lvmbackup: {name}: {caught} of {TRIALS} kills landed while the LV was suspended; "
        f"it read suspended {max(resumed):.0f} ms after the kill at most"
    )


def test_sigkill_while_reading_leaves_what_the_next_backup_removes(lab: Vm) -> None:
    mount = f"/mnt/lv/{LOG_LV}"
    must(lab, f"rm -f {HOLD_FILE}")
    env = [f"{k}={v}" for k, v in GUEST_ENV.items()]
    argv = ["/usr/bin/env", *env, "LVM_SYSTEM_DIR=/run/lvm-lab", "LVM_SUPPRESS_FD_WARNINGS=1",
            sys.executable, DRIVER, "backup", "--hold", "--", "backup", mount]  # fmt: skip
    lab.qga("guest-exec", {"path": argv[0], "arg": argv[1:]})
    deadline = time.monotonic() + 240
    while guest_sh(lab, f"test -f {HOLD_FILE}").exitcode != 0:
        assert time.monotonic() < deadline, "the backup never reached its snapshots"
        time.sleep(0.5)
    pid = int(json.loads(lab.read_guest_file(HOLD_FILE))["pid"])
    must(lab, f"kill -9 {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done")
    left = leftovers(lab)
    assert any(entry.startswith("LV ff-") for entry in left), left  # the killed run's
    assert not any(entry.startswith("suspended") for entry in left), left
    status, _doc, err = guest_freezeframe(lab, "backup", mount)
    assert status == 0, err
    assert leftovers(lab) == []


FLAKY_VG = "flaky"
# A VG of its own on a device-mapper device that can be switched to fail every I/O
# (dm-flakey, always down) and back (linear), over a loop file on the guest's /run.
FLAKY_SETUP = f"""
set -e
truncate -s 160M /run/flaky.img
loop=$(losetup -f --show /run/flaky.img)
echo "0 $(blockdev --getsz $loop) linear $loop 0" | dmsetup create flaky
dmsetup mknodes flaky  # no udev in the lab: dmsetup makes the node
pvcreate -q /dev/mapper/flaky && vgcreate -q {FLAKY_VG} /dev/mapper/flaky
lvcreate -q -n data -L 96m {FLAKY_VG} && mkfs.ext4 -q /dev/{FLAKY_VG}/data
mkdir -p /mnt/flaky && mount /dev/{FLAKY_VG}/data /mnt/flaky
for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/urandom >/mnt/flaky/f$i; done
sync -f /mnt/flaky/f1
"""


def _flaky_table(target: str) -> str:
    """Shell: switch the flaky device to ``flakey`` (every I/O fails) or ``linear``."""
    args = "0 0 1" if target == "flakey" else "0"
    return (
        "set -e; table=$(dmsetup table flaky); set -- $table; "
        f'dmsetup suspend flaky; dmsetup load flaky --table "0 $2 {target} $4 {args}"; '
        "dmsetup resume flaky"
    )


def test_io_errors_while_a_snapshot_is_read_fail_the_backup_and_save_nothing(lab: Vm) -> None:
    must(lab, FLAKY_SETUP)
    count = _snapshot_count(lab)
    status, doc, err = guest_freezeframe(
        lab, "backup", "/mnt/flaky",
        driver=("--at-readable", _flaky_table("flakey"), "--at-read", _flaky_table("linear")),
    )  # fmt: skip
    assert status == 1, (doc, err)
    assert doc["error"]["code"] == "snapshot_damaged", doc
    message = doc["error"]["message"]
    assert "\n" not in message and "failed with I/O errors" in message, message
    assert "nothing read from them is kept" in message
    assert "Traceback" not in err
    assert _snapshot_count(lab) == count  # nothing of the failed read is a snapshot
    assert must(lab, f"lvs --noheadings -o lv_name {FLAKY_VG}").split() == ["data"]
    assert leftovers(lab) == []
    # The disk healed, the same backup succeeds: nothing was left suspended or mounted.
    status, doc, err = guest_freezeframe(lab, "backup", "/mnt/flaky")
    assert status == 0, err
    assert doc["consistency"]["achieved"] == "filesystem"
