"""What the storage contract suite needs of a backend beyond the Storage Protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from freezeframe.storage.base import Kind, Storage


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
