"""When a plan fires: cron expressions read on a plan's wall clock, evaluated by ``cronsim``.

Pure and clock-injected (every method takes the moment it reasons about), so the agent and the
tests drive it with their own clock. Times go in and come out as aware datetimes; results are in
UTC, because aware datetimes sharing one zone compare by wall time and ignore ``fold``, which
would make the repeated hour of a DST fall-back compare wrong.

DST (cronsim's rule, which mimics Debian cron for expressions with a fixed minute and hour, such
as ``30 2 * * *``): a wall time skipped by spring-forward fires once, at the first real minute
after the gap (03:00 on 2026-03-29 in Europe/Berlin); a wall time repeated by fall-back fires
once, at its first occurrence (02:30 CEST on 2026-10-25). Expressions whose minute or hour starts
with ``*`` (``0 * * * *``, ``*/15 9-17 * * 1-5``, ``0 */2 * * *``) follow real time instead: they
fire at every real instant matching the fields, so an hourly job fires 23 times on the
spring-forward day and 25 times on the fall-back day, and ``0 */2 * * *`` has no 02:00 on the
spring-forward day.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

# cronsim 2.x has no @-aliases; these are Vixie/Debian cron's.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_EXPECTED = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT",
}
_PROBE_FROM = datetime(2000, 1, 1)  # parse checks an expression fires at all, from a fixed point
_SECOND = timedelta(seconds=1)


class ScheduleError(ValueError):
    """A cron expression or timezone that cannot be used; the message is one line naming it."""


def local_zone() -> ZoneInfo:
    """The machine's zone as an IANA zone (DST rules included), else UTC.

    ``datetime.astimezone()`` gives only a fixed offset, which would shift schedules by an hour
    half the year; so read ``TZ``, then the /etc/localtime link, then the file itself.
    """
    name = os.environ.get("TZ", "").removeprefix(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a POSIX TZ string such as "CET-1CEST": fall through to the system's zone
    try:
        target = os.path.realpath("/etc/localtime")
        if "/zoneinfo/" in target:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class Schedule:
    """A plan's fire times: the union of its cron expressions, read in ``timezone``.

    No expressions means a manual-only plan: it never fires, is never missed or overdue.
    """

    expressions: tuple[str, ...]
    timezone: ZoneInfo = field(default_factory=local_zone)

    @classmethod
    def parse(cls, expressions: Sequence[str], timezone: str | None = None) -> Schedule:
        """Validate every expression and the zone now, so a bad plans file fails at load.

        A bare string is taken as one expression (not as a sequence of characters). Aliases
        (@daily, ...) are kept as written; repeated expressions collapse. ``timezone`` None is
        the machine's local zone.
        """
        items = (expressions,) if isinstance(expressions, str) else tuple(expressions)
        zone = local_zone() if timezone is None else _zone(timezone)
        unique = tuple(dict.fromkeys(items))
        for expression in unique:
            _check(expression, zone)
        return cls(unique, zone)

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment``, over all expressions (UTC).

        Raises ValueError for a schedule without expressions (callers check ``expressions``)
        and ScheduleError if no expression fires within cronsim's 50-year horizon.
        """
        start = _utc(moment)
        if not self.expressions:
            raise ValueError("the schedule has no expressions: it never fires")
        times = [
            fire
            for expression in self.expressions
            for fire in self._fires(expression, start, limit=1)
        ]
        if not times:
            raise ScheduleError(f"schedule {list(self.expressions)!r} never fires after {start}")
        return min(times)

    def missed(self, last_fire: datetime | None, now: datetime) -> datetime | None:
        """The latest fire time in (last_fire, now], or None.

        Only the latest: after downtime the agent runs a plan once, not once per missed slot.
        None when ``last_fire`` is None, so a new plan waits for its first slot instead of
        running at once.
        """
        end = _utc(now)
        if last_fire is None or not self.expressions:
            return None
        after = _utc(last_fire)
        if after >= end:
            return None
        latest = [fire for e in self.expressions if (fire := self._latest(e, after, end))]
        return max(latest, default=None)

    def overdue(
        self, last_success: datetime | None, now: datetime, grace: timedelta, since: datetime
    ) -> bool:
        """Whether a fire time plus ``grace`` has passed with no success after that fire time.

        Measured from ``last_success`` or, for a plan that never succeeded, from ``since`` (when
        the plan was first seen, e.g. the agent's start or the plan's first run), so a new plan
        is not overdue before its first slot plus grace. A success starting exactly on a slot
        covers that slot. Overdue only once ``now`` is strictly later than slot plus grace.
        """
        if not self.expressions:
            return False
        reference = since if last_success is None else last_success
        return _utc(now) > self.next_after(reference) + grace

    # --- inside ---------------------------------------------------------------------------

    def _fires(
        self, expression: str, after: datetime, limit: int | None = None
    ) -> Iterator[datetime]:
        """One expression's fire times strictly after ``after``, strictly increasing, in UTC.

        cronsim reads fixed-time expressions on the naive wall clock, so from a moment in the
        second pass of a fall-back hour it can return the first pass (earlier); such times,
        already past, are dropped here rather than fired again.
        """
        local = after.astimezone(self.timezone)
        last = after
        count = 0
        try:
            for fire in CronSim(_expand(expression), local):
                fire_utc = fire.astimezone(UTC)
                if fire_utc <= last:
                    continue
                yield fire_utc
                last = fire_utc
                count += 1
                if limit is not None and count >= limit:
                    return
        except StopIteration:  # cronsim gives up after 50 years without a match
            return

    def _latest(self, expression: str, after: datetime, end: datetime) -> datetime | None:
        """One expression's latest fire time in (after, end].

        cronsim's reverse iteration finds a candidate at or before ``end`` in one step; walking
        forward from it (usually one or two steps) picks up what the wall-clock reading may
        have missed in a fall-back hour, and keeps forward iteration the single definition of
        "fires".
        """
        floor = end.replace(microsecond=0)
        try:
            # Reverse from floor + 1 s: cronsim ticks back a second first, so floor is included.
            candidate = next(
                CronSim(_expand(expression), (floor + _SECOND).astimezone(self.timezone), True)
            ).astimezone(UTC)
        except StopIteration:
            return None
        start = max(after, min(candidate, end) - _SECOND)
        latest = None
        for fire in self._fires(expression, start):
            if fire > end:
                break
            latest = fire
        return latest


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        expected = "expected an IANA name such as 'Europe/Berlin' or 'UTC'"
        raise ScheduleError(f"unknown timezone {name!r}: {expected}") from exc


def _expand(expression: str) -> str:
    return ALIASES.get(expression.strip().lower(), expression)


def _check(expression: str, zone: ZoneInfo) -> None:
    """Raise ScheduleError, naming the expression and its first problem, unless it is usable."""
    bad = f"bad cron expression {expression!r}"
    text = expression.strip()
    if not text:
        raise ScheduleError(f"{bad}: it is empty")
    if text.startswith("@") and text.lower() not in ALIASES:
        raise ScheduleError(f"{bad}: unknown alias, expected one of {', '.join(ALIASES)}")
    parts = _expand(text).split()
    if len(parts) != len(FIELDS):
        raise ScheduleError(
            f"{bad}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    try:
        fires = CronSim(_expand(text), _PROBE_FROM.replace(tzinfo=zone))
    except CronSimError as exc:
        raise ScheduleError(f"{bad}: {_why(str(exc), parts)}") from exc
    try:
        next(fires)
    except StopIteration:
        raise ScheduleError(f"{bad}: it never fires") from None
    except CronSimError as exc:
        raise ScheduleError(f"{bad}: {_why(str(exc), parts)}") from exc


def _why(message: str, parts: list[str]) -> str:
    """cronsim says only "Bad minute"; add the offending field and what it accepts."""
    for index, name in enumerate(FIELDS):
        if message.lower() == f"bad {name}":
            if name == "day-of-month" and _parses([*parts[:3], "*", parts[4]]):
                return f"no month in {parts[3]!r} has day {parts[2]!r}, so it never fires"
            return f"bad {name} field {parts[index]!r} (expected {_EXPECTED[name]})"
    return message


def _parses(parts: list[str]) -> bool:
    try:
        CronSim(" ".join(parts), _PROBE_FROM)
    except CronSimError:
        return False
    return True


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime ({moment}) is ambiguous: pass an aware one")
    return moment.astimezone(UTC)
