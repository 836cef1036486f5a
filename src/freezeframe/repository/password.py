"""Where the password comes from, in restic's order of precedence.

``--password-file``, then ``FREEZEFRAME_PASSWORD``, ``FREEZEFRAME_PASSWORD_FILE``,
``FREEZEFRAME_PASSWORD_COMMAND``, then a prompt when stdin is a terminal.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping

from freezeframe.errors import FreezeframeError, UsageError


def resolve_password(
    password_file: str | None, env: Mapping[str, str] | None = None, *, confirm: bool = False
) -> bytes:
    """The repository password from the first source that is set; never an empty password."""
    env = os.environ if env is None else env
    if password_file:
        return _read_file(password_file)
    if env.get("FREEZEFRAME_PASSWORD"):
        return env["FREEZEFRAME_PASSWORD"].encode()
    if env.get("FREEZEFRAME_PASSWORD_FILE"):
        return _read_file(env["FREEZEFRAME_PASSWORD_FILE"])
    if env.get("FREEZEFRAME_PASSWORD_COMMAND"):
        return _run_command(env["FREEZEFRAME_PASSWORD_COMMAND"])
    if sys.stdin.isatty():
        return prompt_password("repository password: ", confirm=confirm)
    raise UsageError(
        "no password given: use --password-file, FREEZEFRAME_PASSWORD, "
        "FREEZEFRAME_PASSWORD_FILE or FREEZEFRAME_PASSWORD_COMMAND"
    )


def prompt_password(prompt: str, *, confirm: bool) -> bytes:
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != first:
        raise UsageError("the passwords do not match")
    if not first:
        raise UsageError("an empty password is not allowed")
    return first.encode()


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            first_line = f.read().split(b"\n", 1)[0]
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from exc
    if not first_line:
        raise UsageError(f"password file {path} is empty")
    return first_line


def _run_command(command: str) -> bytes:
    try:
        result = subprocess.run(shlex.split(command), capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FreezeframeError(f"password command failed: {exc}") from exc
    if result.returncode != 0:
        raise FreezeframeError(f"password command exited with status {result.returncode}")
    password = result.stdout.split(b"\n", 1)[0]
    if not password:
        raise FreezeframeError("password command printed nothing")
    return password


def resolve_source_password(
    password_file: str | None, env: Mapping[str, str] | None = None
) -> bytes:
    """The password of the other repository (``copy``, ``init --copy-chunker-params``):
    ``--from-password-file``, then ``FREEZEFRAME_FROM_PASSWORD_FILE``,
    ``FREEZEFRAME_FROM_PASSWORD``, then a prompt on a terminal. Never the target's password:
    two repositories sharing one by accident would hide a mistake in the names."""
    env = os.environ if env is None else env
    if password_file:
        return _read_file(password_file)
    if env.get("FREEZEFRAME_FROM_PASSWORD_FILE"):
        return _read_file(env["FREEZEFRAME_FROM_PASSWORD_FILE"])
    if env.get("FREEZEFRAME_FROM_PASSWORD"):
        return env["FREEZEFRAME_FROM_PASSWORD"].encode()
    if sys.stdin.isatty():
        return prompt_password("source repository password: ", confirm=False)
    raise UsageError(
        "no password for --from-repo given: use --from-password-file, "
        "FREEZEFRAME_FROM_PASSWORD_FILE or FREEZEFRAME_FROM_PASSWORD"
    )
