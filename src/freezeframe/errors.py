"""The errors freezeframe reports to users, each with a stable code and exit status.

Hierarchy::

    FreezeframeError              exit 1, any fatal error a user can act on
    ├── UsageError                exit 2, bad arguments or options
    ├── RepositoryNotFound        exit 1, no repository at the given location
    ├── WrongPassword             exit 1, no key of the repository opens with the password
    ├── RepositoryLocked          exit 1, a conflicting lock is held
    ├── IntegrityError            exit 1, an object failed authentication or its hash
    ├── UnsupportedFormat         exit 1, written by a newer or unknown format version
    ├── StorageError              exit 1, the storage backend failed (full disk, permissions)
    └── NotFound                  exit 1, a snapshot, key or path named by the user does not exist

Lower-level exceptions (OSError, cryptography's InvalidTag, ...) are translated at the boundary
where they occur, with ``raise ... from exc``, so the CLI can print one line and exit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class FreezeframeError(Exception):
    """A failure with a message meant for the user; ``code`` is stable for scripts (``--json``)."""

    code = "fatal"
    exit_status = EXIT_FATAL


class UsageError(FreezeframeError):
    code = "usage"
    exit_status = EXIT_USAGE


class RepositoryNotFound(FreezeframeError):
    code = "repository_not_found"


class RepositoryExists(FreezeframeError):
    code = "repository_exists"


class WrongPassword(FreezeframeError):
    code = "wrong_password"


class RepositoryLocked(FreezeframeError):
    code = "locked"


class IntegrityError(FreezeframeError):
    code = "integrity"


class UnsupportedFormat(FreezeframeError):
    code = "unsupported_format"


class StorageError(FreezeframeError):
    code = "storage"


class NotFound(FreezeframeError):
    code = "not_found"


class Interrupted(FreezeframeError):
    code = "interrupted"
    exit_status = EXIT_INTERRUPTED
