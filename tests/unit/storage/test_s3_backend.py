"""The S3 backend without a server: where objects go, which listed keys are objects, and what
each answer of a server becomes (botocore's Stubber plays the server). The contract suite runs
the same backend against real servers (tests/backends/s3.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from freezeframe.errors import (
    NotFound,
    RepositoryExists,
    StorageError,
    TransientStorageError,
    UsageError,
)
from freezeframe.storage.base import Kind
from freezeframe.storage.s3 import S3Storage, parse_location
from servers.base import free_ports

SECRET = "not-the-secret-you-are-looking-for-0123"
ENV = {"AWS_ACCESS_KEY_ID": "FFUNITTESTKEY0001", "AWS_SECRET_ACCESS_KEY": SECRET}
PACK = "ab" + "0" * 62


@pytest.fixture
def storage() -> S3Storage:
    return S3Storage("http://127.0.0.1:1/bucket/some/prefix", env=ENV)


@pytest.fixture
def stub(storage: S3Storage) -> Iterator[Stubber]:
    with Stubber(storage._client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def _body(data: bytes, status: int = 200) -> dict[str, object]:
    return {
        "Body": StreamingBody(io.BytesIO(data), len(data)),
        "ContentLength": len(data),
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


def test_locations_parse_to_endpoint_bucket_and_prefix() -> None:
    place = parse_location("https://s3.example.org:9000/backups//host-a/")
    assert (place.endpoint, place.bucket, place.prefix) == (
        "https://s3.example.org:9000",
        "backups",
        "host-a",
    )
    assert str(place) == "s3:https://s3.example.org:9000/backups/host-a"
    assert str(parse_location("http://[::1]:8333/b")) == "s3:http://[::1]:8333/b"


def test_keys_mirror_the_local_layout(storage: S3Storage) -> None:
    assert storage.key_of(Kind.CONFIG, "config") == "some/prefix/config"
    assert storage.key_of(Kind.DATA, PACK) == f"some/prefix/data/ab/{PACK}"
    assert storage.key_of(Kind.SNAPSHOTS, "s1") == "some/prefix/snapshots/s1"
    root = S3Storage("http://127.0.0.1:1/bucket", env=ENV)
    assert root.key_of(Kind.INDEX, "i1") == "index/i1"
    for name in ("", "..", ".hidden", "a/b"):
        with pytest.raises(StorageError):
            storage.key_of(Kind.INDEX, name)


def test_a_listing_skips_keys_this_layout_never_writes(storage: S3Storage, stub: Stubber) -> None:
    keys = [
        f"some/prefix/data/ab/{PACK}",
        f"some/prefix/data/cd/{PACK}",  # in the wrong shard
        "some/prefix/data/ab/",  # a folder marker
        "some/prefix/data/ab/.partial",
        "some/prefix/data/loose",
    ]
    stub.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": k, "Size": 7} for k in keys], "IsTruncated": False},
        {"Bucket": "bucket", "Prefix": "some/prefix/data/", "MaxKeys": 1000},
    )
    assert [(i.name, i.size) for i in storage.list(Kind.DATA)] == [(PACK, 7)]


def test_a_ranged_read_asks_for_the_range(storage: S3Storage, stub: Stubber) -> None:
    params = {"Bucket": "bucket", "Key": f"some/prefix/data/ab/{PACK}", "Range": "bytes=3-6"}
    stub.add_response("get_object", _body(b"3456", 206), params)
    assert storage.get(Kind.DATA, PACK, 3, 4) == b"3456"
    # A server that ignores Range sends the whole object: the range is cut from it.
    stub.add_response("get_object", _body(b"0123456789", 200), params)
    assert storage.get(Kind.DATA, PACK, 3, 4) == b"3456"
    stub.add_response("get_object", _body(b"34", 206), params)
    with pytest.raises(StorageError, match="shorter than expected"):
        storage.get(Kind.DATA, PACK, 3, 4)


def test_a_range_from_past_the_end(storage: S3Storage, stub: Stubber) -> None:
    for _ in range(2):
        stub.add_client_error("get_object", "InvalidRange", http_status_code=416)
    assert storage.get(Kind.INDEX, "i1", 50) == b""  # as a local file read there
    with pytest.raises(StorageError, match="shorter than expected"):
        storage.get(Kind.INDEX, "i1", 50, 2)


@pytest.mark.parametrize(
    ("code", "status", "error", "words"),
    [
        ("NoSuchKey", 404, NotFound, "snapshots/s1 is missing from the repository"),
        ("NoSuchBucket", 404, StorageError, "bucket 'bucket' does not exist"),
        ("SignatureDoesNotMatch", 403, StorageError, "AWS_SECRET_ACCESS_KEY"),
        ("InvalidAccessKeyId", 403, StorageError, "no such access key (AWS_ACCESS_KEY_ID)"),
        ("AccessDenied", 403, StorageError, "access denied (HTTP 403)"),
        ("ExpiredToken", 400, StorageError, "AWS_SESSION_TOKEN) has expired"),
        ("SlowDown", 503, TransientStorageError, "SlowDown"),
        ("InternalError", 500, TransientStorageError, "InternalError"),
        ("ServiceUnavailable", 503, TransientStorageError, "ServiceUnavailable"),
        ("Whatever", 502, TransientStorageError, "Whatever"),
        ("InvalidArgument", 400, StorageError, "InvalidArgument"),
        ("XMinioStorageFull", 507, StorageError, "the server's storage is full"),
        ("QuotaExceeded", 403, StorageError, "the server's storage is full"),
        ("Whatever", 507, StorageError, "the server's storage is full"),
    ],
)
def test_server_errors_become_one_line(
    storage: S3Storage,
    stub: Stubber,
    *,
    code: str,
    status: int,
    error: type[Exception],
    words: str,
) -> None:
    stub.add_client_error(
        "get_object", code, "The request was refused.\nSee the docs.", http_status_code=status
    )
    with pytest.raises(error) as raised:
        storage.get(Kind.SNAPSHOTS, "s1")
    message = str(raised.value)
    assert type(raised.value) is error
    assert words in message
    assert "\n" not in message
    assert SECRET not in message


def test_a_put_sends_content_md5_and_maps_a_missing_bucket(
    storage: S3Storage, stub: Stubber
) -> None:
    stub.add_response(
        "put_object",
        {},
        {
            "Bucket": "bucket",
            "Key": "some/prefix/index/i1",
            "Body": b"hello",
            "ContentMD5": "XUFAKrxLKna5cZ2REBfFkg==",
        },
    )
    storage.put(Kind.INDEX, "i1", b"hello")
    stub.add_client_error("put_object", "NoSuchBucket", http_status_code=404)
    with pytest.raises(StorageError, match="freezeframe never creates buckets"):
        storage.put(Kind.INDEX, "i1", b"hello")


def test_a_refused_head_is_asked_about_again(storage: S3Storage, stub: Stubber) -> None:
    """A HEAD's error has no body, so no code: a listing names the cause."""
    stub.add_client_error("head_object", "403", "Forbidden", http_status_code=403)
    stub.add_client_error("list_objects_v2", "SignatureDoesNotMatch", http_status_code=403)
    with pytest.raises(StorageError, match="secret key") as raised:
        storage.exists(Kind.CONFIG, "config")
    assert SECRET not in str(raised.value)


def test_absent_objects_exist_not_and_delete_quietly(storage: S3Storage, stub: Stubber) -> None:
    stub.add_client_error("head_object", "404", "Not Found", http_status_code=404)
    assert not storage.exists(Kind.SNAPSHOTS, "s1")
    stub.add_client_error("delete_object", "NoSuchKey", http_status_code=404)
    storage.delete(Kind.SNAPSHOTS, "s1")


def test_layout_needs_the_bucket_and_no_repository_in_it(storage: S3Storage, stub: Stubber) -> None:
    stub.add_client_error("head_bucket", "404", "Not Found", http_status_code=404)
    with pytest.raises(StorageError, match="bucket 'bucket' does not exist"):
        storage.create_layout()
    stub.add_response("head_bucket", {}, {"Bucket": "bucket"})
    stub.add_response(
        "list_objects_v2",
        {"CommonPrefixes": [{"Prefix": "some/prefix/keys/"}, {"Prefix": "some/prefix/other/"}]},
        {"Bucket": "bucket", "Prefix": "some/prefix/", "Delimiter": "/"},
    )
    with pytest.raises(RepositoryExists, match=r"objects \(keys/\)"):
        storage.create_layout()
    stub.add_response("head_bucket", {}, {"Bucket": "bucket"})
    stub.add_response(
        "list_objects_v2", {"Contents": [{"Key": "some/prefix/notes.txt"}]}, {"Bucket": ANY,
        "Prefix": ANY, "Delimiter": "/"}
    )  # fmt: skip
    assert storage.create_layout(group_readable=True) == [
        "s3:http://127.0.0.1:1/bucket/some/prefix: group-readable means nothing to an object "
        "store; who may read the repository is up to the bucket's policy"
    ]


def test_a_refused_connection_may_pass_on_a_retry() -> None:
    [port] = free_ports(1)  # nothing listens there now
    storage = S3Storage(f"http://127.0.0.1:{port}/bucket", env=ENV)
    with pytest.raises(
        TransientStorageError, match=r"cannot connect to 127\.0\.0\.1:\d+ \(connection refused\)$"
    ):
        storage.get(Kind.SNAPSHOTS, "s1")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "FFUNITTESTKEY0001"}, "AWS_SECRET_ACCESS_KEY is not"),
        ({"FREEZEFRAME_S3_ADDRESSING": "dns"}, "FREEZEFRAME_S3_ADDRESSING='dns'"),
        ({"FREEZEFRAME_S3_CA_BUNDLE": "/nonexistent/ca.pem"}, "is not a file of CA"),
    ],
)
def test_bad_settings_are_usage_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        S3Storage("https://s3.example.org/bucket", env=env)


def test_a_ca_bundle_and_virtual_hosts_are_taken(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not parsed until a TLS connection\n")
    env = {**ENV, "AWS_CA_BUNDLE": str(bundle), "FREEZEFRAME_S3_ADDRESSING": "virtual"}
    storage = S3Storage("https://s3.example.org/bucket", env=env)
    assert storage._client.meta.config.s3 == {"addressing_style": "virtual"}
    assert storage._client._endpoint.http_session._verify == str(bundle)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            botocore.exceptions.EndpointConnectionError(
                endpoint_url="http://h/k", error="[Errno 111] Connection refused"
            ),
            "cannot connect to 127.0.0.1:1 (connection refused)",
        ),
        (
            botocore.exceptions.ConnectTimeoutError(endpoint_url="http://h/k"),
            "no connection to 127.0.0.1:1 within 10 s",
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url="http://h/k"),
            "127.0.0.1:1 sent nothing for 120 s",
        ),
        (
            botocore.exceptions.ConnectionClosedError(endpoint_url="http://h/k"),
            "127.0.0.1:1 closed the connection before it answered",
        ),
        (
            botocore.exceptions.ResponseStreamingError(
                error="('Connection broken: IncompleteRead(100 bytes read, 900 more expected)', "
                "IncompleteRead(100 bytes read, 900 more expected))"
            ),
            "the answer from 127.0.0.1:1 broke off after 100 of 1000 bytes",
        ),
        (
            botocore.exceptions.IncompleteReadError(actual_bytes=5, expected_bytes=10),
            "the answer from 127.0.0.1:1 broke off after 5 of 10 bytes",
        ),
    ],
)
def test_network_failures_are_transient_and_said_plainly(exc: Exception, words: str) -> None:
    """What a dropped, refused or silent connection says: the host and what went wrong, once
    (botocore's own text repeats the URL and quotes urllib3's exceptions)."""
    storage = S3Storage("http://127.0.0.1:1/bucket", env=ENV)
    error = storage._error("cannot read s3:http://127.0.0.1:1/bucket/k", exc, None)
    assert type(error) is TransientStorageError
    assert str(error) == f"cannot read s3:http://127.0.0.1:1/bucket/k: {words}"
