"""The ``rest:`` backend against ``freezeframe serve`` (a session server per place: over a
local directory, and over a bucket of ``rclone serve s3``), bare and under the stack the CLI
opens, with the full-role account. The servers outlive the tests, so each test starts with the
repository emptied through the server (never behind its back: the server's local backend
caches open packs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import Backend, Factory, directory_probes, named, set_environment, stacked
from backends.local import LEFTOVER
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.rest import RestStorage
from servers.rest import RestServer


def emptied(server: RestServer) -> RestStorage:
    """A full-account client of the server, its repository emptied and laid out afresh."""
    client = RestStorage(server.location, env=server.env("admin"))
    local = Path(server.repository)
    remote = ":" in server.repository
    if remote or local.is_dir():  # not the first test
        for kind in Kind:
            for info in list(client.list(kind)):
                client.delete(kind, info.name)
        client.remove_stale_temporaries()
    if not remote and local.is_dir():
        os.chmod(local / "index", 0o700)  # loosened by an earlier test
    assert client.create_layout() == []
    return client


def _factory(name: str, fixture: str, *, stack: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: RestServer = request.getfixturevalue(fixture)
        seed = emptied(server)
        storage: Storage
        if stack:  # as the CLI opens it: the account comes from the environment
            set_environment(request, server.env("admin"))
            monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
            monkeypatch.delenv("FREEZEFRAME_REST_PASSWORD_FILE", raising=False)
            storage = stacked(server.location, tmp_path)
        else:
            storage = RestStorage(server.location, env=server.env("admin"))
        plant: Callable[[Kind], Callable[[], bool]] | None = None
        loosen: Callable[[], str] | None = None
        if ":" not in server.repository:  # the server's backend is a directory: leftovers, modes
            plant, loosen = directory_probes(Path(server.repository), LEFTOVER)
        return Backend(storage, seed, server.location, plant, loosen)

    return named(name, factory)


BARE: list[Factory] = [
    _factory("rest_local", "rest_local_server", stack=False),
    _factory("rest_s3", "rest_s3_server", stack=False),
]

FACTORIES: list[Factory] = [
    BARE[0],
    _factory("rest_local_stacked", "rest_local_server", stack=True),
    BARE[1],
]
