"""The S3 backend against each real server (``rclone serve s3`` and SeaweedFS), bare and under
the stack the CLI opens (retries, the cache, the rate limit, through the location registry);
each test gets a bucket or prefix of its own. Nothing is half-written by a put (one PUT, no
multipart) and an object store has no modes, so neither ``plant_temporary`` nor ``loosen``."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.base import Backend, Factory
from freezeframe.storage.base import Storage
from freezeframe.storage.ratelimit import RateLimits
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryPolicy
from freezeframe.storage.s3 import S3Storage
from servers.base import S3Server


def _factory(fixture: str, name: str, *, stacked: bool) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        server: S3Server = request.getfixturevalue(fixture)
        place = server.fresh_place()
        storage: Storage
        if stacked:  # as the CLI opens it: the credentials come from the environment
            server.apply(request.getfixturevalue("monkeypatch"))
            storage = open_storage(
                place.location,
                retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
                cache_dir=tmp_path / "cache",
                limits=RateLimits(upload=1e12, download=1e12),
            )
        else:
            storage = S3Storage(place.location, env=server.env())
        assert storage.create_layout() == []
        return Backend(storage, S3Storage(place.location, env=server.env()), place.location)

    factory.__name__ = name
    return factory


FACTORIES: list[Factory] = [
    _factory("rclone_s3_server", "s3_rclone", stacked=False),
    _factory("rclone_s3_server", "s3_rclone_stacked", stacked=True),
    _factory("seaweedfs_server", "s3_seaweedfs", stacked=False),
    _factory("seaweedfs_server", "s3_seaweedfs_stacked", stacked=True),
]
