"""A server that accepts connections and then never answers does not hold a command forever:
each remote backend gives up on a silent request after ``FREEZEFRAME_STORAGE_TIMEOUT`` seconds,
retries as for any transient failure, then ends with one line; an upload that stalls half-way
through a backup leaves a repository that checks clean and takes the next backup."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import FAST_INIT, run_freezeframe
from freezeframe.errors import EXIT_FATAL, EXIT_USAGE
from servers.base import S3Server
from servers.faultproxy import Action, Rule, fault_proxy

pytestmark = pytest.mark.timeout(300)

TIMEOUT = 1.0  # FREEZEFRAME_STORAGE_TIMEOUT in these tests
# 5 attempts of at most TIMEOUT each (a connect and a read may each take it), waits of at most
# 0.5+1+2+4 s between them, the interpreter's start: far below the two minutes of the default.
BOUND_S = 5 * 2 * TIMEOUT + 7.5 + 20


class SilentListener:
    """Accepts TCP connections on loopback and never sends a byte (a hung server)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(client)

    @property
    def connections(self) -> int:
        return len(self._held)

    def close(self) -> None:
        self._socket.close()
        for client in self._held:
            client.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


def _run(
    location: str, *args: str | Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_freezeframe(
        *args,
        repo=None,
        env={
            "FREEZEFRAME_REPOSITORY": location,
            "FREEZEFRAME_STORAGE_TIMEOUT": f"{TIMEOUT:g}",
            **(env or {}),
        },
        timeout=180,
    )
    return result, time.monotonic() - started


def _one_line(result: subprocess.CompletedProcess[str], status: int = EXIT_FATAL) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("freezeframe: error: "), lines
    return lines[0]


@pytest.mark.parametrize("scheme", ["s3", "rest", "sftp"])
def test_a_server_that_never_answers_ends_the_command_in_bounded_time(
    silent: SilentListener, scheme: str, tmp_path: Path
) -> None:
    location = {
        "s3": f"s3:http://127.0.0.1:{silent.port}/bucket",
        "rest": f"rest:http://127.0.0.1:{silent.port}/",
        "sftp": f"sftp://backup@127.0.0.1:{silent.port}/srv/repo",
    }[scheme]
    env = {
        "AWS_ACCESS_KEY_ID": "silent-test-key",
        "AWS_SECRET_ACCESS_KEY": "silent-test-secret",
        "FREEZEFRAME_REST_USER": "host",
        "FREEZEFRAME_REST_PASSWORD": "silent-test-secret",
        "FREEZEFRAME_SFTP_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "FREEZEFRAME_PASSWORD": "pw",
    }
    result, took = _run(location, "snapshots", env=env)
    line = _one_line(result)
    assert took < BOUND_S, (took, line)
    assert silent.connections >= 2, "the silent request was not retried"
    assert "silent-test-secret" not in result.stdout + result.stderr
    assert str(silent.port) in line, line  # names the server that does not answer
    # SSH waits first for the server's banner, then for its key exchange: either may time out.
    silence = ["sent nothing for 1 s"] + (["does not answer as an SSH server"] * (scheme == "sftp"))
    assert any(words in line for words in silence), line


def test_an_upload_stalled_mid_backup_is_one_line_and_the_repository_stays_valid(
    rclone_s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rclone_s3_server.apply(monkeypatch)
    source = tmp_path / "source"
    source.mkdir()
    for index in range(4):
        (source / f"file-{index}").write_bytes(bytes([index]) * 3_000_000 + b"%d" % index)
    with fault_proxy(rclone_s3_server.endpoint) as proxy:
        place = rclone_s3_server.fresh_place()
        location = f"s3:{proxy.endpoint}/{place.bucket}"
        ok, _ = _run(location, *FAST_INIT)
        assert ok.returncode == 0, ok.stderr
        # Every pack upload reaches the server, whose answer the proxy then never relays.
        proxy.add(Rule(Action.DELAY, method="PUT", path=r"/data/", seconds=3600))
        result, took = _run(location, "backup", source)
        line = _one_line(result)
        assert "sent nothing for 1 s" in line, line
        assert took < 3 * BOUND_S, took
        proxy.reset()
        checked, _ = _run(location, "check", "--read-data")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        done, _ = _run(location, "backup", source, "--json")
        assert done.returncode == 0, done.stderr
        target = tmp_path / "target"
        restored, _ = _run(location, "restore", "latest", "--target", target)
        assert restored.returncode == 0, restored.stderr
        snapshot = json.loads(_run(location, "--json", "snapshots")[0].stdout)
        assert len(snapshot) == 1
        found = sorted(p.name for p in target.rglob("file-*"))
        assert found == [f"file-{index}" for index in range(4)]
        for index in range(4):
            got = next(target.rglob(f"file-{index}")).read_bytes()
            assert got == bytes([index]) * 3_000_000 + b"%d" % index


def test_a_timeout_that_is_not_a_number_is_a_usage_error(silent: SilentListener) -> None:
    result = run_freezeframe(
        "snapshots",
        repo=None,
        env={
            "FREEZEFRAME_REPOSITORY": f"rest:http://127.0.0.1:{silent.port}/",
            "FREEZEFRAME_STORAGE_TIMEOUT": "soon",
        },
    )
    line = _one_line(result, EXIT_USAGE)
    assert "FREEZEFRAME_STORAGE_TIMEOUT" in line, line
    assert silent.connections == 0
