"""The application lab (tests/vmguestlab.py): the tiny guest with the host's userland over 9p
runs PostgreSQL 15 (data on one disk, WAL on the other) under pgbench next to the
dependent-writes workload, its chrooted agent runs the fsfreeze hook around a freeze of just
the two ext4 disks, and a cleanly stopped guest's disks boot again into a PostgreSQL whose
pgbench sums agree. The application-consistent VM backup tests build on it.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import is_root, privileged_required
from vmfixtures import Vm, check_images
from vmguestlab import (
    HOOK_LOG,
    PG_READY_MARKER,
    PYCACHE_PREFIX,
    STUB_HOOK,
    boot_restored,
    guest_balances,
    guest_pg_log,
    make_app_disks,
    pgbench_progress,
    running_app_vm,
    stop_guest_pg,
    wait_pg_ready,
)

pytestmark = pytest.mark.privileged


def _require_root() -> None:
    if not is_root():
        privileged_required("the application lab needs root (initdb as postgres, mkfs)")


def _wait_progress_past(vm: Vm, value: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = pgbench_progress(vm)
        if rows > value:
            return rows
        assert time.monotonic() < deadline, f"pgbench_history stayed at {rows} for {timeout} s"
        time.sleep(0.2)


def test_cleanly_stopped_disks_boot_into_consistent_postgresql(tmp_path: Path) -> None:
    """Disks copied after PostgreSQL and then the VM stopped: PostgreSQL starts on them without
    crash recovery, keeps every transaction it had committed, and its sums agree. First in the
    file: it runs before the shared VM of the other tests boots, not beside it (2 host CPUs)."""
    _require_root()
    disks = make_app_disks(tmp_path / "disks", size_mib=192)
    with running_app_vm(tmp_path / "vm", disks, hook=STUB_HOOK) as vm:
        wait_pg_ready(vm)
        committed = _wait_progress_past(vm, 50)  # committed before the stop, at least
        stop_guest_pg(vm)
    copies = []
    for disk in disks:
        copies.append(tmp_path / f"copy-{disk.name}")
        shutil.copyfile(disk, copies[-1])
    ok, detail = check_images(copies, tmp_path / "check")
    print(f"guestlab: dependent writes on the stopped disks: {detail}")
    assert ok, detail
    restored = boot_restored(tmp_path / "restored", copies, fmt="qcow2")
    print(
        f"guestlab: restored boot {restored.boot_seconds:.1f} s, PG ready "
        f"{restored.ready_seconds:.1f} s later, balances {restored.balances}, "
        f"{restored.history_rows} history rows (>= {committed})"
    )
    assert restored.started, restored.log
    assert restored.consistent, restored.balances
    assert restored.history_rows is not None and restored.history_rows >= committed
    assert not restored.recovery.crash_recovery, restored.log  # it was shut down cleanly


@pytest.fixture(scope="module")
def app_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    _require_root()
    workdir = tmp_path_factory.mktemp("guestlab")
    started = time.monotonic()
    disks = make_app_disks(workdir / "disks")
    print(f"\nguestlab: disks with a pgbench cluster in {time.monotonic() - started:.1f} s")
    with running_app_vm(workdir / "vm", disks, hook=STUB_HOOK) as vm:
        ready = wait_pg_ready(vm)
        print(f"guestlab: booted in {vm.boot_seconds:.1f} s ({vm.accel}), PG ready +{ready:.1f} s")
        yield vm


def test_postgresql_runs_pgbench_with_consistent_sums(app_vm: Vm) -> None:
    assert PG_READY_MARKER in app_vm.serial_text()
    mounts = app_vm.read_guest_file("/proc/mounts").decode()
    assert "/dev/vda /mnt/a ext4" in mounts and "/dev/vdb /mnt/b ext4" in mounts
    assert "hostroot / 9p" in mounts
    first = _wait_progress_past(app_vm, 0)
    started = time.monotonic()
    time.sleep(2.0)
    second = pgbench_progress(app_vm)
    tps = (second - first) / (time.monotonic() - started)
    print(f"guestlab: pgbench {tps:.0f} tps in the guest (history {first} -> {second})")
    assert second > first
    a, t, b, h = guest_balances(app_vm)
    print(f"guestlab: live balances {a} {t} {b} {h}")
    assert a == t == b == h
    assert app_vm.commit() > 0  # the dependent writes run next to it
    assert "database system is ready to accept connections" in guest_pg_log(app_vm)


def test_guest_python_imports_freezeframe(app_vm: Vm) -> None:
    """The hook's interpreter: the host's venv Python and the clone's sources, over 9p."""
    argv = ["/usr/bin/env", f"PYTHONPYCACHEPREFIX={PYCACHE_PREFIX}", sys.executable, "-c"]
    started = time.monotonic()
    result = app_vm.guest_exec([*argv, "import freezeframe.cli.main"], timeout=120)
    seconds = time.monotonic() - started
    assert result.exitcode == 0, result.stderr.decode(errors="replace")
    print(f"guestlab: import freezeframe.cli.main in the guest (pgbench running): {seconds:.1f} s")


def test_hook_runs_around_freeze_of_the_two_disks(app_vm: Vm) -> None:
    before = _wait_progress_past(app_vm, 0)
    started = time.monotonic()
    frozen = app_vm.qga("guest-fsfreeze-freeze")
    freeze_ms = (time.monotonic() - started) * 1000
    try:
        print(f"guestlab: guest-fsfreeze-freeze froze {frozen} file systems in {freeze_ms:.0f} ms")
        assert frozen == 2  # the ext4 disks; 9p, tmpfs, proc... are not frozen
        assert app_vm.qga("guest-fsfreeze-status") == "frozen"
    finally:
        thawed = app_vm.qga("guest-fsfreeze-thaw")
    assert thawed == 2
    calls = [line.split()[0] for line in app_vm.read_guest_file(HOOK_LOG).decode().splitlines()]
    assert calls[-2:] == ["freeze", "thaw"], calls
    _wait_progress_past(app_vm, before)  # pgbench goes on after the thaw
