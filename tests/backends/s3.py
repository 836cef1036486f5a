"""The S3 backend against each real server (``rclone serve s3`` and SeaweedFS), bare and under
the stack the CLI opens (retries, the cache, the rate limit, through the location registry);
each test gets a bucket or prefix of its own. Nothing is half-written by a put (one PUT, no
multipart) and an object store has no modes, so neither ``plant_temporary`` nor ``loosen``."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import Backend, Factory, named, stacked
from freezeframe.storage.base import Storage
from freezeframe.storage.s3 import S3Storage
from servers.base import S3Server


def _factory(name: str, fixture: str, *, stack: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: S3Server = request.getfixturevalue(fixture)
        place = server.fresh_place()
        storage: Storage
        if stack:  # as the CLI opens it: the credentials come from the environment
            server.apply(request.getfixturevalue("monkeypatch"))
            storage = stacked(place.location, tmp_path)
        else:
            storage = S3Storage(place.location, env=server.env())
        assert storage.create_layout() == []
        return Backend(storage, S3Storage(place.location, env=server.env()), place.location)

    return named(name, factory)


BARE: list[Factory] = [
    _factory("s3_rclone", "rclone_s3_server", stack=False),
    _factory("s3_seaweedfs", "seaweedfs_server", stack=False),
]

FACTORIES: list[Factory] = [
    BARE[0],
    _factory("s3_rclone_stacked", "rclone_s3_server", stack=True),
    BARE[1],
    _factory("s3_seaweedfs_stacked", "seaweedfs_server", stack=True),
]
