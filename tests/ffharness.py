"""Helpers shared by the test modules: running the CLI in-process or as a subprocess, and
deciding between skip and fail for tests that need privileges.

Import from tests with ``from ffharness import ...`` (``tests/`` is put on ``sys.path`` by
``tests/conftest.py``).
"""

from __future__ import annotations

import json as jsonlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from freezeframe import hooks
from freezeframe.errors import EXIT_FATAL

PASSWORD = "correct horse battery staple"
FAST_INIT = ("init", "--argon2-memory", "8", "--argon2-time", "1")


def privileged_required(reason: str) -> None:
    """Give up on a test that needs root or a kernel feature the machine lacks.

    Skips normally; fails under ``FREEZEFRAME_TEST_PRIVILEGED=1`` (CI machines that are meant
    to run every test).
    """
    if os.environ.get("FREEZEFRAME_TEST_PRIVILEGED") == "1":
        pytest.fail(f"privileged test could not run: {reason}")
    pytest.skip(reason)


def is_root() -> bool:
    return os.geteuid() == 0


def freezeframe_executable() -> str:
    """The ``freezeframe`` console script of the interpreter running the tests."""
    candidate = Path(sys.executable).parent / "freezeframe"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("freezeframe")
    if found is None:
        pytest.fail("the freezeframe console script is not installed")
    return found


def _argv(*args: str | os.PathLike[str]) -> list[str]:
    return [os.fspath(a) for a in args]


class Cli:
    """Runs ``freezeframe.cli.main.main`` in-process against one repository.

    ``cli("snapshots")`` runs ``freezeframe --repo R --no-progress --json snapshots``, asserts
    the exit status (``expect``, or any status when ``expect`` is None) and returns the parsed
    JSON (or the text when ``json=False``). The last run's ``status``, ``stdout`` and ``stderr``
    stay available as attributes.
    """

    def __init__(self, repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.repo = repo
        self._capsys = capsys
        self.status: int | None = None
        self.stdout = ""
        self.stderr = ""

    def __call__(
        self, *args: str | os.PathLike[str], json: bool = True, expect: int | None = 0
    ) -> Any:
        from freezeframe.cli.main import main

        argv = ["--repo", os.fspath(self.repo), "--no-progress"]
        if json:
            argv.append("--json")
        argv += _argv(*args)
        self._capsys.readouterr()
        status = main(argv)
        captured = self._capsys.readouterr()
        self.status, self.stdout, self.stderr = status, captured.out, captured.err
        if expect is not None:
            assert status == expect, (
                f"freezeframe {' '.join(argv)} exited {status}, expected {expect}\n"
                f"stdout: {captured.out[-3000:]}\nstderr: {captured.err[-3000:]}"
            )
        if not json:
            return captured.out
        try:
            return jsonlib.loads(captured.out)
        except ValueError:
            pytest.fail(
                f"freezeframe {' '.join(argv)} did not print one JSON document:\n"
                f"{captured.out[-3000:]!r}\nstderr: {captured.err[-3000:]}"
            )


def subprocess_argv(
    *args: str | os.PathLike[str], repo: Path | None, json: bool = False, progress: bool = False
) -> list[str]:
    argv = [freezeframe_executable()]
    if repo is not None:
        argv += ["--repo", os.fspath(repo)]
    if not progress:
        argv.append("--no-progress")
    if json:
        argv.append("--json")
    return argv + _argv(*args)


def run_freezeframe(
    *args: str | os.PathLike[str],
    repo: Path | None,
    json: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a separate process (inherits the test's environment plus ``env``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*prefix, *subprocess_argv(*args, repo=repo, json=json)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_freezeframe(
    *args: str | os.PathLike[str],
    repo: Path | None,
    json: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start the CLI as a separate process (stdout/stderr piped) for signal and concurrency
    tests."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [*WITH_DEFAULT_SIGINT, *subprocess_argv(*args, repo=repo, json=json)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A suite started in a background job inherits SIGINT ignored (shells do that for `&`), and an
# ignored signal stays ignored across exec: the signal tests need Ctrl-C to reach freezeframe.
WITH_DEFAULT_SIGINT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


# A child's hooks: tests/hookinstall/sitecustomize.py reads this variable in the child.
HOLD_ENV = "FREEZEFRAME_TEST_HOLD"
HOOK_INSTALLER = Path(__file__).resolve().parent / "hookinstall"


def hold_env(point: hooks.Point, seconds: float) -> dict[str, str]:
    """Environment for a child freezeframe (``run_freezeframe``, ``spawn_freezeframe``, or any
    Popen given ``{**os.environ, **hold_env(...)}``) that holds at ``point`` for ``seconds``,
    so the test can kill it there. Its children (an agent's backups) hold too. The ``hold``
    fixture holds the in-process ``Cli`` instead."""
    path = [str(HOOK_INSTALLER), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {HOLD_ENV: f"{point.value}={seconds:g}", "PYTHONPATH": os.pathsep.join(path)}


def run_at(
    location: str,
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    json: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a separate process against the repository at ``location``, named as an
    operator names it (``FREEZEFRAME_REPOSITORY``; its credentials in ``env`` or the test's
    environment)."""
    return run_freezeframe(
        *args,
        repo=None,
        json=json,
        env={"FREEZEFRAME_REPOSITORY": location, **(env or {})},
        timeout=timeout,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    """A run that exited 0 with no traceback; returns its stdout."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def one_line_error(
    result: subprocess.CompletedProcess[str], status: int = EXIT_FATAL, *, warnings: int = 0
) -> str:
    """The failure's only error line, the last (exit ``status``, no traceback, no snapshot
    claimed), after at most ``warnings`` warning lines."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 1 + warnings, result.stderr
    assert all(line.startswith("freezeframe: warning: ") for line in lines[:-1]), lines
    assert lines[-1].startswith("freezeframe: error: "), lines
    assert "saved" not in result.stdout + result.stderr
    return lines[-1]


def parse_json(text: str, what: str = "output") -> Any:
    try:
        return jsonlib.loads(text)
    except ValueError:
        pytest.fail(f"{what} is not one JSON document: {text[-3000:]!r}")
