"""The VM lab itself (tests/vmfixtures.py): the tiny guest boots, its agent answers and freezes
both file systems, the dependent-write workload advances, and the offline check tells a
cleanly stopped VM's disks from naive copies of live ones. The VM backup tests build on it, so
it has to be proven before they can mean anything.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import is_root, privileged_required
from vmfixtures import (
    DEPENDENT_WRITES,
    READY_MARKER,
    RECORD,
    Vm,
    check_dependent_writes,
    check_images,
    guest_initramfs,
    guest_kernel,
    make_disks,
    mounted_images,
    running_vm,
)

pytestmark = pytest.mark.privileged


def _wait_commit_past(vm: Vm, value: int, timeout: float = 30.0) -> int:
    """Polls the committed log length until it exceeds ``value`` (the workload is running)."""
    deadline = time.monotonic() + timeout
    while True:
        commit = vm.commit()
        if commit > value:
            return commit
        assert time.monotonic() < deadline, f"the commit stayed at {commit} for {timeout} s"
        time.sleep(0.2)


def _write_counts(vm: Vm) -> dict[str, tuple[int, int]]:
    """Writes and flushes each drive has completed, as QEMU counts them."""
    counts = {}
    for entry in vm.qmp("query-blockstats", {"query-nodes": False}):
        qdev = entry.get("qdev", "")
        for drive in vm.drive_ids:
            if f"/{drive}/" in qdev:
                stats = entry["stats"]
                counts[drive] = (stats["wr_operations"], stats["flush_operations"])
    return counts


@pytest.fixture(scope="module")
def lab_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    """One running lab VM shared by the tests that only look at it (a boot is seconds)."""
    if not is_root():
        privileged_required("the VM lab needs root (loop mounts, /var/cache)")
    started = time.monotonic()
    kernel = guest_kernel()
    guest_initramfs(DEPENDENT_WRITES)
    print(f"\nlab: kernel {kernel.key} and initramfs ready in {time.monotonic() - started:.1f} s")
    workdir = tmp_path_factory.mktemp("vmlab")
    # 64 MiB of data per disk: a copy of the images takes long enough to span a few commits.
    with running_vm(workdir, make_disks(workdir, fill_mib=64)) as vm:
        print(f"lab: booted in {vm.boot_seconds:.1f} s with {vm.accel}")
        yield vm


def test_guest_boots_with_agent_and_named_nodes(lab_vm: Vm) -> None:
    assert READY_MARKER in lab_vm.serial_text()
    assert lab_vm.qga("guest-ping") == {}
    assert lab_vm.qmp("query-status")["status"] == "running"
    nodes = {node["node-name"] for node in lab_vm.qmp("query-named-block-nodes")}
    assert {*lab_vm.node_names, *lab_vm.file_node_names} <= nodes
    qdevs = [block.get("qdev", "") for block in lab_vm.qmp("query-block")]
    for drive in lab_vm.drive_ids:
        assert any(f"/{drive}/" in qdev for qdev in qdevs), qdevs
    mounts = lab_vm.read_guest_file("/proc/mounts").decode()
    assert "/dev/vda /mnt/a ext4" in mounts and "/dev/vdb /mnt/b ext4" in mounts
    print(f"lab: {lab_vm.accel}, boot {lab_vm.boot_seconds:.1f} s, pid {lab_vm.pid}")


def test_workload_commits_advance(lab_vm: Vm) -> None:
    first = _wait_commit_past(lab_vm, 0)
    started = time.monotonic()
    time.sleep(2.0)
    second = lab_vm.commit()
    rate = (second - first) / RECORD / (time.monotonic() - started)
    print(f"lab: {rate:.0f} commits/s (commit {first} -> {second})")
    assert second > first
    assert second % RECORD == 0


def test_fsfreeze_stops_both_disks_until_thaw(lab_vm: Vm, tmp_path: Path) -> None:
    """Frozen, neither disk is written and even a plain copy of the images is consistent."""
    committed = _wait_commit_past(lab_vm, 0)
    copies = [tmp_path / disk.name for disk in lab_vm.disks]
    started = time.monotonic()
    frozen = lab_vm.qga("guest-fsfreeze-freeze")
    freeze_ms = (time.monotonic() - started) * 1000
    try:
        assert frozen == 2  # /mnt/a and /mnt/b: the agent skips the initramfs's own mounts
        assert lab_vm.qga("guest-fsfreeze-status") == "frozen"
        before = _write_counts(lab_vm)
        for disk, copy in zip(lab_vm.disks, copies, strict=True):
            subprocess.run(["cp", disk, copy], check=True)
        time.sleep(1.0)
        after = _write_counts(lab_vm)
    finally:
        started = time.monotonic()
        thawed = lab_vm.qga("guest-fsfreeze-thaw")
        thaw_ms = (time.monotonic() - started) * 1000
    print(f"lab: freeze {freeze_ms:.0f} ms + thaw {thaw_ms:.0f} ms = {freeze_ms + thaw_ms:.0f} ms")
    assert thawed == 2
    assert lab_vm.qga("guest-fsfreeze-status") == "thawed"
    assert set(before) == set(lab_vm.drive_ids)
    assert after == before, "a disk was written while the guest was frozen"
    with mounted_images(copies, tmp_path / "check", lab_vm.disk_format) as (mount_a, mount_b):
        ok, detail = check_dependent_writes(mount_a, mount_b)
        frozen_commit = int((mount_b / "b.commit").read_text())
    print(f"lab: copy taken while frozen: {detail}")
    assert ok, detail
    assert frozen_commit >= committed
    _wait_commit_past(lab_vm, frozen_commit, timeout=10.0)  # the workload resumed


@pytest.mark.parametrize(
    "pause",
    [
        pytest.param(0.0, id="back-to-back"),
        # The time a copy of a real, multi-GiB disk A takes before B's copy starts.
        pytest.param(0.3, id="slower-copy"),
    ],
)
def test_naive_copy_of_live_disks(lab_vm: Vm, tmp_path: Path, pause: float) -> None:
    """Copying the live images one after the other is no backup; counted, not asserted."""
    _wait_commit_past(lab_vm, 0)
    trials, broken = 3, 0
    for trial in range(trials):
        copies = [tmp_path / f"copy{trial}-{disk.name}" for disk in lab_vm.disks]
        subprocess.run(["cp", lab_vm.disks[0], copies[0]], check=True)
        time.sleep(pause)
        subprocess.run(["cp", lab_vm.disks[1], copies[1]], check=True)
        ok, detail = check_images(copies, tmp_path / f"check{trial}", lab_vm.disk_format)
        verdict = "ok" if ok else "BROKEN"
        print(f"lab: naive copy {trial + 1} (pause {pause} s): {verdict}: {detail}")
        broken += not ok
        for copy in copies:
            copy.unlink()
    print(f"lab: {broken} of {trials} naive copies (pause {pause} s) broke the invariant or fs")
    assert lab_vm.process.poll() is None


def test_cleanly_stopped_vm_passes_check_and_restarts(tmp_path: Path) -> None:
    """The check accepts a stopped VM's disks, and the guest resumes the log it finds."""
    if not is_root():
        privileged_required("the VM lab needs root")
    disks = make_disks(tmp_path / "disks")
    with running_vm(tmp_path / "run1", disks) as vm:
        committed = _wait_commit_past(vm, 20 * RECORD)
    ok, detail = check_images(disks, tmp_path / "check1")
    print(f"lab: stopped VM: {detail}")
    assert ok, detail
    with running_vm(tmp_path / "run2", disks) as vm:
        resumed = _wait_commit_past(vm, committed)
    ok, detail = check_images(disks, tmp_path / "check2")
    print(f"lab: restarted VM: {detail}")
    assert ok, detail
    assert resumed > committed
