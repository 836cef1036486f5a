"""Failures are reported clearly, and interrupted or concurrent backups never damage a
repository."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ffharness import (
    Cli,
    is_root,
    parse_json,
    run_freezeframe,
    spawn_freezeframe,
)
from treeutil import MiB, assert_same_tree, restored_path

pytestmark = pytest.mark.timeout(60)


def _assert_one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("freezeframe: error:"), lines[0]
    return lines[0]


def _random_tree(root: Path, files: int, size: int, seed: int) -> int:
    """Incompressible files; returns the total number of bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"file{i:03d}.bin").write_bytes(rng.randbytes(size))
    return files * size


def _objects(directory: Path) -> list[Path]:
    """Finished objects in a repository directory (temporary files start with a dot)."""
    if not directory.is_dir():
        return []
    return [
        Path(dirpath) / name
        for dirpath, _dirs, names in os.walk(directory)
        for name in names
        if not name.startswith(".")
    ]


def _wait_until(proc: subprocess.Popen[str], condition, what: str, limit: float = 40) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(
                f"the backup ended (status {proc.returncode}) before {what}; the test needs a "
                f"larger tree\nstderr: {err[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def test_wrong_password_is_one_clear_line(repo: Path) -> None:
    """A wrong password exits 12 (as restic) with a single error line, not a traceback."""
    result = run_freezeframe("snapshots", repo=repo, env={"FREEZEFRAME_PASSWORD": "wrong"})
    assert result.returncode == 12
    line = _assert_one_error_line(result.stderr)
    assert "password" in line.lower()


def test_wrong_password_json_error_code(repo: Path) -> None:
    """Scripts get {"error": {"code": "wrong_password", ...}} on stdout with --json."""
    result = run_freezeframe(
        "snapshots", repo=repo, json=True, env={"FREEZEFRAME_PASSWORD": "wrong"}
    )
    assert result.returncode == 12
    doc = parse_json(result.stdout, "--json error output")
    assert doc["error"]["code"] == "wrong_password"
    assert doc["error"]["message"]
    _assert_one_error_line(result.stderr)


def test_missing_repository_is_reported_and_not_created(tmp_path: Path) -> None:
    """Pointing at a repository that does not exist fails with a clear line and creates
    nothing."""
    missing = tmp_path / "no-such-repo"
    result = run_freezeframe("snapshots", repo=missing)
    assert result.returncode == 10
    line = _assert_one_error_line(result.stderr)
    assert str(missing) in line
    assert not missing.exists()

    result = run_freezeframe("snapshots", repo=missing, json=True)
    assert result.returncode == 10
    assert parse_json(result.stdout)["error"]["code"] == "repository_not_found"


def test_backup_of_missing_path_is_an_error(cli: Cli, repo: Path, tmp_path: Path) -> None:
    """Asking to back up a path that does not exist is reported, naming the path."""
    missing = tmp_path / "does-not-exist"
    result = cli("backup", missing, expect=None)
    assert cli.status in (1, 3), f"backup of a missing path exited {cli.status}"
    assert "Traceback" not in cli.stderr
    reported = cli.stderr + " ".join(e.get("path", "") for e in result.get("errors", []))
    if "error" in result:
        reported += result["error"]["message"]
    assert str(missing) in reported


def _drop_root_read_override() -> tuple[str, ...]:
    """As root, a prefix that runs a command without the capabilities that let root read any
    file, so a mode-000 file is really unreadable; empty when not root."""
    if not is_root():
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root an unreadable file needs setpriv (util-linux) to drop capabilities")
    prefix = (setpriv, "--bounding-set=-dac_override,-dac_read_search")
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr!r}")
    return prefix


def test_unreadable_file_gives_exit_3_and_a_snapshot(repo: Path, tmp_path: Path) -> None:
    """A file that cannot be read is reported (exit 3) but the rest is still saved."""
    prefix = _drop_root_read_override()
    source = tmp_path / "source"
    source.mkdir()
    (source / "readable.txt").write_text("fine\n")
    secret = source / "secret.txt"
    secret.write_text("nobody may read this\n")
    secret.chmod(0o000)

    result = run_freezeframe("backup", source, repo=repo, json=True, prefix=prefix)
    assert result.returncode == 3, f"status {result.returncode}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    doc = parse_json(result.stdout, "backup --json")
    assert [e["path"] for e in doc["errors"]] == [str(secret)]
    assert doc["summary"]["errors"] == 1

    listed = parse_json(run_freezeframe("snapshots", repo=repo, json=True).stdout)
    assert [s["id"] for s in listed] == [doc["snapshot_id"]]
    target = tmp_path / "target"
    restore = run_freezeframe("restore", doc["snapshot_id"], "--target", target, repo=repo)
    assert restore.returncode == 0, restore.stderr
    assert restored_path(target, source / "readable.txt").read_text() == "fine\n"


def test_concurrent_backups_both_succeed(cli: Cli, repo: Path, tmp_path: Path) -> None:
    """Two backups into one repository at the same time both complete and both restore."""
    trees = [tmp_path / "tree-a", tmp_path / "tree-b"]
    for seed, tree in enumerate(trees):
        _random_tree(tree, files=6, size=4 * MiB, seed=seed)
        (tree / "shared.txt").write_text("the same in both trees\n" * 1000)
    procs = [spawn_freezeframe("backup", tree, repo=repo, json=True) for tree in trees]
    outputs = [proc.communicate(timeout=50) for proc in procs]
    ids = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"a concurrent backup failed: {err}"
        ids.append(parse_json(out)["snapshot_id"])
    assert ids[0] != ids[1]

    check = cli("check", "--read-data")
    assert check["ok"] is True and check["errors"] == []
    for snapshot_id, tree in zip(ids, trees, strict=True):
        target = tmp_path / f"restore-{tree.name}"
        cli("restore", snapshot_id, "--target", target)
        assert_same_tree(tree, restored_path(target, tree))


def test_killed_backup_leaves_a_valid_repository_and_reusable_data(
    cli: Cli, repo: Path, tmp_path: Path
) -> None:
    """After a backup is SIGKILLed mid-way, `check` passes, the next backup succeeds and it
    does not upload again what the killed one had already stored and indexed."""
    source = tmp_path / "source"
    total = _random_tree(source, files=10, size=20 * MiB, seed=42)
    proc = spawn_freezeframe("backup", source, repo=repo, json=True)
    _wait_until(proc, lambda: _objects(repo / "data"), "a pack was written")
    # The index is written every few packs; the data must be indexed to be reusable.
    _wait_until(proc, lambda: _objects(repo / "index"), "an index was written")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reap it: a zombie would still look like a live lock holder
    assert proc.returncode == -signal.SIGKILL

    check = cli("check")
    assert check["ok"] is True and check["errors"] == []

    second = cli("backup", source)
    added = second["summary"]["bytes_added"]
    assert added < total, (
        f"the backup after the kill added {added} bytes of {total}: nothing was reused"
    )
    assert cli("check", "--read-data")["ok"] is True
    target = tmp_path / "target"
    cli("restore", second["snapshot_id"], "--target", target)
    assert_same_tree(source, restored_path(target, source))


def test_ctrl_c_exits_130_and_leaves_a_valid_repository(
    cli: Cli, repo: Path, tmp_path: Path
) -> None:
    """Ctrl-C during a backup exits 130 without a traceback; the repository stays valid and
    usable."""
    source = tmp_path / "source"
    _random_tree(source, files=10, size=20 * MiB, seed=7)
    proc = spawn_freezeframe("backup", source, repo=repo)
    _wait_until(proc, lambda: _objects(repo / "data"), "a pack was written")
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, f"status {proc.returncode}\nstderr: {err}"
    assert "Traceback" not in err

    check = cli("check")
    assert check["ok"] is True and check["errors"] == []
    assert cli("snapshots") == [], "an interrupted backup must not leave a snapshot"
    second = cli("backup", source)
    target = tmp_path / "target"
    cli("restore", second["snapshot_id"], "--target", target)
    assert_same_tree(source, restored_path(target, source))
