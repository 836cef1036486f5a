"""A repository in S3, through the real CLI (a child process, the credentials in its
environment as an operator sets them), against ``rclone serve s3`` and SeaweedFS: init, backup,
a byte-exact restore and ``check --read-data``; a wrong secret key and a missing bucket each
end with one line and exit 1 (error code ``storage``), the secret named nowhere. And one
storage object used by many threads at once, as the repository's uploaders and readers do."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ffharness import FAST_INIT, is_root, one_line_error, run_at, succeeded
from freezeframe.errors import EXIT_FATAL
from freezeframe.storage.base import Kind
from freezeframe.storage.s3 import POOL_CONNECTIONS, S3Storage
from servers.base import S3Server
from servers.fixtures import S3_SERVERS
from treeutil import assert_same_tree, build_odd_tree, restored_path


@pytest.fixture(params=S3_SERVERS, ids=["rclone", "seaweedfs"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """A server, with this process's environment (so the CLI's) pointed at it."""
    found: S3Server = request.getfixturevalue(request.param)
    found.apply(monkeypatch)
    return found


def test_backup_restore_and_check_in_a_bucket(server: S3Server, tmp_path: Path) -> None:
    place = server.fresh_place()
    source = tmp_path / "source"
    build_odd_tree(source, root_privileges=is_root())
    succeeded(run_at(place.location, *FAST_INIT))
    first = json.loads(succeeded(run_at(place.location, "backup", source, json=True)))
    succeeded(
        run_at(place.location, "backup", source)
    )  # a second snapshot: everything deduplicated
    target = tmp_path / "target"
    succeeded(run_at(place.location, "restore", first["snapshot_id"], "--target", target))
    assert_same_tree(source, restored_path(target, source))
    succeeded(run_at(place.location, "check", "--read-data"))
    snapshots = json.loads(succeeded(run_at(place.location, "snapshots", json=True)))
    assert len(snapshots) == 2

    keys = server.keys(place)
    assert "config" in keys
    packs = [k for k in keys if k.startswith("data/")]
    assert packs and all(k.split("/")[1] == k.split("/")[2][:2] for k in packs), packs
    assert {k.split("/")[0] for k in keys} <= {"config", "keys", "data", "index", "snapshots"}


def test_a_wrong_secret_key_is_one_line_naming_no_secret(server: S3Server, tmp_path: Path) -> None:
    place = server.fresh_place()
    succeeded(run_at(place.location, *FAST_INIT))
    wrong = "Wrong" + uuid.uuid4().hex + "Secret"
    for args in (("snapshots",), ("init",), ("backup", str(tmp_path))):
        result = run_at(place.location, *args, env=server.env(secret_key=wrong))
        line = one_line_error(result)
        assert "AWS_SECRET_ACCESS_KEY" in line, line
        for secret in (wrong, server.secret_key):
            assert secret not in result.stdout + result.stderr
    result = run_at(place.location, "snapshots", env=server.env(secret_key=wrong), json=True)
    assert result.returncode == EXIT_FATAL
    assert json.loads(result.stdout)["error"]["code"] == "storage"
    assert wrong not in result.stdout + result.stderr


def test_a_missing_bucket_is_one_line_and_never_created(server: S3Server) -> None:
    bucket = f"ff-missing-{uuid.uuid4().hex[:10]}"
    location = f"s3:{server.endpoint}/{bucket}"
    for args in (FAST_INIT, ("snapshots",)):
        line = one_line_error(run_at(location, *args))
        assert f"bucket {bucket!r} does not exist" in line, line
    buckets = {b["Name"] for b in server.client().list_buckets().get("Buckets", [])}
    assert bucket not in buckets


def test_init_refuses_a_place_that_holds_a_repository(server: S3Server) -> None:
    place = server.fresh_place()
    succeeded(run_at(place.location, *FAST_INIT))
    line = one_line_error(run_at(place.location, *FAST_INIT))
    assert f"a repository already exists at {place.location}" in line
    root = f"{place.prefix}/" if place.prefix else ""
    server.client().delete_object(Bucket=place.bucket, Key=f"{root}config")
    line = one_line_error(run_at(place.location, *FAST_INIT))  # keys/ is still there
    assert "already holds a repository's objects (keys/)" in line


def test_tls_is_verified_against_the_bundle_given(
    rclone_s3_tls_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = rclone_s3_tls_server
    server.apply(monkeypatch)  # FREEZEFRAME_S3_CA_BUNDLE names the private CA
    assert server.ca_bundle is not None and server.endpoint.startswith("https://")
    place = server.fresh_place()
    succeeded(run_at(place.location, *FAST_INIT))
    succeeded(run_at(place.location, "snapshots"))
    monkeypatch.delenv("FREEZEFRAME_S3_CA_BUNDLE")
    line = one_line_error(run_at(place.location, "snapshots"))
    netloc = server.endpoint.removeprefix("https://")
    assert f"TLS with {netloc} failed" in line and "FREEZEFRAME_S3_CA_BUNDLE" in line, line
    succeeded(run_at(place.location, "snapshots", env={"AWS_CA_BUNDLE": str(server.ca_bundle)}))


def test_one_storage_serves_many_threads(server: S3Server) -> None:
    place = server.fresh_place()
    storage = S3Storage(place.location, env=server.env())
    payloads = {f"{i:02x}{os.urandom(31).hex()}": os.urandom(64 * 1024 + i) for i in range(96)}

    def round_trip(name: str) -> None:
        storage.put(Kind.DATA, name, payloads[name])
        assert storage.get(Kind.DATA, name, 100, 1000) == payloads[name][100:1100]
        assert storage.get(Kind.DATA, name) == payloads[name]

    with ThreadPoolExecutor(max_workers=POOL_CONNECTIONS // 2) as pool:
        list(pool.map(round_trip, payloads))
    listed = {info.name: info.size for info in storage.list(Kind.DATA)}
    assert listed == {name: len(data) for name, data in payloads.items()}
    with ThreadPoolExecutor(max_workers=POOL_CONNECTIONS // 2) as pool:
        list(pool.map(lambda name: storage.delete(Kind.DATA, name), payloads))
    assert list(storage.list(Kind.DATA)) == []
    storage.close()
