"""A repository on an SFTP server, through the real CLI (a child process, its key and known
hosts in its environment as an operator sets them), against OpenSSH's sshd on loopback: init,
backup, a byte-exact restore and ``check --read-data``; an unknown host key, a changed host
key and a key the server does not accept each end with one line and exit 1 (error code
``storage``), nothing created on the server; a server killed during a backup ends it with one
line, and the repository passes ``check --read-data`` once the server is back. And one storage
object used by many threads at once, as the repository's uploaders and readers do."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ffharness import FAST_INIT, is_root, run_freezeframe, spawn_freezeframe
from freezeframe.errors import EXIT_FATAL
from freezeframe.storage.base import Kind
from freezeframe.storage.sftp import CHANNELS, TEMP_PREFIX, SftpStorage
from servers.sshd import SshServer, new_key, sshd
from treeutil import assert_same_tree, build_odd_tree, restored_path


@pytest.fixture
def server(sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch) -> SshServer:
    """The session's sshd, with this process's environment (so the CLI's) pointed at it."""
    for name, value in sshd_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sshd_server


def _run(
    location: str, *args: str | Path, env: dict[str, str] | None = None, json: bool = False
) -> subprocess.CompletedProcess[str]:
    return run_freezeframe(
        *args,
        repo=None,
        json=json,
        env={"FREEZEFRAME_REPOSITORY": location, **(env or {})},
        timeout=300,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == EXIT_FATAL, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("freezeframe: error: ")
    return lines[0]


def _fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_backup_restore_and_check_on_an_sftp_server(server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "remote" / "repo"  # the parent is made too
    location = server.location(root)
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    _ok(_run(location, *FAST_INIT))
    first = json.loads(_ok(_run(location, "backup", source, json=True)))
    _ok(_run(location, "backup", source))  # a second snapshot: everything deduplicated
    target = tmp_path / "target"
    _ok(_run(location, "restore", first["snapshot_id"], "--target", target))
    assert_same_tree(source, restored_path(target, source))
    check = json.loads(_ok(_run(location, "check", "--read-data", json=True)))
    assert check.get("warnings", []) == [], check  # the modes are a repository's
    assert len(json.loads(_ok(_run(location, "snapshots", json=True)))) == 2

    packs = [p for p in (root / "data").glob("*/*") if p.is_file()]
    assert packs and all(p.parent.name == p.name[:2] for p in packs)
    assert {p.name for p in root.iterdir()} == {
        "config", "keys", "data", "index", "snapshots", "locks"
    }  # fmt: skip
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in [root / "config", *packs]} == {0o600}
    assert not [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def _refused(location: str, root: Path, env: dict[str, str] | None = None) -> str:
    """The one line of ``init`` and ``snapshots`` (the same), and ``--json``'s code; nothing
    is created on the server."""
    line = _one_line_error(_run(location, *FAST_INIT, env=env))
    assert _one_line_error(_run(location, "snapshots", env=env)) == line
    result = _run(location, "snapshots", env=env, json=True)
    assert result.returncode == EXIT_FATAL
    assert json.loads(result.stdout)["error"]["code"] == "storage"
    assert not root.exists()
    return line


def test_an_unknown_host_key_is_refused_naming_its_fingerprint(
    server: SshServer, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    line = _refused(server.location(root), root, {"FREEZEFRAME_SFTP_KNOWN_HOSTS": str(empty)})
    assert f"the host key of {server.known_hosts_name} is not known" in line, line
    assert _fingerprint(server.host_key_line) in line and "ssh-keyscan -p" in line, line
    missing = tmp_path / "no-such-file"
    env = {"FREEZEFRAME_SFTP_KNOWN_HOSTS": str(missing)}
    line = _one_line_error(_run(server.location(root), *FAST_INIT, env=env))
    assert f"is not known ({missing} does not exist)" in line, line
    assert not root.exists()


def test_a_changed_host_key_is_refused_naming_both_fingerprints(
    server: SshServer, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    other = new_key(tmp_path / "impostor")
    known = tmp_path / "known_hosts"
    known.write_text(f"{server.known_hosts_name} {other}\n")
    line = _refused(server.location(root), root, {"FREEZEFRAME_SFTP_KNOWN_HOSTS": str(known)})
    assert f"the host key of {server.known_hosts_name} has CHANGED" in line, line
    assert _fingerprint(server.host_key_line) in line and _fingerprint(other) in line, line
    assert "ssh-keygen -R" in line


def test_a_key_the_server_does_not_accept_is_refused(server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    stranger = tmp_path / "stranger"
    new_key(stranger)
    line = _refused(server.location(root), root, {"FREEZEFRAME_SFTP_IDENTITY": str(stranger)})
    assert f"{server.user}@{server.known_hosts_name} refused every SSH key offered" in line
    assert str(stranger) in line


def _first_pack(root: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if any(p.is_file() for p in (root / "data").glob("*/[0-9a-f]*")):
            return
        time.sleep(0.01)
    pytest.fail("the backup wrote no pack in time")


def test_a_server_gone_during_a_backup_ends_it_with_one_line(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sshd(tmp_path_factory.mktemp("sshd-killed")) as own:
        for name, value in own.env().items():
            monkeypatch.setenv(name, value)
        root = tmp_path / "repo"
        location = own.location(root)
        source = tmp_path / "source"
        source.mkdir()
        for i in range(8):  # 64 MiB that do not compress: four packs of 16 MiB
            (source / f"part{i}").write_bytes(os.urandom(8 * 1024 * 1024))
        _ok(_run(location, *FAST_INIT))
        backup = spawn_freezeframe(
            "backup", source, repo=None, env={"FREEZEFRAME_REPOSITORY": location}
        )
        _first_pack(root, time.monotonic() + 60)
        own.kill()
        _stdout, stderr = backup.communicate(timeout=120)
        assert backup.returncode == EXIT_FATAL, stderr
        # One error line; besides it only the warning that the lock could not be removed
        # (the server is gone), which a later run sees as stale.
        errors = [line for line in stderr.splitlines() if "error" in line]
        others = [line for line in stderr.splitlines() if line and line not in errors]
        assert len(errors) == 1 and errors[0].startswith("freezeframe: error: "), stderr
        assert f"cannot connect to SFTP server {own.user}@127.0.0.1:{own.port}" in errors[0]
        assert all(line.startswith("freezeframe: warning: our lock") for line in others), stderr

        own.start()
        _ok(_run(location, "backup", source))  # the next backup finishes
        _ok(_run(location, "check", "--read-data"))


def test_one_storage_serves_many_threads(server: SshServer, tmp_path: Path) -> None:
    storage = SftpStorage(server.location(tmp_path / "repo"), env=server.env())
    storage.create_layout()
    payloads = {f"{i:02x}{os.urandom(31).hex()}": os.urandom(64 * 1024 + i) for i in range(96)}

    def round_trip(name: str) -> None:
        storage.put(Kind.DATA, name, payloads[name])
        assert storage.get(Kind.DATA, name, 100, 1000) == payloads[name][100:1100]
        assert storage.get(Kind.DATA, name) == payloads[name]

    with ThreadPoolExecutor(max_workers=CHANNELS * 3) as pool:
        list(pool.map(round_trip, payloads))
    listed = {info.name: info.size for info in storage.list(Kind.DATA)}
    assert listed == {name: len(data) for name, data in payloads.items()}
    with ThreadPoolExecutor(max_workers=CHANNELS * 3) as pool:
        list(pool.map(lambda name: storage.delete(Kind.DATA, name), payloads))
    assert list(storage.list(Kind.DATA)) == []
    storage.close()
