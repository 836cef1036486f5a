"""The local directory backend, bare and under every wrapper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import Backend, Factory, directory_probes, named, stacked
from freezeframe.storage.base import Storage
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.faults import FaultyStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits
from freezeframe.storage.readonly import ReadOnlyStorage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy

LEFTOVER = ".x.tmp-1-2"  # what LocalStorage's put leaves when killed before its rename


def _factory(name: str, wrap: Callable[[Storage, Path], Storage]) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        root = tmp_path / "repo"
        bare = LocalStorage(root)
        bare.create_layout()
        plant, loosen = directory_probes(root, LEFTOVER)
        return Backend(wrap(bare, tmp_path), LocalStorage(root), str(root), plant, loosen)

    return named(name, factory)


BARE: list[Factory] = [_factory("local", lambda storage, _tmp: storage)]

FACTORIES: list[Factory] = [
    *BARE,
    _factory(
        "retrying",
        lambda storage, _tmp: RetryingStorage(
            storage, RetryPolicy(attempts=3), sleep=lambda _s: None
        ),
    ),
    _factory("read_only", lambda storage, _tmp: ReadOnlyStorage(storage)),
    _factory("caching", lambda storage, tmp: CachingStorage(storage, tmp / "cache")),
    _factory(
        "rate_limited",
        lambda storage, _tmp: RateLimitedStorage(storage, RateLimits(upload=1e12, download=1e12)),
    ),
    _factory("faulty_without_faults", lambda storage, _tmp: FaultyStorage(storage)),
    _factory("stacked", lambda _storage, tmp: stacked(f"local:{tmp / 'repo'}", tmp)),
]
