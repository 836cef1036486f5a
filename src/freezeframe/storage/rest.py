"""The ``rest:`` backend: a repository served by ``freezeframe serve`` (the protocol is in
docs/repository-format.md, "Repository server protocol").

A location is ``rest:https://HOST[:PORT][/PATH]/`` (``rest:http://`` for a server on a trusted
network, such as loopback). The account comes from ``FREEZEFRAME_REST_USER`` and its secret
from ``FREEZEFRAME_REST_PASSWORD`` or ``FREEZEFRAME_REST_PASSWORD_FILE``, never from the
location (which is shown in messages) or the command line (which ``ps`` shows). TLS
certificates are verified, against ``FREEZEFRAME_REST_CA_BUNDLE`` when it is set.

HTTP goes through one urllib3 pool, which is thread-safe: the repository's uploaders and
readers each have a request in flight on a connection of their own. Retries belong to
``storage.retry``: connection errors, timeouts and 5xx answers are TransientStorageError.

Measured (bench/rest_server.py, serve of a local directory on loopback, two cores shared by
client, server and other load): the first backup of 213 MB of mixed data goes at 61 MB/s against
93 MB/s straight into the directory; 16 MiB packs put at about 110 MB/s and get at 200-450 MB/s
with four in flight, so the client is not what limits a backup (its CPU per pack is a tenth
of the server's); urllib3 stays.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
import urllib3.exceptions

from freezeframe.errors import (
    NotFound,
    StorageError,
    TransientStorageError,
    UsageError,
)
from freezeframe.storage.base import Capabilities, Description, Kind, ObjectInfo
from freezeframe.storage.timeouts import io_timeout

SYNTAX = "rest:https://HOST[:PORT]/"
USER_ENV = "FREEZEFRAME_REST_USER"
PASSWORD_ENV = "FREEZEFRAME_REST_PASSWORD"
PASSWORD_FILE_ENV = "FREEZEFRAME_REST_PASSWORD_FILE"
CA_BUNDLE_ENV = "FREEZEFRAME_REST_CA_BUNDLE"
POOL_CONNECTIONS = 32  # as the S3 backend's: uploads and prefetching reads, a socket each
CONNECT_TIMEOUT = 10.0
LIST_TYPE = "application/vnd.x.restic.rest.v2"


def parse_location(rest: str) -> str:
    """The server's base URL (ending in ``/``) from what follows ``rest:``; UsageError (one
    line) otherwise. A URL with a user or password is refused and never echoed."""
    if rest[:5].lower() == "rest:":
        rest = rest[5:]
    try:
        parts = urlsplit(rest)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"REST location is not {SYNTAX}: {exc}") from exc
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"a REST location holds no credentials: set {USER_ENV} and {PASSWORD_ENV} (or "
            f"{PASSWORD_FILE_ENV}) and give the location as {SYNTAX}"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"REST location 'rest:{rest}' is not {SYNTAX} (or rest:http://...)")
    if parts.query or parts.fragment:
        raise UsageError(f"REST location 'rest:{rest}' has a query or fragment")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") + "/"
    return f"{parts.scheme}://{netloc}{path}"


def _credentials(env: Mapping[str, str]) -> str | None:
    """The Authorization header's value, or None when no account is set."""
    user = env.get(USER_ENV, "")
    secret: str | None = env.get(PASSWORD_ENV) or None
    if secret is None and env.get(PASSWORD_FILE_ENV):
        path = env[PASSWORD_FILE_ENV]
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read {PASSWORD_FILE_ENV} {path}: {exc.strerror}") from exc
        if not secret:
            raise UsageError(f"{PASSWORD_FILE_ENV} {path} is empty")
    if not user and secret is None:
        return None
    if not user or secret is None:
        raise UsageError(
            f"a REST account needs both {USER_ENV} and {PASSWORD_ENV} (or {PASSWORD_FILE_ENV})"
        )
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return f"Basic {token}"


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise StorageError(f"invalid object name {name!r}")


class RestStorage:
    """A repository served by ``freezeframe serve``; safe to call from many threads."""

    def __init__(self, location: str, *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.base = parse_location(location)
        self.location = f"rest:{self.base}"
        self._capabilities: Capabilities | None = None
        self._path = urlsplit(self.base).path
        headers = {"User-Agent": "freezeframe"}
        authorization = _credentials(env)
        if authorization is not None:
            headers["Authorization"] = authorization
        self._authenticated = authorization is not None
        self._headers = headers
        bundle = env.get(CA_BUNDLE_ENV) or None
        if bundle is not None and not os.path.isfile(bundle):
            raise UsageError(f"{CA_BUNDLE_ENV}={bundle!r} is not a file of CA certificates")
        silent = io_timeout(env)
        self._timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, silent), read=silent)
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=POOL_CONNECTIONS,
            cert_reqs="CERT_REQUIRED",
            ca_certs=bundle,
            timeout=self._timeout,
            retries=False,
        )

    # -- the Protocol ------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """Asked of the server once (the account's role): only the full role deletes."""
        if self._capabilities is None:
            doc = self._json("GET", "?account=true", f"cannot reach {self.location}")
            role = doc.get("role") if isinstance(doc, dict) else None
            self._capabilities = Capabilities(
                writable=role != "read", deletes=role == "full", local_modes=False
            )
        return self._capabilities

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        notes: builtins.list[str] = self._json(
            "POST", "?create=true", f"cannot create a repository at {self.location}"
        )
        if group_readable:
            notes.append(
                f"{self.location}: group-readable is the server's to decide (the modes of "
                "what it stores are its backend's)"
            )
        return notes

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        self._request("POST", self._path_of(kind, name), f"cannot write {self._show(kind, name)}",
                      body=data)  # fmt: skip

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path_of(kind, name)
        what = f"cannot read {self._show(kind, name)}"
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{what}: invalid range {offset}+{length}")
        if length == 0:
            if not self.exists(kind, name):
                raise NotFound(f"{kind.value}/{name} is missing from the repository")
            return b""
        headers = {}
        if offset > 0 or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        missing = f"{kind.value}/{name} is missing from the repository"
        response = self._request("GET", path, what, headers=headers, missing=missing, ranged=True)
        if response.status == 416:
            if length is None:
                return b""  # from the end on, as a local file's read there gives
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        data: bytes = response.data
        if headers and response.status == 200:  # a proxy that ignored the Range header
            data = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(data) != length:
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        return data

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        what = f"cannot list {self.location}{kind.value}/"
        if kind is Kind.CONFIG:
            try:
                data = self.get(Kind.CONFIG, "config")
            except NotFound:
                return
            yield ObjectInfo("config", len(data))
            return
        entries = self._json("GET", f"{kind.value}/", what, headers={"Accept": LIST_TYPE})
        try:
            found = [ObjectInfo(str(e["name"]), int(e["size"])) for e in entries]
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"{what}: the server's listing is malformed") from exc
        yield from found

    def delete(self, kind: Kind, name: str) -> None:
        what = f"cannot delete {self._show(kind, name)}"
        try:
            self._request("DELETE", self._path_of(kind, name), what, missing="")
        except NotFound:
            return

    def exists(self, kind: Kind, name: str) -> bool:
        path = self._path_of(kind, name)
        try:
            self._request("HEAD", path, f"cannot look for {self._show(kind, name)}", missing="")
        except NotFound:
            return False
        return True

    def remove_stale_temporaries(self) -> int:
        """The server's backend removes what crashed writes left (under prune's exclusive
        lock, so only a full account may ask)."""
        doc = self._json("POST", "?cleanup=true", f"cannot clean up {self.location}")
        return int(doc.get("removed", 0))

    def audit(self) -> builtins.list[str]:
        found: builtins.list[str] = self._json(
            "GET", "?audit=true", f"cannot audit {self.location}"
        )
        return [str(line) for line in found]

    def describe(self) -> Description:
        """The server's URL and where the credentials come from (never the password); sends
        nothing: the server tells no client its free space."""
        details = {
            "url": self.base,
            "credentials": "FREEZEFRAME_REST_USER and its password"
            if self._authenticated
            else "none",
            "tls": "none (plain http)" if self.base.startswith("http:") else "verified",
        }
        return Description("rest", details)

    def close(self) -> None:
        self._pool.clear()

    # -- requests and their errors ---------------------------------------------------------

    def _path_of(self, kind: Kind, name: str) -> str:
        _check_name(name)
        return "config" if kind is Kind.CONFIG else f"{kind.value}/{quote(name, safe='')}"

    def _show(self, kind: Kind, name: str) -> str:
        return f"{self.location}{'config' if kind is Kind.CONFIG else f'{kind.value}/{name}'}"

    def _json(
        self, method: str, path: str, what: str, *, headers: dict[str, str] | None = None
    ) -> Any:
        response = self._request(method, path, what, headers=headers)
        try:
            return json.loads(response.data)
        except ValueError as exc:
            raise TransientStorageError(f"{what}: the server's answer was cut short") from exc

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        missing: str | None = None,
        ranged: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request; its failures as ours, each one line without a secret. ``missing``:
        the message of NotFound on a 404 (None: a 404 is an error of its own)."""
        url = self.base + path
        try:
            response = self._pool.request(
                method,
                url,
                body=body,
                headers={**self._headers, **(headers or {})},
                redirect=False,
                preload_content=True,
            )
        except urllib3.exceptions.SSLError as exc:
            raise StorageError(
                f"{what}: TLS with {urlsplit(self.base).netloc} failed ({_reason(exc)}); the "
                f"certificates of a private CA go in {CA_BUNDLE_ENV}"
            ) from exc
        except urllib3.exceptions.NewConnectionError as exc:
            reason = str(exc).rpartition("new connection: ")[2] or _reason(exc)
            raise TransientStorageError(
                f"{what}: cannot connect to {urlsplit(self.base).netloc} ({reason})"
            ) from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise TransientStorageError(
                f"{what}: no connection to {urlsplit(self.base).netloc} within "
                f"{self._timeout.connect_timeout:g} s"
            ) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise TransientStorageError(
                f"{what}: {urlsplit(self.base).netloc} sent nothing for "
                f"{self._timeout.read_timeout:g} s"
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TransientStorageError(f"{what}: {_reason(exc)}") from exc
        status = response.status
        if status < 300 or (ranged and status == 416):
            return response
        message = " ".join(response.data.decode("utf-8", "replace").split())[:300]
        if status == 404 and missing is not None:
            raise NotFound(missing or what)
        if status == 401:
            if not self._authenticated:
                raise StorageError(
                    f"{what}: the server wants an account: set {USER_ENV} and {PASSWORD_ENV} "
                    f"(or {PASSWORD_FILE_ENV})"
                )
            raise StorageError(f"{what}: wrong credentials ({USER_ENV} or its password)")
        if status == 403:
            raise StorageError(f"{what}: the server refuses: {message}")
        if status >= 500 or status == 429:
            raise TransientStorageError(f"{what}: the server answered {status} ({message})")
        raise StorageError(f"{what}: the server answered {status} ({message})")


def _reason(exc: Exception) -> str:
    """urllib3's message without its object reprs (which name no secret, but are noise)."""
    cause = getattr(exc, "reason", None) or exc
    return " ".join(str(cause).split())
