"""The consistency level type, the one fallback decision, and the test hooks."""

from __future__ import annotations

import json
import operator
from dataclasses import asdict

import pytest

from freezeframe import hooks
from freezeframe.capture.session import decide_level
from freezeframe.errors import ConsistencyUnreachable, UsageError
from freezeframe.levels import AUTO, Level, parse_requested
from freezeframe.repository.snapshot import ConsistencyReport


def test_levels_are_ordered_by_rank_and_equal_to_their_names() -> None:
    assert Level.ascending() == (Level.NONE, Level.CRASH, Level.FILESYSTEM, Level.APPLICATION)
    assert [level.rank for level in Level.ascending()] == [0, 1, 2, 3]
    assert Level.descending() == tuple(reversed(Level.ascending()))
    assert Level.NONE < Level.CRASH < Level.FILESYSTEM < Level.APPLICATION
    assert Level.APPLICATION >= Level.FILESYSTEM and not Level.CRASH > Level.FILESYSTEM
    assert max(Level.CRASH, Level.APPLICATION, Level.NONE) == Level.highest()
    assert min(Level) == Level.lowest() == Level.NONE
    assert Level.CRASH == "crash" and {"crash": 1}[Level.CRASH] == 1
    assert f"{Level.FILESYSTEM}" == "filesystem" and f"{Level.CRASH:<7}|" == "crash  |"
    assert [level.at_rest for level in Level] == [False, False, True, True]


def test_a_level_does_not_compare_by_order_with_a_plain_string() -> None:
    """ "crash" < "filesystem" alphabetically, but "application" < "crash": refused, not wrong."""
    with pytest.raises(TypeError):
        operator.gt(Level.APPLICATION, "crash")
    with pytest.raises(TypeError):
        operator.lt("crash", Level.APPLICATION)


def test_parse_and_choices() -> None:
    assert Level.parse("filesystem") is Level.FILESYSTEM
    assert parse_requested("auto") == AUTO and parse_requested("crash") is Level.CRASH
    for text in ("auto", "Crash", "", "perfect"):
        with pytest.raises(UsageError, match="unknown consistency level"):
            Level.parse(text)
    with pytest.raises(UsageError, match="unknown consistency level 'perfect'"):
        parse_requested("perfect")
    assert Level.choices() == ["auto", "application", "filesystem", "crash", "none"]
    assert all(type(choice) is str for choice in Level.choices())


def test_a_snapshot_record_made_from_levels_is_the_same_json_as_from_strings() -> None:
    def encoded(requested: str, achieved: str) -> bytes:
        report = ConsistencyReport(requested=requested, achieved=achieved, reason="x")
        return json.dumps({"consistency": asdict(report)}, sort_keys=True).encode()

    assert encoded(Level.APPLICATION, Level.CRASH) == encoded("application", "crash")
    assert encoded(AUTO, Level.NONE) == encoded("auto", "none")


def test_the_decision_before_a_capture() -> None:
    assert decide_level(AUTO, Level.FILESYSTEM, "why", "fail") == (Level.FILESYSTEM, [])
    assert decide_level(Level.CRASH, Level.FILESYSTEM, "why", "fail") == (Level.CRASH, [])
    assert decide_level(Level.CRASH, Level.CRASH, "why", "fail") == (Level.CRASH, [])
    with pytest.raises(ConsistencyUnreachable) as raised:
        decide_level(Level.APPLICATION, Level.CRASH, "no agent", "fail")
    assert str(raised.value) == (
        "consistency application is not reachable: no agent (use --fallback degrade to accept less)"
    )
    assert decide_level(Level.APPLICATION, Level.CRASH, "no agent", "degrade") == (
        Level.CRASH,
        ["consistency application is not reachable: no agent; degraded to crash"],
    )


def test_the_decision_when_a_level_is_lost_during_the_capture() -> None:
    cause = OSError("the freeze failed")
    with pytest.raises(ConsistencyUnreachable) as raised:
        decide_level(
            Level.FILESYSTEM, Level.CRASH, "", "fail", message="VM x: it failed", cause=cause
        )
    assert str(raised.value) == "VM x: it failed (use --fallback degrade to accept less)"
    assert raised.value.__cause__ is cause
    assert decide_level(
        Level.FILESYSTEM, Level.NONE, "", "degrade", message="the pause overran"
    ) == (Level.NONE, ["the pause overran; degraded to none"])


def test_hooks_do_nothing_until_installed() -> None:
    seen: list[hooks.Point] = []
    hooks.reached(hooks.Point.PAUSED)
    hooks.install(hooks.Point.PAUSED, seen.append)
    try:
        hooks.reached(hooks.Point.FROZEN)
        hooks.reached(hooks.Point.PAUSED)
    finally:
        hooks.remove(hooks.Point.PAUSED)
    hooks.reached(hooks.Point.PAUSED)
    assert seen == [hooks.Point.PAUSED]


@pytest.mark.parametrize(
    ("recorded", "level"),
    [
        ("application", Level.APPLICATION),
        ("crash", Level.CRASH),
        ("auto", Level.NONE),
        ("Application", Level.NONE),
        ("", Level.NONE),
        (None, Level.NONE),
        (3, Level.NONE),
    ],
)
def test_a_record_names_a_level_or_claims_none(recorded: object, level: Level) -> None:
    """What a child's JSON or an old history row says is never read as more than it proves."""
    assert Level.recorded(recorded) is level
