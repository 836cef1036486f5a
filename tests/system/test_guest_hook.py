"""The guest hook (``freezeframe guest-hook``) as qemu-ga runs it inside a VM's guest, here run
on this machine against a real PostgreSQL: a freeze the host asked for holds the applications
and puts PostgreSQL's backup_label into the live data directory for the snapshot; the thaw
releases them and removes the label; a freeze nobody asked for holds nothing; the holder's own
deadline and its watchdog release everything when no thaw comes or the holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsfixtures import shared_workdir
from pgfixtures import PgServer, postgres_server, require_postgresql


@pytest.fixture
def server() -> Iterator[PgServer]:
    require_postgresql()
    with shared_workdir() as work, postgres_server(work / "data") as pg:
        yield pg


def _guest(tmp_path: Path, quiesce: list[str], cap_s: float = 60) -> dict[str, str]:
    """The environment of a hook whose state directory and configuration are in ``tmp_path``."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    config = tmp_path / "guest.toml"
    config.write_text(f"cap_s = {cap_s}\ntimeout_s = 20\nquiesce = {json.dumps(quiesce)}\n")
    return {
        **os.environ,
        "FREEZEFRAME_GUEST_STATE_DIR": str(state),
        "FREEZEFRAME_GUEST_CONFIG": str(config),
    }


def _hook(env: dict[str, str], action: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "freezeframe", "--json", "guest-hook", action]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _request(env: dict[str, str], run: str, cap_s: float = 60) -> None:
    state = Path(env["FREEZEFRAME_GUEST_STATE_DIR"])
    (state / "request.json").write_text(json.dumps({"run": run, "cap_s": cap_s}))


def _label(server: PgServer) -> Path:
    return server.data_dir / "backup_label"


def _until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_a_requested_freeze_holds_postgresql_with_its_label_in_place_until_the_thaw(
    server: PgServer, tmp_path: Path
) -> None:
    env = _guest(tmp_path, [f"postgresql:{server.conninfo}"])
    _request(env, "run1")
    held = _hook(env, "freeze")
    assert held["phase"] == "held" and held["run"] == "run1", held
    label = _label(server).read_text()
    assert "START WAL LOCATION" in label and "LABEL: freezeframe run1" in label
    assert "BACKUP FROM: primary" in label
    assert oct(_label(server).stat().st_mode & 0o777) == "0o600"
    quiescer = held["hold"]["quiescers"][0]  # type: ignore[index]
    assert quiescer["kind"] == "postgresql"
    assert quiescer["positions"]["backup_label"] == label
    assert quiescer["positions"]["stop_lsn"]
    released = _hook(env, "thaw")
    assert released["phase"] == "released" and released["in_time"] is True, released
    assert not _label(server).exists()
    assert not (Path(env["FREEZEFRAME_GUEST_STATE_DIR"]) / "holder.pid").exists()
    # The backup was stopped: a new one can start on the same server.
    _request(env, "run2")
    assert _hook(env, "freeze")["phase"] == "held"
    assert _hook(env, "thaw")["phase"] == "released"


def test_a_freeze_nobody_asked_for_holds_nothing(server: PgServer, tmp_path: Path) -> None:
    env = _guest(tmp_path, [f"postgresql:{server.conninfo}"])
    assert _hook(env, "freeze") == {"phase": "idle"}
    assert not _label(server).exists()
    assert _hook(env, "thaw")["phase"] == "idle"


def test_a_hold_ends_at_its_cap_without_a_thaw(server: PgServer, tmp_path: Path) -> None:
    env = _guest(tmp_path, [f"postgresql:{server.conninfo}"], cap_s=60)
    _request(env, "capped", cap_s=1.5)  # the host may ask for less than the guest allows
    assert _hook(env, "freeze")["phase"] == "held"
    assert _label(server).exists()
    state = Path(env["FREEZEFRAME_GUEST_STATE_DIR"]) / "state.json"
    assert _until(lambda: json.loads(state.read_text())["phase"] == "released", 5)
    assert json.loads(state.read_text())["in_time"] is False
    assert not _label(server).exists()


def test_a_killed_holder_leaves_no_label_behind(server: PgServer, tmp_path: Path) -> None:
    env = _guest(tmp_path, [f"postgresql:{server.conninfo}"])
    _request(env, "killed")
    assert _hook(env, "freeze")["phase"] == "held"
    pid_file = Path(env["FREEZEFRAME_GUEST_STATE_DIR"]) / "holder.pid"
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert _until(lambda: not _label(server).exists(), 3), "the watchdog left the label"
    # The next freeze finds the dead holder's pid file and starts afresh.
    _request(env, "after")
    assert _hook(env, "freeze")["phase"] == "held"
    assert _hook(env, "thaw")["in_time"] is True


def test_a_quiescer_that_cannot_start_fails_the_hold_not_the_freeze(tmp_path: Path) -> None:
    env = _guest(tmp_path, ["postgresql:host=/nonexistent dbname=postgres connect_timeout=2"])
    _request(env, "unreachable")
    failed = _hook(env, "freeze")
    assert failed["phase"] == "failed"
    assert "postgresql" in str(failed["error"]) and "\n" not in str(failed["error"])
    Path(env["FREEZEFRAME_GUEST_CONFIG"]).write_text("quiesce = ['nosuch:thing']\n")
    _request(env, "badconfig")
    failed = _hook(env, "freeze")
    assert failed["phase"] == "failed" and "unknown kind 'nosuch'" in str(failed["error"])


def test_install_writes_the_hook_and_checks_the_config(tmp_path: Path) -> None:
    env = _guest(tmp_path, ["sqlite:/srv/app.db"], cap_s=30)
    hook_file = tmp_path / "hooks" / "freezeframe"
    argv = [sys.executable, "-m", "freezeframe", "--json", "guest-hook", "install"]
    done = subprocess.run(
        [*argv, "--hook", str(hook_file)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    installed = json.loads(done.stdout)
    assert installed["quiescers"] == ["sqlite"] and installed["cap_s"] == 30
    assert os.access(hook_file, os.X_OK)
    assert '-m freezeframe.guest "$1"' in hook_file.read_text()
    recorded = Path(env["FREEZEFRAME_GUEST_STATE_DIR"]) / "installed.json"
    assert json.loads(recorded.read_text()) == installed
    Path(env["FREEZEFRAME_GUEST_CONFIG"]).write_text("cap_s = -1\n")
    done = subprocess.run(
        [*argv, "--hook", str(hook_file)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cap_s must be a positive number" in done.stderr


def test_the_installed_script_holds_on_freeze_and_releases_on_thaw_as_qemu_ga_runs_it(
    server: PgServer, tmp_path: Path
) -> None:
    """qemu-ga runs the script with one word and no environment of ours but the state
    directory here (a test's); the thaw is the script's own shell."""
    env = _guest(tmp_path, [f"postgresql:{server.conninfo}"])
    hook_file = tmp_path / "hooks" / "freezeframe"
    argv = [sys.executable, "-m", "freezeframe", "guest-hook", "install", "--hook"]
    subprocess.run([*argv, str(hook_file)], env=env, check=True, capture_output=True)
    script_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    script_env["FREEZEFRAME_GUEST_STATE_DIR"] = env["FREEZEFRAME_GUEST_STATE_DIR"]
    state = Path(env["FREEZEFRAME_GUEST_STATE_DIR"]) / "state.json"
    _request(env, "script")
    subprocess.run([hook_file, "freeze"], env=script_env, check=True, timeout=60)
    assert json.loads(state.read_text())["phase"] == "held"
    assert _label(server).exists()
    started = time.monotonic()
    subprocess.run([hook_file, "thaw"], env=script_env, check=True, timeout=60)
    released = json.loads(state.read_text())
    assert released["phase"] == "released" and released["in_time"] is True, released
    assert not _label(server).exists()
    print(f"shell thaw took {time.monotonic() - started:.3f} s")
    subprocess.run([hook_file, "thaw"], env=script_env, check=True, timeout=10)  # idempotent
