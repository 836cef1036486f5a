"""Retention rules on synthetic histories, checked against restic's ``forget`` semantics."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from freezeframe.repository.retention import (
    UNLIMITED,
    Decision,
    Duration,
    RetentionPolicy,
    apply_policy,
    group_by,
    parse_duration,
)

START = datetime(2022, 1, 1, 0, 0)
END = datetime(2023, 12, 31, 23, 0)  # a Sunday, the end of ISO week 2023-W52
HOURLY = [START + timedelta(hours=h) for h in range(int((END - START) / timedelta(hours=1)) + 1)]


def ident(t: datetime) -> datetime:
    return t


def kept(decisions: list[Decision[datetime]]) -> list[datetime]:
    return [d.item for d in decisions if d.keep]


def reasons_of(decisions: list[Decision[datetime]]) -> dict[datetime, tuple[str, ...]]:
    return {d.item: d.reasons for d in decisions if d.keep}


def month_ends(year: int) -> list[datetime]:
    """23:00 on the last day of each month, newest first."""
    firsts = [datetime(year + (m == 12), m % 12 + 1, 1) for m in range(1, 13)]
    return [first - timedelta(hours=1) for first in reversed(firsts)]


def test_history_shape() -> None:
    assert len(HOURLY) == 2 * 365 * 24
    assert END.isocalendar()[:2] == (2023, 52)


def test_decisions_cover_every_item_newest_first() -> None:
    shuffled = HOURLY[:]
    random.Random(7).shuffle(shuffled)
    decisions = apply_policy(shuffled, RetentionPolicy(keep_daily=3), ident)
    assert [d.item for d in decisions] == sorted(HOURLY, reverse=True)
    assert all(d.keep == bool(d.reasons) for d in decisions)


def test_keep_last() -> None:
    decisions = apply_policy(HOURLY, RetentionPolicy(keep_last=5), ident)
    assert kept(decisions) == HOURLY[-5:][::-1]
    assert set(reasons_of(decisions).values()) == {("last snapshot",)}


def test_keep_hourly() -> None:
    assert kept(apply_policy(HOURLY, RetentionPolicy(keep_hourly=10), ident)) == HOURLY[-10:][::-1]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_daily=7), ident))
    assert got == [datetime(2023, 12, d, 23) for d in range(31, 24, -1)]


def test_restic_documentation_example() -> None:
    # restic's forget docs: a backup every Sunday for 12 weeks, then --keep-daily 4.
    sundays = [datetime(2019, 9, 1, 11) + timedelta(weeks=w) for w in range(12)]
    decisions = apply_policy(sundays, RetentionPolicy(keep_daily=4), ident)
    assert kept(decisions) == sundays[-4:][::-1]
    assert RetentionPolicy(keep_daily=4).describe() == "keep 4 daily snapshots"


def test_keep_weekly_uses_iso_weeks() -> None:
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_weekly=4), ident))
    # Sundays 23:00 end ISO weeks (Monday 00:00 to Sunday 23:59).
    assert got == [datetime(2023, 12, d, 23) for d in (31, 24, 17, 10)]


def test_keep_weekly_at_a_year_boundary() -> None:
    # 2021-01-03 (Sunday) still belongs to ISO week 2020-W53, with 2020-12-28..31.
    times = [datetime(2020, 12, 28), datetime(2020, 12, 31), datetime(2021, 1, 3)]
    times += [datetime(2021, 1, 4)]
    got = kept(apply_policy(times, RetentionPolicy(keep_weekly=2), ident))
    assert got == [datetime(2021, 1, 4), datetime(2021, 1, 3)]


def test_keep_monthly() -> None:
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_monthly=12), ident))
    assert got == month_ends(2023)


def test_keep_yearly_also_keeps_the_oldest_while_budget_remains() -> None:
    decisions = apply_policy(HOURLY, RetentionPolicy(keep_yearly=5), ident)
    assert reasons_of(decisions) == {
        datetime(2023, 12, 31, 23): ("yearly snapshot",),
        datetime(2022, 12, 31, 23): ("yearly snapshot",),
        START: ("oldest yearly snapshot",),
    }


def test_exhausted_budget_does_not_keep_the_oldest() -> None:
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_yearly=2), ident))
    assert got == [datetime(2023, 12, 31, 23), datetime(2022, 12, 31, 23)]
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_monthly=24), ident))
    assert got == month_ends(2023) + month_ends(2022)
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_monthly=25), ident))
    assert got == [*month_ends(2023), *month_ends(2022), START]


def test_oldest_in_its_own_bucket_is_an_ordinary_keep() -> None:
    times = [datetime(2023, 1, 1), datetime(2023, 1, 2), datetime(2023, 1, 2, 5)]
    decisions = apply_policy(times, RetentionPolicy(keep_daily=10), ident)
    assert reasons_of(decisions) == {
        datetime(2023, 1, 2, 5): ("daily snapshot",),
        datetime(2023, 1, 1): ("daily snapshot",),
    }


def test_unlimited() -> None:
    assert kept(apply_policy(HOURLY, RetentionPolicy(keep_hourly=UNLIMITED), ident)) == HOURLY[::-1]
    got = kept(apply_policy(HOURLY, RetentionPolicy(keep_daily=-1), ident))
    days = [START + timedelta(days=n, hours=23) for n in range(730)]
    assert got == [*days[::-1], START]  # the oldest hour of the oldest day, as "oldest"


def test_combination_lists_every_reason() -> None:
    policy = RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=12)
    decisions = apply_policy(HOURLY, policy, ident)
    reasons = reasons_of(decisions)
    dailies = {datetime(2023, 12, d, 23) for d in range(25, 32)}
    weeklies = {datetime(2023, 12, d, 23) for d in (31, 24, 17, 10)}
    assert set(reasons) == dailies | weeklies | set(month_ends(2023))
    assert len(reasons) == 21
    assert reasons[END] == ("daily snapshot", "weekly snapshot", "monthly snapshot")
    assert reasons[datetime(2023, 12, 25, 23)] == ("daily snapshot",)
    assert reasons[datetime(2023, 12, 24, 23)] == ("weekly snapshot",)
    assert reasons[datetime(2023, 11, 30, 23)] == ("monthly snapshot",)


def test_keep_within_counts_back_from_the_newest_snapshot() -> None:
    decisions = apply_policy(HOURLY, RetentionPolicy(keep_within=parse_duration("30d")), ident)
    got = kept(decisions)
    # Strictly after 2023-12-01 23:00: the boundary snapshot itself is forgotten.
    assert got == [t for t in HOURLY if t > datetime(2023, 12, 1, 23)][::-1]
    assert len(got) == 30 * 24
    assert set(reasons_of(decisions).values()) == {("within 30d",)}


def test_keep_within_ignores_the_clock_by_default() -> None:
    old = [datetime(2001, 1, d) for d in range(1, 11)]
    got = kept(apply_policy(old, RetentionPolicy(keep_within=Duration(days=3)), ident))
    assert got == [datetime(2001, 1, d) for d in (10, 9, 8)]


def test_keep_within_with_now_ignores_snapshots_from_the_future() -> None:
    times = [datetime(2023, 1, d) for d in range(1, 11)] + [datetime(2030, 1, 1)]
    policy = RetentionPolicy(keep_within=Duration(days=2))
    got = kept(apply_policy(times, policy, ident, now=datetime(2023, 6, 1)))
    assert got == [datetime(2030, 1, 1), datetime(2023, 1, 10), datetime(2023, 1, 9)]
    got = kept(apply_policy(times, policy, ident, now=datetime(2000, 1, 1)))
    assert got == sorted(times, reverse=True)  # nothing to count back from: keep all


def test_keep_within_calendar_months() -> None:
    times = [datetime(2023, 3, 3, 12), datetime(2023, 3, 3, 13), datetime(2023, 3, 31, 12)]
    got = kept(apply_policy(times, RetentionPolicy(keep_within=Duration(months=1)), ident))
    # 31 March minus one month rolls over to 3 March, as Go's AddDate does.
    assert got == [datetime(2023, 3, 31, 12), datetime(2023, 3, 3, 13)]


def test_duration_before() -> None:
    t = datetime(2024, 3, 31, 12, 30)
    assert Duration(months=1).before(t) == datetime(2024, 3, 2, 12, 30)  # leap year
    assert Duration(years=1).before(datetime(2024, 2, 29)) == datetime(2023, 3, 1)
    assert Duration(1, 2, 3, 4).before(t) == datetime(2023, 1, 28, 8, 30)
    assert Duration(days=31).before(t) == datetime(2024, 2, 29, 12, 30)
    assert Duration(years=5000).before(t) is None
    aware = datetime(2024, 3, 31, 12, tzinfo=timezone(timedelta(hours=2)))
    assert Duration(days=1, hours=2).before(aware) == datetime(2024, 3, 30, 8, tzinfo=UTC)


def test_aware_datetimes_bucket_in_their_own_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    # 21:00 and 23:00 UTC fall on one UTC day but on two days at UTC+2.
    utc = [datetime(2023, 4, 28, tzinfo=UTC)]
    utc += [datetime(2023, 5, 1, 21, tzinfo=UTC), datetime(2023, 5, 1, 23, tzinfo=UTC)]
    local = [t.astimezone(plus2) for t in utc]
    assert kept(apply_policy(utc, RetentionPolicy(keep_daily=5), ident)) == [utc[2], utc[0]]
    assert kept(apply_policy(local, RetentionPolicy(keep_daily=5), ident)) == local[::-1]


def test_duplicate_timestamps_keep_input_order() -> None:
    t = datetime(2023, 5, 1, 12)
    items = [("a", t), ("b", t), ("c", t), ("old", t - timedelta(days=1))]
    decisions = apply_policy(items, RetentionPolicy(keep_last=2), lambda i: i[1])
    assert [d.item[0] for d in decisions if d.keep] == ["a", "b"]
    decisions = apply_policy(items, RetentionPolicy(keep_daily=1), lambda i: i[1])
    assert [d.item[0] for d in decisions if d.keep] == ["a"]
    decisions = apply_policy(items, RetentionPolicy(keep_daily=5), lambda i: i[1])
    assert [d.item[0] for d in decisions if d.keep] == ["a", "old"]


def test_empty_policy_keeps_everything() -> None:
    for policy in (
        RetentionPolicy(),
        RetentionPolicy(keep_last=0, keep_daily=0),
        RetentionPolicy(keep_within=Duration()),
    ):
        assert policy.is_empty()
        decisions = apply_policy(HOURLY[:50], policy, ident)
        assert all(d.keep and d.reasons == ("policy is empty",) for d in decisions)
        assert len(decisions) == 50
    assert not RetentionPolicy(keep_yearly=-1).is_empty()
    assert not RetentionPolicy(keep_within=Duration(hours=1)).is_empty()


def test_no_items() -> None:
    assert apply_policy([], RetentionPolicy(keep_last=3), ident) == []


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="keep_daily must be -1"):
        RetentionPolicy(keep_daily=-2)
    with pytest.raises(ValueError, match="negative"):
        Duration(days=-1)


def test_describe() -> None:
    policy = RetentionPolicy(keep_last=3, keep_weekly=-1, keep_within=Duration(days=30))
    assert policy.describe() == (
        "keep 3 latest snapshots, all weekly snapshots, all snapshots within 30d of the newest"
    )
    assert RetentionPolicy().describe() == "keep all snapshots (empty policy)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", Duration(days=30)),
        ("1y2m3d4h", Duration(1, 2, 3, 4)),
        ("4h1y", Duration(years=1, hours=4)),
        (" 12m ", Duration(months=12)),
        ("0d", Duration()),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


def test_duration_str_round_trips() -> None:
    for text in ("1y2m3d4h", "30d", "5h"):
        assert str(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("30", "no unit after 30"),
        ("1w", "unknown unit 'w'"),
        ("d", "expected a number"),
        ("-1d", "expected a number"),
        ("1d 2h", "expected a number"),
        ("1d2d", "given twice"),
        ("1D", "unknown unit 'D'"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_group_by_preserves_order() -> None:
    items = [("h1", 1), ("h2", 2), ("h1", 3), ("h3", 4), ("h2", 5)]
    groups = group_by(items, lambda i: i[0])
    assert list(groups) == ["h1", "h2", "h3"]
    assert groups == {"h1": [("h1", 1), ("h1", 3)], "h2": [("h2", 2), ("h2", 5)], "h3": [("h3", 4)]}


# Property tests. Items are indices into a list of times, so duplicates stay distinguishable.

times_st = st.lists(
    st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2024, 12, 31)),
    max_size=60,
)
count_st = st.one_of(st.none(), st.integers(min_value=-1, max_value=20))
duration_st = st.builds(
    Duration,
    years=st.integers(0, 2),
    months=st.integers(0, 13),
    days=st.integers(0, 40),
    hours=st.integers(0, 48),
)
policy_st = st.builds(
    RetentionPolicy,
    keep_last=count_st,
    keep_hourly=count_st,
    keep_daily=count_st,
    keep_weekly=count_st,
    keep_monthly=count_st,
    keep_yearly=count_st,
    keep_within=st.one_of(st.none(), duration_st),
)
RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def kept_indices(times: list[datetime], policy: RetentionPolicy) -> set[int]:
    decisions = apply_policy(range(len(times)), policy, times.__getitem__)
    assert sorted(d.item for d in decisions) == list(range(len(times)))
    return {d.item for d in decisions if d.keep}


@given(times_st, policy_st)
def test_property_kept_is_a_subset(times: list[datetime], policy: RetentionPolicy) -> None:
    got = kept_indices(times, policy)
    assert got <= set(range(len(times)))
    if times and not policy.is_empty():
        newest = max(range(len(times)), key=lambda i: (times[i], -i))
        assert newest in got  # every active rule keeps the newest snapshot


@given(times_st, st.integers(min_value=1, max_value=80))
def test_property_keep_last_alone(times: list[datetime], n: int) -> None:
    got = kept_indices(times, RetentionPolicy(keep_last=n))
    newest_first = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
    assert got == set(newest_first[:n])
    assert len(got) == min(n, len(times))


@given(times_st, policy_st, st.sampled_from(RULES), st.integers(min_value=-1, max_value=20))
def test_property_adding_a_count_rule_never_removes(
    times: list[datetime], policy: RetentionPolicy, rule: str, extra: int
) -> None:
    assume(not policy.is_empty())
    current = getattr(policy, rule) or 0
    assume(current != UNLIMITED)
    changes: dict[str, Any] = {rule: UNLIMITED if extra == -1 else current + extra}
    stronger = replace(policy, **changes)
    assert kept_indices(times, policy) <= kept_indices(times, stronger)


@given(times_st, policy_st, duration_st)
def test_property_adding_keep_within_never_removes(
    times: list[datetime], policy: RetentionPolicy, within: Duration
) -> None:
    assume(not policy.is_empty() and policy.keep_within is None)
    stronger = replace(policy, keep_within=within)
    assert kept_indices(times, policy) <= kept_indices(times, stronger)
