"""Which snapshots a retention policy keeps, with the semantics of restic's ``forget``.

Pure functions over any item type, so the rules can be tested without a repository.
Snapshots are walked newest first; a snapshot is kept if any rule keeps it (the reasons are
ORed and all reported):

- ``keep_last n``: the n newest snapshots.
- ``keep_{hourly,daily,weekly,monthly,yearly} n``: the newest snapshot of each of the n newest
  calendar hours/days/ISO weeks/months/years that hold a snapshot. Buckets use the wall-clock
  fields of the datetimes exactly as ``time_of`` returns them, so the caller picks the time zone
  the calendar is read in (restic reads each snapshot in its own zone).
- If a count rule still has budget when the oldest snapshot is reached, that snapshot is kept
  too ("oldest daily snapshot"), which stretches the history kept by a young repository.
- ``-1`` means unlimited; ``0`` or ``None`` disables a rule.
- ``keep_within d``: every snapshot strictly newer than the newest snapshot minus d, where d is a
  calendar span (``1y2m3d4h``). Measured from the newest snapshot rather than from now, so a
  host that stopped backing up does not lose its last snapshots to the passing of time.

Grouping (by host and paths) is the caller's job, see :func:`group_by`; the policy is applied
to each group separately. An empty policy keeps everything: callers should refuse to forget
with one, since "keep nothing" is almost always a typo.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

UNLIMITED = -1

_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}
_TOKEN = re.compile(r"([0-9]*)(.?)", re.DOTALL)

_COUNT_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)

# (reason, label for describe(), bucket of a snapshot given its time and newest-first index)
_RULES: tuple[tuple[str, str, Callable[[datetime, int], Hashable]], ...] = (
    ("last snapshot", "latest", lambda t, nr: nr),
    ("hourly snapshot", "hourly", lambda t, nr: (t.year, t.month, t.day, t.hour)),
    ("daily snapshot", "daily", lambda t, nr: (t.year, t.month, t.day)),
    ("weekly snapshot", "weekly", lambda t, nr: t.isocalendar()[:2]),
    ("monthly snapshot", "monthly", lambda t, nr: (t.year, t.month)),
    ("yearly snapshot", "yearly", lambda t, nr: t.year),
)
_NO_BUCKET = object()


@dataclass(frozen=True)
class Duration:
    """A calendar span such as ``1y2m3d4h``; not a timedelta because months and years vary."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"duration {f.name} must not be negative")

    def is_zero(self) -> bool:
        """A zero span disables ``keep_within``, as in restic."""
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = zip((self.years, self.months, self.days, self.hours), _UNITS, strict=True)
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    def before(self, t: datetime) -> datetime | None:
        """The instant this span before ``t``, or None if that falls before year 1.

        Years, months and days move the calendar date and keep the wall-clock time, rolling an
        impossible date over like Go's ``AddDate`` (31 March minus 1m is 3 March, not 28
        February); hours are then subtracted as elapsed time, as restic does.
        """
        month_index = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month0 = divmod(month_index, 12)
        try:
            shifted = t.replace(year=year, month=month0 + 1, day=1)
            shifted += timedelta(days=t.day - 1 - self.days)
            if shifted.tzinfo is not None:
                shifted = shifted.astimezone(UTC)
            return shifted - timedelta(hours=self.hours)
        except (ValueError, OverflowError):
            return None


def parse_duration(text: str) -> Duration:
    """Parse restic's duration syntax, e.g. ``2y5m7d3h`` (m is months; weeks are not a unit)."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration: expected a form like '1y2m3d4h'")
    values: dict[str, int] = {}
    pos = 0
    while pos < len(s):
        match = _TOKEN.match(s, pos)
        assert match is not None  # the pattern can match the empty string
        digits, unit = match.groups()
        if not digits:
            raise ValueError(f"invalid duration {text!r}: expected a number at {s[pos:]!r}")
        if not unit:
            raise ValueError(f"invalid duration {text!r}: no unit after {digits}")
        if unit not in _UNITS:
            raise ValueError(
                f"invalid duration {text!r}: unknown unit {unit!r} after {digits} "
                "(use y, m, d or h)"
            )
        if _UNITS[unit] in values:
            raise ValueError(f"invalid duration {text!r}: unit {unit!r} given twice")
        values[_UNITS[unit]] = int(digits)
        pos = match.end()
    return Duration(**values)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which snapshots ``forget`` keeps; counts are None/0 (off), -1 (unlimited) or positive."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: Duration | None = None

    def __post_init__(self) -> None:
        for name, count in zip(_COUNT_FIELDS, self._counts(), strict=True):
            if count is not None and count < UNLIMITED:
                raise ValueError(f"{name} must be -1 (unlimited), 0 or more, not {count}")

    def _counts(self) -> tuple[int | None, ...]:
        return (
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        )

    def _within(self) -> Duration | None:
        return None if self.keep_within is None or self.keep_within.is_zero() else self.keep_within

    def is_empty(self) -> bool:
        """True if no rule is active; applying such a policy keeps every snapshot."""
        return not any(self._counts()) and self._within() is None

    def describe(self) -> str:
        """One line for the user before anything is removed, e.g. "keep 7 daily snapshots"."""
        if self.is_empty():
            return "keep all snapshots (empty policy)"
        parts = []
        for (_, label, _), count in zip(_RULES, self._counts(), strict=True):
            if count == UNLIMITED:
                parts.append(f"all {label} snapshots")
            elif count:
                parts.append(f"{count} {label} snapshots")
        within = self._within()
        if within is not None:
            parts.append(f"all snapshots within {within} of the newest")
        return "keep " + ", ".join(parts)


@dataclass(frozen=True)
class Decision(Generic[T]):
    """The verdict on one item; ``reasons`` is empty exactly when it is to be forgotten."""

    item: T
    keep: bool
    reasons: tuple[str, ...]


def apply_policy(
    items: Sequence[T],
    policy: RetentionPolicy,
    time_of: Callable[[T], datetime],
    *,
    now: datetime | None = None,
) -> list[Decision[T]]:
    """Decide for each item whether ``policy`` keeps it; the result is ordered newest first.

    Items with equal times keep their input order. If ``now`` is given, items later than it
    (clock skew) are ignored when finding the newest item ``keep_within`` counts back from,
    as restic does; by default the newest item is the reference, which keeps this pure.
    """
    ordered = sorted(((time_of(item), item) for item in items), key=lambda p: p[0], reverse=True)
    if policy.is_empty():
        return [Decision(item, True, ("policy is empty",)) for _, item in ordered]

    within = policy._within()
    cutoff: datetime | None = None
    if within is not None:
        reference = max((t for t, _ in ordered if now is None or t < now), default=None)
        cutoff = None if reference is None else within.before(reference)

    budget = [count or 0 for count in policy._counts()]
    last_bucket: list[Hashable] = [_NO_BUCKET] * len(_RULES)
    oldest = len(ordered) - 1
    decisions: list[Decision[T]] = []
    for nr, (t, item) in enumerate(ordered):
        reasons: list[str] = []
        if within is not None and (cutoff is None or t > cutoff):
            reasons.append(f"within {within}")
        for i, (reason, _, bucket_of) in enumerate(_RULES):
            if budget[i] == 0:
                continue
            bucket = bucket_of(t, nr)
            if bucket != last_bucket[i]:
                reasons.append(reason)
            elif nr == oldest:
                reasons.append(f"oldest {reason}")
            else:
                continue
            last_bucket[i] = bucket
            if budget[i] > 0:
                budget[i] -= 1
        decisions.append(Decision(item, bool(reasons), tuple(reasons)))
    return decisions


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Split items into the groups a policy is applied to separately, keeping their order."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
