"""Scripts depend on exit statuses and error codes: they are documented in
docs/operator-guide.md and must not change by accident."""

from __future__ import annotations

from pathlib import Path

from freezeframe import errors

DOCUMENTED_STATUSES = {
    "EXIT_OK": 0,
    "EXIT_FATAL": 1,
    "EXIT_USAGE": 2,
    "EXIT_PARTIAL": 3,
    "EXIT_INTERRUPTED": 130,
}
DOCUMENTED_CODES = {
    "FreezeframeError": ("fatal", 1),
    "UsageError": ("usage", 2),
    "RepositoryNotFound": ("repository_not_found", 1),
    "RepositoryExists": ("repository_exists", 1),
    "WrongPassword": ("wrong_password", 1),
    "RepositoryLocked": ("locked", 1),
    "IntegrityError": ("integrity", 1),
    "UnsupportedFormat": ("unsupported_format", 1),
    "StorageError": ("storage", 1),
    "NotFound": ("not_found", 1),
    "Interrupted": ("interrupted", 130),
}


def test_exit_statuses_are_pinned() -> None:
    for name, value in DOCUMENTED_STATUSES.items():
        assert getattr(errors, name) == value


def test_error_codes_are_pinned_and_documented() -> None:
    guide = (Path(__file__).parents[3] / "docs" / "operator-guide.md").read_text()
    for name, (code, status) in DOCUMENTED_CODES.items():
        cls = getattr(errors, name)
        assert (cls.code, cls.exit_status) == (code, status)
        assert f"`{code}`" in guide
