"""A plan's ``environment_file``: ``KEY=VALUE`` lines (S3 keys, a password variable) given to
the plan's freezeframe child processes only, so no secret sits in the plans file, in a process's
arguments, or in the agent's own environment.

Since it holds secrets, a file that another user could read or change is refused: it must be a
regular file owned by root or by the user running freezeframe, with no permission for its group
or others (0600 or 0400). Lines are ``KEY=VALUE`` (``export KEY=VALUE`` too), blank lines and
``#`` comments are skipped, and a value in matching single or double quotes loses them; nothing
is expanded. Errors name the file and the line, never a value.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from freezeframe.errors import UsageError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read(path: str) -> dict[str, str]:
    """The variables of the file, checked as the module says; UsageError (one line) else."""
    if not os.path.isabs(path):
        raise UsageError(f"environment file {path!r} is not an absolute path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise UsageError(f"environment file {path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW: its target's modes would be another's
            raise UsageError(f"environment file {path} is a symbolic link: name the file") from exc
        raise UsageError(f"environment file {path}: {exc.strerror}") from exc
    try:
        _check_private(path, os.fstat(fd))  # of the file opened, not of the name looked at
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError(f"environment file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return parse(path, raw.decode("utf-8", errors="replace"))


def _check_private(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"environment file {path} is not a regular file")
    if info.st_uid not in (0, os.geteuid()):
        raise UsageError(
            f"environment file {path} is owned by uid {info.st_uid}, neither root nor this "
            "user: another user could change it (chown it)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise UsageError(
            f"environment file {path} is mode {mode:04o}: other users can read or change "
            "the secrets it holds (chmod 600 it)"
        )


def parse(path: str, text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as the module says; ``path`` only names the file in errors."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            raise UsageError(f"environment file {path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found
