"""Application-aware backups of a running QEMU VM: PostgreSQL 15 under pgbench inside the guest
(tests/vmguestlab.py: data directory on one virtual disk, WAL on the other, beside the
dependent-writes workload), held by ``freezeframe guest-hook`` as the guest agent's fsfreeze
hook. At every level each restored pair of images keeps the invariant across the disks and,
booted as a VM, its PostgreSQL starts and keeps pgbench's sums and every transaction committed
before the backup; at `filesystem` and `application` no journal needs replay; at `application`
PostgreSQL starts in backup recovery from the label the hook put in the image and is
consistent at the backup's recorded end, where below it needs crash recovery.
A SIGKILL of freezeframe during the hold thaws the guest, releases the hold and removes the
label. FREEZEFRAME_VM_TRIALS sets the trials (default 3).

The guest is emulated (TCG) where there is no nested KVM, and the host may be loaded: every wait
on the guest is stretched (``Vm.wait_s``), and the backups get caps and timeouts sized for the
guest's speed (``Vm.product_env``, ``_backup_args``, the guest's config); the caps themselves
are test_vm_backup's subject. The watchdog's thaw within 2 s of a SIGKILL is asserted as it is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from vmfixtures import Vm, check_images, needs_journal_replay
from vmguestlab import (
    GUEST_CONFIG_PATH,
    HOOK_PATH,
    PG_DATA,
    boot_restored,
    make_app_disks,
    pgbench_progress,
    running_app_vm,
    wait_pg_ready,
)

TRIALS = int(os.environ.get("FREEZEFRAME_VM_TRIALS", "3"))
CONFIG = """cap_s = {cap_s:g}
timeout_s = {cap_s:g}
quiesce = ["postgresql:host=/run/pg dbname=postgres user=postgres"]
"""
# The product's defaults for the freeze and the hold (--freeze-cap, --quiesce-cap), stretched.
FREEZE_CAP_S = 10.0
QUIESCE_CAP_S = 60.0
BROKEN_CONFIG = """quiesce = ["postgresql:host=/nonexistent dbname=postgres connect_timeout=2"]
"""
STATE_DIR = "/var/lib/freezeframe/guest"


def _spec(vm: Vm) -> str:
    return f"qmp:{vm.qmp_socket},qga={vm.qga_socket},name=pg"


def _config(vm: Vm) -> str:
    """The guest's config: PostgreSQL held, for as long as the hook may take on this guest."""
    return CONFIG.format(cap_s=vm.wait_s(QUIESCE_CAP_S))


def _backup_args(vm: Vm, level: str) -> list[str]:
    """``backup`` of the guest at ``level``, the freeze and the hold capped for its speed."""
    return [
        "backup", "--vm", _spec(vm), "--consistency", level,
        "--freeze-cap", f"{vm.wait_s(FREEZE_CAP_S):g}",
        "--quiesce-cap", f"{vm.wait_s(QUIESCE_CAP_S):g}",
    ]  # fmt: skip


def _commits_on(vm: Vm, seconds: float) -> bool:
    """Whether pgbench in the guest commits a transaction within ``seconds`` (``wait_s``)."""
    before = pgbench_progress(vm)
    deadline = time.monotonic() + vm.wait_s(seconds)
    while True:
        time.sleep(0.2)
        if pgbench_progress(vm) > before:
            return True
        if time.monotonic() > deadline:
            return False


def _in_guest(vm: Vm, *argv: str) -> int:
    status = vm.guest_exec(list(argv), timeout=120).exitcode
    vm.release_agent()
    return status


def _label_in_live_guest(vm: Vm) -> bool:
    return _in_guest(vm, "/usr/bin/test", "-e", f"{PG_DATA}/backup_label") == 0


@pytest.fixture(scope="module")
def pg_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    """The guest with PostgreSQL under pgbench and freezeframe's hook installed in it."""
    work = tmp_path_factory.mktemp("appvm")
    disks = make_app_disks(work / "disks")
    with running_app_vm(work / "vm", disks) as vm:
        wait_pg_ready(vm)
        _write_guest_file(vm, GUEST_CONFIG_PATH, _config(vm).encode())
        installed = vm.guest_exec(
            [sys.executable, "-m", "freezeframe", "--json", "guest-hook", "install",
             "--hook", HOOK_PATH, "--config", GUEST_CONFIG_PATH],
            timeout=120,
        )  # fmt: skip
        assert installed.exitcode == 0, installed.stderr
        assert json.loads(installed.stdout)["quiescers"] == ["postgresql"]
        vm.release_agent()
        yield vm


@pytest.fixture(autouse=True)
def _product_waits_for_the_guest(pg_vm: Vm, monkeypatch: pytest.MonkeyPatch) -> None:
    """freezeframe (in-process, and the runs and watchdogs it starts) waits long enough on
    this guest's QMP, agent and NBD."""
    for name, value in pg_vm.product_env().items():
        monkeypatch.setenv(name, value)


def test_doctor_sees_the_guest_hook(pg_vm: Vm, cli: Cli) -> None:
    [vm] = cli("doctor", "--vm", _spec(pg_vm))["vms"]
    assert vm["guest_hook"]["quiescers"] == ["postgresql"]
    assert vm["reachable"] == ["application", "filesystem", "crash"]


@pytest.mark.parametrize("level", ["application", "filesystem", "crash"])
def test_every_level_restores_to_a_booting_guest_whose_postgresql_starts_balanced(
    pg_vm: Vm, repo: Path, cli: Cli, tmp_path: Path, level: str
) -> None:
    """At `application` the restored server starts from the label the hook put in the image,
    consistent at the recorded end of the backup; below it, by crash recovery (for contrast)."""
    taken: list[tuple[str, dict[str, Any], int]] = []
    for _trial in range(TRIALS):
        committed = pgbench_progress(pg_vm)
        pg_vm.release_agent()
        [snapshot] = cli(*_backup_args(pg_vm, level))["vms"]
        record = snapshot["consistency"]
        assert record["achieved"] == level, record
        positions: dict[str, Any] = {}
        if level == "application":
            [held] = record["quiesce"]["quiescers"]
            assert held["kind"] == "postgresql" and held["result"] == "ok", held
            assert record["quiesce"]["in_guest"] is True
            positions = held["positions"]
            assert positions["label_in_image"] == [f"{PG_DATA}/backup_label"]
            print(
                f"guest frozen {record['volumes'][0]['freeze_ms']:.0f} ms (hook included), "
                f"PostgreSQL's label in place {record['quiesce']['window_ms']:.0f} ms"
            )
        else:
            assert record["quiesce"] == {}
        if level != "crash":
            assert all(v["guest_filesystems"] == 2 for v in record["volumes"])
        taken.append((snapshot["snapshot_id"], positions, committed))
    # Any hold ended with the thaw: PostgreSQL committed on, no label in the live directory.
    assert _commits_on(pg_vm, 2)
    assert not _label_in_live_guest(pg_vm)
    for trial, (snapshot_id, positions, committed) in enumerate(taken):
        target = tmp_path / f"restore-{trial}"
        cli("restore", snapshot_id[:12], "--target", target)
        images = [target / "vm" / "pg" / f"{drive}.raw" for drive in pg_vm.drive_ids]
        if level != "crash":
            assert not any(needs_journal_replay(image) for image in images)
        ok, detail = check_images(images, tmp_path / f"check-{trial}", fmt="raw")
        assert ok, f"trial {trial}: {detail}"
        restored = boot_restored(tmp_path / f"boot-{trial}", images)
        assert restored.started, restored.log
        assert restored.consistent, f"trial {trial}: pgbench sums {restored.balances}"
        assert restored.history_rows is not None and restored.history_rows >= committed
        if level == "application":
            assert restored.recovery.backup_recovery, restored.log
            assert not restored.recovery.crash_recovery, restored.log
            assert restored.recovery.redo_start == positions["start_lsn"], restored.log
            assert restored.recovery.consistent_at == positions["stop_lsn"], restored.log
        else:
            assert restored.recovery.crash_recovery, restored.log
            assert not restored.recovery.backup_recovery, restored.log
        subprocess.run(["rm", "-rf", str(target)], check=True)
        print(
            f"{level} trial {trial}: restored guest booted in {restored.boot_seconds:.1f} s, "
            f"PostgreSQL ready {restored.ready_seconds:.1f} s later, kept "
            f"{restored.history_rows} transactions (>= {committed} committed before)"
        )


def test_a_hold_the_guest_cannot_make_fails_the_run_or_degrades_to_filesystem(
    pg_vm: Vm, repo: Path, cli: Cli
) -> None:
    config = pg_vm.read_guest_file(GUEST_CONFIG_PATH)
    pg_vm.release_agent()
    _write_guest_file(pg_vm, GUEST_CONFIG_PATH, BROKEN_CONFIG.encode())
    try:
        failed = cli(*_backup_args(pg_vm, "application"), expect=1)
        message = failed["error"]["message"]
        assert failed["error"]["code"] == "consistency_unreachable", message
        assert "could not hold the applications: postgresql" in message, message
        degraded = cli(*_backup_args(pg_vm, "application"), "--fallback", "degrade")
        record = degraded["vms"][0]["consistency"]
        assert record["achieved"] == "filesystem"
        assert "postgresql" in record["reason"]
    finally:
        _write_guest_file(pg_vm, GUEST_CONFIG_PATH, config)
    assert pg_vm.qga("guest-fsfreeze-status") == "thawed"
    pg_vm.release_agent()


def test_sigkill_during_the_hold_thaws_the_guest_and_removes_the_label(
    pg_vm: Vm, repo: Path, tmp_path: Path
) -> None:
    env = hold_env(Point.VM_FROZEN, pg_vm.wait_s(60))
    run = spawn_freezeframe(*_backup_args(pg_vm, "application"), repo=repo, env=env)
    try:
        deadline = time.monotonic() + pg_vm.wait_s(120)
        # Frozen means the hook has returned: PostgreSQL's label is in place (the agent runs
        # no command while frozen, so it is looked at after the thaw).
        while pg_vm.qga("guest-fsfreeze-status") != "frozen":
            pg_vm.release_agent()
            assert run.poll() is None, "the backup ended before the freeze"
            assert time.monotonic() < deadline, "the guest never froze"
            time.sleep(0.1)
        pg_vm.release_agent()
        run.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        run.wait()
        while pg_vm.qga("guest-fsfreeze-status") != "thawed":
            pg_vm.release_agent()
            assert time.monotonic() - killed < 2, "the guest stayed frozen"
            time.sleep(0.05)
        pg_vm.release_agent()
        while _label_in_live_guest(pg_vm):
            assert time.monotonic() - killed < pg_vm.wait_s(30), (
                "the label stayed in the live directory"
            )
            time.sleep(0.2)
        print(f"label gone {time.monotonic() - killed:.1f} s after the SIGKILL")
        assert _commits_on(pg_vm, 1)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        pg_vm.release_agent()


def _write_guest_file(vm: Vm, path: str, data: bytes) -> None:
    vm.agent().write_file(path, data)
    vm.release_agent()
