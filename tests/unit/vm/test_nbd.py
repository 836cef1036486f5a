"""The NBD client reads VM disks for backups: a wrong byte, a missed dirty range or a hang
here is a silently broken backup. Real qemu-nbd serves the images; a scripted server in a
thread plays the replies qemu-nbd never sends (errors, hang-ups, old protocol versions)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffharness import privileged_required
from freezeframe.errors import NbdError
from freezeframe.vm import nbd
from freezeframe.vm.nbd import BASE_ALLOCATION, Extent, NbdClient

KIB = 1 << 10
MIB = 1 << 20
IMAGE_SIZE = 8 * MIB
HOLE_ZERO = nbd.NBD_STATE_HOLE | nbd.NBD_STATE_ZERO
DATA = 0
DIRTY = nbd.QEMU_STATE_DIRTY
CLEAN = 0
BITMAP_CONTEXT = "qemu:dirty-bitmap:bm0"

# Data at known offsets, 64 KiB aligned so a qcow2 cluster or file-system block never mixes
# data and hole; the last run ends the image, the rest is never written.
LAYOUT = [(0, 64 * KIB), (1 * MIB, 64 * KIB), (3 * MIB + 128 * KIB, 192 * KIB)]
LAYOUT.append((IMAGE_SIZE - 64 * KIB, 64 * KIB))

THROUGHPUT_SIZE = 256 * MIB
# qemu-nbd allocates a buffer per request. In a fresh process glibc maps (and faults in) a
# new one for each, which caps the server near 0.7 GB/s whatever the client does (the client
# then idles 75% of the time); once it has served one larger request, glibc's dynamic
# threshold keeps them on the heap. Pinning the thresholds gives that steady state, so the
# print measures client and socket; the fresh figure is printed too.
STEADY_SERVER_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"
}


def _require_qemu() -> None:
    for tool in ("qemu-nbd", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            privileged_required(f"{tool} is not installed")


def _expected_extents(layout: list[tuple[int, int]], size: int, flags: int) -> list[Extent]:
    extents: list[Extent] = []
    position = 0
    for offset, length in layout:
        if offset > position:
            extents.append(Extent(position, offset - position, HOLE_ZERO))
        extents.append(Extent(offset, length, flags))
        position = offset + length
    if position < size:
        extents.append(Extent(position, size - position, HOLE_ZERO))
    return extents


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)


def _accepts(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class QemuNbd:
    """qemu-nbd serving one image read-only on a unix socket, for as many clients as needed."""

    def __init__(
        self, image: Path, fmt: str, *, bitmap: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        # A socket path must fit in 108 bytes; pytest's tmp_path may not.
        self.dir = tempfile.mkdtemp(prefix="ffnbd")
        self.socket = os.path.join(self.dir, "nbd.sock")
        argv = ["qemu-nbd", "--read-only", "--persistent", "--shared=8", f"--format={fmt}"]
        argv += [f"--socket={self.socket}"] + ([f"--bitmap={bitmap}"] if bitmap else [])
        self.process = subprocess.Popen(
            [*argv, str(image)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 10
        # The socket file appears at bind(), before listen(): wait until it accepts.
        while not _accepts(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                _, errors = self.process.communicate()
                self.stop()
                pytest.fail(f"qemu-nbd did not start: {errors!r}")
            time.sleep(0.01)

    def connect(self, export_name: str = "", *, dirty_bitmap: str | None = None) -> NbdClient:
        return NbdClient.connect_unix(
            self.socket, export_name, dirty_bitmap=dirty_bitmap, timeout=10
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_qemu()
    return tmp_path_factory.mktemp("nbd-images")


@pytest.fixture(scope="module")
def sparse_raw(image_dir: Path) -> tuple[Path, bytes]:
    """A sparse raw image following LAYOUT, and its bytes."""
    path = image_dir / "disk.raw"
    content = bytearray(IMAGE_SIZE)
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
        for index, (offset, length) in enumerate(LAYOUT):
            data = os.urandom(length) if index % 2 else bytes([0xA0 + index]) * length
            content[offset : offset + length] = data
            f.seek(offset)
            f.write(data)
    return path, bytes(content)


@pytest.fixture(scope="module", params=["raw", "qcow2"])
def server(
    request: pytest.FixtureRequest, image_dir: Path, sparse_raw: tuple[Path, bytes]
) -> Iterator[tuple[QemuNbd, bytes]]:
    raw, content = sparse_raw
    image = raw
    if request.param == "qcow2":
        image = image_dir / "disk.qcow2"
        if not image.exists():
            _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    served = QemuNbd(image, request.param)
    yield served, content
    served.stop()


# -- Against qemu-nbd ------------------------------------------------------------------------


def test_negotiation_describes_the_export(server: tuple[QemuNbd, bytes]) -> None:
    served, _ = server
    with served.connect() as client:
        assert client.size == IMAGE_SIZE
        assert client.read_only and client.transmission_flags & nbd.NBD_FLAG_HAS_FLAGS
        assert client.structured_replies and client.can_block_status
        assert set(client.contexts) == {BASE_ALLOCATION}
        assert client.minimum_block_size == 1
        assert client.preferred_block_size == 4096
        assert client.max_payload == 32 * MIB
    assert client.closed


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, IMAGE_SIZE),  # two requests, holes and data
        (0, 0),
        (0, 1),
        (1, 4095),
        (64 * KIB - 1, 2),  # the edge of data and hole
        (1 * MIB - 100, 70_000),
        (3 * MIB + 128 * KIB - 1, 192 * KIB + 2),
        (12_345, IMAGE_SIZE - 12_345),  # unaligned across the request split
        (IMAGE_SIZE - 1, 1),
    ],
)
def test_read_returns_the_image_bytes(
    server: tuple[QemuNbd, bytes], offset: int, length: int
) -> None:
    served, content = server
    with served.connect() as client:
        assert client.read(offset, length) == content[offset : offset + length]


def test_read_into_zeroes_holes_in_a_used_buffer(server: tuple[QemuNbd, bytes]) -> None:
    served, content = server
    buffer = bytearray(b"\xff") * (2 * MIB)
    with served.connect() as client:
        assert client.read_into(512 * KIB, buffer) == len(buffer)
    assert buffer == content[512 * KIB : 512 * KIB + 2 * MIB]


def test_block_status_reports_data_and_holes(server: tuple[QemuNbd, bytes]) -> None:
    served, _ = server
    expected = _expected_extents(LAYOUT, IMAGE_SIZE, DATA)
    with served.connect() as client:
        assert client.block_status(0, IMAGE_SIZE) == expected
        assert list(client.extents(BASE_ALLOCATION, chunk=1 * MIB)) == expected
        assert client.block_status(1 * MIB + 1000, 100) == [Extent(1 * MIB + 1000, 100, DATA)]
        assert client.block_status(60 * KIB, 8 * KIB) == [
            Extent(60 * KIB, 4 * KIB, DATA),
            Extent(64 * KIB, 4 * KIB, HOLE_ZERO),
        ]
        holes = [e for e in client.extents() if e.is_hole]
        assert holes and all(e.is_zero for e in holes)


def test_wrong_export_name_is_a_clear_error(server: tuple[QemuNbd, bytes]) -> None:
    served, _ = server
    with pytest.raises(NbdError, match="no export named 'nope'"):
        served.connect("nope")


def test_reading_past_the_end_is_einval_and_the_connection_survives(
    server: tuple[QemuNbd, bytes],
) -> None:
    served, content = server
    with served.connect() as client:
        with pytest.raises(NbdError, match="outside the NBD export") as caught:
            client.read(IMAGE_SIZE - 10, 11)
        assert caught.value.error == "EINVAL"
        assert caught.value.code == "nbd_error"
        with pytest.raises(NbdError):
            client.block_status(IMAGE_SIZE, 1)
        assert client.read(IMAGE_SIZE - 10, 10) == content[-10:]


def test_an_unnegotiated_context_or_missing_bitmap_is_an_error(
    server: tuple[QemuNbd, bytes],
) -> None:
    served, _ = server
    with served.connect() as client, pytest.raises(NbdError, match="was not negotiated"):
        client.block_status(0, 4096, BITMAP_CONTEXT)
    with pytest.raises(NbdError, match="offers no metadata context 'qemu:dirty-bitmap:bm0'"):
        served.connect(dirty_bitmap="bm0")


def test_dirty_bitmap_reports_what_was_written_after_it_began(image_dir: Path) -> None:
    image = image_dir / "bitmap.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", str(image), str(IMAGE_SIZE))
    _run("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x11 0 64k", str(image))
    _run("qemu-img", "bitmap", "--add", str(image), "bm0")
    writes = ["write -q -P 0xcd 1M 64k", "write -q -P 0xef 5M 128k"]
    _run("qemu-io", "-f", "qcow2", *(a for w in writes for a in ("-c", w)), str(image))
    dirty = [(1 * MIB, 64 * KIB), (5 * MIB, 128 * KIB)]
    served = QemuNbd(image, "qcow2", bitmap="bm0")
    try:
        with served.connect(dirty_bitmap="bm0") as client:
            assert set(client.contexts) == {BASE_ALLOCATION, BITMAP_CONTEXT}
            expected = [
                Extent(e.offset, e.length, CLEAN if e.flags == HOLE_ZERO else DIRTY)
                for e in _expected_extents(dirty, IMAGE_SIZE, DIRTY)
            ]
            assert client.block_status(0, IMAGE_SIZE, BITMAP_CONTEXT) == expected
            assert list(client.extents(BITMAP_CONTEXT, chunk=3 * MIB)) == expected
            assert [e.is_dirty for e in expected] == [False, True, False, True, False]
            # Written before the bitmap: allocated, yet not dirty.
            allocation = client.block_status(0, IMAGE_SIZE)
            assert allocation[0] == Extent(0, 64 * KIB, DATA)
            assert client.read(1 * MIB, 64 * KIB) == b"\xcd" * 64 * KIB
    finally:
        served.stop()


def test_tcp_works_too(sparse_raw: tuple[Path, bytes]) -> None:
    image, content = sparse_raw
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["qemu-nbd", "--read-only", "--format=raw", "--bind=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen([*argv, str(image)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = NbdClient.connect_tcp("127.0.0.1", port, timeout=10)
                break
            except NbdError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with client:
            assert client.read(1 * MIB - 10, 100) == content[1 * MIB - 10 : 1 * MIB + 90]
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_read_throughput(image_dir: Path) -> None:
    """Prints MB/s reading a fully allocated 256 MiB image, the way a backup reads: into one
    reused buffer. Asserts only the bytes; speed depends on the machine."""
    image = image_dir / "full.raw"
    block = bytearray(os.urandom(MIB))
    content = bytearray()
    for index in range(THROUGHPUT_SIZE // MIB):
        block[:4] = index.to_bytes(4, "little")
        content += block
    image.write_bytes(content)
    buffer = bytearray(4 * MIB)

    def pass_rate(client: NbdClient) -> float:
        start = time.perf_counter()
        for offset in range(0, THROUGHPUT_SIZE, len(buffer)):
            client.read_into(offset, buffer)
        return THROUGHPUT_SIZE / (time.perf_counter() - start) / 1e6

    def rate(since: float) -> str:
        return f"{THROUGHPUT_SIZE / (time.perf_counter() - since) / 1e6:.0f} MB/s"

    report = []
    try:
        for label, env in (("steady server", STEADY_SERVER_ENV), ("fresh server", None)):
            served = QemuNbd(image, "raw", env=env)
            try:
                with served.connect() as client:
                    rates = [pass_rate(client) for _ in range(3 if env else 1)]
                    report.append(
                        f"{label}, read_into() 4 MiB, reused buffer: {max(rates):.0f} MB/s"
                    )
                    if not env:
                        continue
                    start = time.perf_counter()
                    for offset in range(0, THROUGHPUT_SIZE, 4 * MIB):
                        client.read(offset, 4 * MIB)
                    report.append(f"{label}, read() 4 MiB at a time: {rate(start)}")
                    start = time.perf_counter()
                    whole = client.read(0, THROUGHPUT_SIZE)
                    report.append(f"{label}, read() all 256 MiB at once: {rate(start)}")
                    assert whole == content
                    middle = client.read(12_345, 70 * MIB)
                    assert middle == content[12_345 : 12_345 + 70 * MIB]
            finally:
                served.stop()
    finally:
        image.unlink()
    print("\nNBD read throughput, 256 MiB, qemu-nbd on a unix socket:\n  " + "\n  ".join(report))


# -- Against a scripted server ---------------------------------------------------------------

FAKE_SIZE = 64 * KIB
FAKE_CONTEXT_ID = 7


class FakeServer:
    """Just enough of an NBD server to misbehave on purpose, one connection, in a thread.

    ``mode`` decides the reply to reads: "good" (out-of-order chunks and a final NONE),
    "eio_once", "eshutdown", "close_mid_reply", "hang", "bad_magic". ``old`` refuses
    structured replies and NBD_OPT_GO, as servers before 2017 did.
    """

    def __init__(
        self,
        directory: str,
        *,
        mode: str = "good",
        old: bool = False,
        min_block: int = 1,
        status_extent: int | None = None,
    ) -> None:
        self.image = os.urandom(FAKE_SIZE)
        self.mode, self.old, self.min_block = mode, old, min_block
        self.status_extent = status_extent
        self.requests: list[tuple[int, int, int]] = []
        self.stopping = threading.Event()
        self.path = os.path.join(directory, "fake.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.structured = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        self.thread.join(timeout=5)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # stopped before the client came
        with conn:
            try:
                if self._handshake(conn):
                    self._transmission(conn)
            except (OSError, EOFError):
                pass

    @staticmethod
    def _recv(conn: socket.socket, count: int) -> bytes:
        data = b""
        while len(data) < count:
            piece = conn.recv(count - len(data))
            if not piece:
                raise EOFError
            data += piece
        return data

    @staticmethod
    def _option_reply(conn: socket.socket, option: int, reply: int, data: bytes = b"") -> None:
        header = struct.pack(">QIII", nbd.OPTION_REPLY_MAGIC, option, reply, len(data))
        conn.sendall(header + data)

    def _handshake(self, conn: socket.socket) -> bool:
        flags = nbd.NBD_FLAG_FIXED_NEWSTYLE | nbd.NBD_FLAG_NO_ZEROES
        conn.sendall(struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, flags))
        self._recv(conn, 4)
        transmission = nbd.NBD_FLAG_HAS_FLAGS | nbd.NBD_FLAG_READ_ONLY
        while True:
            _, option, length = struct.unpack(">QII", self._recv(conn, 16))
            self._recv(conn, length)
            if option == nbd.NBD_OPT_STRUCTURED_REPLY and not self.old:
                self.structured = True
                self._option_reply(conn, option, nbd.NBD_REP_ACK)
            elif option == nbd.NBD_OPT_SET_META_CONTEXT:
                context = struct.pack(">I", FAKE_CONTEXT_ID) + BASE_ALLOCATION.encode()
                self._option_reply(conn, option, nbd.NBD_REP_META_CONTEXT, context)
                self._option_reply(conn, option, nbd.NBD_REP_ACK)
            elif option == nbd.NBD_OPT_GO and not self.old:
                info = struct.pack(">HQH", nbd.NBD_INFO_EXPORT, FAKE_SIZE, transmission)
                self._option_reply(conn, option, nbd.NBD_REP_INFO, info)
                sizes = (nbd.NBD_INFO_BLOCK_SIZE, self.min_block, 4096, 16 * KIB)
                self._option_reply(conn, option, nbd.NBD_REP_INFO, struct.pack(">HIII", *sizes))
                self._option_reply(conn, option, nbd.NBD_REP_ACK)
                return True
            elif option == nbd.NBD_OPT_EXPORT_NAME:
                conn.sendall(struct.pack(">QH", FAKE_SIZE, transmission))
                return True
            elif option == nbd.NBD_OPT_ABORT:
                return False
            else:
                self._option_reply(conn, option, nbd.NBD_REP_ERR_UNSUP)

    @staticmethod
    def _chunk(flags: int, kind: int, cookie: int, payload: bytes) -> bytes:
        magic = nbd.STRUCTURED_REPLY_MAGIC
        return struct.pack(">IHHQI", magic, flags, kind, cookie, len(payload)) + payload

    def _transmission(self, conn: socket.socket) -> None:
        done = nbd.NBD_REPLY_FLAG_DONE
        while True:
            _, _, command, cookie, offset, length = struct.unpack(">IHHQQI", self._recv(conn, 28))
            self.requests.append((command, offset, length))
            if command == nbd.NBD_CMD_DISC:
                return
            if command == nbd.NBD_CMD_BLOCK_STATUS:
                extent = min(length, self.status_extent or length)
                payload = struct.pack(">III", FAKE_CONTEXT_ID, extent, 0)
                conn.sendall(self._chunk(done, nbd.NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payload))
                continue
            data = self.image[offset : offset + length]
            if not self.structured:
                conn.sendall(struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, cookie) + data)
            elif offset % self.min_block or length % self.min_block:
                message = b"unaligned request"
                payload = struct.pack(">IH", 22, len(message)) + message
                conn.sendall(self._chunk(done, nbd.NBD_REPLY_TYPE_ERROR, cookie, payload))
            elif self.mode == "eio_once":
                self.mode = "good"
                message = b"disk on fire"
                payload = struct.pack(">IH", 5, len(message)) + message + struct.pack(">Q", offset)
                hole = struct.pack(">QI", offset, length)
                conn.sendall(
                    self._chunk(0, nbd.NBD_REPLY_TYPE_OFFSET_HOLE, cookie, hole)
                    + self._chunk(0, nbd.NBD_REPLY_TYPE_ERROR_OFFSET, cookie, payload)
                    + self._chunk(done, nbd.NBD_REPLY_TYPE_NONE, cookie, b"")
                )
            elif self.mode == "eshutdown":
                payload = struct.pack(">IH", nbd.NBD_ESHUTDOWN, 0)
                conn.sendall(self._chunk(done, nbd.NBD_REPLY_TYPE_ERROR, cookie, payload))
            elif self.mode == "close_mid_reply":
                header = self._chunk(done, nbd.NBD_REPLY_TYPE_OFFSET_DATA, cookie, b"")[:-4]
                conn.sendall(header + struct.pack(">IQ", 8 + length, offset) + data[: length // 2])
                return
            elif self.mode == "hang":
                self.stopping.wait(10)
                return
            elif self.mode == "bad_magic":
                conn.sendall(b"\x55" * 16)
            else:
                reply = b""
                half = length // 2
                for start, end in ((half, length), (0, half)):  # second half first
                    if end > start:
                        payload = struct.pack(">Q", offset + start) + data[start:end]
                        reply += self._chunk(0, nbd.NBD_REPLY_TYPE_OFFSET_DATA, cookie, payload)
                conn.sendall(reply + self._chunk(done, nbd.NBD_REPLY_TYPE_NONE, cookie, b""))


@pytest.fixture
def fake_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="ffnbd")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_out_of_order_chunks_are_reassembled(fake_dir: str) -> None:
    server = FakeServer(fake_dir)
    try:
        with NbdClient.connect_unix(server.path, timeout=5) as client:
            assert client.read(100, 30_000) == server.image[100:30_100]
            # 16 KiB maximum payload: split into requests no larger.
            assert client.read(0, FAKE_SIZE) == server.image
            reads = [r for r in server.requests if r[0] == nbd.NBD_CMD_READ]
            assert max(length for _, _, length in reads) == 16 * KIB
    finally:
        server.stop()


def test_a_server_error_names_the_errno_and_leaves_the_connection_usable(fake_dir: str) -> None:
    server = FakeServer(fake_dir, mode="eio_once")
    try:
        with NbdClient.connect_unix(server.path, timeout=5) as client:
            with pytest.raises(
                NbdError, match=r"EIO \(input/output error\): disk on fire"
            ) as caught:
                client.read(4096, 4096)
            assert caught.value.error == "EIO"
            assert "at offset 4096" in str(caught.value)
            assert client.read(4096, 4096) == server.image[4096:8192]
    finally:
        server.stop()


def test_a_server_shutting_down_gets_a_goodbye(fake_dir: str) -> None:
    server = FakeServer(fake_dir, mode="eshutdown")
    try:
        client = NbdClient.connect_unix(server.path, timeout=5)
        with pytest.raises(NbdError, match="ESHUTDOWN") as caught:
            client.read(0, 4096)
        assert caught.value.error == "ESHUTDOWN"
        assert client.closed
        server.thread.join(timeout=5)
        assert server.requests[-1][0] == nbd.NBD_CMD_DISC
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("close_mid_reply", "closed the connection \\(short read"),
        ("hang", "did not answer within 0.3 s"),
        ("bad_magic", "unexpected NBD reply magic 0x55555555"),
    ],
)
def test_a_broken_server_is_an_error_not_a_hang(fake_dir: str, mode: str, message: str) -> None:
    server = FakeServer(fake_dir, mode=mode)
    try:
        client = NbdClient.connect_unix(server.path, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(NbdError, match=message):
            client.read(0, 8192)
        assert time.monotonic() - start < 3
        assert client.closed
        with pytest.raises(NbdError, match="connection is closed"):
            client.read(0, 1)
        client.close()
    finally:
        server.stop()


def test_an_old_server_gets_export_name_and_simple_replies(fake_dir: str) -> None:
    server = FakeServer(fake_dir, old=True)
    try:
        with NbdClient.connect_unix(server.path, timeout=5) as client:
            assert client.size == FAKE_SIZE
            assert not client.structured_replies and not client.can_block_status
            assert client.read(7, 40_000) == server.image[7:40_007]
            with pytest.raises(NbdError, match="was not negotiated"):
                client.block_status(0, 4096)
        server.thread.join(timeout=5)
        assert server.requests[-1][0] == nbd.NBD_CMD_DISC, "close() says goodbye"
    finally:
        server.stop()


def test_unaligned_reads_respect_the_minimum_block_size(fake_dir: str) -> None:
    server = FakeServer(fake_dir, min_block=512)
    try:
        with NbdClient.connect_unix(server.path, timeout=5) as client:
            assert client.minimum_block_size == 512
            for offset, length in [(1, 1), (511, 2), (700, 20_000), (FAKE_SIZE - 3, 3)]:
                assert client.read(offset, length) == server.image[offset : offset + length]
            buffer = bytearray(1000)
            client.read_into(300, buffer)
            assert buffer == server.image[300:1300]
            for _, offset, length in server.requests:
                assert offset % 512 == 0 and length % 512 == 0
    finally:
        server.stop()


def test_block_status_asks_again_when_the_server_answers_short(fake_dir: str) -> None:
    server = FakeServer(fake_dir, status_extent=4096)
    try:
        with NbdClient.connect_unix(server.path, timeout=5) as client:
            assert client.block_status(1000, 20_000) == [Extent(1000, 20_000, 0)]
            statuses = [r for r in server.requests if r[0] == nbd.NBD_CMD_BLOCK_STATUS]
            assert len(statuses) == 5  # answers of 4 KiB each for 20 000 bytes
            assert list(client.extents()) == [Extent(0, FAKE_SIZE, 0)]
    finally:
        server.stop()


def test_connecting_to_nothing_is_an_nbd_error(fake_dir: str) -> None:
    with pytest.raises(NbdError, match="cannot connect to the NBD server"):
        NbdClient.connect_unix(os.path.join(fake_dir, "absent.sock"), timeout=1)
