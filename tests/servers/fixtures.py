"""The session fixtures of the S3 test servers, each started at its first use and stopped when
the session ends; ``tests/conftest.py`` imports them. A test takes its own place on one with
``server.fresh_place()``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ffharness import privileged_required
from servers.base import S3Server
from servers.rclone_s3 import rclone_s3
from servers.rest import RestServer, rest_server
from servers.seaweedfs import seaweedfs
from servers.sshd import SshServer, sshd, unavailable


@pytest.fixture(scope="session")
def rclone_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with rclone_s3(tmp_path_factory.mktemp("rclone-s3")) as server:
        yield server


@pytest.fixture(scope="session")
def rclone_s3_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``rclone serve s3`` over HTTPS, its certificate signed by a private CA."""
    with rclone_s3(tmp_path_factory.mktemp("rclone-s3-tls"), tls=True) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def rest_local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestServer]:
    """``freezeframe serve`` of a local directory (``server.repository``), accounts of every
    role; the contract suite empties it before each test."""
    root = tmp_path_factory.mktemp("rest-local")
    with rest_server(root, str(root / "repo")) as server:
        yield server


@pytest.fixture(scope="session")
def rest_s3_server(
    tmp_path_factory: pytest.TempPathFactory, rclone_s3_server: S3Server
) -> Iterator[RestServer]:
    """``freezeframe serve`` of a bucket of ``rclone serve s3``: the server fronting a remote
    backend, its keys in its own environment only."""
    place = rclone_s3_server.fresh_place()
    with rest_server(
        tmp_path_factory.mktemp("rest-s3"), place.location, env=rclone_s3_server.env()
    ) as server:
        yield server


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """OpenSSH's sshd on loopback serving SFTP (skips, or fails under
    FREEZEFRAME_TEST_PRIVILEGED=1, where sshd cannot run)."""
    reason = unavailable()
    if reason is not None:
        privileged_required(reason)
    with sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


S3_SERVERS = ("rclone_s3_server", "seaweedfs_server")
"""The fixtures' names, for tests that run over every server (``request.getfixturevalue``)."""
