"""Scripts depend on exit statuses and error codes: they are documented in
docs/operator-guide.md and must not change by accident. Every error class a user can meet is
in the table, wherever it is raised: a class added later fails here until it is."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import freezeframe
from freezeframe import errors

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


def test_every_error_class_lives_in_errors_and_is_pinned() -> None:
    classes = _every_error_class()
    assert {c.__name__ for c in classes} == set(DOCUMENTED_CODES)
    for cls in classes:
        assert cls.__module__ == "freezeframe.errors", cls
        assert (cls.code, cls.exit_status) == DOCUMENTED_CODES[cls.__name__], cls


def test_codes_and_statuses_are_documented() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "operator-guide.md").read_text()
    for code, status in DOCUMENTED_CODES.values():
        assert f"`{code}`" in guide, code
        assert f"| {status} |" in guide, status
