"""The SFTP backend against a real OpenSSH sshd on loopback, bare and under the stack the CLI
opens (retries, the cache, the rate limit, through the location registry); each test gets a
directory of its own. The server serves this machine's file system, so what a crashed writer
leaves (``plant_temporary``) and loose modes (``loosen``) are made directly in the directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import Backend, Factory, directory_probes, named, set_environment, stacked
from freezeframe.storage.base import Storage
from freezeframe.storage.sftp import TEMP_PREFIX, SftpStorage
from servers.sshd import SshServer


def _factory(name: str, fixture: str, *, stack: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: SshServer = request.getfixturevalue(fixture)
        root = tmp_path / "repo"
        location = server.location(root)
        storage: Storage
        if stack:  # as the CLI opens it: the key and known hosts come from the environment
            set_environment(request, server.env())
            storage = stacked(location, tmp_path)
        else:
            storage = SftpStorage(location, env=server.env())
        assert storage.create_layout() == []
        seed = SftpStorage(location, env=server.env())
        request.addfinalizer(seed.close)
        request.addfinalizer(storage.close)
        plant, loosen = directory_probes(
            root, f"{TEMP_PREFIX}x-0123456789ab", f"{server.user}@{server.known_hosts_name}:"
        )
        return Backend(storage, seed, seed.location, plant, loosen)

    return named(name, factory)


BARE: list[Factory] = [_factory("sftp", "sshd_server", stack=False)]

FACTORIES: list[Factory] = [*BARE, _factory("sftp_stacked", "sshd_server", stack=True)]
