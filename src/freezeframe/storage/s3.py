"""The S3-compatible backend: one object per stored object, in a bucket under an optional prefix.

A location is ``s3:https://HOST[:PORT]/BUCKET[/PREFIX]`` (``s3:http://`` for a server on a
trusted network, such as the test servers on loopback). Objects are ``PREFIX/config``,
``PREFIX/<kind>/<name>``, and data ``PREFIX/data/<first two hex digits>/<name>`` as the local
backend's directories, so the two layouts copy into each other by a plain sync.

Credentials, the region and a profile come from the usual AWS variables (botocore reads
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``,
``AWS_PROFILE`` and the shared files); a location never holds them. Requests are path-style
(``https://host/bucket/key``), which every S3-compatible server accepts;
``FREEZEFRAME_S3_ADDRESSING=virtual`` asks for ``https://bucket.host/key``. TLS certificates are
verified, against ``FREEZEFRAME_S3_CA_BUNDLE`` (or ``AWS_CA_BUNDLE``) when one is set.

Every put is a single PUT request, which S3 makes visible whole or not at all; packs are at most
1 GiB and a single PUT takes 5 GiB, so multipart uploads (which can be left half-done) are never
started. Content-MD5 is sent so the server refuses a body damaged on the way; botocore's newer
default of streamed CRC trailers is turned off, since several S3-compatible servers reject it.

Retries belong to ``storage.retry`` (one policy, one place): botocore makes one attempt, and
failures that may pass (connection errors, timeouts, 500/503, SlowDown) are raised as
TransientStorageError.

Why boto3 rather than obstore (bench/s3_clients.py, against ``rclone serve s3`` on loopback):
obstore does three times the small requests per second (about 0.15 ms of CPU a request against
botocore's 1.1 ms) and starts in 20 ms instead of 300, but 16 MiB packs, what a backup moves,
go at the same rate (Content-MD5 costs boto3 some 20 ms of CPU per pack); and only botocore
says which error a server gave (a missing bucket or key, a wrong secret or an unknown key) and
reads AWS_PROFILE, the shared files and roles, all of which the messages and the setup above
need. The import is paid only by S3 locations (``storage.registry`` imports this lazily).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from freezeframe.errors import (
    FreezeframeError,
    NotFound,
    RepositoryExists,
    StorageError,
    TransientStorageError,
    UsageError,
)
from freezeframe.storage.base import Capabilities, Description, Kind, ObjectInfo
from freezeframe.storage.timeouts import io_timeout

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_T = TypeVar("_T")

SYNTAX = "s3:https://HOST[:PORT]/BUCKET[/PREFIX]"
ADDRESSING_ENV = "FREEZEFRAME_S3_ADDRESSING"
CA_BUNDLE_ENVS = ("FREEZEFRAME_S3_CA_BUNDLE", "AWS_CA_BUNDLE")
DEFAULT_REGION = "us-east-1"  # what SigV4 needs when nothing names one; most servers ignore it
POOL_CONNECTIONS = 32  # several uploads and prefetching reads in flight, each on its own socket
CONNECT_TIMEOUT = 10.0
LIST_PAGE = 1000  # the most S3 gives per page

# A lenient bucket check (legacy and S3-compatible buckets allow more than AWS's rules today):
# only what cannot be a path segment or a host label is refused.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "OperationAborted",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_INCOMPLETE = re.compile(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)")
# A server out of space (MinIO's full disk, Ceph's and others' quota; 507 is HTTP's "insufficient
# storage"): final, since retrying within seconds cannot free space. rclone answers a full disk
# with a bare 500 InternalError, which stays transient: nothing tells it from a passing fault.
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"})


@dataclass(frozen=True)
class S3Location:
    """A parsed location: the endpoint (scheme and host), the bucket and the key prefix."""

    scheme: str
    netloc: str
    bucket: str
    prefix: str = ""  # without leading or trailing slashes; "" is the bucket's root

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def __str__(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"s3:{self.endpoint}/{self.bucket}{tail}"


def parse_location(rest: str) -> S3Location:
    """What follows ``s3:`` (or the whole location); UsageError (one line) for anything else
    than the syntax allows. The location is never echoed when it holds a user or password: that
    may be a secret."""
    if rest[:3].lower() == "s3:":
        rest = rest[3:]
    try:
        parts = urlsplit(rest)
        port = parts.port  # ValueError when not a number in range
    except ValueError as exc:
        raise UsageError(f"S3 location s3:{rest!r}: {exc}; give it as {SYNTAX}") from exc
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            "an S3 location holds no credentials: set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and give the location as {SYNTAX}"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"S3 location 's3:{rest}' is not {SYNTAX} (or s3:http://...)")
    if parts.query or parts.fragment:
        raise UsageError(f"S3 location 's3:{rest}' has a query or fragment; give it as {SYNTAX}")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise UsageError(f"S3 location 's3:{rest}' names no bucket; give it as {SYNTAX}")
    bucket, *prefix = segments
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(f"S3 location 's3:{rest}': {bucket!r} is not a bucket name")
    if any(s in (".", "..") for s in prefix):
        raise UsageError(f"S3 location 's3:{rest}': a prefix cannot hold '.' or '..'")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return S3Location(parts.scheme, netloc, bucket, "/".join(prefix))


def _check_name(name: str) -> None:
    """As the local backend's: a name is one path segment that is neither hidden nor empty."""
    if not name or "/" in name or name.startswith("."):
        raise StorageError(f"invalid object name {name!r}")


class S3Storage:
    """A repository in an S3 bucket (or under a prefix of one), safe to call from many threads:
    a botocore client is, and this holds nothing else that changes."""

    def __init__(
        self,
        location: str | S3Location,
        *,
        env: Mapping[str, str] | None = None,
        client: S3Client | None = None,
    ) -> None:
        """``env``: where the settings and credentials are read (this process's environment
        unless given, so a test or an embedding program can name its own); ``client``: a
        botocore client to use instead of one made from them."""
        self.place = location if isinstance(location, S3Location) else parse_location(location)
        self.location = str(self.place)
        self.capabilities = Capabilities(writable=True, local_modes=False, local_directory=None)
        self._root = f"{self.place.prefix}/" if self.place.prefix else ""
        settings = os.environ if env is None else env
        self._settings = _shown_settings(self.place, settings)
        self._io_timeout = io_timeout(settings)
        if client is None:
            client = _make_client(self.place, settings)
        self._client = client

    # -- keys ------------------------------------------------------------------------------

    def key_of(self, kind: Kind, name: str) -> str:
        """The object key of a stored object; names are checked as the local backend's."""
        _check_name(name)
        if kind is Kind.CONFIG:
            return f"{self._root}config"
        if kind is Kind.DATA:
            return f"{self._root}data/{name[:2]}/{name}"
        return f"{self._root}{kind.value}/{name}"

    def _name_in(self, kind: Kind, relative: str) -> str | None:
        """The name a listed key (relative to its kind's prefix) stands for, or None for a key
        that this layout never writes (another tool's, a folder marker)."""
        if kind is Kind.DATA:
            shard, _, name = relative.partition("/")
            if not name or shard != name[:2]:
                return None
        else:
            name = relative
        if not name or "/" in name or name.startswith("."):
            return None
        return name

    # -- the Protocol ------------------------------------------------------------------------

    def create_layout(self, *, group_readable: bool = False) -> builtins.list[str]:
        """Check that the bucket exists and holds no repository under the prefix; buckets are
        never created here (where, with what policy and lifecycle, is the operator's choice)."""
        what = f"cannot create a repository at {self.location}"
        try:
            self._call(
                what,
                lambda: self._client.head_bucket(Bucket=self.place.bucket),
                missing="",
                probe=True,
            )
        except NotFound:
            raise self._no_bucket(what) from None
        found: set[str] = set()
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.place.bucket, Prefix=self._root, Delimiter="/"
        )
        for page in self._pages(what, pages):
            found.update(c["Prefix"][len(self._root) :] for c in page.get("CommonPrefixes", []))
            found.update(o["Key"][len(self._root) :] for o in page.get("Contents", []))
        held = sorted(found & ({"config"} | {f"{k.value}/" for k in Kind if k is not Kind.CONFIG}))
        if held:
            raise RepositoryExists(
                f"{self.location} already holds a repository's objects ({', '.join(held)}); "
                "a new repository needs a bucket or prefix without them"
            )
        if group_readable:
            return [
                f"{self.location}: group-readable means nothing to an object store; who may "
                "read the repository is up to the bucket's policy"
            ]
        return []

    def put(self, kind: Kind, name: str, data: bytes) -> None:
        key = self.key_of(kind, name)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._call(
            f"cannot write {self._show(key)}",
            lambda: self._client.put_object(
                Bucket=self.place.bucket, Key=key, Body=data, ContentMD5=md5
            ),
        )

    def get(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self.key_of(kind, name)
        what = f"cannot read {self._show(key)}"
        missing = f"{kind.value}/{name} is missing from the repository"
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{what}: invalid range {offset}+{length}")
        if length == 0:
            size = self._head(what, key)
            if size is None:
                raise NotFound(missing)
            if offset > size:
                raise StorageError(f"{kind.value}/{name} is shorter than expected")
            return b""
        ranged = offset > 0 or length is not None
        end = "" if length is None else str(offset + length - 1)
        try:
            data, partial = self._call(
                what,
                lambda: self._read(key, f"bytes={offset}-{end}" if ranged else None),
                missing=missing,
            )
        except _RangeNotSatisfiable:
            if length is None:
                return b""  # from the end on, as a local file's read there gives
            raise StorageError(f"{kind.value}/{name} is shorter than expected") from None
        if ranged and not partial:  # a server that ignored the Range header sent it all
            data = data[offset:] if length is None else data[offset : offset + length]
        if length is not None and len(data) != length:
            raise StorageError(f"{kind.value}/{name} is shorter than expected")
        return data

    def _read(self, key: str, byte_range: str | None) -> tuple[bytes, bool]:
        """The body of one GET (the whole object, or a range) and whether it is a part."""
        try:
            if byte_range is None:
                response = self._client.get_object(Bucket=self.place.bucket, Key=key)
            else:
                response = self._client.get_object(
                    Bucket=self.place.bucket, Key=key, Range=byte_range
                )
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange" or _status(exc) == 416:
                raise _RangeNotSatisfiable from exc
            raise
        body = response["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        # A part says so by 206 or by its Content-Range (rclone answers a range with 200).
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return data, status == 206 or bool(response.get("ContentRange"))

    def list(self, kind: Kind) -> Iterator[ObjectInfo]:
        what = f"cannot list {self._show(self._root + kind.value)}"
        if kind is Kind.CONFIG:
            size = self._head(what, self.key_of(Kind.CONFIG, "config"))
            if size is not None:
                yield ObjectInfo("config", size)
            return
        prefix = f"{self._root}{kind.value}/"
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.place.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE}
        )
        for page in self._pages(what, pages):
            for entry in page.get("Contents", []):
                name = self._name_in(kind, entry["Key"][len(prefix) :])
                if name is not None:
                    yield ObjectInfo(name, entry["Size"])

    def delete(self, kind: Kind, name: str) -> None:
        key = self.key_of(kind, name)
        try:
            self._call(
                f"cannot delete {self._show(key)}",
                lambda: self._client.delete_object(Bucket=self.place.bucket, Key=key),
                missing="",
            )
        except NotFound:
            return  # some servers answer 404 where S3 answers 204: absent is not an error

    def exists(self, kind: Kind, name: str) -> bool:
        key = self.key_of(kind, name)
        return self._head(f"cannot look for {self._show(key)}", key) is not None

    def remove_stale_temporaries(self) -> int:
        """Nothing to remove: every put is one PUT request, visible whole or not at all, and no
        multipart upload (which a crash could leave half-done) is ever started."""
        return 0

    def audit(self) -> builtins.list[str]:
        """Nothing to audit: an object store has no modes (its bucket policy decides access)."""
        return []

    def describe(self) -> Description:
        """The endpoint, bucket and prefix, and how the client is set up (TLS, addressing,
        where the credentials come from; never the keys). Sends no request: a bucket tells
        nobody its free space."""
        details = {
            "endpoint": self.place.endpoint,
            "bucket": self.place.bucket,
            "prefix": self.place.prefix,
            **self._settings,
        }
        return Description("s3", details)

    def close(self) -> None:
        """Close the pooled connections; a later call opens new ones."""
        self._client.close()

    # -- calls and their errors ------------------------------------------------------------

    def _head(self, what: str, key: str) -> int | None:
        """The size of an object, or None when it is absent."""
        try:
            response = self._call(
                what,
                lambda: self._client.head_object(Bucket=self.place.bucket, Key=key),
                missing="",
                probe=True,
            )
        except NotFound:
            return None
        return response["ContentLength"]

    def _call(
        self, what: str, fn: Callable[[], _T], *, missing: str | None = None, probe: bool = False
    ) -> _T:
        """``fn()`` with botocore's errors as ours. ``missing``: the message of NotFound when the
        object is absent (None: absence is an error of its own, as of a bucket). ``probe``: a
        HEAD, whose errors carry no code (no body), so a 403 is asked about again."""
        try:
            return fn()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if probe and isinstance(exc, botocore.exceptions.ClientError) and _status(exc) == 403:
                self._diagnose(what)
            raise self._error(what, exc, missing) from exc

    def _pages(self, what: str, pages: Any) -> Iterator[Any]:
        """A paginator's pages, each fetched when the one before is used up, with errors as
        ours (a listing is lazy: an error can come with any page)."""
        iterator = iter(pages)
        while True:
            try:
                page = next(iterator)
            except StopIteration:
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise self._error(what, exc, None) from exc
            yield page

    def _diagnose(self, what: str) -> None:
        """After a 403 without a reason (a HEAD's): one listing of a single key, whose error
        names the cause (a wrong secret, an unknown key); returns if it succeeds."""
        try:
            self._client.list_objects_v2(Bucket=self.place.bucket, Prefix=self._root, MaxKeys=1)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._error(what, exc, None) from exc

    def _error(self, what: str, exc: Exception, missing: str | None) -> FreezeframeError:
        """One line naming what failed and why: transient when a retry may get past it; never
        with a secret (botocore's messages hold none, the servers' neither)."""
        if isinstance(exc, botocore.exceptions.ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket":
                return self._no_bucket(what)
            if missing is not None and (code in _NOT_FOUND_CODES or status == 404):
                return NotFound(missing or what)
            message = _one_line(exc.response.get("Error", {}).get("Message", ""))
            detail = f"{code or status}" + (f" ({message})" if message else "")
            if code in _FULL_CODES or status == 507:
                return StorageError(f"{what}: the server's storage is full: {detail}")
            reason = _CREDENTIAL_REASONS.get(code)
            if reason is not None:
                return StorageError(f"{what}: {reason}")
            if status == 403 or code in ("AccessDenied", "403", "Forbidden"):
                return StorageError(
                    f"{what}: access denied (HTTP 403): the credentials may not use bucket "
                    f"{self.place.bucket!r}"
                )
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStorageError(f"{what}: the server answered {detail}")
            return StorageError(f"{what}: the server answered {detail}")
        if isinstance(exc, botocore.exceptions.SSLError):
            reason = _one_line(str(exc.kwargs.get("error", exc)))
            return StorageError(
                f"{what}: TLS with {self.place.netloc} failed ({reason}); the certificates of "
                "a private CA go in FREEZEFRAME_S3_CA_BUNDLE"
            )
        if isinstance(
            exc,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.IncompleteReadError,
        ):
            return TransientStorageError(f"{what}: {self._network_reason(exc)}")
        if isinstance(
            exc,
            botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
        ):
            return StorageError(
                f"{what}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            )
        return StorageError(f"{what}: {_one_line(str(exc))}")

    def _network_reason(self, exc: Exception) -> str:
        """Why a request got no whole answer, in a user's words: botocore's messages repeat
        the URL (the key is named already) and quote urllib3's exception tuples."""
        host = self.place.netloc
        if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
            return f"no connection to {host} within {min(CONNECT_TIMEOUT, self._io_timeout):g} s"
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):
            return f"{host} sent nothing for {self._io_timeout:g} s"
        if isinstance(exc, botocore.exceptions.EndpointConnectionError):
            refused = "refused" in str(exc.kwargs.get("error", "")).lower()
            return f"cannot connect to {host}" + (" (connection refused)" if refused else "")
        if isinstance(exc, botocore.exceptions.ConnectionClosedError):
            return f"{host} closed the connection before it answered"
        if isinstance(
            exc,
            botocore.exceptions.ResponseStreamingError | botocore.exceptions.IncompleteReadError,
        ):
            reason = f"the answer from {host} broke off"
            counts = _INCOMPLETE.search(str(exc))
            if counts is not None:
                read, more = int(counts.group(1)), int(counts.group(2))
                return f"{reason} after {read} of {read + more} bytes"
            if isinstance(exc, botocore.exceptions.IncompleteReadError):
                sizes = exc.kwargs
                return f"{reason} after {sizes['actual_bytes']} of {sizes['expected_bytes']} bytes"
            return reason
        return _one_line(str(exc))

    def _no_bucket(self, what: str) -> StorageError:
        return StorageError(
            f"{what}: bucket {self.place.bucket!r} does not exist at {self.place.endpoint} "
            "(create it first: freezeframe never creates buckets)"
        )

    def _show(self, key: str) -> str:
        """A key as users name it: the location it is in, then the key within the prefix."""
        return f"s3:{self.place.endpoint}/{self.place.bucket}/{key}"


class _RangeNotSatisfiable(Exception):
    """A range that starts at or past the end of its object (HTTP 416)."""


_CREDENTIAL_REASONS = {
    "InvalidAccessKeyId": "the server knows no such access key (AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": (
        "the request's signature does not match: the secret key (AWS_SECRET_ACCESS_KEY) is "
        "not the access key's"
    ),
    "ExpiredToken": "the session token (AWS_SESSION_TOKEN) has expired",
    "InvalidToken": "the session token (AWS_SESSION_TOKEN) is not valid",
    "TokenRefreshRequired": "the session token (AWS_SESSION_TOKEN) has expired",
    "RequestTimeTooSkewed": "this machine's clock is too far from the server's",
    "AuthorizationHeaderMalformed": (
        "the server refused the request's region: set AWS_DEFAULT_REGION to the bucket's"
    ),
}


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shown_settings(place: S3Location, env: Mapping[str, str]) -> dict[str, str]:
    """What ``describe`` shows of the client's settings: the names of the variables the
    credentials come from, never their values."""
    if env.get("AWS_ACCESS_KEY_ID"):
        source = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if env.get("AWS_SESSION_TOKEN"):
            source += " with AWS_SESSION_TOKEN"
    elif env.get("AWS_PROFILE"):
        source = f"the AWS profile {env['AWS_PROFILE']!r}"
    else:
        source = "botocore's defaults (the shared files' default profile, an instance role)"
    bundle = next((env[name] for name in CA_BUNDLE_ENVS if env.get(name)), None)
    if place.scheme == "http":
        tls = "none (plain http)"
    else:
        tls = f"verified against {bundle}" if bundle else "verified against the system's CAs"
    return {
        "credentials": source,
        "region": env.get("AWS_DEFAULT_REGION")
        or env.get("AWS_REGION")
        or ("the profile's" if env.get("AWS_PROFILE") else DEFAULT_REGION),
        "addressing": env.get(ADDRESSING_ENV) or "path",
        "tls": tls,
    }


def _make_client(place: S3Location, env: Mapping[str, str]) -> S3Client:
    """A botocore client for the endpoint, configured from ``env`` as the module says."""
    addressing = env.get(ADDRESSING_ENV, "path") or "path"
    if addressing not in ("path", "virtual"):
        raise UsageError(
            f"{ADDRESSING_ENV}={addressing!r}: it is 'path' (the default) or 'virtual'"
        )
    verify: bool | str = True
    for name in CA_BUNDLE_ENVS:
        bundle = env.get(name)
        if bundle:
            if not os.path.isfile(bundle):
                raise UsageError(f"{name}={bundle!r} is not a file of CA certificates")
            verify = bundle
            break
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(access) != bool(secret):
        given, lacking = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if access
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise UsageError(f"{given} is set but {lacking} is not: S3 needs both")
    try:
        # Keys given are used as given (before any profile's, as the AWS CLI does); without
        # them botocore looks in its usual places (a profile, the shared files, a role).
        session = boto3.session.Session(
            aws_access_key_id=access or None,
            aws_secret_access_key=secret or None,
            aws_session_token=(env.get("AWS_SESSION_TOKEN") or None) if access else None,
            region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
            profile_name=env.get("AWS_PROFILE") or None,
        )
    except botocore.exceptions.ProfileNotFound as exc:
        profile = exc.kwargs.get("profile", "")
        raise UsageError(f"the AWS profile {profile!r} (AWS_PROFILE) is not configured") from exc
    config = botocore.config.Config(
        region_name=session.region_name or DEFAULT_REGION,
        signature_version="s3v4",
        s3={"addressing_style": "virtual" if addressing == "virtual" else "path"},
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=min(CONNECT_TIMEOUT, io_timeout(env)),
        read_timeout=io_timeout(env),  # between two reads of a socket, not a whole transfer
        max_pool_connections=POOL_CONNECTIONS,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", endpoint_url=place.endpoint, verify=verify, config=config)
