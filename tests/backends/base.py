"""What the storage contract suite needs of a backend beyond the Storage Protocol, and the pieces
every backend's factories share."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe.storage.base import Kind, Storage
from freezeframe.storage.ratelimit import RateLimits
from freezeframe.storage.registry import open_storage
from freezeframe.storage.retry import RetryPolicy


@dataclass
class Backend:
    """``storage`` is under test (bare or wrapped); ``seed`` is another bare client of the same
    repository, for objects written or deleted "by another host"."""

    storage: Storage
    seed: Storage
    location: str
    # Leave what a writer killed mid-put leaves behind (an object of ``kind`` half-written);
    # returns a probe telling whether it is still there. None: the backend leaves nothing.
    plant_temporary: Callable[[Kind], Callable[[], bool]] | None = None
    # Make the place readable by other users; returns the line ``audit`` must then give.
    # None: the backend has no modes.
    loosen: Callable[[], str] | None = None
    bare_location: str = ""  # the location as the bare backend names it (defaults to location)

    def __post_init__(self) -> None:
        self.bare_location = self.bare_location or self.location


Factory = Callable[[pytest.FixtureRequest, Path], Backend]


def named(name: str, factory: Factory) -> Factory:
    """The factory under ``name``, the test id of every case it makes."""
    factory.__name__ = name
    return factory


def stacked(location: str, tmp_path: Path) -> Storage:
    """``location`` as the CLI opens it (through the registry: retries without waits, the cache
    in ``tmp_path``, a rate limit too high to bite); credentials come from the environment."""
    return open_storage(
        location,
        retry=RetryPolicy(attempts=2, base_delay=0, max_delay=0),
        cache_dir=tmp_path / "cache",
        limits=RateLimits(upload=1e12, download=1e12),
    )


def set_environment(request: pytest.FixtureRequest, variables: dict[str, str]) -> None:
    """Put ``variables`` in this process's environment for the test (as an operator sets them
    for the CLI)."""
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)


def directory_probes(
    root: Path, leftover: str, shown: str = ""
) -> tuple[Callable[[Kind], Callable[[], bool]], Callable[[], str]]:
    """``plant_temporary`` and ``loosen`` of a backend whose repository is the directory
    ``root`` on this machine: ``leftover`` is the name of what a killed writer leaves, ``shown``
    what ``audit`` puts before a path (``user@host:`` of a server)."""

    def plant(kind: Kind) -> Callable[[], bool]:
        path = root / kind.value / leftover
        path.write_bytes(b"partial")
        return path.exists

    def loosen() -> str:
        os.chmod(root / "index", 0o755)
        return f"{shown}{root / 'index'} is mode 0755 (a repository's is 0700)"

    return plant, loosen
