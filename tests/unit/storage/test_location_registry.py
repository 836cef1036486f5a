"""Repository locations: paths and ``local:`` are local directories, ``s3:`` an S3 bucket; a
scheme this version has no backend for (or a malformed S3 location) is refused in one line and
nothing is created on disk (``sftp:host:/repo`` once became a local directory of that name); the
options stack the wrappers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezeframe.errors import UsageError
from freezeframe.storage.base import Capabilities, Storage
from freezeframe.storage.cache import CachingStorage
from freezeframe.storage.local import LocalStorage
from freezeframe.storage.ratelimit import RateLimitedStorage, RateLimits
from freezeframe.storage.readonly import ReadOnlyStorage
from freezeframe.storage.registry import backend_for, check_location, open_storage, split_location
from freezeframe.storage.retry import RetryingStorage, RetryPolicy
from freezeframe.storage.s3 import S3Storage
from freezeframe.storage.wrapper import StorageWrapper


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("location", "root"),
    [
        ("/srv/backups/repo", "/srv/backups/repo"),
        ("/srv/a:b", "/srv/a:b"),  # a colon later in a path is part of the path
        ("repo", "repo"),
        ("backups/repo:2024", "backups/repo:2024"),
        ("./sftp:host:/repo", "sftp:host:/repo"),  # how to name such a directory
        ("local:/srv/repo", "/srv/repo"),
        ("local:repo", "repo"),
        ("local:sftp:host", "sftp:host"),
        ("C:\\backups", "C:\\backups"),  # one letter is a drive, never a scheme
        ("c:/backups", "c:/backups"),
    ],
)
def test_local_locations(location: str, root: str) -> None:
    storage = backend_for(location)
    assert isinstance(storage, LocalStorage)
    assert storage.root == Path(root)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("rest:ftp://host/", "REST location 'rest:ftp://host/' is not rest:https://HOST[:PORT]/"),
        ("rest:https://user:pw@host/", "a REST location holds no credentials"),
        ("sftp:host:2222/repo", "SFTP location 'sftp:host:2222/repo' is ambiguous"),
        ("S3:bucket", "S3 location 's3:bucket' is not s3:https://HOST[:PORT]/BUCKET[/PREFIX]"),
        ("s3:https://host:9000", "S3 location 's3:https://host:9000' names no bucket"),
        ("s3:ftp://host/bucket", "is not s3:https://HOST[:PORT]/BUCKET[/PREFIX]"),
        ("s3:https://host/bucket/../up", "a prefix cannot hold '.' or '..'"),
        ("s3:https://host:99999/bucket", "S3 location"),
        ("s3:", "repository location 's3:' names no s3 repository"),
        (
            "rclone:remote:path",
            "unknown repository location scheme 'rclone' in 'rclone:remote:path'",
        ),
        ("b2:bucket", "unknown repository location scheme 'b2'"),
        ("file:///srv/repo", "unknown repository location scheme 'file'"),
        (
            "repo:old",
            "(a local directory whose name has a colon can be given as ./repo:old "
            "or local:repo:old)",
        ),
        ("local:", "repository location 'local:' names no local repository"),
        ("", "the repository location is empty"),
    ],
)
def test_other_locations_are_refused_in_one_line_creating_nothing(
    tmp_path: Path, location: str, message: str
) -> None:
    with pytest.raises(UsageError) as raised:
        open_storage(location, retry=RetryPolicy(), cache_dir=None)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError) as checked:  # a plans file's check says the same
        check_location(location)
    assert str(checked.value) == str(raised.value)
    assert os.listdir(tmp_path) == []


def test_a_location_is_checked_without_credentials_or_a_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan's credentials are in its environment file, not here: half a key pair, which
    opening the backend refuses, does not matter to the syntax."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    assert check_location("s3:https://s3.example.org/backups/host-a") == "s3"
    assert check_location("/srv/backups/repo") == "local"
    with pytest.raises(UsageError, match="AWS_SECRET_ACCESS_KEY is not"):
        backend_for("s3:https://s3.example.org/backups/host-a")


def test_s3_locations_open_without_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "FREEZEFRAME_S3_ADDRESSING", "FREEZEFRAME_S3_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    storage = backend_for("s3:https://s3.example.org:9000/backups/host-a/daily/")
    assert isinstance(storage, S3Storage)
    assert storage.location == "s3:https://s3.example.org:9000/backups/host-a/daily"
    assert storage.capabilities == Capabilities(
        writable=True, local_modes=False, local_directory=None
    )
    stacked = open_storage("s3:http://127.0.0.1:1/b", read_only=True, retry=RetryPolicy())
    assert _layers(stacked) == [ReadOnlyStorage, RetryingStorage, S3Storage]
    assert stacked.capabilities.local_directory is None


def test_credentials_in_an_s3_location_are_refused_unechoed() -> None:
    with pytest.raises(UsageError) as raised:
        backend_for("s3:https://AKIDEXAMPLE:hunter2-secret@s3.example.org/bucket")
    assert "holds no credentials" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "AKIDEXAMPLE" not in str(raised.value)


def test_split_location() -> None:
    assert split_location("sftp:user@host:/srv/repo") == ("sftp", "user@host:/srv/repo")
    assert split_location("/srv/a:b") == ("local", "/srv/a:b")
    assert split_location("s3+https:x") == ("s3+https", "x")


def _layers(storage: Storage) -> list[type]:
    layers: list[type] = []
    while isinstance(storage, StorageWrapper):
        layers.append(type(storage))
        storage = storage.inner
    return [*layers, type(storage)]


def test_options_stack_wrappers_innermost_first(tmp_path: Path) -> None:
    assert _layers(open_storage("repo")) == [LocalStorage]
    assert _layers(open_storage("repo", retry=RetryPolicy())) == [RetryingStorage, LocalStorage]
    stacked = open_storage(
        "local:repo",
        read_only=True,
        retry=RetryPolicy(),
        cache_dir=tmp_path / "cache",
        limits=RateLimits(download=1e6),
    )
    assert _layers(stacked) == [
        ReadOnlyStorage,
        CachingStorage,
        RetryingStorage,
        RateLimitedStorage,
        LocalStorage,
    ]
    assert stacked.location == "repo"
    assert not stacked.capabilities.writable
    # The directory a backup must never freeze passes through every wrapper, absolute.
    assert stacked.capabilities.local_directory == os.path.abspath("repo")
    assert _layers(open_storage("repo", limits=RateLimits())) == [LocalStorage]
    assert not (tmp_path / "repo").exists()  # opening creates nothing; init does
