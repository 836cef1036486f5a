"""SFTP locations: scp's ``sftp:USER@HOST:PATH`` (port 22) and restic's URL form
``sftp://USER@HOST[:PORT]/PATH``, where ``PATH`` after the authority's slash is relative to the
login directory and ``//srv/repo`` is absolute. A PATH without a leading slash is in the login
directory. ``sftp:host:2222/repo`` is refused as ambiguous (a port or a directory?). IPv6 hosts
go in brackets. A location never holds a password, and one that seems to is never echoed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from freezeframe.errors import UsageError

SYNTAX = "sftp:USER@HOST:/PATH or sftp://USER@HOST[:PORT]//PATH"

_USER = r"(?P<user>[^@/:\s]+)@"
_HOST = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\[\]\s]+)"
_SCP = re.compile(rf"(?:{_USER})?{_HOST}:(?P<path>.*)", re.DOTALL)
_URL = re.compile(rf"//(?:{_USER})?{_HOST}(?::(?P<port>[0-9]+))?/(?P<path>.*)", re.DOTALL)


@dataclass(frozen=True)
class SftpLocation:
    """A parsed location: who, where, and the repository's path (relative: in the login
    directory)."""

    user: str
    host: str  # without brackets
    port: int
    path: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == 22:
            return f"sftp:{self.user}@{host}:{self.path}"
        return f"sftp://{self.user}@{host}:{self.port}/{self.path}"


def parse_location(rest: str, *, default_user: str | None = None) -> SftpLocation:
    """What follows ``sftp:``; UsageError (one line) for anything the syntax does not allow."""
    if rest[:5].lower() == "sftp:":
        rest = rest[5:]
    url = rest.startswith("//")
    if "@" in rest and ":" in rest.removeprefix("//").split("@", 1)[0]:
        raise UsageError(  # never echoed: what follows the colon may be a password
            "an SFTP location holds no password: freezeframe authenticates by SSH key "
            f"(an agent, ~/.ssh, or FREEZEFRAME_SFTP_IDENTITY); give it as {SYNTAX}"
        )
    match = (_URL if url else _SCP).fullmatch(rest)
    if match is None or (not url and rest.startswith("/")):
        raise UsageError(f"SFTP location 'sftp:{rest}' is not {SYNTAX}")
    host = match.group("host").strip("[]")
    path = match.group("path")
    port = 22
    if url:
        port = int(match.group("port") or 22)
        if not 0 < port < 65536:
            raise UsageError(f"SFTP location 'sftp:{rest}': port {port} is out of range")
        path = "/" + path.lstrip("/") if path.startswith("/") else path
    elif re.match(r"[0-9]+/", path):
        port_like = path.split("/", 1)[0]
        raise UsageError(
            f"SFTP location 'sftp:{rest}' is ambiguous: for port {port_like} write "
            f"sftp://USER@{match.group('host')}:{port_like}//PATH; for a directory named "
            f"{port_like} write sftp:USER@{match.group('host')}:./{path}"
        )
    path = path.rstrip("/") or ("/" if path.startswith("/") else "")
    if not path or path in (".", "./"):
        raise UsageError(f"SFTP location 'sftp:{rest}' names no directory")
    if any(part == ".." for part in path.split("/")):
        raise UsageError(f"SFTP location 'sftp:{rest}': a path cannot hold '..'")
    user = match.group("user") or default_user or _local_user()
    return SftpLocation(user, host, port, path)


def _local_user() -> str:
    import getpass  # noqa: PLC0415 (only when a location names no user)

    return getpass.getuser()
