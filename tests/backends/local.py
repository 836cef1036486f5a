"""The local directory backend, bare and under every wrapper."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.base import Backend, Factory
from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.faults import FaultyStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits
from freezeframe.storage.readonly import ReadOnlyStorage
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy


def _bare(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "repo")
    storage.create_layout()
    return storage


def _backend(tmp_path: Path, storage: Storage) -> Backend:
    root = tmp_path / "repo"

    def plant(kind: Kind) -> Callable[[], bool]:
        leftover = root / kind.value / ".x.tmp-1-2"
        leftover.write_bytes(b"partial")
        return leftover.exists

    def loosen() -> str:
        os.chmod(root / "index", 0o755)
        return f"{root / 'index'} is mode 0755 (a repository's is 0700)"

    return Backend(storage, LocalStorage(root), str(root), plant, loosen)


def _wrapped(wrap: Callable[[Storage, Path], Storage]) -> Factory:
    def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        return _backend(tmp_path, wrap(_bare(tmp_path), tmp_path))

    factory.__name__ = wrap.__name__
    return factory


def local(storage: Storage, tmp_path: Path) -> Storage:
    return storage


def retrying(storage: Storage, tmp_path: Path) -> Storage:
    return RetryingStorage(storage, RetryPolicy(attempts=3), sleep=lambda _s: None)


def read_only(storage: Storage, tmp_path: Path) -> Storage:
    return ReadOnlyStorage(storage)


def caching(storage: Storage, tmp_path: Path) -> Storage:
    return CachingStorage(storage, tmp_path / "cache")


def rate_limited(storage: Storage, tmp_path: Path) -> Storage:
    return RateLimitedStorage(storage, RateLimits(upload=1e12, download=1e12))


def faulty_without_faults(storage: Storage, tmp_path: Path) -> Storage:
    return FaultyStorage(storage)


def stacked(storage: Storage, tmp_path: Path) -> Storage:
    return open_storage(
        f"local:{tmp_path / 'repo'}",
        retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
        cache_dir=tmp_path / "cache",
        limits=RateLimits(upload=1e12, download=1e12),
    )


FACTORIES: list[Factory] = [
    _wrapped(w)
    for w in (local, retrying, read_only, caching, rate_limited, faulty_without_faults, stacked)
]
