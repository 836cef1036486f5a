"""A repository on an SFTP server, through the real CLI (a child process, its key and known
hosts in its environment as an operator sets them), against OpenSSH's sshd on loopback: init,
backup, a byte-exact restore and ``check --read-data``; an unknown host key, a changed host
key and a key the server does not accept each end with one line and exit 1 (error code
``storage``), nothing created on the server; a server killed during a backup ends it with one
line, and the repository passes ``check --read-data`` once the server is back. And one storage
object used by many threads at once, as the repository's uploaders and readers do."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ffharness import (
    FAST_INIT,
    is_root,
    one_line_error,
    run_at,
    spawn_freezeframe,
    succeeded,
)
from freezeframe.errors import EXIT_FATAL, RepositoryExists, TransientStorageError
from freezeframe.storage.base import Kind
from freezeframe.storage.sftp import CHANNELS, TEMP_PREFIX, SftpStorage
from fsfixtures import small_tmpfs
from servers.sshd import SshServer, new_key, sshd, write_private
from treeutil import assert_same_tree, build_odd_tree, restored_path


@pytest.fixture
def server(sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch) -> SshServer:
    """The session's sshd, with this process's environment (so the CLI's) pointed at it."""
    for name, value in sshd_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return sshd_server


def _fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def test_backup_restore_and_check_on_an_sftp_server(server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "remote" / "repo"  # the parent is made too
    location = server.location(root)
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    succeeded(run_at(location, *FAST_INIT))
    first = json.loads(succeeded(run_at(location, "backup", source, json=True)))
    succeeded(run_at(location, "backup", source))  # a second snapshot: everything deduplicated
    target = tmp_path / "target"
    succeeded(run_at(location, "restore", first["snapshot_id"], "--target", target))
    assert_same_tree(source, restored_path(target, source))
    check = json.loads(succeeded(run_at(location, "check", "--read-data", json=True)))
    assert check.get("warnings", []) == [], check  # the modes are a repository's
    assert len(json.loads(succeeded(run_at(location, "snapshots", json=True)))) == 2

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
    line = one_line_error(run_at(location, *FAST_INIT, env=env))
    assert one_line_error(run_at(location, "snapshots", env=env)) == line
    result = run_at(location, "snapshots", env=env, json=True)
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
    line = one_line_error(run_at(server.location(root), *FAST_INIT, env=env))
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


def test_a_key_with_a_passphrase_is_refused_pointing_to_the_agent(
    server: SshServer, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    locked = write_private(
        tmp_path / "locked",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    )
    root = tmp_path / "repo"
    line = one_line_error(
        run_at(server.location(root), *FAST_INIT, env={"FREEZEFRAME_SFTP_IDENTITY": str(locked)})
    )
    assert f"{locked} is protected by a passphrase: load it into ssh-agent" in line, line
    assert not root.exists()


def test_hashed_known_hosts_entries_are_understood(server: SshServer, tmp_path: Path) -> None:
    hashed = tmp_path / "known_hosts"
    name = paramiko.HostKeys.hash_host(server.known_hosts_name)
    hashed.write_text(f"{name} {server.host_key_line}\n")
    assert server.known_hosts_name not in hashed.read_text()
    env = {**server.env(), "FREEZEFRAME_SFTP_KNOWN_HOSTS": str(hashed)}
    storage = SftpStorage(server.location(tmp_path / "repo"), env=env)
    assert storage.create_layout() == []
    storage.close()


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
        for i in range(6):  # 48 MiB that do not compress: three packs of 16 MiB
            (source / f"part{i}").write_bytes(os.urandom(8 * 1024 * 1024))
        succeeded(run_at(location, *FAST_INIT))
        storage = SftpStorage(location, env=own.env())  # one client, across the outage
        config = storage.get(Kind.CONFIG, "config")
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

        with pytest.raises(TransientStorageError, match="cannot connect to SFTP server"):
            storage.get(Kind.CONFIG, "config")

        own.start()
        assert storage.get(Kind.CONFIG, "config") == config  # the same client connects again
        storage.close()
        succeeded(run_at(location, "check", "--read-data"))
        succeeded(run_at(location, "backup", source))  # and the next backup finishes


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


def test_init_refuses_a_directory_that_is_not_empty(server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    location = server.location(root)
    succeeded(run_at(location, *FAST_INIT))
    line = one_line_error(run_at(location, *FAST_INIT))
    assert f"a repository already exists at {location}" in line, line
    (root / "config").unlink()
    with pytest.raises(RepositoryExists, match=r"already holds a repository's objects \(keys/\)"):
        SftpStorage(location, env=server.env()).create_layout()  # keys/ still holds the key
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("someone else's")
    line = one_line_error(run_at(server.location(other), *FAST_INIT))
    assert f"{other} is not empty (it holds notes.txt)" in line, line
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_group_readable_repository_keeps_its_modes(server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    storage = SftpStorage(server.location(root), env=server.env())
    assert storage.create_layout(group_readable=True) == []
    storage.put(Kind.CONFIG, "config", b"{}")
    storage.close()
    later = SftpStorage(server.location(root), env=server.env())  # another writer, later
    later.put(Kind.DATA, "ab" + "0" * 62, b"pack")
    later.close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "data" / "ab").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "config").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "data" / "ab" / ("ab" + "0" * 62)).stat().st_mode) == 0o640


def test_puts_replace_without_posix_rename_or_fsync(
    server: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server offering neither extension (not OpenSSH): puts still replace whole objects."""
    import freezeframe.storage.sftp_protocol as protocol

    storage = SftpStorage(server.location(tmp_path / "repo"), env=server.env())
    storage.create_layout()
    monkeypatch.setattr(protocol, "POSIX_RENAME", "not-offered@example.org")
    monkeypatch.setattr(protocol, "FSYNC", "not-offered@example.org")
    storage.put(Kind.SNAPSHOTS, "s1", b"first version, long")
    storage.put(Kind.SNAPSHOTS, "s1", b"second")
    assert storage.get(Kind.SNAPSHOTS, "s1") == b"second"
    assert [(i.name, i.size) for i in storage.list(Kind.SNAPSHOTS)] == [("s1", 6)]
    assert storage.remove_stale_temporaries() == 0
    storage.close()


def test_a_server_that_is_not_ssh_is_one_error_and_nothing_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """paramiko's transport thread logs such failures with a traceback: none reaches stderr."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_http() -> None:
        with contextlib.suppress(OSError):
            connection, _address = listener.accept()
            with connection:
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    storage = SftpStorage(
        f"sftp://nobody@127.0.0.1:{port}//repo",
        env={"FREEZEFRAME_SFTP_KNOWN_HOSTS": os.devnull, "HOME": str(tmp_path)},
    )
    with pytest.raises(TransientStorageError, match="it does not answer as an SSH server"):
        storage.exists(Kind.CONFIG, "config")
    listener.close()
    time.sleep(0.1)  # paramiko's thread logs as it ends
    assert capfd.readouterr().err == ""


def test_a_relative_path_is_in_the_login_directory(server: SshServer) -> None:
    home = Path(pwd.getpwnam(server.user).pw_dir)
    name = f"ff-test-{uuid.uuid4().hex[:12]}"
    location = f"sftp://{server.user}@127.0.0.1:{server.port}/{name}"
    storage = SftpStorage(location, env=server.env())
    try:
        assert storage.create_layout() == []
        storage.put(Kind.CONFIG, "config", b"{}")
        assert (home / name / "config").read_bytes() == b"{}"
        assert storage.location == location
    finally:
        storage.close()
        shutil.rmtree(home / name, ignore_errors=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs for the server's side of a repository."""
    with small_tmpfs(tmp_path / "small") as mount:
        yield mount


def test_a_full_disk_on_the_server_is_one_line_and_loses_nothing(
    server: SshServer, small_fs: Path, tmp_path: Path
) -> None:
    root = small_fs / "repo"
    location = server.location(root)
    succeeded(run_at(location, *FAST_INIT))
    source = tmp_path / "source"
    source.mkdir()
    (source / "fits.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    succeeded(run_at(location, "backup", source))
    (source / "too-big.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    line = one_line_error(run_at(location, "backup", source))
    assert "no space left on the server's file system" in line, line
    assert not list(root.rglob(f"{TEMP_PREFIX}*"))
    assert not list((root / "locks").iterdir())  # the lock was released

    (source / "too-big.bin").unlink()
    succeeded(run_at(location, "check", "--read-data"))
    succeeded(run_at(location, "backup", source))
    assert len(json.loads(succeeded(run_at(location, "snapshots", json=True)))) == 2
