"""The repository server's HTTP protocol over a Storage (docs/repository-format.md, "Repository
server protocol"): objects by kind and name, with each account's role checked on every request.

The server never sees the repository password: everything it stores arrives encrypted. It only
decides who may add, read, overwrite and delete, which is the point of it: a host whose account
is ``append`` can add backups, but ransomware holding that host's secret cannot delete them.

Storage calls block, so each runs in Starlette's thread pool; many requests are in flight at
once, as many as the clients' uploaders and readers send.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from freezeframe.errors import NotFound, StorageError, TransientStorageError
from freezeframe.repository.crypto import content_name
from freezeframe.server.accounts import Account, Role, Verifier
from freezeframe.storage.base import Kind, ObjectInfo, Storage

LOG = logging.getLogger("freezeframe.server")
MAX_OBJECT = (1 << 30) + (16 << 20)  # a pack is at most 1 GiB; a little room for its header
LIST_TYPE = "application/vnd.x.restic.rest.v2"  # names and sizes, as restic's v2 listing
LIST_BATCH = 2000
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_KINDS = {k.value: k for k in Kind if k is not Kind.CONFIG}
_T = TypeVar("_T")

Handler = Callable[[Request, Account], Awaitable[Response]]


class _Refused(Exception):
    """A request the account's role does not allow: answered 403 and logged."""


class RepositoryServer:
    """The application state: the storage served, the accounts, the role cap, and the locks
    each account created (an ``append`` account may remove only those)."""

    def __init__(self, storage: Storage, verifier: Verifier, *, cap: Role = Role.FULL) -> None:
        self.storage = storage
        self.verifier = verifier
        self.cap = cap
        self._lock_owners: dict[str, str] = {}
        self._owners_lock = threading.Lock()

    def app(self) -> Starlette:
        def route(path: str, handler: Handler, methods: list[str]) -> Route:
            return Route(path, self._authenticated(handler), methods=methods)

        return Starlette(
            routes=[
                route("/", self._root, ["GET", "POST"]),
                route("/config", self._config, ["HEAD", "GET", "POST", "DELETE"]),
                route("/{kind}/", self._list, ["GET"]),
                route("/{kind}/{name}", self._object, ["HEAD", "GET", "POST", "DELETE"]),
            ]
        )

    # -- authentication --------------------------------------------------------------------

    def _authenticated(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            account = await run_in_threadpool(self._account_of, request)
            if account is None:
                return PlainTextResponse(
                    "wrong credentials\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="freezeframe"'},
                )
            try:
                return await handler(request, account)
            except _Refused as exc:
                LOG.warning(
                    "refused: account %s (%s) %s %s: %s",
                    account.name,
                    self.role_of(account).value,
                    request.method,
                    request.url.path,
                    exc,
                )
                return PlainTextResponse(f"{exc}\n", status_code=403)
            except NotFound:
                return PlainTextResponse("not found\n", status_code=404)
            except TransientStorageError as exc:
                LOG.warning("storage: %s", exc)
                return PlainTextResponse(f"{exc}\n", status_code=503)
            except StorageError as exc:
                LOG.warning("storage: %s", exc)
                return PlainTextResponse(f"{exc}\n", status_code=500)

        return endpoint

    def _account_of(self, request: Request) -> Account | None:
        """The account HTTP basic auth names, if its secret is right."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, sep, secret = base64.b64decode(encoded, validate=True).partition(b":")
            user = name.decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        account = self.verifier.verify(user, secret)
        if account is None:
            LOG.warning("refused: wrong credentials for account %r", user[:64])
        return account

    def role_of(self, account: Account) -> Role:
        return account.role.at_most(self.cap)

    # -- the endpoints ---------------------------------------------------------------------

    async def _root(self, request: Request, account: Account) -> Response:
        """``POST /?create=true`` lays out a new repository; ``POST /?cleanup=true`` removes
        what crashed writes left (full role: it runs under prune's exclusive lock);
        ``GET /?audit=true`` gives the storage's own problems; ``GET /?account=true`` the
        account's name and role (after the server's cap), so a client knows before it starts
        whether it may delete."""
        query = request.query_params
        if request.method == "GET" and query.get("account") == "true":
            return _json({"account": account.name, "role": self.role_of(account).value})
        if request.method == "GET" and query.get("audit") == "true":
            return _json(await run_in_threadpool(self.storage.audit))
        if request.method == "POST" and query.get("create") == "true":
            if self.role_of(account) is Role.READ:
                raise _Refused("read-only: this account may not create a repository")
            return _json(await run_in_threadpool(self.storage.create_layout))
        if request.method == "POST" and query.get("cleanup") == "true":
            if self.role_of(account) is not Role.FULL:
                raise _Refused(self._append_reason(account, "remove temporaries"))
            removed = await run_in_threadpool(self.storage.remove_stale_temporaries)
            return _json({"removed": removed})
        return PlainTextResponse("unknown request\n", status_code=400)

    async def _config(self, request: Request, account: Account) -> Response:
        return await self._serve(request, account, Kind.CONFIG, "config")

    async def _object(self, request: Request, account: Account) -> Response:
        kind = _KINDS.get(request.path_params["kind"])
        name = request.path_params["name"]
        if kind is None:
            return PlainTextResponse("no such kind\n", status_code=404)
        if not name or name.startswith(".") or "/" in name:
            return PlainTextResponse("invalid object name\n", status_code=400)
        return await self._serve(request, account, kind, name)

    async def _serve(self, request: Request, account: Account, kind: Kind, name: str) -> Response:
        if request.method == "HEAD":
            present = await run_in_threadpool(self.storage.exists, kind, name)
            return Response(status_code=200 if present else 404)
        if request.method == "GET":
            return await self._get(request, kind, name)
        if request.method == "POST":
            return await self._put(request, account, kind, name)
        await run_in_threadpool(self._delete, account, kind, name)
        return Response(status_code=204)

    async def _get(self, request: Request, kind: Kind, name: str) -> Response:
        header = request.headers.get("range")
        if header is None:
            data = await run_in_threadpool(self.storage.get, kind, name)
            return Response(data, media_type="application/octet-stream")
        match = _RANGE.fullmatch(header.strip())
        if match is None:
            return PlainTextResponse("unsupported range\n", status_code=416)
        offset = int(match.group(1))
        length = int(match.group(2)) - offset + 1 if match.group(2) else None
        if length is not None and length <= 0:
            return PlainTextResponse("unsupported range\n", status_code=416)
        try:
            data = await run_in_threadpool(self.storage.get, kind, name, offset, length)
        except StorageError as exc:
            # Every backend says so in these words (a range past the object's end); any
            # other failure is the storage's own.
            if type(exc) is StorageError and "shorter than expected" in str(exc):
                return PlainTextResponse("range not satisfiable\n", status_code=416)
            raise
        headers = {}
        if data:
            headers["Content-Range"] = f"bytes {offset}-{offset + len(data) - 1}/*"
        return Response(data, 206, headers, media_type="application/octet-stream")

    async def _put(self, request: Request, account: Account, kind: Kind, name: str) -> Response:
        role = self.role_of(account)
        if role is Role.READ and kind is not Kind.LOCKS:
            raise _Refused("read-only: this account may not add objects")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_OBJECT:
                return PlainTextResponse("object too large\n", status_code=413)
        await run_in_threadpool(self._store, account, role, kind, name, bytes(body))
        return Response(status_code=200)

    def _store(self, account: Account, role: Role, kind: Kind, name: str, data: bytes) -> None:
        """Put the object, unless the role forbids what it would replace. For an account
        without the full role every object but the config must be named by the BLAKE3 of its
        bytes, as the repository names them: then a put can only ever write the one content
        that name stands for (again, as a retried upload does, or over a damaged copy), and
        never replace a backup by something else. The config it may only create."""
        if role is not Role.FULL:
            if kind is Kind.CONFIG:
                if self.storage.exists(kind, name) and self._differs(kind, name, data):
                    raise _Refused(self._append_reason(account, "overwrite the config"))
            elif content_name(data) != name:
                raise _Refused(
                    self._append_reason(account, f"store {kind.value}/{name}")
                    + ": its name is not the BLAKE3 of the bytes sent"
                )
        self.storage.put(kind, name, data)
        if kind is Kind.LOCKS:
            with self._owners_lock:
                self._lock_owners.setdefault(name, account.name)

    def _differs(self, kind: Kind, name: str, data: bytes) -> bool:
        try:
            return self.storage.get(kind, name) != data
        except NotFound:
            return False  # removed since (by a full account)

    def _delete(self, account: Account, kind: Kind, name: str) -> None:
        if self.role_of(account) is not Role.FULL and not self._owns(account, kind, name):
            raise _Refused(self._append_reason(account, f"delete {kind.value}/{name}"))
        self.storage.delete(kind, name)
        if kind is Kind.LOCKS:
            with self._owners_lock:
                self._lock_owners.pop(name, None)

    def _owns(self, account: Account, kind: Kind, name: str) -> bool:
        """Whether the object is a lock this account created (since this server started)."""
        if kind is not Kind.LOCKS:
            return False
        with self._owners_lock:
            return self._lock_owners.get(name) == account.name

    def _append_reason(self, account: Account, what: str) -> str:
        role = self.role_of(account)
        if role is Role.READ:
            return f"read-only: this account may not {what}"
        return (
            f"append-only: this account may not {what} (that takes an account with the full role)"
        )

    async def _list(self, request: Request, account: Account) -> Response:
        kind = _KINDS.get(request.path_params["kind"])
        if kind is None:
            return PlainTextResponse("no such kind\n", status_code=404)
        # The first entry is read before answering, so an error of the storage (a missing
        # directory, a denied listing) is a status, not a cut-off body.
        entries = self.storage.list(kind)
        first = await run_in_threadpool(_first, entries)
        return StreamingResponse(_listing(first, entries), media_type=LIST_TYPE)


def _first(entries: Iterator[ObjectInfo]) -> ObjectInfo | None:
    return next(entries, None)


def _listing(first: ObjectInfo | None, rest: Iterator[ObjectInfo]) -> Iterator[bytes]:
    """A JSON array streamed in batches of entries (each batch is one hop of the thread
    pool); an error half-way leaves it unclosed, which the client refuses as cut short."""
    if first is None:
        yield b"[]"
        return
    batch = [b"[" + _entry(first)]
    try:
        for info in rest:
            batch.append(b"," + _entry(info))
            if len(batch) >= LIST_BATCH:
                yield b"".join(batch)
                batch = []
    except StorageError as exc:
        LOG.warning("storage: %s", exc)
        yield b"".join(batch)
        return
    batch.append(b"]")
    yield b"".join(batch)


def _entry(info: ObjectInfo) -> bytes:
    return json.dumps({"name": info.name, "size": info.size}).encode()


def _json(doc: Any) -> Response:
    return Response(json.dumps(doc), media_type="application/json")
