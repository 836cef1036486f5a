"""``doctor --repo``: what a repository's storage answers, without the password, against a
local directory and real S3 servers: the numbers present and plausible, the test object gone
afterwards; a wrong secret, a missing bucket, a port nobody listens on and a read-only
account each a failed finding of one line with exit 1, the secret printed nowhere."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from ffharness import FAST_INIT, Cli, run_freezeframe
from freezeframe.cli.main import main
from freezeframe.errors import EXIT_FATAL, EXIT_OK, EXIT_USAGE
from freezeframe.service.doctor import PROBE_BYTES
from freezeframe.storage.base import PROBE_PREFIX, Kind
from freezeframe.storage.local import LocalStorage
from servers.base import S3Server, free_ports

_PASSWORD_VARIABLES = (
    "FREEZEFRAME_PASSWORD",
    "FREEZEFRAME_PASSWORD_FILE",
    "FREEZEFRAME_PASSWORD_COMMAND",
)


class Doctor:
    """``freezeframe doctor --repo LOCATION`` in this process, with no password anywhere."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        for name in _PASSWORD_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("FREEZEFRAME_REPOSITORY", raising=False)

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, expect: int = EXIT_OK
    ) -> tuple[str, str]:
        for name, value in (env or {}).items():
            self.monkeypatch.setenv(name, value)
        self.capsys.readouterr()
        status = main(["--no-progress", "doctor", *args])
        out, err = self.capsys.readouterr()
        assert status == expect, f"exit {status}, expected {expect}\n{out}\n{err}"
        return out, err

    def json(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        out, _ = self(*args, "--json", **kwargs)
        document: dict[str, Any] = json.loads(out)["repository"]
        return document


@pytest.fixture
def doctor(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Doctor:
    return Doctor(capsys, monkeypatch)


def _finding(report: dict[str, Any], check: str) -> dict[str, Any]:
    [found] = [f for f in report["findings"] if f["check"] == check]
    return found


def _assert_measured(report: dict[str, Any]) -> None:
    """Latency and rates present and within what any working storage gives on loopback."""
    assert report["reachable"] is True
    assert 0 < report["latency_ms"] < 1000, report["latency_ms"]
    assert len(report["latency_samples_ms"]) == 5
    assert min(report["latency_samples_ms"]) <= report["latency_ms"]
    assert report["probe_bytes"] == PROBE_BYTES
    for rate in ("upload_bytes_per_s", "download_bytes_per_s"):
        assert 1e6 < report[rate] < 1e11, (rate, report[rate])  # 1 MB/s .. 100 GB/s
    assert report["can"] == {"write": True, "read": True, "list": True, "delete": True}
    assert report["ok"] is True


def test_a_local_repository_before_and_after_init(doctor: Doctor, tmp_path: Path) -> None:
    place = tmp_path / "repo"
    before = doctor.json("--repo", str(place))
    assert before["backend"] == "local" and before["repository_exists"] is False
    assert before["details"] == {"directory": str(place), "nearest_existing": str(tmp_path)}
    assert before["can"]["write"] is True and before["ok"] is True
    assert "not tried" in _finding(before, "read")["message"]

    done = run_freezeframe(*FAST_INIT, repo=place, env={"FREEZEFRAME_PASSWORD": "pw"})
    assert done.returncode == 0, done.stderr
    report = doctor.json("--repo", str(place))
    _assert_measured(report)
    assert report["repository_exists"] is True
    assert report["repository"]["version"] >= 1 and len(report["repository"]["id"]) == 64
    space = os.statvfs(place)
    assert report["filesystem"] and report["filesystem"] in _finding(report, "space")["message"]
    assert 0 < report["free_bytes"] <= report["total_bytes"] == space.f_blocks * space.f_frsize
    assert abs(report["free_bytes"] - space.f_bavail * space.f_frsize) < 64 * 2**20
    assert os.listdir(place / "locks") == []  # the test object is gone

    text, err = doctor("--repo", str(place))
    lines = text.splitlines()
    assert lines[0] == f"repository {place}" and err == ""
    checks = [line.split(":")[0].strip() for line in lines[1:]]
    assert checks == [
        "backend", "reachable", "repository", "write", "list", "read", "delete", "space",
        "result",
    ]  # fmt: skip
    assert "MB/s up" in lines[4] and "MB/s down" in lines[6]
    assert lines[-1] == "  result:     the storage can hold the repository"


def test_the_location_comes_from_before_the_command_or_the_environment(
    doctor: Doctor, tmp_path: Path
) -> None:
    out, _ = doctor("--repo", "--json", env={"FREEZEFRAME_REPOSITORY": str(tmp_path / "a")})
    assert json.loads(out)["repository"]["location"] == str(tmp_path / "a")
    out, _ = doctor(str(tmp_path), "--repo", "--json")  # paths and the repository together
    both = json.loads(out)
    assert [p["path"] for p in both["paths"]] == [str(tmp_path)]
    assert both["repository"]["location"] == str(tmp_path / "a")
    doctor.capsys.readouterr()
    assert main(["-r", str(tmp_path / "b"), "--json", "doctor", "--repo"]) == EXIT_OK
    assert json.loads(doctor.capsys.readouterr().out)["repository"]["location"] == str(
        tmp_path / "b"
    )


def test_a_location_that_does_not_parse_or_is_missing_is_a_usage_error(doctor: Doctor) -> None:
    _, err = doctor("--repo", "s3:ftp://example.org/bucket", expect=EXIT_USAGE)
    assert err.count("\n") == 1 and "is not s3:https://HOST" in err
    _, err = doctor("--repo", expect=EXIT_USAGE)
    assert err == "freezeframe: error: no repository given: use --repo or FREEZEFRAME_REPOSITORY\n"


def test_a_bucket_before_and_after_init_and_nothing_left_behind(
    doctor: Doctor, rclone_s3_server: S3Server
) -> None:
    server = rclone_s3_server
    place = server.fresh_place()
    env = server.env()
    before = doctor.json("--repo", place.location, env=env)
    _assert_measured(before)
    assert before["backend"] == "s3" and before["repository_exists"] is False
    details = before["details"]
    assert details["endpoint"] == server.endpoint and details["bucket"] == place.bucket
    assert details["credentials"] == "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    assert details["tls"] == "none (plain http)"
    assert before["free_bytes"] is None and before["filesystem"] is None
    assert server.keys(place) == []

    done = run_freezeframe(
        *FAST_INIT,
        repo=None,
        env={"FREEZEFRAME_REPOSITORY": place.location, "FREEZEFRAME_PASSWORD": "pw"},
    )
    assert done.returncode == 0, done.stderr
    after = doctor.json("--repo", place.location)
    _assert_measured(after)
    assert after["repository_exists"] is True
    assert not [key for key in server.keys(place) if key.startswith("locks/")]
    text, _ = doctor("--repo", place.location)
    assert "  repository: found: id " in text
    for secret in (server.secret_key, server.access_key):
        assert secret not in text


def test_a_wrong_secret_is_one_failed_finding_naming_no_secret(
    doctor: Doctor, rclone_s3_server: S3Server
) -> None:
    server = rclone_s3_server
    place = server.fresh_place()
    wrong = "Wrong" + uuid.uuid4().hex + "Secret"
    env = server.env(secret_key=wrong)
    report = doctor.json("--repo", place.location, env=env, expect=EXIT_FATAL)
    assert report["reachable"] is True and report["ok"] is False  # it answered: no
    access = _finding(report, "access")
    assert access["ok"] is False and "AWS_SECRET_ACCESS_KEY" in access["message"]
    assert "signature does not match" in access["message"]
    assert report["can"] == dict.fromkeys(("write", "read", "list", "delete"))
    assert _finding(report, "write")["message"] == (
        "not tried: the storage refused the first request"
    )
    text, err = doctor("--repo", place.location, expect=EXIT_FATAL)
    [line] = [line for line in text.splitlines() if line.startswith("  access:")]
    assert line.startswith("  access:     FAILED: cannot list ")
    assert "  result:     FAILED (access)" in text
    for output in (text + err, json.dumps(report)):
        assert wrong not in output and server.secret_key not in output


def test_a_missing_bucket_is_a_failed_finding(doctor: Doctor, rclone_s3_server: S3Server) -> None:
    bucket = f"ff-missing-{uuid.uuid4().hex[:10]}"
    location = f"s3:{rclone_s3_server.endpoint}/{bucket}"
    report = doctor.json("--repo", location, env=rclone_s3_server.env(), expect=EXIT_FATAL)
    message = _finding(report, "access")["message"]
    assert f"bucket {bucket!r} does not exist" in message, message
    buckets = {b["Name"] for b in rclone_s3_server.client().list_buckets().get("Buckets", [])}
    assert bucket not in buckets


def test_a_port_nobody_listens_on_is_unreachable(
    doctor: Doctor, rclone_s3_server: S3Server
) -> None:
    [port] = free_ports(1)
    location = f"s3:http://127.0.0.1:{port}/bucket"
    report = doctor.json("--repo", location, env=rclone_s3_server.env(), expect=EXIT_FATAL)
    assert report["reachable"] is False and report["latency_ms"] is None
    finding = _finding(report, "reachable")
    assert finding["ok"] is False and f"127.0.0.1:{port}" in finding["message"]
    assert "\n" not in finding["message"]
    assert {_finding(report, c)["message"] for c in ("write", "read", "list", "delete")} == {
        "not tried: unreachable"
    }


def test_a_read_only_account_may_read_and_list_but_not_write(
    doctor: Doctor, seaweedfs_server: S3Server
) -> None:
    """SeaweedFS gives a key only the actions its identity lists (rclone serve s3 knows no
    read-only keys)."""
    server = seaweedfs_server
    place = server.fresh_place()
    done = run_freezeframe(
        *FAST_INIT,
        repo=None,
        env={
            **server.env(),
            "FREEZEFRAME_REPOSITORY": place.location,
            "FREEZEFRAME_PASSWORD": "pw",
        },
    )
    assert done.returncode == 0, done.stderr
    report = doctor.json("--repo", place.location, env=server.env(read_only=True), expect=1)
    assert report["repository_exists"] is True and report["reachable"] is True
    assert report["can"] == {"write": False, "read": True, "list": True, "delete": None}
    write = _finding(report, "write")
    assert write["ok"] is False and "access denied" in write["message"], write
    assert report["upload_bytes_per_s"] is None
    assert not [key for key in server.keys(place) if key.startswith("locks/")]


def test_the_test_object_under_locks_is_no_lock(cli: Cli, repo: Path, tmp_path: Path) -> None:
    """A backup starting while doctor's object is there is not held up by it, as it is by a
    lock that cannot be read."""
    (tmp_path / "data").mkdir()
    storage = LocalStorage(repo)
    storage.put(Kind.LOCKS, f"{PROBE_PREFIX}{'ab' * 16}", os.urandom(1024))
    cli("backup", tmp_path / "data")
    storage.put(Kind.LOCKS, "ab" * 32, os.urandom(1024))
    assert cli("backup", tmp_path / "data", expect=11)["error"]["code"] == "locked"


def test_tls_is_verified_and_the_bundle_named(
    doctor: Doctor, rclone_s3_tls_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = rclone_s3_tls_server
    server.apply(monkeypatch)  # FREEZEFRAME_S3_CA_BUNDLE names the private CA, and only it
    place = server.fresh_place()
    report = doctor.json("--repo", place.location)
    assert (
        report["ok"] is True and report["details"]["tls"] == f"verified against {server.ca_bundle}"
    )
    monkeypatch.delenv("FREEZEFRAME_S3_CA_BUNDLE")
    report = doctor.json("--repo", place.location, expect=EXIT_FATAL)
    assert report["details"]["tls"] == "verified against the system's CAs"
    message = _finding(report, "access")["message"]
    assert f"TLS with {server.endpoint.removeprefix('https://')} failed" in message, message


def test_a_repository_that_lost_its_config_is_a_failed_finding(repo: Path, doctor: Doctor) -> None:
    """(``repo`` first: it is made with the password that ``doctor`` then takes away.)"""
    (repo / "config").unlink()
    report = doctor.json("--repo", str(repo), expect=EXIT_FATAL)
    assert report["repository_exists"] is False
    finding = _finding(report, "repository")
    assert (
        finding["ok"] is False and "`freezeframe repair config` rewrites it" in finding["message"]
    )
    assert report["can"] == {"write": True, "read": True, "list": True, "delete": True}
