"""Backups of a running QEMU VM (the lab's tiny guest, tests/vmfixtures.py) whose workload
writes a log on one virtual disk and, after it is durable, a commit on the other: at `crash`
and `filesystem` every restored pair of images keeps the invariant and passes e2fsck; at
`filesystem` the guest's file systems also need no journal replay. A SIGKILL of freezeframe
while the guest is frozen, or while the disks are being read, leaves the guest writing and no
block job, node or overlay behind within 2 s. FREEZEFRAME_VM_TRIALS sets the trials per level
(default 3)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ffharness import Cli, hold_env, parse_json, run_freezeframe, spawn_freezeframe
from freezeframe.hooks import Point
from vmfixtures import Vm, check_images, make_disks, needs_journal_replay, running_vm

TRIALS = int(os.environ.get("FREEZEFRAME_VM_TRIALS", "3"))
SCRATCH = Path("/var/tmp/freezeframe-vm")


def _spec(vm: Vm, name: str = "lab") -> str:
    return f"qmp:{vm.qmp_socket},qga={vm.qga_socket},name={name}"


def _commit(vm: Vm) -> int:
    value = vm.read_guest_file("/mnt/b/b.commit")
    vm.release_agent()
    return int(value or 0)


def _leftovers(vm: Vm) -> list[str]:
    jobs = [j["device"] for j in vm.qmp("query-block-jobs")]
    nodes = [n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})]
    found = [name for name in jobs + nodes if name.startswith("ffz")]
    if SCRATCH.exists():
        found += [str(p) for p in SCRATCH.glob("lab/ffz*")]
    return found


@pytest.mark.parametrize("level", ["crash", "filesystem"])
def test_every_restore_keeps_the_invariant_across_both_disks(
    repo: Path, cli: Cli, tmp_path: Path, level: str
) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=128)
    with running_vm(tmp_path / "vm", disks) as vm:
        for trial in range(TRIALS):
            vm.release_agent()
            result = cli("backup", "--vm", _spec(vm), "--consistency", level)
            [snapshot] = result["vms"]
            record = snapshot["consistency"]
            assert record["achieved"] == level
            assert [v["drive"] for v in record["volumes"]] == vm.drive_ids
            assert len({v["snapshot_time"] for v in record["volumes"]}) == 1  # one instant
            if level == "filesystem":
                assert record["volumes"][0]["guest_filesystems"] == 2
                assert record["volumes"][0]["freeze_ms"] > 0
            target = tmp_path / f"restore-{trial}"
            cli("restore", snapshot["snapshot_id"][:12], "--target", target)
            images = [target / "vm" / "lab" / f"{drive}.raw" for drive in vm.drive_ids]
            if level == "filesystem":
                assert not any(needs_journal_replay(image) for image in images)
            ok, detail = check_images(images, tmp_path / f"check-{trial}", fmt="raw")
            assert ok, f"trial {trial}: {detail}"
            subprocess.run(["rm", "-rf", str(target)], check=True)
        assert _commit(vm) > 0, "the workload never committed"
        assert _leftovers(vm) == []


def test_restored_definition_names_the_disks(repo: Path, cli: Cli, tmp_path: Path) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=64)
    with running_vm(tmp_path / "vm", disks) as vm:
        shown = cli("doctor", "--vm", _spec(vm))
        [report] = shown["vms"]
        assert [d["drive"] for d in report["disks"]] == vm.drive_ids
        assert report["guest_agent"]["answers"] is True
        assert report["reachable"] == ["filesystem", "crash"]
        files = tmp_path / "files"
        files.mkdir()
        (files / "notes.txt").write_text("beside the VM\n")
        # Paths and a VM in one run: a snapshot of the paths, then one of the VM.
        result = cli("backup", files, "--vm", f"qmp:{vm.qmp_socket},name=lab")
        assert result["paths"]["paths"] == [str(files)]
        [snapshot] = result["vms"]
        assert snapshot["snapshot_id"] != result["paths"]["snapshot_id"]
        assert snapshot["consistency"]["achieved"] == "crash"
        assert "no guest agent" in snapshot["consistency"]["reason"]
        listed = cli("ls", snapshot["snapshot_id"][:12], "/vm/lab")
        sizes = {n["path"]: n["size"] for n in listed["nodes"]}
        for drive, disk in zip(vm.drive_ids, disks, strict=True):
            virtual = subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(disk)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert f'"virtual-size": {sizes[f"/vm/lab/{drive}.raw"]}' in virtual
        assert "/vm/lab/definition.json" in sizes

        one = tmp_path / "one-disk"
        cli("restore", snapshot["snapshot_id"][:12], "--target", one, "--disk", "vdb",
            "--format", "qcow2")  # fmt: skip
        restored = sorted(p.name for p in (one / "vm" / "lab").iterdir())
        assert restored == ["definition.json", "vdb.qcow2"]
        subprocess.run(["qemu-img", "check", str(one / "vm" / "lab" / "vdb.qcow2")], check=True)
        missing = cli("restore", snapshot["snapshot_id"][:12], "--target", one, "--disk", "vdz",
                      expect=1)  # fmt: skip
        assert "/vm/lab/vdz.raw is not in snapshot" in missing["error"]["message"]


def test_unreachable_levels_fail_or_degrade_frozen_by_someone_else_or_without_guest_hook(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=64)
    with running_vm(tmp_path / "vm", disks) as vm:
        vm.qga("guest-fsfreeze-freeze")
        vm.release_agent()
        try:
            failed = cli("backup", "--vm", _spec(vm), "--consistency", "filesystem", expect=1)
            assert failed["error"]["code"] == "consistency_unreachable"
            assert "already frozen by someone else" in failed["error"]["message"]
            degraded = cli(
                "backup", "--vm", _spec(vm), "--consistency", "filesystem",
                "--fallback", "degrade",
            )  # fmt: skip
            assert degraded["vms"][0]["consistency"]["achieved"] == "crash"
            assert vm.qga("guest-fsfreeze-status") == "frozen"  # not ours to thaw
        finally:
            vm.qga("guest-fsfreeze-thaw")
            vm.release_agent()
        # This guest has an agent but no freezeframe guest hook: no application level.
        failed = cli("backup", "--vm", _spec(vm), "--consistency", "application", expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert "guest hook is not installed" in failed["error"]["message"]
        degraded = cli(
            "backup", "--vm", _spec(vm), "--consistency", "application", "--fallback", "degrade"
        )
        record = degraded["vms"][0]["consistency"]
        assert record["achieved"] == "filesystem" and "guest hook" in record["reason"]
        assert cli("backup", "--vm", _spec(vm))["vms"][0]["consistency"]["achieved"] == (
            "filesystem"
        )
        assert _leftovers(vm) == []


@pytest.mark.parametrize("phase", ["frozen", "reading"])
def test_sigkill_releases_the_guest_and_leaves_nothing_within_two_seconds(
    repo: Path, tmp_path: Path, phase: str
) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=64)
    hold = Point.VM_FROZEN if phase == "frozen" else Point.VM_READING
    with running_vm(tmp_path / "vm", disks) as vm:
        vm.release_agent()
        backup = spawn_freezeframe("backup", "--vm", _spec(vm), repo=repo, env=hold_env(hold, 60))
        deadline = time.monotonic() + 60
        while True:  # until the hold has begun
            if phase == "frozen":
                time.sleep(0.2)
                reached = vm.qga("guest-fsfreeze-status") == "frozen"
                vm.release_agent()
            else:
                reached = any(j["device"].startswith("ffz") for j in vm.qmp("query-block-jobs"))
                time.sleep(0.05)
            if reached:
                break
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline, f"the backup never reached {phase}"
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        while _leftovers(vm) or vm.qga("guest-fsfreeze-status") != "thawed":
            vm.release_agent()
            assert time.monotonic() - killed < 2.0, f"left behind: {_leftovers(vm)}"
            time.sleep(0.05)
        vm.release_agent()
        before = _commit(vm)
        time.sleep(0.5)
        assert _commit(vm) > before, "the guest does not write again"


def test_incrementals_read_only_what_changed_and_survive_a_broken_chain_and_a_dead_run(
    repo: Path, cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=128, fill_mib=48)
    with running_vm(tmp_path / "vm", disks) as vm:
        vm.release_agent()

        def backup() -> dict[str, Any]:
            [snapshot] = cli("backup", "--vm", _spec(vm))["vms"]
            vm.release_agent()
            return dict(snapshot)

        def restores_clean(snapshot: dict[str, Any], name: str) -> None:
            target = tmp_path / name
            cli("restore", snapshot["snapshot_id"][:12], "--target", target)
            images = [target / "vm" / "lab" / f"{drive}.raw" for drive in vm.drive_ids]
            ok, detail = check_images(images, tmp_path / f"check-{name}", fmt="raw")
            assert ok, f"{name}: {detail}"
            subprocess.run(["rm", "-rf", str(target)], check=True)

        full = backup()
        assert all("no dirty bitmap" in v["full_read"] for v in full["consistency"]["volumes"])
        assert full["summary"]["bytes_read"] >= 2 * 48 * 2**20
        time.sleep(1)  # the guest goes on committing
        second = backup()
        for volume in second["consistency"]["volumes"]:
            assert volume["incremental"]["parent"] == full["snapshot_id"]
        assert 0 < second["summary"]["bytes_read"] < full["summary"]["bytes_read"] / 8
        with capsys.disabled():
            print(
                f"full read {full['summary']['bytes_read']} bytes, incremental "
                f"{second['summary']['bytes_read']} bytes"
            )
        restores_clean(second, "second")

        bitmap = second["consistency"]["volumes"][0]["bitmap"]
        vm.qmp("block-dirty-bitmap-remove", {"node": vm.node_names[0], "name": bitmap})
        broken = backup()
        first, other = broken["consistency"]["volumes"]
        assert "no dirty bitmap" in first["full_read"]
        assert other["incremental"]["parent"] == second["snapshot_id"]

        dying = spawn_freezeframe(
            "backup", "--vm", _spec(vm), repo=repo, env=hold_env(Point.VM_READING, 60)
        )
        deadline = time.monotonic() + 60
        while not any(j["device"].startswith("ffz") for j in vm.qmp("query-block-jobs")):
            assert dying.poll() is None, dying.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        dying.kill()
        dying.wait()
        time.sleep(2)
        after = backup()
        for volume in after["consistency"]["volumes"]:
            assert volume["incremental"]["parent"] == broken["snapshot_id"]
        restores_clean(after, "after-dead-run")


def test_a_freeze_past_its_cap_is_thawed_by_the_watchdog_and_fails_or_degrades(
    repo: Path, tmp_path: Path
) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=64)
    with running_vm(tmp_path / "vm", disks) as vm:
        vm.release_agent()
        held = hold_env(Point.VM_FROZEN, 3)
        args = ["backup", "--vm", _spec(vm), "--consistency", "filesystem", "--freeze-cap", "1"]
        failed = run_freezeframe(*args, repo=repo, json=True, env=held)
        assert failed.returncode == 1, failed.stderr
        assert "passed its 1 s cap" in parse_json(failed.stdout)["error"]["message"]
        degraded = run_freezeframe(*args, "--fallback", "degrade", repo=repo, json=True, env=held)
        assert degraded.returncode == 0, degraded.stderr
        record = parse_json(degraded.stdout)["vms"][0]["consistency"]
        assert record["achieved"] == "crash"
        assert "passed its 1 s cap" in record["reason"]
        assert vm.qga("guest-fsfreeze-status") == "thawed"
        vm.release_agent()
        assert _leftovers(vm) == []


def test_bad_vm_specs_and_an_unreachable_monitor_are_one_line_errors(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    missing = cli("backup", "--vm", f"qmp:{tmp_path}/nowhere.sock,name=x", expect=1)
    assert missing["error"]["code"] == "qmp_error"
    assert "nowhere.sock" in missing["error"]["message"]
    assert "Traceback" not in cli.stderr
    wrong = cli("backup", "--vm", "ssh:host", expect=2)
    assert "expected qmp:PATH" in wrong["error"]["message"]
    # A bad spec beside paths fails before the paths are backed up.
    both = cli("backup", tmp_path, "--vm", "qmp:", expect=2)
    assert "expected qmp:PATH" in both["error"]["message"]
    assert cli("snapshots") == []
    only_vms = cli("backup", "--vm", f"qmp:{tmp_path}/x.sock", "--quiesce", "sqlite:/a", expect=2)
    assert "guest hook" in only_vms["error"]["message"]
    assert cli("backup", expect=2)["error"]["code"] == "usage"
