"""A synchronous client for QEMU's machine protocol (QMP) and its guest agent (QGA), both JSON
over a unix socket. Small on purpose: freezeframe sends a handful of commands in order and
waits for a few events; asynchronous machinery would add nothing.

QMP: a greeting, ``qmp_capabilities``, then commands answered by ``return`` or ``error``, with
events interleaved. QEMU accepts one client per QMP socket at a time, and any number of
``-qmp`` options: give freezeframe a socket of its own.

QGA: no greeting; a client first sends ``guest-sync-delimited`` with a random id and skips
everything up to the 0xFF delimiter and the matching reply, since a previous client may have
left a half-read answer in the channel.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import struct
import time
from typing import Any

from freezeframe.errors import (
    QmpError,
)
from freezeframe.vm import timeouts

DELIMITER = b"\xff"


class _JsonSocket:
    def __init__(self, path: str, timeout_s: float, what: str) -> None:
        self.path = path
        self.what = what
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise QmpError(f"{what} {path}: {exc.strerror or exc}") from exc
        self._buffer = b""

    def send(self, message: dict[str, Any], prefix: bytes = b"") -> None:
        try:
            self._sock.sendall(prefix + json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"{self.what} {self.path}: {exc.strerror or exc}") from exc

    def receive(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"{self.what} {self.path}: no answer within {timeout_s:g} s")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError as exc:
                raise QmpError(
                    f"{self.what} {self.path}: no answer within {timeout_s:g} s"
                ) from exc
            except OSError as exc:
                raise QmpError(f"{self.what} {self.path}: {exc.strerror or exc}") from exc
            if not data:
                raise QmpError(f"{self.what} {self.path}: the connection was closed")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        line = line.replace(DELIMITER, b"").strip()
        if not line:
            return self.receive(max(deadline - time.monotonic(), 0.001))
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise QmpError(f"{self.what} {self.path}: not JSON: {line[:80]!r}") from exc
        if not isinstance(message, dict):
            raise QmpError(f"{self.what} {self.path}: unexpected message {line[:80]!r}")
        return message

    def skip_to_delimiter(self, timeout_s: float) -> None:
        """Drop whatever precedes the guest agent's 0xFF sync delimiter."""
        deadline = time.monotonic() + timeout_s
        while DELIMITER not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"{self.what} {self.path}: the guest agent does not answer")
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, OSError) as exc:
                raise QmpError(f"{self.what} {self.path}: the guest agent does not answer") from exc
            if not data:
                raise QmpError(f"{self.what} {self.path}: the connection was closed")
            self._buffer += data
        self._buffer = self._buffer.partition(DELIMITER)[2]

    def peer_pid(self) -> int:
        """The process at the other end (QEMU), from the socket's credentials."""
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])

    def close(self) -> None:
        self._sock.close()


class Qmp:
    """One QMP session. ``execute`` returns the command's ``return`` or raises ``QmpError``
    with QEMU's message; events seen meanwhile are kept for ``wait_event``. ``timeout_s``: how
    long one answer may take (default: ``timeouts.QMP_S``, or ``FREEZEFRAME_VM_TIMEOUT``)."""

    def __init__(self, path: str, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or timeouts.vm_timeout(timeouts.QMP_S)
        self.timeout_s = timeout_s
        self._conn = _JsonSocket(path, timeout_s, "QMP")
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        try:
            greeting = self._conn.receive(timeout_s)
            if "QMP" not in greeting:
                raise QmpError(f"QMP {path}: not a QMP socket (no greeting)")
            self.version = greeting["QMP"].get("version", {}).get("qemu", {})
            self.execute("qmp_capabilities")
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        self._next_id += 1
        ident = f"ff-{self._next_id}"
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        self._conn.send(message)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            reply = self._conn.receive(max(deadline - time.monotonic(), 0.001))
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != ident:
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('desc', error)}")
            return reply.get("return")

    def wait_event(
        self, name: str, timeout_s: float, match: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The first event ``name`` whose data contains ``match``, seen already or to come."""

        def matches(event: dict[str, Any]) -> bool:
            data = event.get("data", {})
            return event.get("event") == name and all(
                data.get(k) == v for k, v in (match or {}).items()
            )

        deadline = time.monotonic() + timeout_s
        while True:
            for index, event in enumerate(self.events):
                if matches(event):
                    return self.events.pop(index)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"QMP: no {name} event within {timeout_s:g} s")
            message = self._conn.receive(left)
            if "event" in message:
                self.events.append(message)

    def qemu_command_line(self) -> list[str]:
        """QEMU's own argv, for the record of what was backed up ([] if not readable)."""
        try:
            with open(f"/proc/{self._conn.peer_pid()}/cmdline", "rb") as f:
                return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            return []

    def close(self) -> None:
        self._conn.close()


class GuestAgent:
    """One session with the QEMU guest agent inside a VM. ``timeout_s``: how long one answer
    may take (default: ``timeouts.AGENT_S``, or ``FREEZEFRAME_VM_TIMEOUT``)."""

    def __init__(self, path: str, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or timeouts.vm_timeout(timeouts.AGENT_S)
        self.timeout_s = timeout_s
        self._conn = _JsonSocket(path, timeout_s, "guest agent")
        try:
            self._sync()
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync(self) -> None:
        """A 0xFF byte first resets the agent's parser after anything a previous client left
        half sent; then everything up to the agent's own 0xFF and the matching reply is
        skipped."""
        token = random.randrange(1, 2**31)
        message = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        self._conn.send(message, DELIMITER)
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._conn.skip_to_delimiter(max(deadline - time.monotonic(), 0.001))
            reply = self._conn.receive(max(deadline - time.monotonic(), 0.001))
            if reply.get("return") == token:
                return

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> Any:
        ident = random.randrange(1, 2**31)
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        self._conn.send(message)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:  # a reply to an abandoned earlier request may come first
            reply = self._conn.receive(max(deadline - time.monotonic(), 0.001))
            if reply.get("id") == ident:
                break
        if "error" in reply:
            error = reply["error"]
            raise QmpError(f"guest agent {command}: {error.get('desc', error)}")
        return reply.get("return")

    def read_file(self, path: str, limit: int = 1 << 20) -> bytes | None:
        """A guest file's content through guest-file-*, or None when it cannot be opened."""
        try:
            handle = self.execute("guest-file-open", {"path": path, "mode": "r"})
        except QmpError:
            return None
        data = b""
        try:
            while len(data) < limit:
                chunk = self.execute("guest-file-read", {"handle": handle, "count": 65536})
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            self.execute("guest-file-close", {"handle": handle})
        return data

    def write_file(self, path: str, data: bytes) -> None:
        """Create or replace a guest file through guest-file-*."""
        handle = self.execute("guest-file-open", {"path": path, "mode": "w"})
        try:
            self.execute(
                "guest-file-write",
                {"handle": handle, "buf-b64": base64.b64encode(data).decode()},
            )
            self.execute("guest-file-flush", {"handle": handle})
        finally:
            self.execute("guest-file-close", {"handle": handle})

    def close(self) -> None:
        self._conn.close()
