"""``freezeframe serve`` and the ``rest:`` backend through the real CLI (child processes, the
accounts' secrets in their environment as an operator sets them): a host with an ``append``
account backs up, restores and checks; it cannot forget, prune, delete or overwrite (each a
single line, exit 1, the repository intact); the ``full`` admin account prunes; ``--append-only``
caps even the admin; a wrong secret is one line; no secret reaches the server's log or its
command line; the server listens on loopback unless told otherwise; TLS with a private CA."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import (
    FAST_INIT,
    PASSWORD,
    freezeframe_executable,
    is_root,
    one_line_error,
    run_at,
    run_freezeframe,
    succeeded,
)
from freezeframe.errors import EXIT_FATAL, StorageError
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.storage.base import Kind
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.rest import RestStorage
from servers.rest import RestServer, rest_server
from treeutil import assert_same_tree, build_odd_tree, restored_path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestServer]:
    """A server of a fresh local directory (``tmp_path/"served"/"repo"``)."""
    root = tmp_path / "served"
    with rest_server(root, str(root / "repo")) as found:
        yield found


def ff(
    server: RestServer,
    account: str,
    *args: str | Path,
    secret: str | None = None,
    json_out: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_at(
        server.location,
        *args,
        env={**server.env(account, secret=secret), **(env or {})},
        json=json_out,
        timeout=120,
    )


def _objects(repo: Path) -> dict[Kind, set[str]]:
    storage = LocalStorage(repo)
    return {kind: {i.name for i in storage.list(kind)} for kind in Kind if kind is not Kind.LOCKS}


def _backed_up(server: RestServer, tmp_path: Path, account: str = "host") -> tuple[Path, str]:
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    succeeded(ff(server, account, *FAST_INIT))
    snapshot = json.loads(succeeded(ff(server, account, "backup", source, json_out=True)))
    return source, snapshot["snapshot_id"]


def test_an_append_host_backs_up_restores_and_checks(server: RestServer, tmp_path: Path) -> None:
    source, first = _backed_up(server, tmp_path)
    (source / "added later").write_bytes(os.urandom(300_000))
    succeeded(ff(server, "host", "backup", source))
    target = tmp_path / "target"
    succeeded(ff(server, "host", "restore", "latest", "--target", target))
    assert_same_tree(source, restored_path(target, source))
    succeeded(ff(server, "host", "check", "--read-data"))
    snapshots = json.loads(succeeded(ff(server, "host", "snapshots", json_out=True)))
    assert len(snapshots) == 2 and first in {s["id"] for s in snapshots}
    # The objects are the server's directory's: a plain local repository.
    assert _objects(Path(server.repository))[Kind.SNAPSHOTS] == {s["id"] for s in snapshots}


def test_an_append_host_cannot_destroy_what_it_wrote(server: RestServer, tmp_path: Path) -> None:
    source, snapshot = _backed_up(server, tmp_path)
    succeeded(ff(server, "host", "backup", source))
    repo = Path(server.repository)
    before = _objects(repo)

    line = one_line_error(ff(server, "host", "forget", "--keep-last", "1"))
    assert "append-only" in line and f"snapshots/{snapshot}" in line, line
    line = one_line_error(ff(server, "host", "forget", "--keep-last", "1", "--prune"))
    assert "append-only" in line, line
    line = one_line_error(ff(server, "host", "prune"))
    assert "append-only" in line and "full role" in line, line

    host = RestStorage(server.location, env=server.env("host"))
    pack = sorted(before[Kind.DATA])[0]
    index = sorted(before[Kind.INDEX])[0]
    for kind, name in ((Kind.DATA, pack), (Kind.SNAPSHOTS, snapshot), (Kind.INDEX, index)):
        with pytest.raises(StorageError, match="append-only"):
            host.delete(kind, name)
        with pytest.raises(StorageError, match="append-only"):
            host.put(kind, name, b"ransom note")
    with pytest.raises(StorageError, match="append-only"):
        host.put(Kind.CONFIG, "config", b"{}")
    host.put(Kind.DATA, pack, host.get(Kind.DATA, pack))  # a retried upload: the same bytes
    reader = RestStorage(server.location, env=server.env("reader"))
    with pytest.raises(StorageError, match="read-only"):
        reader.put(Kind.SNAPSHOTS, "0" * 64, b"x")
    with pytest.raises(StorageError, match="read-only"):
        reader.delete(Kind.DATA, pack)

    succeeded(ff(server, "reader", "check"))  # a read account takes and removes its own lock
    assert _objects(repo) == before
    assert list(LocalStorage(repo).list(Kind.LOCKS)) == []  # the failed runs' locks are gone
    succeeded(ff(server, "admin", "check", "--read-data"))
    log = server.log_text()
    assert f"refused: account host (append) DELETE /data/{pack}" in log, log
    assert f"refused: account reader (read) POST /snapshots/{'0' * 64}" in log, log


def test_an_append_host_prune_beside_a_backup_writes_nothing(
    server: RestServer, tmp_path: Path
) -> None:
    """With another host's lock present prune would mark rather than delete at once: it must
    refuse before writing its new index files, not after, when the first delete is refused."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "only in the first").write_bytes(os.urandom(2_000_000))
    succeeded(ff(server, "host", *FAST_INIT))
    succeeded(ff(server, "host", "backup", source))
    (source / "only in the first").unlink()
    (source / "kept").write_bytes(os.urandom(200_000))
    succeeded(ff(server, "host", "backup", source))
    succeeded(ff(server, "admin", "forget", "--keep-last", "1"))  # leaves unreferenced packs
    repo_path = Path(server.repository)
    before = _objects(repo_path)
    repo = Repository.open(LocalStorage(repo_path), PASSWORD.encode(), load_index=False)
    with RepositoryLock(repo, exclusive=False):  # another host backing up meanwhile
        line = one_line_error(ff(server, "host", "prune", "--grace", "0"))
    assert "append-only" in line and "full role" in line, line
    assert _objects(repo_path) == before
    succeeded(ff(server, "admin", "check"))


def test_the_admin_account_forgets_and_prunes(server: RestServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "only in the first").write_bytes(os.urandom(2_000_000))
    succeeded(ff(server, "host", *FAST_INIT))
    first = json.loads(succeeded(ff(server, "host", "backup", source, json_out=True)))[
        "snapshot_id"
    ]
    (source / "only in the first").unlink()
    (source / "kept").write_bytes(os.urandom(200_000))
    succeeded(ff(server, "host", "backup", source))
    packs = len(_objects(Path(server.repository))[Kind.DATA])
    # --grace 0: a server's storage is not a local directory to the client, so prune would
    # otherwise only mark, and delete an hour later.
    succeeded(ff(server, "admin", "forget", "--keep-last", "1", "--prune", "--grace", "0"))
    assert len(_objects(Path(server.repository))[Kind.DATA]) < packs
    succeeded(ff(server, "admin", "check", "--read-data"))
    remaining = json.loads(succeeded(ff(server, "host", "snapshots", json_out=True)))
    assert len(remaining) == 1 and remaining[0]["id"] != first


def test_append_only_caps_every_account(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with rest_server(root, str(root / "repo"), append_only=True) as server:
        assert server.announced["append_only"] is True
        source, snapshot = _backed_up(server, tmp_path, account="admin")
        succeeded(ff(server, "admin", "backup", source))
        line = one_line_error(ff(server, "admin", "forget", "--keep-last", "1"))
        assert "append-only" in line, line
        admin = RestStorage(server.location, env=server.env("admin"))
        with pytest.raises(StorageError, match="append-only"):
            admin.delete(Kind.SNAPSHOTS, snapshot)
        assert snapshot in {i.name for i in admin.list(Kind.SNAPSHOTS)}


def test_a_wrong_secret_is_one_line_naming_no_secret(server: RestServer) -> None:
    succeeded(ff(server, "host", *FAST_INIT))
    wrong = "wrong-" + os.urandom(8).hex()
    for args in (("snapshots",), ("check",)):
        result = ff(server, "host", *args, secret=wrong)
        line = one_line_error(result)
        assert "wrong credentials" in line, line
        assert wrong not in result.stdout + result.stderr
        assert server.secrets["host"] not in result.stdout + result.stderr
    result = ff(server, "nobody", "snapshots", secret=wrong, json_out=True, env={})
    assert result.returncode == EXIT_FATAL
    assert json.loads(result.stdout)["error"]["code"] == "storage"
    line = one_line_error(
        run_freezeframe("snapshots", repo=None, env={"FREEZEFRAME_REPOSITORY": server.location})
    )
    assert "FREEZEFRAME_REST_USER" in line, line  # no account given at all
    log = server.log_text()
    assert "refused: wrong credentials for account 'host'" in log
    assert wrong not in log


def test_no_secret_in_the_log_or_the_command_line(tmp_path: Path) -> None:
    """Accounts made by the CLI (the secret read from stdin, or made and shown once); the
    server's argv, its log and the accounts file hold none of them."""
    accounts = tmp_path / "accounts.json"
    given = "given-" + os.urandom(12).hex()
    added = subprocess.run(
        [freezeframe_executable(), "serve", "--accounts", accounts, "--add-account", "web1",
         "--role", "append", "--secret-file", "-"],
        input=given + "\n", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    made = run_freezeframe(
        "serve", "--accounts", accounts, "--add-account", "admin", "--role", "full",
        repo=None, json=True,
    )  # fmt: skip
    generated = json.loads(succeeded(made))["secret"]
    assert oct(accounts.stat().st_mode & 0o777) == "0o600"
    assert given not in accounts.read_text() and generated not in accounts.read_text()
    root = tmp_path / "served"
    with rest_server(root, str(root / "repo"), accounts=accounts) as server:
        server.secrets.update({"web1": given, "admin": generated})
        succeeded(ff(server, "web1", *FAST_INIT))
        succeeded(ff(server, "web1", "backup", tmp_path / "served"))
        succeeded(ff(server, "web1", "backup", tmp_path / "served"))
        one_line_error(ff(server, "web1", "prune"))  # refused by the client, before asking
        one_line_error(ff(server, "web1", "forget", "--keep-last", "1"))  # by the server
        one_line_error(ff(server, "admin", "snapshots", secret="not-" + generated))
        succeeded(ff(server, "admin", "check"))
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().decode()
        for secret in (given, generated):
            assert secret not in cmdline and secret not in environ
            assert secret not in server.log_text()
        assert "refused: account web1 (append)" in server.log_text()
        server.process.send_signal(signal.SIGTERM)  # a graceful stop: exit 0, no traceback
        assert server.process.wait(10) == 0
        assert "Traceback" not in server.log_text()
    removed = run_freezeframe(
        "serve", "--accounts", accounts, "--remove-account", "web1", repo=None
    )
    succeeded(removed)
    assert set(json.loads(accounts.read_text())["accounts"]) == {"admin"}


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_server_listens_on_loopback_unless_told(tmp_path: Path) -> None:
    root = tmp_path / "served"
    try:
        with rest_server(root, str(root / "repo"), listen="") as server:
            assert server.announced["listening"] == "127.0.0.1:8000"
            other = _other_address()
            if other is not None:
                with pytest.raises(OSError), socket.create_connection((other, 8000), 2):
                    pass
    except RuntimeError as exc:  # port 8000 is someone else's: the refusal names loopback
        assert "cannot listen on 127.0.0.1:8000" in str(exc), exc
    assert "serving plain HTTP" in (root / "serve.log").read_text()
    with rest_server(tmp_path / "wide", str(tmp_path / "wide" / "repo"), listen="0.0.0.0:0"):
        pass
    assert "reachable from other machines" in (tmp_path / "wide" / "serve.log").read_text()


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    root = tmp_path / "served"
    with rest_server(root, str(root / "repo"), tls=True) as server:
        assert server.url.startswith("https://127.0.0.1:") and server.announced["tls"] is True
        succeeded(ff(server, "host", *FAST_INIT))
        succeeded(ff(server, "host", "snapshots"))
        netloc = server.url.removeprefix("https://").rstrip("/")
        line = one_line_error(
            ff(server, "host", "snapshots", env={"FREEZEFRAME_REST_CA_BUNDLE": ""})
        )
        assert f"TLS with {netloc} failed" in line and "FREEZEFRAME_REST_CA_BUNDLE" in line, line
        plain = server.location.replace("https://", "http://")
        line = one_line_error(
            ff(server, "host", "snapshots", env={"FREEZEFRAME_REPOSITORY": plain})
        )
    assert "serving plain HTTP" not in (root / "serve.log").read_text()


def test_a_server_gone_mid_backup_is_one_line_and_the_repository_stays_valid(
    tmp_path: Path,
) -> None:
    """The server killed while packs are being uploaded: the backup ends with one line after
    its retries, and a server started again on the directory serves a repository that checks
    and takes the next backup."""
    root = tmp_path / "served"
    repo = root / "repo"
    source = tmp_path / "source"
    source.mkdir()
    for i in range(2):  # more than a pack (16 MiB): the first is written well before the end
        (source / f"big-{i}").write_bytes(os.urandom(12 << 20))
    with rest_server(root, str(repo)) as server:
        succeeded(ff(server, "host", *FAST_INIT))
        env = {**os.environ, "FREEZEFRAME_REPOSITORY": server.location, **server.env("host")}
        backup = subprocess.Popen(
            [freezeframe_executable(), "--no-progress", "backup", str(source)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any((repo / "data").glob("*/*")) and time.monotonic() < deadline:
            assert backup.poll() is None, backup.communicate()
            time.sleep(0.01)
        server.process.kill()
        _out, err = backup.communicate(timeout=60)
    assert backup.returncode == EXIT_FATAL, err
    # One error (a warning may say the lock could not be removed: it goes stale).
    lines = [line for line in err.splitlines() if not line.startswith("freezeframe: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("freezeframe: error: "), err
    assert f"cannot connect to {server.url.removeprefix('http://').rstrip('/')}" in lines[0], err
    with rest_server(root, str(repo), accounts=server.accounts) as again:
        again.secrets.update(server.secrets)
        succeeded(ff(again, "admin", "check", "--read-data"))
        succeeded(ff(again, "host", "backup", source))
