"""The SFTP backend against a real OpenSSH sshd on loopback, bare and under the stack the CLI
opens (retries, the cache, the rate limit, through the location registry); each test gets a
directory of its own. The server serves this machine's file system, so what a crashed writer
leaves (``plant_temporary``) and loose modes (``loosen``) are made directly in the directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import Backend, Factory
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.ratelimit import RateLimits
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryPolicy
from freezeframe.storage.sftp import TEMP_PREFIX, SftpStorage
from servers.sshd import SshServer


def _factory(name: str, *, stacked: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: SshServer = request.getfixturevalue("sshd_server")
        root = tmp_path / "repo"
        location = server.location(root)
        storage: Storage
        if stacked:  # as the CLI opens it: the key and known hosts come from the environment
            monkeypatch = request.getfixturevalue("monkeypatch")
            for variable, value in server.env().items():
                monkeypatch.setenv(variable, value)
            storage = open_storage(
                location,
                retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
                cache_dir=tmp_path / "cache",
                limits=RateLimits(upload=1e12, download=1e12),
            )
        else:
            storage = SftpStorage(location, env=server.env())
        assert storage.create_layout() == []
        seed = SftpStorage(location, env=server.env())
        request.addfinalizer(seed.close)
        request.addfinalizer(storage.close)

        def plant(kind: Kind) -> Callable[[], bool]:
            leftover = root / kind.value / f"{TEMP_PREFIX}x-0123456789ab"
            leftover.write_bytes(b"partial")
            return leftover.exists

        def loosen() -> str:
            os.chmod(root / "index", 0o755)
            return (
                f"{server.user}@{server.known_hosts_name}:{root / 'index'} is mode 0755 "
                "(a repository's is 0700)"
            )

        return Backend(storage, seed, seed.location, plant, loosen)

    factory.__name__ = name
    return factory


FACTORIES: list[Factory] = [
    _factory("sftp", stacked=False),
    _factory("sftp_stacked", stacked=True),
]
