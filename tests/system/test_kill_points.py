"""A SIGKILL at any repository event (write, rename into place, delete, temporaries included)
leaves a repository that passes `check --read-data` and restores every snapshot exactly.

Each operation of ``killharness.OPERATIONS`` runs once to count its events, then is killed at a
sample of them spread over the whole run (its first and last event included);
``bench/kill_points.py`` tries every point.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from killharness import (
    OPERATIONS,
    Builder,
    OperationReport,
    Scenario,
    choose_points,
    run_operation,
    verify_repository,
)

pytestmark = pytest.mark.timeout(300)

MIN_KILL_POINTS = 30
_reports: dict[str, OperationReport] = {}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_kill_at_sampled_events_leaves_an_intact_repository(name: str, tmp_path: Path) -> None:
    """Every sampled kill leaves check passing and every snapshot restoring byte-exact; most
    kills land while the operation is still running, and the verification really ran."""
    op = OPERATIONS[name]
    report = run_operation(op, tmp_path / name, sample=op.ci_points)
    _reports[name] = report

    complete = report.complete
    assert complete.run.returncode == 0, complete.run.stderr_tail
    assert complete.verdict.ok, "\n\n".join(report.failures())
    assert report.n_total >= 3, [e.describe() for e in complete.run.events]

    points = [t.kill_at for t in report.trials]
    assert points == choose_points(report.n_total, op.ci_points)
    assert points[0] == 1 and points[-1] == report.n_total

    failures = report.failures()
    assert not failures, f"{len(failures)} kills damaged the repository:\n\n" + "\n\n".join(
        failures
    )

    missed = [t.describe() for t in report.trials if not t.run.landed]
    assert len(missed) <= max(1, len(points) // 4), (
        "the kills did not land mid-operation: " + "; ".join(missed)
    )
    for trial in report.trials:
        assert trial.verdict.check_ran, trial.describe()
        assert trial.run.killed_at_event is not None, trial.describe()
    assert any(t.verdict.snapshots_restored for t in report.trials), "no trial restored anything"
    shutil.rmtree(tmp_path / name)  # a few hundred MiB of templates, sources and copies


def test_enough_kill_points_across_operations() -> None:
    """The CI sample covers at least 30 kill points over all operations."""
    if set(_reports) != set(OPERATIONS):
        pytest.skip("only a subset of the operations ran")
    total = sum(len(r.trials) for r in _reports.values())
    assert total >= MIN_KILL_POINTS, {name: len(r.trials) for name, r in _reports.items()}


def test_choose_points_spreads_over_the_whole_run() -> None:
    assert choose_points(20, 5) == [1, 6, 11, 15, 20]
    assert choose_points(3, 6) == [1, 2, 3]
    assert choose_points(7, None) == list(range(1, 8))
    assert choose_points(0, 4) == []


def _flip_a_byte_in_the_largest_pack(repo: Path) -> None:
    packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
    pack = max(packs, key=lambda p: p.stat().st_size)
    with open(pack, "r+b") as f:
        f.seek(pack.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))


def test_verification_catches_damage(tmp_path: Path) -> None:
    """The verify is not vacuous: a flipped byte fails check, a source that differs from the
    snapshot fails the comparison, a lost snapshot and a password that opens nothing are
    noticed."""
    builder = Builder(tmp_path / "scenario")
    builder.backup_generations(1)
    scenario = builder.scenario(required=("gen1",))
    argv = ("snapshots",)

    intact = verify_repository(scenario.new_trial(argv))
    assert intact.ok and intact.check_ran and intact.snapshots_restored == 1, intact

    trial = scenario.new_trial(argv)
    _flip_a_byte_in_the_largest_pack(trial.repo)
    damaged = verify_repository(trial)
    assert damaged.check_failures, damaged

    trial = scenario.new_trial(argv)
    for snapshot in (trial.repo / "snapshots").iterdir():
        snapshot.unlink()
    lost = verify_repository(trial)
    assert any("gen1 is gone" in m for m in lost.restore_mismatches), lost

    altered = tmp_path / "altered"
    shutil.copytree(scenario.trees["gen1"], altered, symlinks=True)
    victim = next(p for p in sorted(altered.rglob("*.bin")))
    stat = victim.stat()
    victim.write_bytes(b"not what was backed up")
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    other = Scenario(scenario.root, {"gen1": altered}, scenario.required)
    mismatch = verify_repository(other.new_trial(argv))
    assert mismatch.check_failures == [], mismatch
    assert any(victim.name in m for m in mismatch.restore_mismatches), mismatch

    locked_out = Scenario(scenario.root, scenario.trees, scenario.required, passwords=("wrong",))
    refused = verify_repository(locked_out.new_trial(argv))
    assert refused.check_failures and not refused.check_ran, refused
