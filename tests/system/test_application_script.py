"""The pre-freeze/post-thaw script contract, through `backup --quiesce script:...` on a real loop
btrfs: the argument and environment, the order (freeze in order, thaw in reverse), a failing or
hanging freeze aborts and thaws everything, the cap releases, and if freezeframe dies while
frozen the watchdog runs the thaw."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ffharness import Cli, hold_env, spawn_freezeframe
from freezeframe.hooks import Point
from fsfixtures import loop_filesystem

SCRIPT = """#!/bin/sh
echo "$(basename "$0") $1 $FREEZEFRAME_PHASE $FREEZEFRAME_LEVEL \\
  $FREEZEFRAME_RUN_ID $FREEZEFRAME_VOLUMES" >> {log}
{extra}
"""
FAIL_AT_FREEZE = 'if [ "$1" = freeze ]; then echo nope >&2; exit 7; fi'


def _script(tmp_path: Path, name: str, log: Path, extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(SCRIPT.format(log=log, extra=extra))
    path.chmod(0o755)
    return path


def _calls(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_scripts_freeze_in_order_and_thaw_in_reverse_with_the_documented_environment(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    first, second = _script(tmp_path, "first", log), _script(tmp_path, "second", log)
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        result = cli("backup", mnt, "--quiesce", f"script:{first}", "--quiesce", f"script:{second}")
        record = result["consistency"]
        assert record["achieved"] == "application"
        calls = _calls(log)
        assert [(c[0], c[1], c[2]) for c in calls] == [
            ("first", "freeze", "freeze"),
            ("second", "freeze", "freeze"),
            ("second", "thaw", "thaw"),
            ("first", "thaw", "thaw"),
        ]
        assert {c[3] for c in calls} == {"application"}
        assert len({c[4] for c in calls}) == 1  # one run id throughout
        assert calls[0][5] == str(mnt)
        held = record["quiesce"]
        assert [q["result"] for q in held["quiescers"]] == ["ok", "ok"]
        assert 0 < held["window_ms"] < held["cap_s"] * 1000


def test_a_hooks_directory_runs_its_executables_in_name_order_also_for_auto(
    repo: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls"
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    _script(hooks, "20-app", log)
    _script(hooks, "10-web", log)
    _script(hooks, "30-old.dpkg-old", log)
    (hooks / "README").write_text("not a hook")
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        result = cli("backup", mnt, "--quiesce", f"script:{hooks}")
        assert [q["target"] for q in result["consistency"]["quiesce"]["quiescers"]] == [
            str(hooks / "10-web"),
            str(hooks / "20-app"),
        ]
        assert [(c[0], c[1]) for c in _calls(log)] == [
            ("10-web", "freeze"),
            ("20-app", "freeze"),
            ("20-app", "thaw"),
            ("10-web", "thaw"),
        ]
        monkeypatch.setenv("FREEZEFRAME_HOOKS_DIR", str(hooks))
        auto = cli("backup", mnt, "--quiesce", "auto")
        assert auto["consistency"]["achieved"] == "application"
        assert len(auto["consistency"]["quiesce"]["quiescers"]) == 2


def test_a_failing_freeze_aborts_and_thaws_what_was_frozen(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    first = _script(tmp_path, "first", log)
    failing = _script(tmp_path, "failing", log, FAIL_AT_FREEZE)
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        quiesce = ["--quiesce", f"script:{first}", "--quiesce", f"script:{failing}"]
        failed = cli("backup", mnt, *quiesce, expect=1)
        assert failed["error"]["code"] == "consistency_unreachable"
        assert "exited 7: nope" in failed["error"]["message"]
        assert [(c[0], c[1]) for c in _calls(log)] == [
            ("first", "freeze"),
            ("failing", "freeze"),
            ("failing", "thaw"),
            ("first", "thaw"),
        ]
        assert cli("snapshots") == []


def test_a_hanging_freeze_times_out_and_the_run_degrades_when_asked(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    hanging = _script(tmp_path, "hanging", log, 'if [ "$1" = freeze ]; then sleep 30; fi')
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        started = time.monotonic()
        degraded = cli(
            "backup",
            mnt,
            "--quiesce",
            f"script:{hanging}",
            "--quiesce-timeout",
            "0.5",
            "--fallback",
            "degrade",
        )
        assert time.monotonic() - started < 15
        assert degraded["consistency"]["achieved"] == "filesystem"
        assert "did not finish within 0.5 s" in cli.stderr
        assert ("hanging", "thaw") in [(c[0], c[1]) for c in _calls(log)]


def test_the_cap_releases_the_applications_and_the_run_fails(
    repo: Path, cli: Cli, tmp_path: Path, hold: Callable[[Point, float], None]
) -> None:
    log = tmp_path / "calls"
    script = _script(tmp_path, "held", log)
    hold(Point.APPLICATIONS_HELD, 1.5)
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        quiesce = ["--quiesce", f"script:{script}", "--quiesce-cap", "0.4"]
        failed = cli("backup", mnt, *quiesce, expect=1)
        assert "passed its 0.4 s cap" in failed["error"]["message"]
        assert [(c[0], c[1]) for c in _calls(log)] == [("held", "freeze"), ("held", "thaw")]
        assert cli("snapshots") == []


def test_sigkill_while_held_runs_the_thaw_script_from_the_watchdog(
    repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    script = _script(tmp_path, "held", log)
    with loop_filesystem(tmp_path, "btrfs") as mnt:
        (mnt / "f").write_bytes(b"x")
        backup = spawn_freezeframe(
            "backup",
            mnt,
            "--quiesce",
            f"script:{script}",
            repo=repo,
            env=hold_env(Point.APPLICATIONS_HELD, 30),
        )
        deadline = time.monotonic() + 30
        while not _calls(log):
            assert backup.poll() is None, backup.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        backup.kill()
        backup.wait()
        killed = time.monotonic()
        while len(_calls(log)) < 2 and time.monotonic() - killed < 5:
            time.sleep(0.01)
        assert time.monotonic() - killed < 1.0
        assert [(c[0], c[1], c[2]) for c in _calls(log)] == [
            ("held", "freeze", "freeze"),
            ("held", "thaw", "thaw"),
        ]
        assert os.path.exists(mnt / "f")
