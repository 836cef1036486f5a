"""A client for the Network Block Device protocol, the read-only subset freezeframe needs to read
the point-in-time ("fleecing") disk images QEMU exports over a unix socket.

Our own code because Debian's python3-libnbd binds only the system interpreter, not our
virtual environment, and PyPI has no maintained NBD client; the subset is small and written
from the protocol specification (doc/proto.md of NetworkBlockDevice/nbd).

Spoken: fixed newstyle handshake; options ``NBD_OPT_STRUCTURED_REPLY``,
``NBD_OPT_SET_META_CONTEXT`` (``base:allocation``, ``qemu:dirty-bitmap:NAME`` or any other
context) and ``NBD_OPT_GO`` with ``NBD_INFO_BLOCK_SIZE``, falling back to
``NBD_OPT_EXPORT_NAME`` when the server lacks ``NBD_OPT_GO``; commands ``NBD_CMD_READ``
(simple or structured replies), ``NBD_CMD_BLOCK_STATUS`` and ``NBD_CMD_DISC``.

Not spoken: oldstyle negotiation, TLS, writes (write, trim, flush, write-zeroes, cache),
extended headers (64-bit lengths), ``NBD_CMD_FLAG_DF``, several requests in flight.

Threads: an ``NbdClient`` is one connection with one request in flight at a time and no
locking; give each thread its own client. QEMU serves several connections per export, so
parallel reading means several clients.

Failures all raise ``NbdError``. A request the server answers with an error leaves the
connection usable; anything that puts the byte stream out of step (short read, time-out,
unexpected magic, malformed reply) closes the connection, and later calls raise too.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Final, Self

from freezeframe.errors import (
    NbdError,
)

# -- Magic numbers -------------------------------------------------------------------------
NBDMAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC", first word of every handshake
IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT", newstyle handshake and option requests
OLDSTYLE_MAGIC: Final = 0x00420281861253
OPTION_REPLY_MAGIC: Final = 0x0003E889045565A9
REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698
STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF

# -- Handshake flags (server) and client flags ---------------------------------------------
NBD_FLAG_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_NO_ZEROES: Final = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_C_NO_ZEROES: Final = 1 << 1

# -- Transmission flags --------------------------------------------------------------------
NBD_FLAG_HAS_FLAGS: Final = 1 << 0
NBD_FLAG_READ_ONLY: Final = 1 << 1
NBD_FLAG_SEND_FLUSH: Final = 1 << 2
NBD_FLAG_SEND_FUA: Final = 1 << 3
NBD_FLAG_ROTATIONAL: Final = 1 << 4
NBD_FLAG_SEND_TRIM: Final = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES: Final = 1 << 6
NBD_FLAG_SEND_DF: Final = 1 << 7
NBD_FLAG_CAN_MULTI_CONN: Final = 1 << 8
NBD_FLAG_SEND_CACHE: Final = 1 << 10
NBD_FLAG_SEND_FAST_ZERO: Final = 1 << 11

# -- Options and option replies ------------------------------------------------------------
NBD_OPT_EXPORT_NAME: Final = 1
NBD_OPT_ABORT: Final = 2
NBD_OPT_GO: Final = 7
NBD_OPT_STRUCTURED_REPLY: Final = 8
NBD_OPT_SET_META_CONTEXT: Final = 10

NBD_REP_ACK: Final = 1
NBD_REP_INFO: Final = 3
NBD_REP_META_CONTEXT: Final = 4
NBD_REP_FLAG_ERROR: Final = 1 << 31
NBD_REP_ERR_UNSUP: Final = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY: Final = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID: Final = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM: Final = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD: Final = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN: Final = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN: Final = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD: Final = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG: Final = NBD_REP_FLAG_ERROR | 9

NBD_INFO_EXPORT: Final = 0
NBD_INFO_BLOCK_SIZE: Final = 3

_OPTION_NAMES: Final = {
    NBD_OPT_EXPORT_NAME: "NBD_OPT_EXPORT_NAME",
    NBD_OPT_GO: "NBD_OPT_GO",
    NBD_OPT_STRUCTURED_REPLY: "NBD_OPT_STRUCTURED_REPLY",
    NBD_OPT_SET_META_CONTEXT: "NBD_OPT_SET_META_CONTEXT",
}
_OPTION_ERRORS: Final = {
    NBD_REP_ERR_UNSUP: "option not supported",
    NBD_REP_ERR_POLICY: "forbidden by server policy",
    NBD_REP_ERR_INVALID: "invalid request",
    NBD_REP_ERR_PLATFORM: "not supported on the server's platform",
    NBD_REP_ERR_TLS_REQD: "TLS required",
    NBD_REP_ERR_UNKNOWN: "no such export",
    NBD_REP_ERR_SHUTDOWN: "server is shutting down",
    NBD_REP_ERR_BLOCK_SIZE_REQD: "block size negotiation required",
    NBD_REP_ERR_TOO_BIG: "request too big",
}

# -- Commands and structured replies -------------------------------------------------------
NBD_CMD_READ: Final = 0
NBD_CMD_DISC: Final = 2
NBD_CMD_BLOCK_STATUS: Final = 7

NBD_REPLY_FLAG_DONE: Final = 1 << 0
NBD_REPLY_TYPE_NONE: Final = 0
NBD_REPLY_TYPE_OFFSET_DATA: Final = 1
NBD_REPLY_TYPE_OFFSET_HOLE: Final = 2
NBD_REPLY_TYPE_BLOCK_STATUS: Final = 5
NBD_REPLY_TYPE_ERROR_BIT: Final = 1 << 15
NBD_REPLY_TYPE_ERROR: Final = NBD_REPLY_TYPE_ERROR_BIT | 1
NBD_REPLY_TYPE_ERROR_OFFSET: Final = NBD_REPLY_TYPE_ERROR_BIT | 2

# -- Error values (the server's error field), named after the errno they stand for --------
NBD_ESHUTDOWN: Final = 108
_ERROR_NAMES: Final = {
    1: ("EPERM", "operation not permitted"),
    5: ("EIO", "input/output error"),
    12: ("ENOMEM", "cannot allocate memory"),
    22: ("EINVAL", "invalid argument"),
    28: ("ENOSPC", "no space left on device"),
    75: ("EOVERFLOW", "value too large"),
    95: ("ENOTSUP", "operation not supported"),
    NBD_ESHUTDOWN: ("ESHUTDOWN", "server is shutting down"),
}

# -- Metadata contexts ---------------------------------------------------------------------
BASE_ALLOCATION: Final = "base:allocation"
DIRTY_BITMAP_PREFIX: Final = "qemu:dirty-bitmap:"
NBD_STATE_HOLE: Final = 1 << 0  # base:allocation: not allocated in the backing storage
NBD_STATE_ZERO: Final = 1 << 1  # base:allocation: reads as zeroes
QEMU_STATE_DIRTY: Final = 1 << 0  # qemu:dirty-bitmap:NAME: changed since the bitmap began

# -- Sizes and limits ----------------------------------------------------------------------
NBD_DEFAULT_PORT: Final = 10809
DEFAULT_TIMEOUT: Final = 60.0  # seconds; a wedged QEMU must not hang a backup forever
MAX_STRING: Final = 4096  # the specification's limit for names and messages
DEFAULT_MIN_BLOCK: Final = 1
DEFAULT_PREFERRED_BLOCK: Final = 4096
DEFAULT_MAX_PAYLOAD: Final = 32 << 20  # what every server must accept without negotiation
MAX_MIN_BLOCK: Final = 64 << 10
# Our size per NBD_CMD_READ, below the server's maximum: QEMU allocates a buffer per request,
# and one of 32 MiB never fits below glibc's mmap threshold, so every request faults in a
# fresh mapping. Against qemu-nbd 7.2 on a unix socket: 1-16 MiB 1.7-2.3 GB/s, 32 MiB 0.65.
READ_REQUEST_SIZE: Final = 4 << 20
MAX_BLOCK_STATUS_REQUEST: Final = 1 << 31  # 32-bit length field, kept a power of two
DEFAULT_EXTENTS_CHUNK: Final = 1 << 30
MAX_OPTION_REPLY: Final = 1 << 20  # handshake replies are small; more is a broken server
MAX_METADATA_PAYLOAD: Final = 4 + 8 * (1 << 21)  # twice the 2^20 extents servers should send
EXPORT_NAME_ZEROES: Final = 124  # padding after NBD_OPT_EXPORT_NAME without NO_ZEROES

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_OPTION: Final = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPTION_REPLY: Final = struct.Struct(">QIII")  # magic, option, reply type, length
_INFO_EXPORT: Final = struct.Struct(">HQH")  # info type, size, transmission flags
_INFO_BLOCK_SIZE: Final = struct.Struct(">HIII")  # info type, minimum, preferred, maximum
_REQUEST: Final = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
_SIMPLE_REPLY: Final = struct.Struct(">IIQ")  # magic, error, cookie
_CHUNK: Final = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
_HOLE: Final = struct.Struct(">QI")  # offset, size
_ERROR_HEAD: Final = struct.Struct(">IH")  # error, message length
_DESCRIPTOR: Final = struct.Struct(">II")  # extent length, status flags
_ZEROS: Final = memoryview(bytes(1 << 20))


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of the export with one status; ``flags`` mean what the context defines."""

    offset: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def is_hole(self) -> bool:
        """base:allocation: not allocated; its contents are known only if ``is_zero``."""
        return bool(self.flags & NBD_STATE_HOLE)

    @property
    def is_zero(self) -> bool:
        """base:allocation: reads as zeroes, so a backup need not read it."""
        return bool(self.flags & NBD_STATE_ZERO)

    @property
    def is_dirty(self) -> bool:
        """qemu:dirty-bitmap:NAME: written since the bitmap started recording."""
        return bool(self.flags & QEMU_STATE_DIRTY)


def _server_error(error: int, message: str, what: str) -> NbdError:
    name, description = _ERROR_NAMES.get(error, (f"error {error}", "unknown error"))
    detail = f": {message}" if message else ""
    return NbdError(f"NBD server failed the {what}: {name} ({description}){detail}", error=name)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _append_merged(extents: list[Extent], extent: Extent) -> None:
    """Add ``extent``, joining it to the previous one when their status is the same."""
    if extents and extents[-1].flags == extent.flags and extents[-1].end == extent.offset:
        last = extents[-1]
        extents[-1] = Extent(last.offset, last.length + extent.length, last.flags)
    else:
        extents.append(extent)


def _encode_string(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > MAX_STRING:
        raise NbdError(f"{what} is longer than the NBD limit of {MAX_STRING} bytes")
    return data


class NbdClient:
    """One connection to one export of an NBD server, read-only.

    Not thread-safe: requests go one at a time and the object holds no lock; use one client
    per thread. Usable as a context manager; ``close`` disconnects politely.
    """

    def __init__(
        self,
        sock: socket.socket,
        export_name: str = "",
        *,
        meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
        dirty_bitmap: str | None = None,
    ) -> None:
        """Negotiate on an already connected ``sock``, which the client then owns (closed on
        failure too). ``meta_contexts`` are asked for and used if offered; ``dirty_bitmap``
        adds ``qemu:dirty-bitmap:NAME`` and must be offered, since an incremental backup
        without it would be wrong."""
        self._sock: socket.socket | None = sock
        self._timeout = sock.gettimeout()
        if self._timeout == 0:
            sock.close()
            raise ValueError("an NBD client needs a blocking socket or a positive timeout")
        self._export_name = export_name
        self._negotiating = True
        self._cookie = 0
        self._header = bytearray(_CHUNK.size)
        self._header_view = memoryview(self._header)
        self._size = 0
        self._transmission_flags = 0
        self._structured = False
        self._contexts: dict[str, int] = {}
        self._min_block = DEFAULT_MIN_BLOCK
        self._preferred_block = DEFAULT_PREFERRED_BLOCK
        self._max_payload = DEFAULT_MAX_PAYLOAD
        queries = list(dict.fromkeys(meta_contexts))
        required: list[str] = []
        if dirty_bitmap is not None:
            required.append(DIRTY_BITMAP_PREFIX + dirty_bitmap)
            queries += [q for q in required if q not in queries]
        try:
            self._handshake(queries, required)
        except BaseException:
            self.close()
            raise
        self._negotiating = False
        request = min(self._max_payload, READ_REQUEST_SIZE)
        self._max_request = max(request - request % self._min_block, self._min_block)

    # -- Constructors ------------------------------------------------------------------------

    @classmethod
    def connect_unix(
        cls,
        path: str | os.PathLike[str],
        export_name: str = "",
        *,
        dirty_bitmap: str | None = None,
        meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Self:
        """Connect to a server on a unix socket (how QEMU exports fleecing images).

        ``timeout`` bounds every wait for the server, in seconds; None waits forever.
        """
        _check_timeout(timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
        except OSError as exc:
            sock.close()
            raise NbdError(
                f"cannot connect to the NBD server at {os.fspath(path)}: {exc.strerror or exc}"
            ) from exc
        return cls(sock, export_name, meta_contexts=meta_contexts, dirty_bitmap=dirty_bitmap)

    @classmethod
    def connect_tcp(
        cls,
        host: str,
        port: int = NBD_DEFAULT_PORT,
        export_name: str = "",
        *,
        dirty_bitmap: str | None = None,
        meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Self:
        """Connect to a server over TCP (no TLS: use it only on a trusted network)."""
        _check_timeout(timeout)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise NbdError(
                f"cannot connect to the NBD server at {host}:{port}: {exc.strerror or exc}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, export_name, meta_contexts=meta_contexts, dirty_bitmap=dirty_bitmap)

    # -- What was negotiated -----------------------------------------------------------------

    @property
    def export_name(self) -> str:
        return self._export_name

    @property
    def size(self) -> int:
        """The export's size in bytes."""
        return self._size

    @property
    def transmission_flags(self) -> int:
        """The server's ``NBD_FLAG_*`` transmission flags for this export."""
        return self._transmission_flags

    @property
    def read_only(self) -> bool:
        return bool(self._transmission_flags & NBD_FLAG_READ_ONLY)

    @property
    def can_multi_conn(self) -> bool:
        """Whether the server says several connections see one consistent export."""
        return bool(self._transmission_flags & NBD_FLAG_CAN_MULTI_CONN)

    @property
    def structured_replies(self) -> bool:
        return self._structured

    @property
    def contexts(self) -> Mapping[str, int]:
        """The negotiated metadata contexts, name to the server's context id."""
        return MappingProxyType(self._contexts)

    @property
    def can_block_status(self) -> bool:
        """Whether ``block_status`` can work: at least one metadata context was negotiated."""
        return bool(self._contexts)

    @property
    def minimum_block_size(self) -> int:
        return self._min_block

    @property
    def preferred_block_size(self) -> int:
        """The size (and alignment) at which the server reads efficiently."""
        return self._preferred_block

    @property
    def max_payload(self) -> int:
        """The largest request payload the server accepts (reads are split below it)."""
        return self._max_payload

    @property
    def closed(self) -> bool:
        return self._sock is None

    # -- Reading -----------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the export from ``offset``, in requests of at most
        ``READ_REQUEST_SIZE`` (or the server's maximum payload, if smaller). Allocates the
        result each call; a stream of reads is cheaper with ``read_into`` and one buffer."""
        self._check_range(offset, length, "read")
        buffer = bytearray(length)
        self._read(offset, memoryview(buffer), zeroed=True)
        return bytes(buffer)

    def read_into(self, offset: int, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` from ``offset``, avoiding ``read``'s allocation and final copy;
        returns the number of bytes read (the buffer's length)."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise TypeError("read_into needs a writable buffer")
        self._check_range(offset, len(view), "read")
        self._read(offset, view, zeroed=False)
        return len(view)

    def _read(self, offset: int, view: memoryview, *, zeroed: bool) -> None:
        """Issue reads covering ``view``; unaligned edges go through a bounce block, since
        a server that advertised a minimum block size may refuse anything smaller."""
        block = self._min_block
        end = offset + len(view)
        position = offset
        while position < end:
            if position % block or end - position < block:
                block_start = position - position % block
                block_end = min(block_start + block, self._size)
                bounce = bytearray(block_end - block_start)
                self._read_request(block_start, memoryview(bounce), zeroed=True)
                count = min(block_end, end) - position
                skip = position - block_start
                view[position - offset : position - offset + count] = bounce[skip : skip + count]
            else:
                count = min(end - position, self._max_request)
                count -= count % block
                target = view[position - offset : position - offset + count]
                self._read_request(position, target, zeroed=zeroed)
            position += count

    def _read_request(self, offset: int, view: memoryview, *, zeroed: bool) -> None:
        """One NBD_CMD_READ into ``view``; chunks land directly where they belong."""
        length = len(view)
        what = f"read of {length} bytes at offset {offset}"
        cookie = self._send_request(NBD_CMD_READ, offset, length)
        covered = 0
        failure: NbdError | None = None
        while True:
            structured, flags, kind, payload = self._reply_header(cookie)
            if not structured:
                if kind:
                    raise self._after_failure(_server_error(kind, "", what))
                self._recv_into(view)
                return
            if kind == NBD_REPLY_TYPE_OFFSET_DATA:
                if payload <= _U64.size:
                    raise self._broken(f"NBD server sent an empty data chunk for the {what}")
                chunk_offset = self._recv_u64()
                count = payload - _U64.size
                start = chunk_offset - offset
                if start < 0 or start + count > length:
                    raise self._broken(
                        f"NBD server sent data at offset {chunk_offset} outside the {what}"
                    )
                self._recv_into(view[start : start + count])
                covered += count
            elif kind == NBD_REPLY_TYPE_OFFSET_HOLE:
                if payload != _HOLE.size:
                    raise self._broken(f"NBD server sent a malformed hole chunk for the {what}")
                hole_offset, count = _HOLE.unpack(self._recv_bytes(_HOLE.size))
                start = hole_offset - offset
                if count == 0 or start < 0 or start + count > length:
                    raise self._broken(
                        f"NBD server sent a hole at offset {hole_offset} outside the {what}"
                    )
                if not zeroed:
                    _fill_zeros(view[start : start + count])
                covered += count
            elif kind & NBD_REPLY_TYPE_ERROR_BIT:
                error = self._error_chunk(kind, payload, what)
                failure = failure or error
            elif kind != NBD_REPLY_TYPE_NONE or payload:
                raise self._broken(f"NBD server sent an unexpected chunk type {kind} for a read")
            if flags & NBD_REPLY_FLAG_DONE:
                break
        if failure is not None:
            raise self._after_failure(failure)
        if covered != length:
            raise self._broken(f"NBD server's reply covered {covered} bytes of the {what}")

    # -- Block status ------------------------------------------------------------------------

    def block_status(
        self, offset: int, length: int, context: str = BASE_ALLOCATION
    ) -> list[Extent]:
        """The extents of ``context`` covering exactly ``offset`` .. ``offset + length``, with
        neighbours of the same status merged; asks again where the server answered short."""
        self._check_range(offset, length, "block status")
        extents: list[Extent] = []
        end = offset + length
        position = offset
        while position < end:
            for extent in self._block_status_request(position, end - position, context):
                _append_merged(extents, extent)
            position = extents[-1].end
        return extents

    def extents(
        self, context: str = BASE_ALLOCATION, chunk: int = DEFAULT_EXTENTS_CHUNK
    ) -> Iterator[Extent]:
        """Every extent of the export in order, asking ``chunk`` bytes at a time. Each
        request completes before anything is yielded, so reading between items is fine."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        pending: Extent | None = None
        position = 0
        while position < self._size:
            length = min(chunk, self._size - position)
            for extent in self._block_status_request(position, length, context):
                if pending is None:
                    pending = extent
                elif pending.flags == extent.flags:
                    pending = Extent(pending.offset, pending.length + extent.length, extent.flags)
                else:
                    yield pending
                    pending = extent
                position = extent.end
        if pending is not None:
            yield pending

    def _block_status_request(self, offset: int, length: int, context: str) -> list[Extent]:
        """One NBD_CMD_BLOCK_STATUS round trip: at least one extent from ``offset``, clipped
        to the asked range (servers may answer for less, or more, than asked)."""
        context_id = self._contexts.get(context)
        if context_id is None:
            offered = ", ".join(self._contexts) or "none"
            raise NbdError(
                f"metadata context {context!r} was not negotiated with the NBD server "
                f"(negotiated: {offered})"
            )
        block = self._min_block
        end = offset + min(length, MAX_BLOCK_STATUS_REQUEST)
        start = offset - offset % block
        request_end = min(end + (-end) % block, self._size)
        what = f"block status of {request_end - start} bytes at offset {start}"
        cookie = self._send_request(NBD_CMD_BLOCK_STATUS, start, request_end - start)
        descriptors: list[tuple[int, int]] | None = None
        failure: NbdError | None = None
        while True:
            structured, flags, kind, payload = self._reply_header(cookie)
            if not structured:
                if kind:
                    raise self._after_failure(_server_error(kind, "", what))
                raise self._broken(f"NBD server answered the {what} without extents")
            if kind == NBD_REPLY_TYPE_BLOCK_STATUS:
                descriptor_bytes = payload - _U32.size
                if descriptor_bytes <= 0 or descriptor_bytes % _DESCRIPTOR.size:
                    raise self._broken(f"NBD server sent a malformed block status for the {what}")
                if payload > MAX_METADATA_PAYLOAD:
                    raise self._broken(f"NBD server sent {payload} bytes of block status")
                data = self._recv_bytes(payload)
                if _U32.unpack_from(data)[0] == context_id:
                    if descriptors is not None:
                        raise self._broken(f"NBD server sent two block statuses for the {what}")
                    descriptors = list(_DESCRIPTOR.iter_unpack(memoryview(data)[_U32.size :]))
            elif kind & NBD_REPLY_TYPE_ERROR_BIT:
                error = self._error_chunk(kind, payload, what)
                failure = failure or error
            elif kind != NBD_REPLY_TYPE_NONE or payload:
                raise self._broken(
                    f"NBD server sent an unexpected chunk type {kind} for a block status"
                )
            if flags & NBD_REPLY_FLAG_DONE:
                break
        if failure is not None:
            raise self._after_failure(failure)
        if descriptors is None:
            raise self._broken(f"NBD server sent no extents of {context!r} for the {what}")
        extents: list[Extent] = []
        position = start
        for extent_length, status in descriptors:
            if extent_length == 0:
                raise self._broken(f"NBD server sent an empty extent for the {what}")
            extent_end = min(position + extent_length, end)
            if extent_end > offset:
                extents.append(
                    Extent(max(position, offset), extent_end - max(position, offset), status)
                )
            position += extent_length
            if position >= end:
                break
        if not extents:
            raise self._broken(f"NBD server's extents did not reach offset {offset}")
        return extents

    # -- Closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect politely (NBD_CMD_DISC, or NBD_OPT_ABORT while negotiating) and close.
        Safe to call twice."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        try:
            if self._negotiating:
                sock.sendall(_OPTION.pack(IHAVEOPT, NBD_OPT_ABORT, 0))
            else:
                sock.sendall(self._request_bytes(NBD_CMD_DISC, 0, 0))
        except OSError:
            pass  # the server is gone already; closing is all that is left
        finally:
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- Handshake ---------------------------------------------------------------------------

    def _handshake(self, queries: list[str], required: list[str]) -> None:
        name = _encode_string(self._export_name, "export name")
        magic = self._recv_u64()
        if magic != NBDMAGIC:
            raise self._broken(f"not an NBD server (greeting 0x{magic:016x})")
        magic = self._recv_u64()
        if magic == OLDSTYLE_MAGIC:
            raise self._broken("NBD server uses oldstyle negotiation, which is not supported")
        if magic != IHAVEOPT:
            raise self._broken(f"unexpected NBD handshake magic 0x{magic:016x}")
        (handshake_flags,) = _U16.unpack(self._recv_bytes(_U16.size))
        no_zeroes = bool(handshake_flags & NBD_FLAG_NO_ZEROES)
        fixed = bool(handshake_flags & NBD_FLAG_FIXED_NEWSTYLE)
        client_flags = (NBD_FLAG_C_FIXED_NEWSTYLE if fixed else 0) | (
            NBD_FLAG_C_NO_ZEROES if no_zeroes else 0
        )
        self._sendall(_U32.pack(client_flags))
        if fixed:
            self._structured = self._negotiate_structured_replies()
            if self._structured and queries:
                self._negotiate_meta_contexts(name, queries)
        missing = [context for context in required if context not in self._contexts]
        if missing:
            hint = ""
            if not self._structured:
                hint = " (the server does not support structured replies)"
            elif missing[0].startswith(DIRTY_BITMAP_PREFIX):
                hint = " (is the bitmap exported? qemu-nbd --bitmap, block-export-add bitmaps)"
            raise NbdError(
                f"NBD export {self._export_name!r} offers no metadata context {missing[0]!r}{hint}"
            )
        if not fixed or not self._negotiate_go(name):
            self._negotiate_export_name(name, no_zeroes=no_zeroes)

    def _negotiate_structured_replies(self) -> bool:
        self._send_option(NBD_OPT_STRUCTURED_REPLY, b"")
        reply, data = self._option_reply(NBD_OPT_STRUCTURED_REPLY)
        if reply == NBD_REP_ACK:
            return True
        if reply & NBD_REP_FLAG_ERROR and reply != NBD_REP_ERR_SHUTDOWN:
            return False  # an old server: plain replies, no metadata
        raise self._option_failure(NBD_OPT_STRUCTURED_REPLY, reply, data)

    def _negotiate_meta_contexts(self, name: bytes, queries: list[str]) -> None:
        data = bytearray(_U32.pack(len(name)) + name + _U32.pack(len(queries)))
        for query in queries:
            encoded = _encode_string(query, "metadata context name")
            data += _U32.pack(len(encoded)) + encoded
        self._send_option(NBD_OPT_SET_META_CONTEXT, bytes(data))
        contexts: dict[str, int] = {}
        while True:
            reply, payload = self._option_reply(NBD_OPT_SET_META_CONTEXT)
            if reply == NBD_REP_META_CONTEXT:
                if len(payload) <= _U32.size:
                    raise self._broken("NBD server sent a malformed metadata context reply")
                try:
                    context = payload[_U32.size :].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise self._broken(
                        "NBD server sent a metadata context name that is not UTF-8"
                    ) from exc
                contexts[context] = _U32.unpack_from(payload)[0]
            elif reply == NBD_REP_ACK:
                self._contexts = contexts
                return
            elif reply in (NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_SHUTDOWN, NBD_REP_ERR_TLS_REQD):
                raise self._option_failure(NBD_OPT_SET_META_CONTEXT, reply, payload)
            elif reply & NBD_REP_FLAG_ERROR:
                return  # no contexts; block_status will say so if it is asked for one
            else:
                raise self._broken(f"unexpected NBD reply type {reply} to metadata contexts")

    def _negotiate_go(self, name: bytes) -> bool:
        """NBD_OPT_GO; False if the server predates it (then NBD_OPT_EXPORT_NAME)."""
        data = _U32.pack(len(name)) + name + _U16.pack(1) + _U16.pack(NBD_INFO_BLOCK_SIZE)
        self._send_option(NBD_OPT_GO, data)
        have_export = False
        while True:
            reply, payload = self._option_reply(NBD_OPT_GO)
            if reply == NBD_REP_INFO:
                if len(payload) < _U16.size:
                    raise self._broken("NBD server sent an empty information reply")
                (info,) = _U16.unpack_from(payload)
                if info == NBD_INFO_EXPORT:
                    if len(payload) != _INFO_EXPORT.size:
                        raise self._broken("NBD server sent a malformed export information")
                    _, self._size, self._transmission_flags = _INFO_EXPORT.unpack(payload)
                    have_export = True
                elif info == NBD_INFO_BLOCK_SIZE:
                    self._take_block_sizes(payload)
            elif reply == NBD_REP_ACK:
                if not have_export:
                    raise self._broken("NBD server accepted the export without describing it")
                return True
            elif reply == NBD_REP_ERR_UNSUP:
                return False
            else:
                raise self._option_failure(NBD_OPT_GO, reply, payload)

    def _take_block_sizes(self, payload: bytes) -> None:
        if len(payload) != _INFO_BLOCK_SIZE.size:
            raise self._broken("NBD server sent malformed block size information")
        _, minimum, preferred, maximum = _INFO_BLOCK_SIZE.unpack(payload)
        if not _is_power_of_two(minimum) or minimum > MAX_MIN_BLOCK or maximum < minimum:
            raise self._broken(
                f"NBD server sent impossible block sizes (minimum {minimum}, "
                f"preferred {preferred}, maximum {maximum})"
            )
        self._min_block = minimum
        self._preferred_block = max(preferred, minimum)
        self._max_payload = maximum

    def _negotiate_export_name(self, name: bytes, *, no_zeroes: bool) -> None:
        """The old way in: no error replies, a server without the export just hangs up."""
        self._send_option(NBD_OPT_EXPORT_NAME, name)
        try:
            data = self._recv_bytes(_U64.size + _U16.size)
        except NbdError as exc:
            raise NbdError(
                f"NBD server closed the connection when asked for export "
                f"{self._export_name!r} (no such export?)"
            ) from exc
        self._size, self._transmission_flags = struct.unpack(">QH", data)
        if not no_zeroes:
            self._recv_bytes(EXPORT_NAME_ZEROES)

    def _send_option(self, option: int, data: bytes) -> None:
        self._sendall(_OPTION.pack(IHAVEOPT, option, len(data)) + data)

    def _option_reply(self, option: int) -> tuple[int, bytes]:
        magic, replied_to, reply, length = _OPTION_REPLY.unpack(
            self._recv_bytes(_OPTION_REPLY.size)
        )
        if magic != OPTION_REPLY_MAGIC:
            raise self._broken(f"unexpected NBD option reply magic 0x{magic:016x}")
        if replied_to != option:
            raise self._broken(f"NBD server answered option {replied_to}, asked {option}")
        if length > MAX_OPTION_REPLY:
            raise self._broken(f"NBD server sent a {length}-byte option reply")
        return reply, self._recv_bytes(length)

    def _option_failure(self, option: int, reply: int, payload: bytes) -> NbdError:
        message = payload[:MAX_STRING].decode("utf-8", "replace").strip()
        detail = f": {message}" if message else ""
        if reply == NBD_REP_ERR_UNKNOWN:
            return NbdError(f"NBD server has no export named {self._export_name!r}{detail}")
        if not reply & NBD_REP_FLAG_ERROR:
            return self._broken(f"unexpected NBD reply type {reply} to {_OPTION_NAMES[option]}")
        reason = _OPTION_ERRORS.get(reply, f"error 0x{reply:08x}")
        return NbdError(f"NBD server refused {_OPTION_NAMES[option]}: {reason}{detail}")

    # -- Transmission ------------------------------------------------------------------------

    def _request_bytes(self, command: int, offset: int, length: int) -> bytes:
        self._cookie = (self._cookie + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return _REQUEST.pack(REQUEST_MAGIC, 0, command, self._cookie, offset, length)

    def _send_request(self, command: int, offset: int, length: int) -> int:
        self._sendall(self._request_bytes(command, offset, length))
        return self._cookie

    def _reply_header(self, cookie: int) -> tuple[bool, int, int, int]:
        """Read one reply header: (structured, flags, error or chunk type, payload length)."""
        header = self._header_view
        self._recv_into(header[: _SIMPLE_REPLY.size])
        (magic,) = _U32.unpack_from(header)
        if magic == SIMPLE_REPLY_MAGIC:
            _, error, replied = _SIMPLE_REPLY.unpack_from(header)
            if replied != cookie:
                raise self._broken(f"NBD server answered request {replied}, expected {cookie}")
            return False, 0, error, 0
        if magic != STRUCTURED_REPLY_MAGIC or not self._structured:
            raise self._broken(f"unexpected NBD reply magic 0x{magic:08x}")
        self._recv_into(header[_SIMPLE_REPLY.size : _CHUNK.size])
        _, flags, kind, replied, length = _CHUNK.unpack_from(header)
        if replied != cookie:
            raise self._broken(f"NBD server answered request {replied}, expected {cookie}")
        return True, flags, kind, length

    def _error_chunk(self, kind: int, payload: int, what: str) -> NbdError:
        """Parse an error chunk (ours or an unknown type with the error bit) into an error."""
        if payload < _ERROR_HEAD.size or payload > MAX_OPTION_REPLY:
            raise self._broken(f"NBD server sent a malformed error chunk for the {what}")
        data = self._recv_bytes(payload)
        error, message_length = _ERROR_HEAD.unpack_from(data)
        trailer = _U64.size if kind == NBD_REPLY_TYPE_ERROR_OFFSET else 0
        if _ERROR_HEAD.size + message_length + trailer > payload:
            raise self._broken(f"NBD server sent a malformed error chunk for the {what}")
        message_end = _ERROR_HEAD.size + message_length
        message = data[_ERROR_HEAD.size : message_end].decode("utf-8", "replace").strip()
        if trailer:
            (error_offset,) = _U64.unpack_from(data, message_end)
            message = f"{message} (at offset {error_offset})".lstrip()
        return _server_error(error, message, what)

    def _after_failure(self, failure: NbdError) -> NbdError:
        """Once a failed reply is fully read: a server shutting down wants us gone (the
        specification's "MUST disconnect"), any other error leaves the connection usable."""
        if failure.error == _ERROR_NAMES[NBD_ESHUTDOWN][0]:
            self.close()
        return failure

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise NbdError(
                f"{what} of {length} bytes at offset {offset} lies outside the NBD export "
                f"(size {self._size})",
                error="EINVAL",
            )
        self._live_socket()

    # -- Socket ------------------------------------------------------------------------------

    def _live_socket(self) -> socket.socket:
        if self._sock is None:
            raise NbdError("the NBD connection is closed")
        return self._sock

    def _broken(self, message: str) -> NbdError:
        """The stream is out of step: hang up (no polite goodbye is possible) and say why."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        return NbdError(message)

    def _sendall(self, data: bytes) -> None:
        sock = self._live_socket()
        try:
            sock.sendall(data)
        except TimeoutError as exc:
            raise self._broken(
                f"the NBD server did not accept a request within {self._timeout} s"
            ) from exc
        except OSError as exc:
            raise self._broken(f"sending to the NBD server failed: {exc.strerror or exc}") from exc

    def _recv_into(self, view: memoryview) -> None:
        """Fill ``view`` exactly; recv_into lands the bytes in place, with no copies."""
        sock = self._live_socket()
        wanted = len(view)
        received = 0
        try:
            while received < wanted:
                count = sock.recv_into(view[received:])
                if count == 0:
                    raise self._broken(
                        f"the NBD server closed the connection (short read: {received} of "
                        f"{wanted} bytes)"
                    )
                received += count
        except TimeoutError as exc:
            raise self._broken(f"the NBD server did not answer within {self._timeout} s") from exc
        except OSError as exc:
            raise self._broken(
                f"receiving from the NBD server failed: {exc.strerror or exc}"
            ) from exc

    def _recv_bytes(self, count: int) -> bytes:
        buffer = bytearray(count)
        self._recv_into(memoryview(buffer))
        return bytes(buffer)

    def _recv_u64(self) -> int:
        value: int = _U64.unpack(self._recv_bytes(_U64.size))[0]
        return value


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout <= 0:
        raise ValueError("an NBD client needs a blocking socket or a positive timeout")


def _fill_zeros(view: memoryview) -> None:
    for start in range(0, len(view), len(_ZEROS)):
        count = min(len(_ZEROS), len(view) - start)
        view[start : start + count] = _ZEROS[:count]
