"""Application-aware backups of PostgreSQL 15 on ext4 over LVM, in the LVM lab's guest
(tests/vmlvmlab.py; this host's kernel has no device-mapper), with pgbench flat out: the lvm
provider's frozen snapshot inside PostgreSQL's base backup reaches `application`, and every
restored cluster starts in backup recovery from the backup's own label, replays its WAL from the
backup's start to its end record, keeps pgbench's invariant, holds every transaction committed
before the backup began and passes pg_amcheck. PostgreSQL is never paused: pgbench commits
through every backup, stalled at most while lvcreate suspends the origin. The btrfs version of
this is test_application_postgresql.py.

The cluster lives on a thick ext4 LV of its own (tests/vmlvmpg.py says why) whose snapshot
store is as big as the LV (``--snapshot-size 100%``): it cannot overflow however much pgbench
rewrites while the snapshot is read.

FREEZEFRAME_LVM_APPLICATION_TRIALS sets the backups (default 2).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import pytest

from vmfixtures import Vm
from vmlvmlab import (
    VG,
    guest_freezeframe,
    init_repository,
    leftovers,
    lvm_lab,
    must,
    restore_in_guest,
)
from vmlvmpg import (
    CONNINFO,
    PG_DATA,
    PG_LV,
    amcheck,
    balances,
    committed,
    guest_clock,
    make_cluster,
    make_pg_lv,
    pgbench_alive,
    progress,
    start_pgbench,
    start_restored,
    stop_pgbench,
    stop_server,
)

TRIALS = int(os.environ.get("FREEZEFRAME_LVM_APPLICATION_TRIALS", "2"))
# The boot, the cluster and each trial's backup, restore and checks take minutes under TCG.
pytestmark = [pytest.mark.privileged, pytest.mark.timeout(900 + 600 * TRIALS)]
# Under TCG (about 100 times a real host's time) lvcreate takes seconds and pg_backup_start's
# checkpoint more: caps a real host would not need.
TCG_CAPS = (
    "--pause-cap", "120", "--freeze-cap", "120", "--quiesce-cap", "600",
    "--quiesce-timeout", "300",
)  # fmt: skip


@pytest.fixture(scope="module")
def pg_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    """The lab with the cluster on its LV and pgbench running flat out."""
    with lvm_lab(tmp_path_factory.mktemp("lvmpg")) as vm:
        started = time.monotonic()
        init_repository(vm)
        make_pg_lv(vm)
        make_cluster(vm)
        free = must(vm, f"vgs --noheadings --units m -o vg_free {VG}").strip()
        print(f"lvmpg: cluster on {VG}/{PG_LV} made in {time.monotonic() - started:.1f} s; "
              f"{free} free in {VG} for its 100% snapshot")  # fmt: skip
        start_pgbench(vm)
        deadline = time.monotonic() + vm.wait_s(60)
        while committed(vm) < 50:
            assert pgbench_alive(vm) and time.monotonic() < deadline, "pgbench did not commit"
            time.sleep(1)
        yield vm
        stop_pgbench(vm)
        stop_server(vm, PG_DATA)


def _longest_stall(seconds: list[tuple[float, float]], start: float, end: float) -> float:
    """The longest run of pgbench progress seconds within [start, end] with no commits."""
    longest = run = 0.0
    for at, tps in seconds:
        if start <= at <= end:
            run = run + 1 if tps == 0 else 0
            longest = max(longest, run)
    return longest


def test_postgresql_on_lvm_restores_from_its_label_balanced_under_pgbench(pg_lab: Vm) -> None:
    vm = pg_lab
    for trial in range(TRIALS):
        before = committed(vm)
        began = guest_clock(vm)
        started = time.monotonic()
        status, doc, err = guest_freezeframe(
            vm, "backup", PG_DATA, "--consistency", "application",
            "--quiesce", f"postgresql:{CONNINFO}", "--snapshot-size", "100%", *TCG_CAPS,
        )  # fmt: skip
        took = time.monotonic() - started
        ended = guest_clock(vm)
        assert status == 0, err
        after = committed(vm)
        consistency = doc["consistency"]
        assert consistency["achieved"] == "application", consistency
        (volume,) = consistency["volumes"]
        assert volume["provider"] == "lvm", volume
        record = consistency["quiesce"]["quiescers"][0]
        assert record["kind"] == "postgresql" and record["result"] == "ok", record
        positions = record["positions"]
        assert positions["data_directory"] == PG_DATA

        # PostgreSQL was never paused: freezeframe stopped none of its processes (one LV,
        # frozen by lvcreate's suspend), pgbench committed through the backup, and stalled for
        # no longer than lvcreate kept the origin suspended (plus a second either side).
        writers = consistency.get("pause") or {}
        assert writers.get("window_ms", 0) == 0, writers
        assert after > before, "pgbench committed nothing during the backup"
        seconds = progress(vm)
        in_window = [tps for at, tps in seconds if began <= at <= ended]
        stall = _longest_stall(seconds, began, ended)
        assert sum(in_window) > 0, "pgbench committed nothing while the backup ran"
        assert stall <= math.ceil(volume["freeze_ms"] / 1000) + 2, (
            f"pgbench stalled {stall:.0f} s; the origin was suspended {volume['freeze_ms']} ms"
        )

        target = f"/run/restore-pg-{trial}"
        started = time.monotonic()
        restore_in_guest(vm, doc["snapshot_id"], target)
        restore_s = time.monotonic() - started
        restored = target + PG_DATA
        # postgres must reach the restored directory: its parents as the backup recorded them
        # (the mount point's root 0755), the directory itself the server's own, 0700.
        assert must(vm, f"stat -c '%U %a' {restored}").split() == ["postgres", "700"]
        assert must(vm, f"test -e {restored}/backup_label && echo yes || echo no").strip() == "yes"
        assert must(vm, f"test -e {restored}/postmaster.pid && echo yes || echo no").strip() == "no"
        started = time.monotonic()
        server = start_restored(vm, restored, f"pgr-{trial}")
        start_s = time.monotonic() - started
        try:
            assert server.started.exitcode == 0, (
                f"the restored cluster did not start: {server.started.output}\n"
                f"{server.log_text(vm)}"
            )
            recovery = server.recovery(vm)
            assert recovery.backup_recovery and not recovery.crash_recovery, server.log_text(vm)
            assert recovery.redo_start == positions["start_lsn"], server.log_text(vm)
            assert recovery.consistent_at == positions["stop_lsn"], server.log_text(vm)
            a, t, b, h = balances(vm, server.socket_dir)
            assert a == t == b == h, f"trial {trial}: pgbench invariant broken: {(a, t, b, h)}"
            kept = committed(vm, server.socket_dir)
            assert kept >= before, f"the restore lost committed work: {kept} < {before}"
            assert kept <= after  # the copy is of the running cluster during the backup
            started = time.monotonic()
            checked = amcheck(vm, server.socket_dir)
            amcheck_s = time.monotonic() - started
            assert checked.exitcode == 0, checked.output
        finally:
            stop_server(vm, restored)
            must(vm, f"rm -rf {target} {server.socket_dir}")
        quiesce = consistency["quiesce"]
        print(
            f"lvmpg: trial {trial}: application in {took:.1f} s; held "
            f"{quiesce['window_ms']:.0f} ms (pg_backup_start {record.get('freeze_ms', 0):.0f} "
            f"ms, stop {record.get('thaw_ms', 0):.0f} ms), origin suspended "
            f"{volume['freeze_ms']:.1f} ms, snapshot {volume['snapshot_ms']:.0f} ms, writers "
            f"paused {writers.get('window_ms', 0):.0f} ms; pgbench {after - before} txns "
            f"during it ({sum(in_window) / max(len(in_window), 1):.1f} tps), longest stall "
            f"{stall:.0f} s; restored in {restore_s:.1f} s, started in {start_s:.1f} s, "
            f"amcheck {amcheck_s:.1f} s; kept {kept} txns ({before} before, {after} after), "
            f"redo {recovery.redo_start} to {recovery.consistent_at}"
        )
    assert pgbench_alive(vm), "pgbench died"
    final = committed(vm)
    assert final > after  # pgbench ran on through every backup
    assert leftovers(vm) == []
