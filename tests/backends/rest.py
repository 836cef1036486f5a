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

from backends.base import Backend, Factory
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.ratelimit import RateLimits
from freezeframe.storage.registry import open_storage
from freezeframe.storage.rest import RestStorage
from freezeframe.storage.retry import RetryPolicy
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


def _factory(fixture: str, name: str, *, stacked: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: RestServer = request.getfixturevalue(fixture)
        seed = emptied(server)
        storage: Storage
        if stacked:  # as the CLI opens it: the account comes from the environment
            monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
            for variable, value in server.env("admin").items():
                monkeypatch.setenv(variable, value)
            monkeypatch.delenv("FREEZEFRAME_REST_PASSWORD_FILE", raising=False)
            storage = open_storage(
                server.location,
                retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
                cache_dir=tmp_path / "cache",
                limits=RateLimits(upload=1e12, download=1e12),
            )
        else:
            storage = RestStorage(server.location, env=server.env("admin"))
        plant: Callable[[Kind], Callable[[], bool]] | None = None
        loosen: Callable[[], str] | None = None
        root = Path(server.repository)
        if (
            ":" not in server.repository
        ):  # the server's backend is a directory: what it leaves, its modes

            def plant(kind: Kind) -> Callable[[], bool]:
                leftover = root / kind.value / ".x.tmp-1-2"
                leftover.write_bytes(b"partial")
                return leftover.exists

            def loosen() -> str:
                os.chmod(root / "index", 0o755)
                return f"{root / 'index'} is mode 0755 (a repository's is 0700)"

        return Backend(storage, seed, server.location, plant, loosen)

    factory.__name__ = name
    return factory


FACTORIES: list[Factory] = [
    _factory("rest_local_server", "rest_local", stacked=False),
    _factory("rest_local_server", "rest_local_stacked", stacked=True),
    _factory("rest_s3_server", "rest_s3", stacked=False),
]
