"""SFTP locations: scp's syntax and restic's URL syntax, what each means, the canonical form
a repository is then named by, and the refusals (one line each, nothing connected)."""

from __future__ import annotations

import pytest

from freezeframe.errors import UsageError
from freezeframe.storage.registry import backend_for
from freezeframe.storage.sftp import SftpLocation, SftpStorage, parse_location


@pytest.mark.parametrize(
    ("rest", "expected", "canonical"),
    [
        ("user@host:/srv/repo", SftpLocation("user", "host", 22, "/srv/repo"), None),
        ("user@host:repo", SftpLocation("user", "host", 22, "repo"), None),  # login directory
        (
            "user@host:/srv/repo/",
            SftpLocation("user", "host", 22, "/srv/repo"),
            "user@host:/srv/repo",
        ),
        ("user@[::1]:/srv/repo", SftpLocation("user", "::1", 22, "/srv/repo"), None),
        ("user@host:./2222/repo", SftpLocation("user", "host", 22, "./2222/repo"), None),
        ("//user@host:2222//srv/repo", SftpLocation("user", "host", 2222, "/srv/repo"), None),
        ("//user@host:2222/repo", SftpLocation("user", "host", 2222, "repo"), None),
        (
            "//user@host//srv/repo",
            SftpLocation("user", "host", 22, "/srv/repo"),
            "user@host:/srv/repo",
        ),
        ("//user@[fe80::1]:22//r", SftpLocation("user", "fe80::1", 22, "/r"), "user@[fe80::1]:/r"),
    ],
)
def test_locations(rest: str, expected: SftpLocation, canonical: str | None) -> None:
    place = parse_location(rest)
    assert place == expected
    assert str(place) == f"sftp:{canonical or rest}"
    assert parse_location(str(place)) == place  # the canonical form names the same place


@pytest.mark.parametrize(
    ("rest", "message"),
    [
        ("host:2222/repo", "is ambiguous: for port 2222 write sftp://USER@host:2222//PATH"),
        ("user:secret@host:/repo", "an SFTP location holds no password"),
        ("//user:secret@host:22//repo", "an SFTP location holds no password"),
        ("/srv/repo", "is not sftp:USER@HOST:/PATH"),
        ("user@host", "is not sftp:USER@HOST:/PATH"),
        ("user@host:", "names no directory"),
        ("//user@host:99999//repo", "port 99999 is out of range"),
        ("user@host:/srv/../etc", "a path cannot hold '..'"),
    ],
)
def test_refused_locations(rest: str, message: str) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        parse_location(rest)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_without_a_user_the_local_one_is_taken() -> None:
    assert parse_location("nas:/srv/repo", default_user="backup") == SftpLocation(
        "backup", "nas", 22, "/srv/repo"
    )
    assert parse_location("nas:/srv/repo").user  # this process's user


def test_the_registry_opens_sftp_without_connecting() -> None:
    storage = backend_for("sftp://nobody@192.0.2.1:2222//srv/repo")  # TEST-NET: never reached
    assert isinstance(storage, SftpStorage)
    assert storage.location == "sftp://nobody@192.0.2.1:2222//srv/repo"
    assert storage.capabilities.local_modes and storage.capabilities.local_directory is None
