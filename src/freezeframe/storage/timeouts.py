"""How long a remote storage may stay silent before a request counts as failed.

A server that accepts a connection and then never answers would otherwise hold a backup for as
long as the operating system keeps the socket open. Each remote backend waits at most this long
between two reads of an answer (not for a whole transfer) and at most the shorter of this and
its own connect timeout to connect; the request is then retried like any other transient failure
(``storage.retry``), so a silent server ends a command after about five times this long.
"""

from __future__ import annotations

from collections.abc import Mapping

from freezeframe.envseconds import seconds_from_env

TIMEOUT_ENV = "FREEZEFRAME_STORAGE_TIMEOUT"
DEFAULT_IO_TIMEOUT = 120.0


def io_timeout(env: Mapping[str, str]) -> float:
    """Seconds without an answer before a request fails: ``FREEZEFRAME_STORAGE_TIMEOUT`` or the
    default."""
    return seconds_from_env(env, TIMEOUT_ENV, DEFAULT_IO_TIMEOUT)
