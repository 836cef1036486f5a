"""The SFTP protocol (version 3, as OpenSSH speaks it) over one SSH channel: framing, the few
requests a repository needs, and pipelined reads and writes.

Written here rather than taken from paramiko's SFTPClient because a backup needs what that
client does not give: every pipelined write's status checked (a full disk must fail the put,
never leave a short object behind), the server's extensions read from its VERSION packet (so
``fsync@openssh.com`` and ``posix-rename@openssh.com`` are used only where offered), reads of a
range in flight at once without a helper thread, and errors that say whether the server
refused (``SftpStatus``) or the connection failed (any other exception).

One ``SftpChannel`` is used by one thread at a time (``storage.sftp`` keeps a pool of them).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Protocol

VERSION = 3
REQUEST_BYTES = 32 * 1024  # every server takes this much per READ/WRITE (OpenSSH up to 255 KiB)
IN_FLIGHT = 64  # requests sent before the first reply is awaited: 2 MiB, the SSH window
MAX_PACKET = 1 << 20  # OpenSSH's replies are at most 256 KiB; more is a broken stream

FSYNC = "fsync@openssh.com"
POSIX_RENAME = "posix-rename@openssh.com"
STATVFS = "statvfs@openssh.com"

# request and reply types
_INIT, _VERSION = 1, 2
_OPEN, _CLOSE, _READ, _WRITE, _LSTAT, _FSTAT = 3, 4, 5, 6, 7, 8
_FSETSTAT, _OPENDIR, _READDIR, _REMOVE, _MKDIR, _RMDIR, _REALPATH, _STAT, _RENAME = (
    10, 11, 12, 13, 14, 15, 16, 17, 18,
)  # fmt: skip
_EXTENDED = 200
_STATUS, _HANDLE, _DATA, _NAME, _ATTRS, _EXTENDED_REPLY = 101, 102, 103, 104, 105, 201

# open flags and attribute flags
READ, WRITE, CREATE, TRUNCATE, EXCLUSIVE = 0x01, 0x02, 0x08, 0x10, 0x20
_ATTR_SIZE, _ATTR_UIDGID, _ATTR_PERMISSIONS, _ATTR_TIMES, _ATTR_EXTENDED = (
    0x1, 0x2, 0x4, 0x8, 0x80000000,
)  # fmt: skip

# status codes
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, OP_UNSUPPORTED = 0, 1, 2, 3, 4, 8
_STATUS_NAMES = {
    EOF: "end of file",
    NO_SUCH_FILE: "no such file",
    PERMISSION_DENIED: "permission denied",
    FAILURE: "failure",
    5: "bad message",
    6: "no connection",
    7: "connection lost",
    OP_UNSUPPORTED: "operation unsupported",
}


class Stream(Protocol):
    """What the channel needs of an SSH channel (paramiko's ``Channel`` is one)."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self, nbytes: int) -> bytes: ...

    def close(self) -> None: ...


class SftpStatus(Exception):
    """The server answered a request with an error status (the connection is fine)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        name = _STATUS_NAMES.get(code, f"status {code}")
        detail = message if message and message.lower() != name else ""
        super().__init__(f"{name} ({detail})" if detail else name)


class ProtocolError(Exception):
    """The server broke the protocol or the stream ended: the channel cannot be used again."""


@dataclass(frozen=True)
class Attributes:
    """What a STAT, FSTAT or directory listing tells of a file; None where the server did not."""

    size: int | None = None
    mode: int | None = None


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _path(path: str) -> bytes:
    return _string(path.encode("utf-8", "surrogateescape"))


def _mode_attrs(mode: int | None) -> bytes:
    if mode is None:
        return struct.pack(">I", 0)
    return struct.pack(">II", _ATTR_PERMISSIONS, mode)


class _Reader:
    """Reads the fields of one reply."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(value)

    def u64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.data, self.at)
        self.at += 8
        return int(value)

    def string(self) -> bytes:
        length = self.u32()
        if self.at + length > len(self.data):
            raise ProtocolError("a reply's string runs past its end")
        value = self.data[self.at : self.at + length]
        self.at += length
        return value

    def attributes(self) -> Attributes:
        flags = self.u32()
        size = self.u64() if flags & _ATTR_SIZE else None
        if flags & _ATTR_UIDGID:
            self.at += 8
        mode = self.u32() if flags & _ATTR_PERMISSIONS else None
        if flags & _ATTR_TIMES:
            self.at += 8
        if flags & _ATTR_EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return Attributes(size, mode)


class SftpChannel:
    """An SFTP session on ``stream``; ``extensions`` are those the server offered."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._next_id = 1
        self._buffer = bytearray()
        self._send(_INIT, struct.pack(">I", VERSION), with_id=False)
        kind, body = self._receive()
        if kind != _VERSION:
            raise ProtocolError(f"the server answered SFTP's INIT with packet type {kind}")
        reader = _Reader(body)
        self.version = reader.u32()
        extensions: dict[str, bytes] = {}
        while reader.at < len(body):
            name = reader.string().decode("ascii", "replace")
            extensions[name] = reader.string()
        self.extensions = extensions

    def close(self) -> None:
        self._stream.close()

    # -- framing ------------------------------------------------------------------------------

    def _send(self, kind: int, payload: bytes, *, with_id: bool = True) -> int:
        request = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        head = struct.pack(">I", request) if with_id else b""
        body = bytes([kind]) + head + payload
        self._stream.sendall(struct.pack(">I", len(body)) + body)
        return request

    def _read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self._stream.recv(max(count - len(self._buffer), 256 * 1024))
            if not chunk:
                raise ProtocolError("the server closed the SFTP channel")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _receive(self) -> tuple[int, bytes]:
        (length,) = struct.unpack(">I", self._read_exactly(4))
        if not 1 <= length <= MAX_PACKET:
            raise ProtocolError(f"the server sent an SFTP packet of {length} bytes")
        packet = self._read_exactly(length)
        return packet[0], packet[1:]

    def _reply(self, request: int) -> tuple[int, _Reader]:
        """The reply to ``request``; replies come in the order of the requests (OpenSSH
        answers each in turn), so one out of order means a stream out of step."""
        kind, body = self._receive()
        reader = _Reader(body)
        answered = reader.u32()
        if answered != request:
            raise ProtocolError(f"the server answered request {answered}, not {request}")
        return kind, reader

    def _status(self, kind: int, reader: _Reader, *, allow_eof: bool = False) -> bool:
        """Raise SftpStatus for an error status; True for OK, False for EOF (if allowed)."""
        if kind != _STATUS:
            raise ProtocolError(f"expected a status, the server sent packet type {kind}")
        code = reader.u32()
        message = reader.string().decode("utf-8", "replace")
        if code == OK:
            return True
        if code == EOF and allow_eof:
            return False
        raise SftpStatus(code, message)

    def _call_status(self, kind: int, payload: bytes) -> None:
        self._status(*self._reply(self._send(kind, payload)))

    def _call_handle(self, kind: int, payload: bytes) -> bytes:
        reply, reader = self._reply(self._send(kind, payload))
        if reply == _HANDLE:
            return reader.string()
        self._status(reply, reader)
        raise ProtocolError(f"expected a handle, the server sent packet type {reply}")

    def _call_attrs(self, kind: int, payload: bytes) -> Attributes:
        reply, reader = self._reply(self._send(kind, payload))
        if reply == _ATTRS:
            return reader.attributes()
        self._status(reply, reader)
        raise ProtocolError(f"expected attributes, the server sent packet type {reply}")

    # -- requests -----------------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int | None = None) -> bytes:
        return self._call_handle(_OPEN, _path(path) + struct.pack(">I", flags) + _mode_attrs(mode))

    def close_handle(self, handle: bytes) -> None:
        self._call_status(_CLOSE, _string(handle))

    def stat(self, path: str) -> Attributes:
        return self._call_attrs(_STAT, _path(path))

    def lstat(self, path: str) -> Attributes:
        return self._call_attrs(_LSTAT, _path(path))

    def fstat(self, handle: bytes) -> Attributes:
        return self._call_attrs(_FSTAT, _string(handle))

    def fchmod(self, handle: bytes, mode: int) -> None:
        self._call_status(_FSETSTAT, _string(handle) + _mode_attrs(mode))

    def chmod(self, path: str, mode: int) -> None:
        self._call_status(9, _path(path) + _mode_attrs(mode))  # SETSTAT

    def mkdir(self, path: str, mode: int | None = None) -> None:
        self._call_status(_MKDIR, _path(path) + _mode_attrs(mode))

    def rmdir(self, path: str) -> None:
        self._call_status(_RMDIR, _path(path))

    def remove(self, path: str) -> None:
        self._call_status(_REMOVE, _path(path))

    @property
    def replaces_atomically(self) -> bool:
        """Whether ``rename`` replaces an existing name in one step (posix-rename)."""
        return POSIX_RENAME in self.extensions

    def rename(self, old: str, new: str) -> None:
        """Atomic replacement where the server offers posix-rename, else SFTP's RENAME (which
        fails when ``new`` exists)."""
        if self.replaces_atomically:
            self._call_status(_EXTENDED, _string(POSIX_RENAME.encode()) + _path(old) + _path(new))
        else:
            self._call_status(_RENAME, _path(old) + _path(new))

    def fsync(self, handle: bytes) -> bool:
        """Make a file durable on the server; False when the server has no way to."""
        if FSYNC not in self.extensions:
            return False
        self._call_status(_EXTENDED, _string(FSYNC.encode()) + _string(handle))
        return True

    def free_bytes(self, path: str) -> int | None:
        """The bytes an unprivileged writer may still use on the file system of ``path``
        (statvfs), or None where the server cannot say."""
        if STATVFS not in self.extensions:
            return None
        reply, reader = self._reply(self._send(_EXTENDED, _string(STATVFS.encode()) + _path(path)))
        if reply != _EXTENDED_REPLY:
            self._status(reply, reader)
            raise ProtocolError(f"expected a statvfs reply, the server sent packet type {reply}")
        _bsize, frsize, _blocks, _bfree, bavail = (reader.u64() for _ in range(5))
        return frsize * bavail

    def realpath(self, path: str) -> str:
        reply, reader = self._reply(self._send(_REALPATH, _path(path)))
        if reply != _NAME:
            self._status(reply, reader)
            raise ProtocolError(f"expected a name, the server sent packet type {reply}")
        if reader.u32() < 1:
            raise ProtocolError("the server resolved a path to no name")
        return reader.string().decode("utf-8", "surrogateescape")

    def listdir(self, path: str) -> list[tuple[str, Attributes]]:
        """Every entry of a directory but ``.`` and ``..``, with its attributes."""
        handle = self._call_handle(_OPENDIR, _path(path))
        entries: list[tuple[str, Attributes]] = []
        try:
            while True:
                reply, reader = self._reply(self._send(_READDIR, _string(handle)))
                if reply != _NAME:
                    if not self._status(reply, reader, allow_eof=True):
                        break
                    raise ProtocolError("the server answered READDIR with OK")
                for _ in range(reader.u32()):
                    name = reader.string().decode("utf-8", "surrogateescape")
                    reader.string()  # the long name, for humans
                    attributes = reader.attributes()
                    if name not in (".", ".."):
                        entries.append((name, attributes))
        finally:
            self.close_handle(handle)
        return entries

    # -- many at once ---------------------------------------------------------------------

    def _pipeline(self, requests: list[tuple[int, bytes]]) -> list[tuple[int, _Reader]]:
        """Send every request (up to IN_FLIGHT outstanding) and return the replies in order:
        one round trip's wait for many requests (a data directory has 256 shards)."""
        replies: list[tuple[int, _Reader]] = []
        pending: deque[int] = deque()
        queue = deque(requests)
        while queue or pending:
            while queue and len(pending) < IN_FLIGHT:
                kind, payload = queue.popleft()
                pending.append(self._send(kind, payload))
            replies.append(self._reply(pending.popleft()))
        return replies

    def mkdirs(self, paths: list[str], mode: int) -> list[SftpStatus | None]:
        """MKDIR each path; the status of each (None when made)."""
        results: list[SftpStatus | None] = []
        for kind, reader in self._pipeline([(_MKDIR, _path(p) + _mode_attrs(mode)) for p in paths]):
            try:
                self._status(kind, reader)
                results.append(None)
            except SftpStatus as exc:
                results.append(exc)
        return results

    def listdirs(self, paths: list[str]) -> list[list[tuple[str, Attributes]] | SftpStatus]:
        """The entries of each directory (as ``listdir``), or the status that refused it."""
        results: list[list[tuple[str, Attributes]] | SftpStatus] = []
        handles: dict[int, bytes] = {}
        for number, (kind, reader) in enumerate(
            self._pipeline([(_OPENDIR, _path(p)) for p in paths])
        ):
            if kind == _HANDLE:
                handles[number] = reader.string()
                results.append([])
                continue
            try:
                self._status(kind, reader)
                raise ProtocolError(f"expected a handle, the server sent packet type {kind}")
            except SftpStatus as exc:
                results.append(exc)
        reading = dict(handles)
        while reading:
            numbers = list(reading)
            replies = self._pipeline([(_READDIR, _string(reading[n])) for n in numbers])
            for number, (kind, reader) in zip(numbers, replies, strict=True):
                if kind != _NAME:
                    try:
                        if self._status(kind, reader, allow_eof=True):
                            raise ProtocolError("the server answered READDIR with OK")
                    except SftpStatus as exc:
                        results[number] = exc
                    del reading[number]
                    continue
                entries = results[number]
                assert isinstance(entries, list)
                for _ in range(reader.u32()):
                    name = reader.string().decode("utf-8", "surrogateescape")
                    reader.string()
                    attributes = reader.attributes()
                    if name not in (".", ".."):
                        entries.append((name, attributes))
        for kind, reader in self._pipeline([(_CLOSE, _string(h)) for h in handles.values()]):
            self._status(kind, reader)
        return results

    # -- pipelined data -----------------------------------------------------------------------

    def write(self, handle: bytes, data: bytes | memoryview) -> None:
        """Write ``data`` from offset 0 with up to IN_FLIGHT requests outstanding; every
        request's status is checked, so a write the server refused fails here."""
        view = memoryview(data)
        pending: deque[int] = deque()
        offset = 0
        failure: SftpStatus | None = None
        while offset < len(view) or pending:
            while offset < len(view) and len(pending) < IN_FLIGHT and failure is None:
                chunk = view[offset : offset + REQUEST_BYTES]
                payload = _string(handle) + struct.pack(">QI", offset, len(chunk))
                pending.append(self._send(_WRITE, payload + chunk.tobytes()))
                offset += len(chunk)
            if not pending:
                break
            try:
                self._status(*self._reply(pending.popleft()))
            except SftpStatus as exc:
                failure = failure or exc  # drain the replies still due, then fail
        if failure is not None:
            raise failure

    def read(self, handle: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file), with up
        to IN_FLIGHT requests outstanding."""
        parts: list[bytes] = []
        pending: deque[tuple[int, int, int]] = deque()  # request, offset, size
        position, end = offset, offset + length
        at_end = False
        failure: SftpStatus | None = None
        got = 0
        while (position < end and not at_end) or pending:
            while position < end and not at_end and len(pending) < IN_FLIGHT and not failure:
                size = min(REQUEST_BYTES, end - position)
                payload = _string(handle) + struct.pack(">QI", position, size)
                pending.append((self._send(_READ, payload), position, size))
                position += size
            if not pending:
                break
            request, _start, size = pending.popleft()
            kind, reader = self._reply(request)
            if kind == _DATA and not at_end and failure is None:
                data = reader.string()
                parts.append(data)
                got += len(data)
                if len(data) < size:  # a short read: ask for the rest after what is pending
                    position = offset + got
                    at_end = self._drain_then_continue(pending)
                    pending.clear()
            elif kind == _DATA:
                reader.string()
            else:
                try:
                    if not self._status(kind, reader, allow_eof=True):
                        at_end = True
                except SftpStatus as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure
        return b"".join(parts)

    def _drain_then_continue(self, pending: deque[tuple[int, int, int]]) -> bool:
        """Read and drop the replies to requests sent past a short read; True if one of
        them said end of file (then the short read was the last)."""
        at_end = False
        for request, _start, _size in pending:
            kind, reader = self._reply(request)
            if kind == _STATUS:
                try:
                    at_end = not self._status(kind, reader, allow_eof=True) or at_end
                except SftpStatus:
                    at_end = True  # the range ends short here, which the caller reports
        return at_end
