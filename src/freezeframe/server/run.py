"""Running the repository server: bind the address, then serve with uvicorn until SIGTERM or
SIGINT, finishing the requests in flight (a half-received upload is never stored: a put is
made only once its whole body has arrived).

The socket is bound here, before uvicorn starts, so the address (with the port the kernel
chose for port 0) is known and announced only once connections can be accepted.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from freezeframe.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8000"
GRACE_SECONDS = 30  # how long a stop waits for the requests in flight


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def netloc(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if port is None else port}"


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` or ``[V6]:PORT``; the host is required so no one serves on every address
    by leaving it out."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: give it as HOST:PORT (e.g. {DEFAULT_LISTEN})")
    return Listen(host, int(port))


def bind(listen: Listen) -> socket.socket:
    """A listening socket; UsageError (one line) when the address cannot be had."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--listen {listen.netloc()}: {exc.strerror}") from exc
    family, _type, _proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: a response's head and body go out as two writes,
        # and Nagle would hold the body until the client's delayed ACK (40 ms a request).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(256)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {listen.netloc()}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Both or neither, and loadable: a bad file is one line now, not a failed handshake
    later."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from exc


class _Server(uvicorn.Server):
    """uvicorn's server, except that a stop signal ends the serving and nothing else: uvicorn
    raises the signal again once stopped, which would make a clean stop look interrupted."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(
    app: object,
    sock: socket.socket,
    *,
    tls_cert: Path | None,
    tls_key: Path | None,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level=logging.WARNING,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_SECONDS,
        server_header=False,
        log_config=None,
    )
    server = _Server(config)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if on_stop is not None:
            on_stop()
