"""A fault-injecting HTTP proxy on loopback, in front of a real S3 server, for the hostile tests.

Clients are pointed at the proxy's endpoint instead of the server's; it relays every request
(the Host header untouched, so SigV4 signatures still verify) over a connection of its own per
client connection, and does to the requests its rules match what a bad network or a bad server
does: drop the connection after N bytes of a request body (mid-upload: before the server sees
any of it, or after the server got those N bytes) or of a response body (mid-download), answer
500/503 with an S3 XML error (``SlowDown`` too) for the next K requests or a fraction of them,
delay an answer, send fewer bytes of a body than its Content-Length says, and count every
request. ``refuse()`` closes the listening socket (connection refused), ``accept()`` opens it
again on the same port.

A test adds rules (``proxy.add(Rule(...))``) and removes them (``proxy.reset()``); the first
rule that matches a request and has uses left decides what happens to it (a rule with
``larger_than`` is asked once the server's answer is known). A request is counted when the
server has done it (or, for a fault that keeps it from the server, when it is read).

Threads, not asyncio: each client connection is a thread (botocore opens a few dozen at most),
and blocking sockets make "send N bytes, then close" exact.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import urlsplit

MAX_HEADER = 64 * 1024
_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Service is unable to handle request."),
}


class Action(Enum):
    """What a rule does to a request it matches."""

    DROP_REQUEST = "drop-request"  # read ``after_bytes`` of the request body, then close
    CUT_UPLOAD = "cut-upload"  # send the server the head and ``after_bytes``, then close both
    DROP_RESPONSE = "drop-response"  # relay the answer's head and ``after_bytes`` of its body
    TRUNCATE = "truncate"  # as DROP_RESPONSE, with the full Content-Length announced
    ERROR = "error"  # answer ``status`` with an S3 error document (``code``) instead
    DELAY = "delay"  # relay the answer after ``seconds``
    RESET = "reset"  # close the connection as soon as the request line is read


@dataclass
class Rule:
    """``times``: how many requests it may act on (None: every one it matches);
    ``fraction``: the chance that it acts on a matching request (drawn from ``seed``)."""

    action: Action
    method: str | None = None  # "PUT", "GET", ...; None matches any
    path: str | None = None  # a regular expression searched in the request's path
    times: int | None = None
    fraction: float = 1.0
    after_bytes: int = 0
    status: int = 503
    code: str | None = None  # the S3 error code; by default InternalError / ServiceUnavailable
    seconds: float = 0.0
    larger_than: int | None = None  # only answers whose body is longer (a response's rule)
    seed: int = 0
    used: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._path = re.compile(self.path) if self.path is not None else None

    def _matches(self, method: str, path: str, size: int | None) -> bool:
        if (self.larger_than is None) != (size is None):
            return False  # size rules are asked once the answer is known, the others before
        if size is not None and self.larger_than is not None and size <= self.larger_than:
            return False
        if self.method is not None and method != self.method:
            return False
        if self._path is not None and not self._path.search(path):
            return False
        if self.times is not None and self.used >= self.times:
            return False
        return self.fraction >= 1.0 or self._rng.random() < self.fraction


@dataclass(frozen=True)
class Seen:
    """One request the proxy read: its method, its path, and the rule's action (or None)."""

    method: str
    path: str
    action: Action | None


class FaultProxy:
    """A running proxy to ``upstream`` (``http://host:port``); ``endpoint`` is what clients use."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"the fault proxy relays plain http://HOST:PORT, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._port = 0
        self._closed = False
        self.accept()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- the rules and the counts ------------------------------------------------------------

    def add(self, *rules: Rule) -> None:
        with self._lock:
            self._rules += rules

    def reset(self) -> None:
        """No rules, nothing counted, the listener open (as a new proxy, on the same port)."""
        with self._lock:
            self._rules.clear()
            self._seen.clear()
        if self._listener is None:
            self.accept()

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """The requests read so far that match (a regular expression for ``path``)."""
        pattern = re.compile(path) if path is not None else None
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method)
                and (pattern is None or pattern.search(s.path))
            ]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return len(self.seen(method, path))

    def actions(self) -> Counter[Action]:
        """How many requests each action was done to."""
        with self._lock:
            return Counter(s.action for s in self._seen if s.action is not None)

    def _decide(self, method: str, path: str, size: int | None = None) -> Rule | None:
        """The first rule that acts on this request: ``size`` None before it is relayed,
        the answer's body length after (for the rules with ``larger_than``)."""
        with self._lock:
            for rule in self._rules:
                if rule._matches(method, path, size):
                    rule.used += 1
                    return rule
            return None

    def _record(self, method: str, path: str, rule: Rule | None) -> None:
        with self._lock:
            self._seen.append(Seen(method, path, rule.action if rule is not None else None))

    # -- listening ---------------------------------------------------------------------------

    def accept(self) -> None:
        """Listen (again) on the proxy's port; the first call chooses a free one."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(64)
        self._port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Stop listening and cut every open connection: new connections are refused."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            _abort(client)

    def close(self) -> None:
        self._closed = True
        self.refuse()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused or closed
            with self._lock:
                self._clients.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    # -- one client connection ---------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = client.makefile("rb")
        try:
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                method, target, version, headers = head
                path = urlsplit(target).path
                rule = self._decide(method, path)
                action = rule.action if rule is not None else None
                if action in (Action.RESET, Action.DROP_REQUEST, Action.ERROR, Action.CUT_UPLOAD):
                    self._record(method, path, rule)  # what the server never sees
                if action is Action.RESET:
                    _abort(client)
                    return
                length = int(_header(headers, "Content-Length") or 0)
                if _header(headers, "Expect", "").lower() == "100-continue":
                    client.sendall(f"{version} 100 Continue\r\n\r\n".encode())
                    headers = [(k, v) for k, v in headers if k.lower() != "expect"]
                if action is Action.DROP_REQUEST:
                    assert rule is not None
                    reader.read(min(rule.after_bytes, length))
                    _abort(client)
                    return
                if action is Action.CUT_UPLOAD:
                    assert rule is not None
                    _cut_upload(self._upstream, method, target, headers, reader, rule.after_bytes)
                    _abort(client)
                    return
                body = reader.read(length) if length else b""
                if len(body) != length:
                    return
                if action is Action.ERROR:
                    assert rule is not None
                    client.sendall(_error_answer(rule, method, target))
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self._upstream, timeout=300)
                try:
                    status, reason, answer_headers, answer = _relay(
                        upstream, method, target, headers, body
                    )
                except (OSError, http.client.HTTPException):
                    self._record(method, path, None)
                    _abort(client)
                    return
                if rule is None:
                    rule = self._decide(method, path, len(answer))
                    action = rule.action if rule is not None else None
                self._record(method, path, rule)  # the server has done it by now
                if action is Action.DELAY:
                    assert rule is not None
                    time.sleep(rule.seconds)
                out = [f"{version} {status} {reason}\r\n".encode()]
                for name, value in answer_headers:
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        out.append(f"{name}: {value}\r\n".encode())
                announced = len(answer)
                if method == "HEAD":
                    announced = int(_header(answer_headers, "Content-Length") or 0)
                out.append(f"Content-Length: {announced}\r\n\r\n".encode())
                if action in (Action.DROP_RESPONSE, Action.TRUNCATE) and method != "HEAD":
                    assert rule is not None
                    client.sendall(b"".join(out) + answer[: min(rule.after_bytes, len(answer))])
                    if action is Action.TRUNCATE:
                        client.shutdown(socket.SHUT_WR)  # a clean end of the stream, too soon
                        time.sleep(0.05)
                    _abort(client)
                    return
                client.sendall(b"".join(out) + (b"" if method == "HEAD" else answer))
        except OSError:
            return
        finally:
            with self._lock:
                self._clients.discard(client)
            with contextlib.suppress(OSError):
                reader.close()
                client.close()
            if upstream is not None:
                upstream.close()


def _read_head(reader: object) -> tuple[str, str, str, list[tuple[str, str]]] | None:
    """The request line and headers, or None at the end of the connection."""
    readline = reader.readline  # type: ignore[attr-defined]
    line = readline(MAX_HEADER)
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: list[tuple[str, str]] = []
    while True:
        raw = readline(MAX_HEADER).decode("latin-1").rstrip("\r\n")
        if not raw:
            return method, target, version, headers
        name, _, value = raw.partition(":")
        headers.append((name.strip(), value.strip()))


def _header(headers: list[tuple[str, str]], name: str, default: str | None = None) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return default


def _relay(
    upstream: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """One request to the server over the kept connection (opened again once if the server
    had closed it); the answer's status, reason, headers and whole body."""
    for attempt in range(2):
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in ("connection", "keep-alive", "proxy-connection"):
                    upstream.putheader(name, value)
            upstream.endheaders(body if body else None)
            response = upstream.getresponse()
            answer = response.read()
            return response.status, response.reason, response.getheaders(), answer
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
            upstream.close()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _cut_upload(  # noqa: PLR0917 (one request's parts)
    upstream: tuple[str, int],
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    reader: object,
    count: int,
) -> None:
    """The request's head and its first ``count`` body bytes to the server, on a connection of
    its own that is then reset: the server sees an upload that stops short of its length."""
    connection = http.client.HTTPConnection(*upstream, timeout=30)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        connection.send(reader.read(count))  # type: ignore[attr-defined]
        time.sleep(0.2)  # the server has read what came
        assert connection.sock is not None
        _abort(connection.sock)
    finally:
        connection.close()


def _error_answer(rule: Rule, method: str, target: str) -> bytes:
    code, message = _ERRORS.get(rule.status, ("InternalError", "injected"))
    if rule.code is not None:
        code = rule.code
        if code == "SlowDown":
            message = "Please reduce your request rate."
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{urlsplit(target).path}</Resource><RequestId>faultproxy</RequestId></Error>"
    ).encode()
    reason = http.client.responses.get(rule.status, "Error")
    head = (
        f"HTTP/1.1 {rule.status} {reason}\r\nContent-Type: application/xml\r\n"
        f"x-amz-request-id: faultproxy\r\nContent-Length: {len(document)}\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + document


def _abort(sock: socket.socket) -> None:
    """Close a connection at once (a reset where the kernel can), so the peer sees it drop."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A proxy to ``upstream`` for the block; closed on every way out."""
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
