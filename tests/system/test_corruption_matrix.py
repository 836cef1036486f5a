"""Every kind of repository object, damaged every way, is found by ``check --read-data``, named,
traced to exactly the files it destroys, and repaired by the documented procedure until check is
clean and every surviving snapshot restores byte-exact (see ``tests/corruption.py``).

``FREEZEFRAME_CORRUPTION_TRIALS`` (default 3) sets the trials per kind and mutation (deletions:
at most one per object), ``FREEZEFRAME_CORRUPTION_SEED`` replays a run (the seed is printed in
the summary), ``FREEZEFRAME_CORRUPTION_TEMPLATE=DIR`` builds the template there once and reuses
it, so a replay damages the very same bytes. ``bench/corruption_matrix.py`` runs many more.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from corruption import (
    CELLS,
    KNOWN,
    NOT_APPLICABLE,
    Mutation,
    Tally,
    Template,
    compare_restore,
    field_offset,
    run_cli,
    run_trial,
    template_at,
    trial_count,
)

pytestmark = pytest.mark.timeout(600)

TRIALS = int(os.environ.get("FREEZEFRAME_CORRUPTION_TRIALS") or "3")
SEED = int(os.environ.get("FREEZEFRAME_CORRUPTION_SEED") or random.SystemRandom().randrange(2**31))
TALLY = Tally(SEED)


class _Summary:
    """Prints the matrix at the end of every run that ran it (``pytest -q`` included)."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not TALLY.cells:
            return
        terminalreporter.write_sep(
            "-",
            f"corruption matrix: seed {SEED} (FREEZEFRAME_CORRUPTION_SEED={SEED} replays), "
            f"{TRIALS} trials per kind and mutation",
        )
        trials = sum(c.trials for c in TALLY.cells.values())
        seconds = sum(c.seconds for c in TALLY.cells.values())
        terminalreporter.write_line(f"{trials} trials in {seconds:.0f} s")
        for line in TALLY.table():
            terminalreporter.write_line(line)
        for signature, trials in TALLY.signatures().items():
            known = KNOWN.get(signature)
            label = f"known defect: {known}" if known else "NEW FAILURE"
            terminalreporter.write_line(f"{label}: {signature} ({len(trials)} trials)")


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Template:
    """Built once per session (a few seconds); each trial works on a copy."""
    if pytestconfig.pluginmanager.get_plugin("corruption-matrix-summary") is None:
        pytestconfig.pluginmanager.register(_Summary(), "corruption-matrix-summary")
    kept = os.environ.get("FREEZEFRAME_CORRUPTION_TEMPLATE")
    root = Path(kept) if kept else tmp_path_factory.mktemp("corruption") / "template"
    return template_at(root)


def test_the_template_checks_clean_and_restores_exactly(template: Template, tmp_path: Path) -> None:
    """The baseline every trial is measured against: the undamaged template checks clean
    with either password, every snapshot restores equal to its source, and it has what the
    matrix needs (packs of several blobs of each type, trees several levels deep)."""
    for password in template.password_files:
        done = run_cli(template.repo, password, "check", "--read-data")
        assert done.status == 0, done.describe()
        assert done.doc()["errors"] == [] and done.doc()["damaged"] == []
    for snap in template.snapshots:
        target = tmp_path / snap.id[:8]
        done = run_cli(template.repo, template.password_files[0], "restore", snap.id, "-t", target)
        assert done.status == 0, done.describe()
        for source in snap.sources:
            restored = target / Path(source.path).relative_to("/")
            assert compare_restore(source, restored, {}) == [], source.path
    assert len(template.snapshots) == 4 and len(template.key_names) == 2
    for kind in ("data pack", "tree pack", "index", "snapshot"):
        assert len(template.objects(kind)) >= 2, kind
    for blob_type in ("data", "tree"):
        assert any(
            len(p.blobs) >= 3 for p in template.packs.values() if p.blob_type == blob_type
        ), f"no {blob_type} pack holds several blobs"
    assert max(len(users) for users in template.users.values()) >= 3  # shared across snapshots
    roots = [s.path for snap in template.snapshots for s in snap.sources]
    depth = max(
        user.split(" ", 2)[2].removeprefix(root).count("/")
        for tree_id in template.trees
        for user in template.users[tree_id]
        for root in roots
        if user.split(" ", 2)[2].startswith(root + "/")
    )
    assert depth >= 4, "trees should span several levels below the source roots"


def test_the_comparisons_can_fail(template: Template, tmp_path: Path) -> None:
    """What the trials rely on catches what it must: a restored byte that differs, a file cut
    at another length than predicted, a directory that should be gone; and the damage model
    traces a lost chunk to every snapshot that shares it, and to nothing else."""
    first = template.snapshots[0]
    source = first.sources[0]
    target = tmp_path / "restored"
    done = run_cli(template.repo, template.password_files[0], "restore", first.id, "-t", target)
    assert done.status == 0, done.describe()
    restored = target / Path(source.path).relative_to("/")
    big = restored / "big1.bin"
    before = big.stat()
    data = bytearray(big.read_bytes())
    data[100] ^= 1
    big.write_bytes(bytes(data))
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert any("big1.bin" in p and "sha256" in p for p in compare_restore(source, restored, {}))
    data[100] ^= 1
    big.write_bytes(bytes(data))
    os.utime(big, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert compare_restore(source, restored, {}) == []
    cut = {f"{source.path}/big1.bin": 1000}
    assert any("big1.bin" in p and "size" in p for p in compare_restore(source, restored, cut))
    gone = {f"{source.path}/docs": None}
    assert any("unexpected" in p and "docs" in p for p in compare_restore(source, restored, gone))

    chunk = next(
        blob_id
        for blob_id, users in template.users.items()
        if any("/alpha/big1.bin (chunk 1/" in u for u in users)
    )
    damage = template.damage({chunk})
    alpha = [s for s in template.snapshots if any(x.path.endswith("/alpha") for x in s.sources)]
    path = f"{source.path}/big1.bin"
    assert damage == {s.id: {path: 0} for s in alpha}
    assert len(alpha) == 3


@pytest.mark.parametrize(("kind", "mutation"), CELLS, ids=[f"{k}-{m}" for k, m in CELLS])
def test_damage_is_detected_and_repaired(
    template: Template, tmp_path: Path, kind: str, mutation: str
) -> None:
    """Each trial: check --read-data finds and names the damage and lists exactly what it
    destroys; the documented repair leaves check clean and every survivor restoring exactly.
    A trial that fails only with known defects makes the test an expected failure."""
    trials = [
        run_trial(template, kind, mutation, number, seed=SEED, work=tmp_path / f"trial{number}")
        for number in range(trial_count(template, kind, mutation, TRIALS))
    ]
    for trial in trials:
        TALLY.add(trial)
    new = [t for t in trials if t.failures and not t.known_only]
    assert not new, f"{len(new)} of {len(trials)} trials failed (seed {SEED}):\n\n" + (
        "\n\n".join(t.describe() for t in new)
    )
    for trial in trials:
        if (kind, mutation) in NOT_APPLICABLE:
            assert trial.not_applicable and not trial.detected, trial.describe()
        elif not trial.failures:
            assert trial.detected and trial.repaired, trial.describe()
    known = sorted({KNOWN[f.signature] for t in trials for f in t.failures})
    if known:
        pytest.xfail("known defects: " + "; ".join(known))


def test_every_cell_ran_its_trials() -> None:
    """The CI run covers at least 3 flips, 1 truncation and 1 deletion of every kind."""
    if len(TALLY.cells) != len(CELLS):
        pytest.skip("only a subset of the matrix ran")
    for (kind, mutation), cell in TALLY.cells.items():
        wanted = {"flip": min(TRIALS, 3), "truncate": 1, "delete": 1}[mutation]
        assert cell.trials >= wanted, (kind, mutation, cell.trials)


# -- the defects the matrix found, one deterministic trial each ------------------------------


def _detected_and_repaired(template: Template, tmp_path: Path, plan: Mutation) -> None:
    trial = run_trial(
        template, plan.kind, plan.mutation, 0, seed=SEED, work=tmp_path / "trial", plan=plan
    )
    assert not trial.failures, trial.describe()
    assert trial.detected, trial.describe()


def _flip_to(data: bytes, offset: int, char: str) -> int:
    """The XOR value that turns byte ``offset`` into ``char``."""
    return data[offset] ^ ord(char)


def test_a_damaged_config_id_names_the_config(template: Template, tmp_path: Path) -> None:
    data = (template.repo / "config").read_bytes()
    at = field_offset(data, "id")
    digit = "1" if data[at : at + 1] == b"0" else "0"  # still 64 hex digits, another id
    plan = Mutation("config", "flip", "config", offset=at, xor=_flip_to(data, at, digit))
    _detected_and_repaired(template, tmp_path, plan)


def test_a_damaged_config_version_names_the_config(template: Template, tmp_path: Path) -> None:
    data = (template.repo / "config").read_bytes()
    at = field_offset(data, "version")  # "version": 2 -> 3
    plan = Mutation("config", "flip", "config", offset=at, xor=_flip_to(data, at, "3"))
    _detected_and_repaired(template, tmp_path, plan)


def test_a_key_of_unknown_format_locks_no_password_out(template: Template, tmp_path: Path) -> None:
    first = f"keys/{min(template.key_names)}"  # tried first when opening, whatever the password
    data = (template.repo / first).read_bytes()
    at = field_offset(data, "version")  # "version": 1 -> 3
    plan = Mutation("key", "flip", first, offset=at, xor=_flip_to(data, at, "3"))
    _detected_and_repaired(template, tmp_path, plan)
