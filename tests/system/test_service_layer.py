"""The service layer called directly, as the plans runner's child and the coming API call it:
backing up and restoring paths and a VM gives what the CLI gives for the same request."""

from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path

import pytest

from ffharness import PASSWORD, Cli
from freezeframe.errors import Interrupted, UsageError
from freezeframe.repository.repository import Repository
from freezeframe.repository.retention import RetentionPolicy
from freezeframe.service.backup import BackupRequest, backup
from freezeframe.service.maintenance import ForgetRequest, check, forget
from freezeframe.service.reporter import Cancel, SilentReporter
from freezeframe.service.restore import RestoreRequest, restore
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.vm.machine import VmSpec
from treeutil import assert_same_tree
from vmfixtures import make_disks, running_vm


def _open(repo: Path) -> closing[Repository]:
    return closing(Repository.open(LocalStorage(repo), PASSWORD.encode(), load_index=False))


def _make_tree(root: Path) -> None:
    (root / "etc" / "app").mkdir(parents=True)
    (root / "etc" / "app" / "app.conf").write_text("listen = 127.0.0.1\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(os.urandom(3 * 2**20))
    (root / "data" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "data" / "script.sh").chmod(0o755)
    os.symlink("data/big.bin", root / "link")


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(root))] = (path.stat().st_mode, path.read_bytes())
    return found


def test_paths_through_the_service_match_the_cli(repo: Path, cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "source"
    _make_tree(source)
    by_cli = cli("backup", source, "--tag", "cli")
    reporter = SilentReporter()
    request = BackupRequest(paths=(str(source),), tags=("service",))
    with _open(repo) as opened:
        outcome = backup(opened, request, reporter)
    assert outcome.paths is not None and not outcome.unreadable and outcome.vms == []
    snapshot = outcome.paths.snapshot
    assert snapshot.tags == ["service"]
    assert snapshot.consistency.achieved == by_cli["consistency"]["achieved"]
    for counter in ("files_new", "dirs", "bytes_total"):
        assert snapshot.summary[counter] == by_cli["summary"][counter], counter
    # The second backup stores no file data again (only trees: atimes moved).
    assert snapshot.summary["bytes_added"] < 64 * 1024

    by_service = tmp_path / "by-service"
    with _open(repo) as opened:
        restored = restore(opened, RestoreRequest(snapshot.id, by_service), reporter)
    assert not restored.result.errors and not restored.result.damaged
    cli("restore", by_cli["snapshot_id"], "--target", tmp_path / "by-cli")
    inner = str(source).lstrip("/")
    assert_same_tree(source, by_service / inner)
    assert _files(by_service / inner) == _files(tmp_path / "by-cli" / inner)
    assert reporter.warnings == []

    with _open(repo) as opened:
        gone = forget(opened, ForgetRequest(RetentionPolicy(keep_last=1), prune=True))
        assert [s.id for s in gone.removed] == [by_cli["snapshot_id"]]
        assert gone.prune is not None
        assert check(opened, read_data=True, read_data_subset=None).errors == []


def test_a_bad_request_is_refused_before_anything_is_taken(repo: Path, tmp_path: Path) -> None:
    with _open(repo) as opened:
        for request in (
            BackupRequest(),
            BackupRequest(paths=(str(tmp_path),), excludes=("[",)),
            BackupRequest(paths=("",)),
        ):
            with pytest.raises(UsageError):
                backup(opened, request, SilentReporter())
        assert list(opened.list_names(Kind.SNAPSHOTS)) == []


def test_a_cancelled_run_stops_before_the_next_source(repo: Path, tmp_path: Path) -> None:
    cancel = Cancel()
    cancel.request()
    request = BackupRequest(vms=(VmSpec.parse(f"qmp:{tmp_path / 'no-such.sock'},name=x"),))
    with _open(repo) as opened, pytest.raises(Interrupted):
        backup(opened, request, SilentReporter(), cancel)


def test_a_vm_through_the_service_matches_the_cli(repo: Path, cli: Cli, tmp_path: Path) -> None:
    disks = make_disks(tmp_path / "disks", size_mib=64)
    with running_vm(tmp_path / "vm", disks) as vm:
        spec = f"qmp:{vm.qmp_socket},qga={vm.qga_socket},name=lab"
        vm.release_agent()
        [by_cli] = cli("backup", "--vm", spec, "--consistency", "filesystem")["vms"]
        vm.release_agent()
        request = BackupRequest(vms=(VmSpec.parse(spec),), consistency="filesystem")
        with _open(repo) as opened:
            outcome = backup(opened, request, SilentReporter())
    [result] = outcome.vms
    record = result.snapshot.consistency
    assert record.achieved == by_cli["consistency"]["achieved"] == "filesystem"
    assert [v["drive"] for v in record.volumes] == [
        v["drive"] for v in by_cli["consistency"]["volumes"]
    ]
    target = tmp_path / "restored"
    with _open(repo) as opened:
        restored = restore(opened, RestoreRequest(result.snapshot.id, target), SilentReporter())
    assert not restored.result.damaged
    images = sorted(p.name for p in (target / "vm" / "lab").glob("*.raw"))
    assert images == sorted(f"{v['drive']}.raw" for v in record.volumes)
    for image in images:
        assert os.path.getsize(target / "vm" / "lab" / image) == 64 * 2**20
