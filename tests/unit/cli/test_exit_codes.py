"""Scripts depend on exit statuses and error codes: they are documented in
docs/operator-guide.md and must not change by accident. Every error class a user can meet is
in the table, wherever it is raised: a class added later fails here until it is."""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import freezeframe
from ffharness import FAST_INIT, PASSWORD, run_freezeframe
from freezeframe import errors
from freezeframe.cli import cmd_snapshots
from freezeframe.cli.main import main
from freezeframe.repository.locks import RepositoryLock
from freezeframe.repository.repository import Repository
from freezeframe.storage.local import LocalStorage

DOCUMENTED_STATUSES = {
    "EXIT_OK": 0,
    "EXIT_FATAL": 1,
    "EXIT_USAGE": 2,
    "EXIT_PARTIAL": 3,
    "EXIT_NO_REPOSITORY": 10,
    "EXIT_LOCKED": 11,
    "EXIT_WRONG_PASSWORD": 12,
    "EXIT_INTERRUPTED": 130,
}
DOCUMENTED_CODES = {
    "FreezeframeError": ("fatal", 1),
    "UsageError": ("usage", 2),
    "RepositoryNotFound": ("repository_not_found", 10),
    "RepositoryExists": ("repository_exists", 1),
    "WrongPassword": ("wrong_password", 12),
    "RepositoryLocked": ("locked", 11),
    "IntegrityError": ("integrity", 1),
    "UnsafeName": ("integrity", 1),
    "UnsupportedFormat": ("unsupported_format", 1),
    "StorageError": ("storage", 1),
    "TransientStorageError": ("storage", 1),
    "NotFound": ("not_found", 1),
    "MissingContent": ("not_found", 1),
    "Interrupted": ("interrupted", 130),
    "ConsistencyUnreachable": ("consistency_unreachable", 1),
    "FreezeFailed": ("freeze_failed", 1),
    "WriterPauseFailed": ("pause_failed", 1),
    "SnapshotDamaged": ("snapshot_damaged", 1),
    "QuiesceError": ("quiesce_failed", 1),
    "QmpError": ("qmp_error", 1),
    "NbdError": ("nbd_error", 1),
}


def _every_error_class() -> set[type[errors.FreezeframeError]]:
    for module in pkgutil.walk_packages(freezeframe.__path__, "freezeframe."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: set[type[errors.FreezeframeError]] = set()
    pending = [errors.FreezeframeError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


def test_exit_statuses_are_pinned() -> None:
    for name, value in DOCUMENTED_STATUSES.items():
        assert getattr(errors, name) == value


ERROR_CLASSES = sorted(_every_error_class(), key=lambda cls: cls.__name__)


def test_the_table_names_no_class_that_does_not_exist() -> None:
    assert set(DOCUMENTED_CODES) <= {cls.__name__ for cls in ERROR_CLASSES}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_error_class_lives_in_errors_and_is_pinned(cls: type[errors.FreezeframeError]) -> None:
    assert cls.__name__ in DOCUMENTED_CODES, f"{cls.__module__}.{cls.__name__}: add it to the table"
    assert cls.__module__ == "freezeframe.errors"
    assert getattr(errors, cls.__name__) is cls
    assert (cls.code, cls.exit_status) == DOCUMENTED_CODES[cls.__name__]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_main_exits_with_the_class_status_and_code(
    cls: type[errors.FreezeframeError],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """cli.main turns any of them, raised by a command, into its status and JSON code."""
    failure = cls.__new__(cls)  # some take more than a message; the message is all main reads
    Exception.__init__(failure, "it failed")

    def run(_ctx: object) -> int:
        raise failure

    monkeypatch.setattr(cmd_snapshots, "run", run)
    status = main(["--repo", str(tmp_path), "--no-progress", "--json", "snapshots"])
    code, expected = DOCUMENTED_CODES[cls.__name__]
    assert status == expected
    assert json.loads(capsys.readouterr().out) == {"error": {"code": code, "message": "it failed"}}


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    done = run_freezeframe(*FAST_INIT, repo=repo)
    assert done.returncode == 0, done.stderr
    return repo


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing", 10, "repository_not_found"),
        ("locked", 11, "locked"),
        ("wrong", 12, "wrong_password"),
    ],
)
def test_the_cli_process_exits_as_restic(
    case: str, status: int, code: str, initialised: Path, tmp_path: Path
) -> None:
    """The freezeframe process itself exits 10 (no repository), 11 (an exclusive lock held by
    another process, this test's) and 12 (wrong password), restic's codes, with the code under
    --json."""
    repo, env = initialised, {"FREEZEFRAME_PASSWORD": PASSWORD}
    if case == "missing":
        repo = tmp_path / "no-such-repo"
    if case == "wrong":
        env = {"FREEZEFRAME_PASSWORD": "not the password"}
    opened = Repository.open(LocalStorage(initialised), PASSWORD.encode())
    held = RepositoryLock(opened, exclusive=True) if case == "locked" else contextlib.nullcontext()
    with held:
        done = run_freezeframe("check", repo=repo, json=True, env=env)  # takes a shared lock
    assert done.returncode == status, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == code
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_codes_and_statuses_are_documented() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "operator-guide.md").read_text()
    for code, status in DOCUMENTED_CODES.values():
        assert f"`{code}`" in guide, code
        assert f"| {status} |" in guide, status
