"""Fixtures for the whole test suite.

- every test gets its own cache directory (XDG_CACHE_HOME) and FREEZEFRAME_PASSWORD;
- ``cli``: run the CLI in-process against ``tmp_path/"repo"`` (see ``ffharness.Cli``);
- ``repo``: that repository, initialised with cheap key-derivation parameters;
- ``hold``: hold this process at a point of a run (``freezeframe.hooks``) until the test ends;
  a child process is held with ``ffharness.hold_env`` instead;
- ``privileged_required`` / ``run_freezeframe`` / ``spawn_freezeframe`` live in
  ``tests/ffharness.py`` and are re-exported here; ``treeutil`` builds and compares trees.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ffharness import (
    FAST_INIT,
    PASSWORD,
    Cli,
    privileged_required,
    run_freezeframe,
    spawn_freezeframe,
)
from freezeframe import hooks
from servers.fixtures import (  # noqa: F401 (session fixtures)
    rclone_s3_server,
    rclone_s3_tls_server,
    rest_local_server,
    rest_s3_server,
    seaweedfs_server,
    sshd_server,
)

__all__ = ["privileged_required", "run_freezeframe", "spawn_freezeframe"]


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test sees the user's cache, repository or password settings."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("FREEZEFRAME_PASSWORD", PASSWORD)
    for name in (
        "FREEZEFRAME_REPOSITORY",
        "FREEZEFRAME_PASSWORD_FILE",
        "FREEZEFRAME_PASSWORD_COMMAND",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hold() -> Iterator[Callable[[hooks.Point, float], None]]:
    """``hold(Point.PAUSED, 1.5)``: from then on until the test ends, every run in this process
    (the in-process ``cli``) sleeps that long when it reaches the point."""
    points: list[hooks.Point] = []

    def install(point: hooks.Point, seconds: float) -> None:
        hooks.install(point, lambda _point: time.sleep(seconds))
        points.append(point)

    yield install
    for point in points:
        hooks.remove(point)


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def cli(repo_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(repo_path, capsys)


@pytest.fixture
def make_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Path], Cli]:
    """A ``Cli`` for another repository location."""
    return lambda repo: Cli(repo, capsys)


@pytest.fixture
def repo(cli: Cli, repo_path: Path) -> Path:
    cli(*FAST_INIT)
    return repo_path
