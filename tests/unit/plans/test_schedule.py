"""Plan schedules against an injected clock: several expressions, DST in Europe/Berlin, calendar
corners, bad expressions, and the agent's questions (what was missed, is the plan overdue)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest

from freezeframe.plans.schedule import Schedule, ScheduleError

BERLIN = ZoneInfo("Europe/Berlin")
SPRING = (2026, 3, 29)  # 02:00 CET -> 03:00 CEST: 02:xx does not exist
AUTUMN = (2026, 10, 25)  # 03:00 CEST -> 02:00 CET: 02:xx happens twice


def at(*fields: int, tz: tzinfo = BERLIN, fold: int = 0) -> datetime:
    """A wall time in ``tz``: year, month, day[, hour, minute, second, microsecond]."""
    year, month, day, *rest = fields
    hour, minute, second, microsecond = [*rest, 0, 0, 0, 0][:4]
    wall = datetime(year, month, day, hour, minute, second, microsecond)
    return wall.replace(tzinfo=tz, fold=fold)


def fires(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end), the way the agent walks it: next_after, repeatedly."""
    out = []
    moment = start
    while (moment := schedule.next_after(moment)) < end:
        out.append(moment)
    return out


def fires_on(expressions: list[str], day: tuple[int, int, int]) -> list[datetime]:
    schedule = Schedule.parse(expressions, "Europe/Berlin")
    start = at(*day)
    return fires(schedule, start - timedelta(microseconds=1), start + timedelta(days=1))


def berlin(moments: list[datetime]) -> list[str]:
    return [m.astimezone(BERLIN).strftime("%H:%M%z") for m in moments]


# --- parse ---------------------------------------------------------------------------------


def test_parse_keeps_expressions_and_zone() -> None:
    schedule = Schedule.parse(["0 2 * * *", "@weekly"], "Europe/Berlin")
    assert schedule.expressions == ("0 2 * * *", "@weekly")
    assert schedule.timezone == BERLIN


def test_parse_collapses_repeated_expressions_and_takes_a_bare_string_as_one() -> None:
    assert Schedule.parse(["0 2 * * *", "0 2 * * *"], "UTC").expressions == ("0 2 * * *",)
    assert Schedule.parse("0 2 * * *", "UTC").expressions == ("0 2 * * *",)


def test_parse_defaults_to_the_local_zone_from_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    assert Schedule.parse(["0 2 * * *"]).timezone == ZoneInfo("America/New_York")
    monkeypatch.setenv("TZ", ":Asia/Tokyo")
    assert Schedule.parse(["0 2 * * *"]).timezone == ZoneInfo("Asia/Tokyo")


def test_parse_default_zone_without_usable_tz_is_an_iana_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "CET-1CEST")  # a POSIX string, not a zone name: ignored
    assert isinstance(Schedule.parse(["0 2 * * *"]).timezone, ZoneInfo)


def test_empty_schedule_is_manual_only() -> None:
    schedule = Schedule.parse([], "UTC")
    now = at(2026, 1, 1, tz=UTC)
    assert schedule.missed(now - timedelta(days=9), now) is None
    assert not schedule.overdue(None, now, timedelta(0), now - timedelta(days=9))
    with pytest.raises(ValueError, match="no expressions"):
        schedule.next_after(now)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("61 * * * *", "bad minute field '61' (expected 0-59)"),
        ("0 24 * * *", "bad hour field '24'"),
        ("0 0 32 * *", "bad day-of-month field '32'"),
        ("0 0 * 13 *", "bad month field '13'"),
        ("0 0 * * 8", "bad day-of-week field '8'"),
        ("0 0 30 2 *", "no month in '2' has day '30', so it never fires"),
        ("* * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 3"),
        ("0 0 * * * *", "expected 5 fields"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("@never", "unknown alias"),
        ("@reboot", "unknown alias"),
        ("*/0 * * * *", "bad minute"),
        ("5-1 * * * *", "bad minute"),
    ],
)
def test_invalid_expression_is_named_in_a_one_line_error(expression: str, why: str) -> None:
    with pytest.raises(ScheduleError) as info:
        Schedule.parse(["0 2 * * *", expression], "UTC")
    message = str(info.value)
    assert message.startswith(f"bad cron expression {expression!r}: ")
    assert why in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_unknown_timezone_is_a_schedule_error() -> None:
    with pytest.raises(ScheduleError, match="unknown timezone 'Mars/Olympus'"):
        Schedule.parse(["0 2 * * *"], "Mars/Olympus")


@pytest.mark.parametrize(
    ("alias", "equivalent"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_aliases_fire_like_their_expressions(alias: str, equivalent: str) -> None:
    a, b = Schedule.parse([alias], "UTC"), Schedule.parse([equivalent], "UTC")
    start, end = at(2026, 1, 1, tz=UTC), at(2027, 1, 10, tz=UTC)
    if alias.lower() == "@hourly":
        end = at(2026, 1, 3, tz=UTC)
    assert fires(a, start, end) == fires(b, start, end)
    assert fires(a, start, end)


# --- next_after ----------------------------------------------------------------------------


def test_next_after_is_strictly_after_and_in_utc() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    slot = at(2026, 1, 10, 2)
    assert schedule.next_after(slot - timedelta(microseconds=1)) == slot
    assert schedule.next_after(slot) == slot + timedelta(days=1)
    assert schedule.next_after(slot + timedelta(microseconds=500)) == slot + timedelta(days=1)
    assert schedule.next_after(slot).tzinfo is UTC
    # Any aware moment will do, in any zone.
    assert schedule.next_after(at(2026, 1, 10, 0, 59, tz=UTC)) == slot


def test_next_after_rejects_a_naive_moment() -> None:
    with pytest.raises(ValueError, match="naive"):
        Schedule.parse(["0 2 * * *"], "UTC").next_after(datetime(2026, 1, 1))


def test_several_expressions_give_the_earliest() -> None:
    schedule = Schedule.parse(["0 2 * * *", "30 1 * * *", "0 12 * * 6"], "Europe/Berlin")
    assert schedule.next_after(at(2026, 1, 10)) == at(2026, 1, 10, 1, 30)  # a Saturday
    assert schedule.next_after(at(2026, 1, 10, 1, 30)) == at(2026, 1, 10, 2)
    assert schedule.next_after(at(2026, 1, 10, 2)) == at(2026, 1, 10, 12)
    assert schedule.next_after(at(2026, 1, 10, 12)) == at(2026, 1, 11, 1, 30)


def test_expressions_hitting_the_same_minute_fire_once() -> None:
    schedule = Schedule.parse(["0 * * * *", "0 2 * * *", "*/30 2 * * *"], "Europe/Berlin")
    day = at(2026, 1, 10)
    got = fires(schedule, day, day + timedelta(days=1))
    assert len(got) == 24  # 01:00 .. 23:00 and 02:30, not 02:00 three times
    assert len(set(got)) == len(got)
    assert berlin(got[1:4]) == ["02:00+0100", "02:30+0100", "03:00+0100"]


def test_the_expressions_are_read_on_the_zone_s_wall_clock() -> None:
    moment = at(2026, 1, 10, tz=UTC)
    assert Schedule.parse(["0 2 * * *"], "UTC").next_after(moment) == at(2026, 1, 10, 2, tz=UTC)
    assert Schedule.parse(["0 2 * * *"], "Europe/Berlin").next_after(moment) == at(
        2026, 1, 10, 1, tz=UTC
    )
    assert Schedule.parse(["0 2 * * *"], "America/New_York").next_after(moment) == at(
        2026, 1, 10, 7, tz=UTC
    )


# --- DST, Europe/Berlin --------------------------------------------------------------------


def test_spring_forward_a_fixed_time_in_the_gap_runs_once_at_the_first_real_minute() -> None:
    # cronsim's rule (Debian cron's): 02:30 does not exist, so it runs at 03:00 CEST.
    got = fires_on(["30 2 * * *"], SPRING)
    assert got == [at(*SPRING, 3)]
    assert berlin(got) == ["03:00+0200"]
    assert got[0] == at(*SPRING, 1, tz=UTC)
    # ... and on the days around it at 02:30 as usual.
    assert fires_on(["30 2 * * *"], (2026, 3, 28)) == [at(2026, 3, 28, 2, 30)]
    assert fires_on(["30 2 * * *"], (2026, 3, 30)) == [at(2026, 3, 30, 2, 30)]


def test_spring_forward_slots_in_the_gap_collapse_with_03_00() -> None:
    assert berlin(fires_on(["0,30 2,3 * * *"], SPRING)) == ["03:00+0200", "03:30+0200"]


def test_fall_back_a_fixed_time_in_the_repeated_hour_runs_once_at_its_first_pass() -> None:
    got = fires_on(["30 2 * * *"], AUTUMN)
    assert berlin(got) == ["02:30+0200"]
    assert got == [at(*AUTUMN, 0, 30, tz=UTC)]


def test_fall_back_no_second_run_when_asked_during_the_second_pass() -> None:
    # The agent restarting at 02:10 CET (second pass) must not get the 02:30 CEST run back,
    # which is already past: cronsim's wall-clock reading would return it.
    schedule = Schedule.parse(["30 2 * * *"], "Europe/Berlin")
    second_pass = at(*AUTUMN, 2, 10, fold=1)
    assert second_pass.astimezone(UTC) == at(*AUTUMN, 1, 10, tz=UTC)
    assert schedule.next_after(second_pass) == at(2026, 10, 26, 2, 30)
    # ... and what was missed before it is that first-pass run, not yesterday's.
    assert schedule.missed(at(2026, 10, 23, 2, 30), second_pass) == at(*AUTUMN, 0, 30, tz=UTC)


@pytest.mark.parametrize(("day", "count"), [(SPRING, 23), (AUTUMN, 25), ((2026, 7, 1), 24)])
def test_hourly_fires_at_each_real_hour(day: tuple[int, int, int], count: int) -> None:
    got = fires_on(["0 * * * *"], day)
    assert len(got) == count
    # One hour apart in real time, through both transitions.
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(got))


def test_fall_back_hourly_runs_both_02_00s() -> None:
    got = berlin(fires_on(["0 * * * *"], AUTUMN))
    assert got[2:5] == ["02:00+0200", "02:00+0100", "03:00+0100"]


def test_spring_forward_hourly_has_no_02_00() -> None:
    got = berlin(fires_on(["0 * * * *"], SPRING))
    assert got[1:3] == ["01:00+0100", "03:00+0200"]


def test_quarter_hourly_across_both_transitions() -> None:
    assert len(fires_on(["*/15 * * * *"], SPRING)) == 23 * 4
    assert len(fires_on(["*/15 * * * *"], AUTUMN)) == 25 * 4


def test_a_daily_job_outside_the_transition_keeps_its_wall_time() -> None:
    spring = fires_on(["0 4 * * *"], SPRING)
    autumn = fires_on(["0 4 * * *"], AUTUMN)
    assert berlin(spring) == ["04:00+0200"]
    assert berlin(autumn) == ["04:00+0100"]


def test_utc_schedule_ignores_berlin_dst() -> None:
    schedule = Schedule.parse(["30 2 * * *"], "UTC")
    start = at(*SPRING, tz=UTC)
    assert fires(schedule, start, start + timedelta(days=1)) == [at(*SPRING, 2, 30, tz=UTC)]


# --- calendar --------------------------------------------------------------------------------


def test_day_31_skips_30_day_months() -> None:
    schedule = Schedule.parse(["0 0 31 * *"], "UTC")
    got = fires(schedule, at(2026, 1, 1, tz=UTC), at(2027, 1, 1, tz=UTC))
    assert [m.month for m in got] == [1, 3, 5, 7, 8, 10, 12]
    assert all(m.day == 31 for m in got)


def test_feb_29_next_in_the_next_leap_year() -> None:
    schedule = Schedule.parse(["0 0 29 2 *"], "Europe/Berlin")
    assert schedule.next_after(at(2026, 3, 1)) == at(2028, 2, 29)
    assert schedule.next_after(at(2028, 2, 29)) == at(2032, 2, 29)


def test_day_of_month_and_day_of_week_both_restricted_means_either() -> None:
    # Cron's OR rule: the 1st of the month, and every Monday.
    schedule = Schedule.parse(["0 0 1 * 1"], "UTC")
    got = fires(schedule, at(2026, 1, 31, tz=UTC), at(2026, 3, 3, tz=UTC))
    assert [(m.month, m.day) for m in got] == [
        (2, 1),  # a Sunday, the 1st
        (2, 2),
        (2, 9),
        (2, 16),
        (2, 23),
        (3, 1),  # a Sunday, the 1st
        (3, 2),
    ]


def test_day_of_week_with_star_day_of_month_means_only_that_weekday() -> None:
    schedule = Schedule.parse(["0 0 * * 1"], "UTC")
    got = fires(schedule, at(2026, 1, 31, tz=UTC), at(2026, 3, 3, tz=UTC))
    assert all(m.weekday() == 0 for m in got)
    assert len(got) == 5


def test_steps_ranges_and_lists() -> None:
    schedule = Schedule.parse(["*/15 9-17 * * 1-5"], "Europe/Berlin")
    # 2026-01-09 is a Friday: 9 hours x 4, then nothing until Monday 09:00.
    got = fires(schedule, at(2026, 1, 9), at(2026, 1, 12, 9, 1))
    assert len(got) == 9 * 4 + 1
    assert berlin(got[:3]) == ["09:00+0100", "09:15+0100", "09:30+0100"]
    assert berlin(got[-2:]) == ["17:45+0100", "09:00+0100"]
    assert got[-1] == at(2026, 1, 12, 9)
    listed = Schedule.parse(["5,35 1,13 * * sun,WED"], "UTC")
    assert berlin(fires(listed, at(2026, 1, 7, tz=BERLIN), at(2026, 1, 8, tz=BERLIN))) == [
        "02:05+0100",
        "02:35+0100",
        "14:05+0100",
        "14:35+0100",
    ]


# --- missed ----------------------------------------------------------------------------------


def test_missed_after_three_days_down_is_only_the_latest_slot() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    last_fire = at(2026, 1, 10, 2)
    now = at(2026, 1, 13, 9)
    assert schedule.missed(last_fire, now) == at(2026, 1, 13, 2)


def test_missed_last_fire_exactly_on_the_slot_is_not_missed() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    assert schedule.missed(at(2026, 1, 10, 2), at(2026, 1, 10, 9)) is None
    assert schedule.missed(at(2026, 1, 10, 2), at(2026, 1, 11, 1, 59, 59)) is None


def test_missed_now_exactly_on_a_slot_is_that_slot() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    assert schedule.missed(at(2026, 1, 9, 2), at(2026, 1, 10, 2)) == at(2026, 1, 10, 2)
    now = at(2026, 1, 10, 2) + timedelta(microseconds=999)
    assert schedule.missed(at(2026, 1, 9, 2), now) == at(2026, 1, 10, 2)
    assert schedule.missed(at(2026, 1, 9, 2), at(2026, 1, 10, 1, 59, 59, 999999)) is None


def test_missed_new_plan_does_not_run_at_once() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    assert schedule.missed(None, at(2026, 1, 13, 9)) is None


def test_missed_with_last_fire_after_now_is_none() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    assert schedule.missed(at(2026, 1, 14, 2), at(2026, 1, 13, 9)) is None


def test_missed_takes_the_latest_over_several_expressions() -> None:
    schedule = Schedule.parse(["0 2 * * *", "0 14 * * 6"], "Europe/Berlin")
    # Down from Friday 03:00 to Sunday 10:00: Saturday 14:00 < Sunday 02:00.
    assert schedule.missed(at(2026, 1, 9, 3), at(2026, 1, 11, 10)) == at(2026, 1, 11, 2)
    # Down from Saturday 03:00 to Saturday 15:00: only the weekly one fell in.
    assert schedule.missed(at(2026, 1, 10, 3), at(2026, 1, 10, 15)) == at(2026, 1, 10, 14)


def test_missed_over_a_spring_forward_gap() -> None:
    schedule = Schedule.parse(["30 2 * * *"], "Europe/Berlin")
    assert schedule.missed(at(2026, 3, 28, 2, 30), at(*SPRING, 3)) == at(*SPRING, 3)
    assert schedule.missed(at(2026, 3, 28, 2, 30), at(*SPRING, 1, 59)) is None


# Not Australia/Lord_Howe: its 30-minute DST shift makes cronsim's own forward iteration of
# "0 */2 * * *" depend on where it starts (02:00 LHST on 2026-04-05 is skipped from 00:00).
@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize(
    "expression", ["30 2 * * *", "0 * * * *", "0 */2 * * *", "15,45 1-3 * * *", "0 0 1 * 1"]
)
def test_missed_agrees_with_walking_every_slot(zone: str, expression: str) -> None:
    """missed() uses cronsim's reverse iteration; it must match the forward walk exactly."""
    schedule = Schedule.parse([expression], zone)
    tz = ZoneInfo(zone)
    transitions = [datetime(2026, m, d, tzinfo=tz) for m, d in ((3, 8), (3, 29), (4, 5))]
    transitions += [datetime(2026, m, d, tzinfo=tz) for m, d in ((10, 4), (10, 25), (11, 1))]
    for day in transitions:
        start = day - timedelta(days=1)
        walked = fires(schedule, start, day + timedelta(days=3))
        now = start
        while now < day + timedelta(days=2):
            now += timedelta(minutes=10)
            expected = [m for m in walked if m <= now]
            assert schedule.missed(start, now) == (expected[-1] if expected else None), now


# --- overdue ---------------------------------------------------------------------------------


def test_overdue_after_a_missed_slot_plus_grace() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    grace = timedelta(hours=3)
    success = at(2026, 1, 10, 2, 0, 5)
    since = at(2026, 1, 1)
    assert not schedule.overdue(success, at(2026, 1, 11, 4, 59), grace, since)
    assert not schedule.overdue(success, at(2026, 1, 11, 5), grace, since)  # exactly at: not yet
    assert schedule.overdue(success, at(2026, 1, 11, 5, 0, 1), grace, since)


def test_overdue_a_success_started_on_the_slot_covers_it() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    assert not schedule.overdue(
        at(2026, 1, 11, 2), at(2026, 1, 11, 23), timedelta(hours=1), at(2026, 1, 1)
    )


def test_overdue_never_succeeded_is_measured_from_since() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    grace = timedelta(hours=1)
    since = at(2026, 1, 10, 12)  # first seen at noon: the first slot is tomorrow 02:00
    assert not schedule.overdue(None, at(2026, 1, 11, 2, 30), grace, since)
    assert schedule.overdue(None, at(2026, 1, 11, 3, 1), grace, since)


def test_overdue_an_old_success_is_overdue_at_once_whatever_since() -> None:
    schedule = Schedule.parse(["0 2 * * *"], "Europe/Berlin")
    now = at(2026, 1, 20, 12)
    assert schedule.overdue(at(2026, 1, 10, 2), now, timedelta(hours=1), now)
