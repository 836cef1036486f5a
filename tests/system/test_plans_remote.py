"""Plans with a repository in S3 (``rclone serve s3``), their credentials and password in an
environment file that only the plan's runs see: ``plan validate --probe`` finds the bucket
reachable, ``plan run`` and the agent each back up into it, and the snapshot restores byte for
byte; the secrets reach neither the plans commands' output, nor the runs' arguments, nor the
agent's own environment. An environment file that other users could read is refused."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ffharness import FAST_INIT, run_freezeframe
from freezeframe.errors import EXIT_FATAL, EXIT_USAGE
from freezeframe.plans import config
from freezeframe.plans.agent import Agent
from freezeframe.plans.history import History
from freezeframe.plans.runner import run_plan
from servers.base import S3Server, free_ports
from treeutil import assert_same_tree, restored_path

PASSWORD = "plan-remote-password"


def _ff(plans: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = run_freezeframe("--json", *args, "--config", str(plans), repo=None)
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    return done


def _doc(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def _env_file(path: Path, variables: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text(
        "# the plan's S3 keys\n"
        + "".join(f"export {k}={v}\n" if k.startswith("AWS_") else f'{k}="{v}"\n'
                  for k, v in variables.items())
    )  # fmt: skip
    os.chmod(path, mode)
    return path


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    """No S3 credentials and no password in this process's environment (nor its children's):
    the plan's runs can have them only from the environment file."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("FREEZEFRAME_PASSWORD"):
            monkeypatch.delenv(name)


def _plans(tmp_path: Path, location: str, env_file: Path, data: Path, extra: str = "") -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(
        f"""[state]
path = "{tmp_path}/state.db"
[plans.s3]
repository = "{location}"
environment_file = "{env_file}"
sources = ["{data}"]
{extra}"""
    )
    return path


def test_a_plan_backs_up_into_a_bucket_with_its_environment_file(
    rclone_s3_server: S3Server, tmp_path: Path, bare: None
) -> None:
    server = rclone_s3_server
    place = server.fresh_place()
    secrets = {**server.env(), "FREEZEFRAME_PASSWORD": PASSWORD}
    init = run_freezeframe(
        *FAST_INIT, repo=None, env={**secrets, "FREEZEFRAME_REPOSITORY": place.location}
    )
    assert init.returncode == 0, init.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("first\n")
    (data / "b.bin").write_bytes(os.urandom(300_000))
    env_file = _env_file(tmp_path / "s3.env", secrets)
    hook_saw = tmp_path / "hook.env"
    plans = _plans(
        tmp_path,
        place.location,
        env_file,
        data,
        'schedule = ["0 1 * * *"]\ntimezone = "UTC"\n'
        f'[plans.s3.hooks]\nbefore = ["env > {hook_saw}"]\n',
    )

    probed = _doc(_ff(plans, "plan", "validate", "--probe"))
    assert probed["valid"] is True
    report = probed["probes"]["s3"]
    assert report["ok"] is True and report["repository_exists"] is True
    assert report["can"] == {"write": True, "read": True, "list": True, "delete": True}
    text = run_freezeframe("plan", "validate", "--probe", "--config", str(plans), repo=None)
    assert text.returncode == 0, text.stderr
    assert f"  s3: {place.location}: reachable, " in text.stdout
    assert text.stdout.rstrip().endswith("a repository is there")

    run = _doc(_ff(plans, "plan", "run", "s3"))
    assert run["status"] == "success", run
    assert "FREEZEFRAME_PLAN=s3" in hook_saw.read_text()  # the hook ran, without the secrets
    assert server.secret_key not in hook_saw.read_text() and PASSWORD not in hook_saw.read_text()
    [snapshot_id] = run["snapshots"]

    now = [datetime(2026, 11, 30, 0, 0, 30, tzinfo=UTC).timestamp()]
    agent = Agent(str(plans), clock=lambda: now[0], log=lambda _: None)
    agent.begin()
    (data / "a.txt").write_text("second\n")
    now[0] = datetime(2026, 11, 30, 1, 0, 0, tzinfo=UTC).timestamp()
    agent.tick()
    agent.wait_idle()
    [by_agent] = [r for r in agent.history.runs("s3") if r.trigger != "manual"]
    assert by_agent.status == "success", by_agent.error
    agent.finish()
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ  # the agent's own stays clean

    target = tmp_path / "target"
    repo_env = {**secrets, "FREEZEFRAME_REPOSITORY": place.location}
    for snapshot, expected in ((snapshot_id, "first\n"), (by_agent.snapshots[0], "second\n")):
        restored = run_freezeframe(
            "restore", snapshot, "--target", target / snapshot, repo=None, env=repo_env
        )
        assert restored.returncode == 0, restored.stderr
        assert (restored_path(target / snapshot, data) / "a.txt").read_text() == expected
    assert_same_tree(data, restored_path(target / by_agent.snapshots[0], data))

    shown = [
        _ff(plans, "plan", "show", "s3").stdout,
        _ff(plans, "plan", "run", "s3", "--dry-run").stdout,
        _ff(plans, "history").stdout,
        json.dumps(probed),
    ]
    for output in shown:
        assert server.secret_key not in output and PASSWORD not in output


def test_a_loose_or_broken_environment_file_is_refused(
    rclone_s3_server: S3Server, tmp_path: Path, bare: None
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = rclone_s3_server.secret_key
    env_file = _env_file(tmp_path / "s3.env", rclone_s3_server.env(), mode=0o644)
    plans = _plans(tmp_path, f"s3:{rclone_s3_server.endpoint}/b", env_file, data)
    for action in (("validate",), ("run", "s3")):
        done = _ff(plans, "plan", *action, expect=EXIT_USAGE)
        error = _doc(done)["error"]
        assert error["code"] == "usage"
        assert error["message"] == (
            f"{plans}:5: plans.s3.environment_file: environment file {env_file} is mode 0644: "
            "other users can read or change the secrets it holds (chmod 600 it)"
        )
        assert done.stderr.count("\n") == 1 and secret not in done.stdout + done.stderr
    os.chmod(env_file, 0o600)
    loaded = config.load(str(plans))  # as the agent holds it; then the file is loosened
    os.chmod(env_file, 0o640)
    run = run_plan("s3", loaded, History(loaded.state.path))
    assert run.status == "failed" and run.error == (
        f"environment file {env_file} is mode 0640: other users can read or change the "
        "secrets it holds (chmod 600 it)"
    )
    os.chmod(env_file, 0o600)
    env_file.write_text(f"AWS_SECRET_ACCESS_KEY {secret}\n")
    error = _doc(_ff(plans, "plan", "validate", expect=EXIT_USAGE))["error"]
    assert error["message"].endswith(f"environment file {env_file}:1: expected KEY=VALUE")
    assert secret not in error["message"]
    plans.write_text(plans.read_text().replace("s3:http://", "s3:ftp://"))
    error = _doc(_ff(plans, "plan", "validate", expect=EXIT_USAGE))["error"]
    assert f"{plans}:4: plans.s3.repository: S3 location " in error["message"]


def test_a_probe_of_an_unreachable_repository_fails_validate(
    rclone_s3_server: S3Server, tmp_path: Path, bare: None
) -> None:
    [port] = free_ports(1)
    data = tmp_path / "data"
    data.mkdir()
    env_file = _env_file(tmp_path / "s3.env", rclone_s3_server.env())
    plans = _plans(tmp_path, f"s3:http://127.0.0.1:{port}/bucket", env_file, data)
    assert _doc(_ff(plans, "plan", "validate"))["valid"] is True  # syntax only
    report = _doc(_ff(plans, "plan", "validate", "--probe", expect=EXIT_FATAL))["probes"]["s3"]
    assert report["ok"] is False and report["reachable"] is False
