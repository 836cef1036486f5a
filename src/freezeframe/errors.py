"""The errors freezeframe reports to users, each with a stable code and exit status.

Hierarchy::

    FreezeframeError              exit 1, any fatal error a user can act on
    ├── UsageError                exit 2, bad arguments or options
    ├── RepositoryNotFound        exit 10, no repository at the given location (as restic)
    ├── RepositoryExists          exit 1, init where a repository already is
    ├── WrongPassword             exit 12, no key opens with the password (as restic)
    ├── RepositoryLocked          exit 11, a conflicting lock is held (as restic)
    ├── IntegrityError            exit 1, an object failed authentication or its hash
    │   └── UnsafeName            exit 1, a name in a tree that could escape the restore target
    ├── UnsupportedFormat         exit 1, written by a newer or unknown format version
    ├── StorageError              exit 1, the storage backend failed (full disk, permissions)
    │   └── TransientStorageError exit 1, a failure that may pass when retried (timeouts)
    ├── NotFound                  exit 1, a snapshot, key or path named by the user does not exist
    │   └── MissingContent        exit 1, blobs of a file to restore are not in the repository
    ├── Interrupted               exit 130, SIGINT or SIGTERM, or a cancelled run
    ├── ConsistencyUnreachable    exit 1, the level asked for cannot be reached (--fallback fail)
    ├── FreezeFailed              exit 1, a file system could not be frozen for its snapshot
    ├── WriterPauseFailed         exit 1, the writers could not be paused for the snapshots
    ├── SnapshotDamaged           exit 1, a snapshot changed or broke while it was read
    ├── QuiesceError              exit 1, an application could not be held or released
    ├── QmpError                  exit 1, QEMU's monitor or guest agent refused or failed
    └── NbdError                  exit 1, the NBD server refused, failed or broke the protocol

Lower-level exceptions (OSError, cryptography's InvalidTag, ...) are translated at the boundary
where they occur, with ``raise ... from exc``, so the CLI can print one line and exit.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # finished, but some files could not be read (backup) or written (restore)
EXIT_NO_REPOSITORY = 10  # restic's codes where the meaning is the same
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
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
    exit_status = EXIT_NO_REPOSITORY


class RepositoryExists(FreezeframeError):
    code = "repository_exists"


class WrongPassword(FreezeframeError):
    code = "wrong_password"
    exit_status = EXIT_WRONG_PASSWORD


class RepositoryLocked(FreezeframeError):
    code = "locked"
    exit_status = EXIT_LOCKED


class IntegrityError(FreezeframeError):
    code = "integrity"


class UnsafeName(IntegrityError):
    """A name in a snapshot tree that could address something other than one new entry."""


class UnsupportedFormat(FreezeframeError):
    code = "unsupported_format"


class StorageError(FreezeframeError):
    code = "storage"


class TransientStorageError(StorageError):
    """A failure that may pass if the call is simply made again (a timeout, a busy server, an
    interrupted call), so the retrying storage retries it; every other StorageError is final."""


class NotFound(FreezeframeError):
    code = "not_found"


class MissingContent(NotFound):
    """Blobs of a file are not in the repository; ``ranges`` are the bytes they held, as far
    as the blobs that are there tell (a restore names them, then goes on)."""

    def __init__(self, message: str, ranges: list[tuple[int, int]]) -> None:
        super().__init__(message)
        self.ranges = ranges


class Interrupted(FreezeframeError):
    code = "interrupted"
    exit_status = EXIT_INTERRUPTED


class ConsistencyUnreachable(FreezeframeError):
    code = "consistency_unreachable"


class FreezeFailed(FreezeframeError):
    code = "freeze_failed"


class WriterPauseFailed(FreezeframeError):
    code = "pause_failed"


class SnapshotDamaged(FreezeframeError):
    """A snapshot no longer shows its instant whole (an LVM snapshot's store overflowed, or
    its device failed reads): nothing read from it may be kept."""

    code = "snapshot_damaged"


class QuiesceError(FreezeframeError):
    code = "quiesce_failed"


class QmpError(FreezeframeError):
    code = "qmp_error"


class NbdError(FreezeframeError):
    """The NBD server refused, failed or broke the protocol; ``error`` is the server's error
    name (``"EIO"``, ``"EINVAL"``...) when it reported one, else None."""

    code = "nbd_error"

    def __init__(self, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error
