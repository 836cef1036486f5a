"""The plans file: the issue's example loads with every default filled in, and every mistake is
one line naming the file, the line and the field, and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from freezeframe.errors import UsageError
from freezeframe.plans.config import load
from freezeframe.plans.runner import backup_step

EXAMPLE = """\
[state]
path = "/var/lib/freezeframe/state.db"
[plans.db]
repository = "/srv/backup/repo"
password_file = "/etc/freezeframe/repo.pw"
sources = ["/srv/pg"]                # paths; VMs go in `vms`
vms = []                             # e.g. ["qmp:/run/vm1/qmp.sock,qga=/run/vm1/qga.sock,name=vm1"]
consistency = "application"          # auto | application | filesystem | crash | none
fallback = "fail"                    # fail | degrade
quiesce = ["postgresql:host=/run/postgresql dbname=postgres"]
schedule = ["0 2 * * *"]
[plans.db.retention]
keep_last = 3
keep_daily = 7
[plans.db.hooks]
before = ["/usr/local/bin/prepare"]  # a command that exits non-zero fails the run
[plans.db.notify]
webhook = ["https://example.invalid/hook"]
"""


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plans.toml"
    path.write_text(text)
    return str(path)


def test_the_example_of_the_issue_loads(tmp_path: Path) -> None:
    plans = load(_write(tmp_path, EXAMPLE))
    plan = plans.plan("db")
    assert plan.sources == ["/srv/pg"] and plan.consistency == "application"
    assert plan.retention.keep_last == 3 and plan.retention.prune is True
    assert plan.hooks.before == ["/usr/local/bin/prepare"]
    assert plan.notify.on == ["failed", "degraded", "overdue"]
    assert plan.overlap == "skip" and plan.catch_up is True


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('consistency = "application"', 'consistency = "perfect"'),
            ":8: plans.db.consistency: Input should be 'auto', 'application',",
        ),
        (
            ("keep_daily = 7", "keep_daily = -5"),
            ":14: plans.db.retention.keep_daily: Input should ",
        ),
        (("keep_daily = 7", "keep_dayly = 7"), ":14: plans.db.retention.keep_dayly: Extra inputs"),
        (("keep_daily = 7", 'keep_within = "soon"'), ":14: plans.db.retention.keep_within: "),
        (('schedule = ["0 2 * * *"]', 'schedule = ["0 25 * * *"]'), ":11: plans.db.schedule: "),
        (
            ('sources = ["/srv/pg"]', 'sources = ["srv/pg"]'),
            ":6: plans.db.sources: 'srv/pg' is not",
        ),
        (('sources = ["/srv/pg"]', "sources = []"), ":3: plans.db: nothing to back up"),
        (("[plans.db", "[plans.'d b'"), ": plans: plan name 'd b'"),
        (('fallback = "fail"', 'fallback = "fail'), "plans.toml: Illegal character"),
        (
            ('fallback = "fail"', 'fallback = "fail"\nsnapshot_size = "lots"'),
            ":10: plans.db.snapshot_size: snapshot size 'lots' is neither a size",
        ),
    ],
)
def test_a_mistake_names_the_file_the_line_and_the_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in EXAMPLE
    path = _write(tmp_path, EXAMPLE.replace(old, new))
    with pytest.raises(UsageError) as raised:
        load(path)
    message = str(raised.value)
    assert message.startswith(path), message
    assert expected in message, message
    assert "\n" not in message


def test_a_missing_file_and_an_unknown_plan_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such plans file"):
        load(str(tmp_path / "nowhere.toml"))
    plans = load(_write(tmp_path, EXAMPLE))
    with pytest.raises(UsageError, match=r"no plan named 'web' \(plans: db\)"):
        plans.plan("web")


def test_a_plans_snapshot_size_reaches_its_backup(tmp_path: Path) -> None:
    text = EXAMPLE.replace('fallback = "fail"', 'fallback = "fail"\nsnapshot_size = "25%"')
    plan = load(_write(tmp_path, text)).plan("db")
    argv = backup_step("db", plan).argv
    assert argv[argv.index("--snapshot-size") + 1] == "25%"
