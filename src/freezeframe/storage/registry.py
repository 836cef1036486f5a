"""From a repository location to a storage: the backend its scheme names, with the wrappers
the options ask for stacked on it.

A location is ``scheme:rest`` when it starts with a scheme (``[a-z][a-z0-9+.-]*``, two letters
at least, so ``C:\\backups`` is no scheme) and a path otherwise, so ``/srv/a:b`` and ``repo`` are
local directories. A location naming a backend this version lacks is refused, never taken for a
directory (``sftp:host:/repo`` once made a local directory of that name). A backend is one entry
of ``BACKENDS``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from freezeframe.errors import UsageError
from freezeframe.storage.base import Storage
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits
from freezeframe.storage.readonly import ReadOnlyStorage
from freezeframe.storage.retry import RetryingStorage, RetryPolicy

Factory = Callable[[str], Storage]


def _s3(rest: str) -> Storage:
    """The S3 backend, imported only when a location names it: boto3 takes a tenth of a second
    to import, which no command on a local repository should pay."""
    from freezeframe.storage.s3 import S3Storage  # noqa: PLC0415

    return S3Storage(rest)


def _rest(rest: str) -> Storage:
    """The ``freezeframe serve`` client, imported only when a location names it (urllib3)."""
    from freezeframe.storage.rest import RestStorage  # noqa: PLC0415

    return RestStorage(rest)


def _sftp(rest: str) -> Storage:
    """The SFTP backend, imported only when a location names it (paramiko takes a while)."""
    from freezeframe.storage.sftp import SftpStorage  # noqa: PLC0415

    return SftpStorage(rest)


BACKENDS: dict[str, Factory] = {"local": LocalStorage, "s3": _s3, "rest": _rest, "sftp": _sftp}
"""Scheme -> a factory given what follows ``scheme:``."""

PLANNED: frozenset[str] = frozenset()
"""Schemes users may expect (restic's), refused with a message that says they are coming."""

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]+):", re.IGNORECASE)


def split_location(location: str) -> tuple[str, str]:
    """``(scheme, rest)``: a location without a scheme is ``("local", location)``."""
    match = _SCHEME.match(location)
    if match is None:
        return "local", location
    return match.group(1).lower(), location[match.end() :]


def _s3_syntax(rest: str) -> None:
    from freezeframe.storage.s3 import parse_location  # noqa: PLC0415

    parse_location(rest)


def _rest_syntax(rest: str) -> None:
    from freezeframe.storage.rest import parse_location  # noqa: PLC0415

    parse_location(rest)


def _sftp_syntax(rest: str) -> None:
    from freezeframe.storage.sftp_location import parse_location  # noqa: PLC0415

    parse_location(rest)


SYNTAX_CHECKS: dict[str, Callable[[str], object]] = {
    "s3": _s3_syntax,
    "rest": _rest_syntax,
    "sftp": _sftp_syntax,
}
"""Scheme -> a check of what follows ``scheme:`` that sends nothing and reads no credentials
(UsageError, one line, when it does not parse); a backend without one takes any rest."""


def check_location(location: str) -> str:
    """Whether ``location`` names a backend of this version in its syntax, without opening
    it (a plans file is checked so, long before its plans run); returns the scheme."""
    scheme, rest = _known(location)
    check = SYNTAX_CHECKS.get(scheme)
    if check is not None:
        check(rest)
    return scheme


def backend_for(location: str) -> Storage:
    """The bare backend of ``location``; UsageError (one line) if this version has none."""
    scheme, rest = _known(location)
    return BACKENDS[scheme](rest)


def _known(location: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a location whose scheme this version has a backend for."""
    if not location:
        raise UsageError("the repository location is empty")
    scheme, rest = split_location(location)
    factory = BACKENDS.get(scheme)
    if factory is None:
        if scheme in PLANNED:
            raise UsageError(
                f"repository location {location!r}: the {scheme} backend is not available in "
                "this version"
            )
        raise UsageError(
            f"unknown repository location scheme {scheme!r} in {location!r} (a local directory "
            f"whose name has a colon can be given as ./{location} or local:{location})"
        )
    if not rest:
        raise UsageError(f"repository location {location!r} names no {scheme} repository")
    return scheme, rest


def open_storage(
    location: str,
    *,
    read_only: bool = False,
    retry: RetryPolicy | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    limits: RateLimits | None = None,
) -> Storage:
    """The backend of ``location`` wrapped as asked, innermost first: the rate limit (what
    goes over the wire), retries (each attempt limited), the cache (a hit costs nothing),
    and read-only outermost (a refused change reaches nothing)."""
    storage = backend_for(location)
    if limits is not None and (limits.upload is not None or limits.download is not None):
        storage = RateLimitedStorage(storage, limits)
    if retry is not None:
        storage = RetryingStorage(storage, retry)
    if cache_dir is not None:
        storage = CachingStorage(storage, cache_dir)
    if read_only:
        storage = ReadOnlyStorage(storage)
    return storage
