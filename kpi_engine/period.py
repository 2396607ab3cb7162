"""Periods, `as_of`, calendar days and business minutes in the business time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import cached_property
from zoneinfo import ZoneInfo

from app.config import BusinessRules, CalendarRules
from kpi_engine.data import InvalidPeriod, KpiQuery

RETENTION_DAYS = 30  # KPI.md: return visits and the cohort window W, in calendar days
_MICROSECONDS_PER_MINUTE = 60_000_000


def midnight(day: date, zone: ZoneInfo) -> datetime:
    """Local midnight that starts `day` in `zone`."""
    return datetime.combine(day, time(0), tzinfo=zone)


def local_date(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar date of `moment` in `zone`."""
    return moment.astimezone(zone).date()


@dataclass(frozen=True)
class Span:
    """A half-open range of instants `[start, end)`; both ends aware."""

    start: datetime
    end: datetime

    def __contains__(self, moment: object) -> bool:
        if not isinstance(moment, datetime):
            return False
        return self.start <= moment < self.end

    @property
    def is_empty(self) -> bool:
        return self.end <= self.start


@dataclass(frozen=True)
class Period:
    """The period P of a query, seen as of `as_of`.

    Spans and `seen_until` are in UTC: instants sharing one `tzinfo` compare without
    offset look-ups (see `facts`); print them with `.astimezone(zone)`.
    """

    start_date: date
    end_date: date
    as_of: datetime
    zone: ZoneInfo
    calendar: CalendarRules

    @classmethod
    def of(cls, query: KpiQuery, rules: BusinessRules) -> Period:
        """The period of `query` under `rules`."""
        return cls(query.start, query.end, query.as_of, rules.zone, rules.calendar)

    @cached_property
    def span(self) -> Span:
        """P: local midnight of the first date to local midnight of the end date."""
        return self._utc_span(self.start_date, self.end_date)

    @cached_property
    def retention_window(self) -> Span:
        """W: P moved back by 30 calendar days."""
        shift = timedelta(days=RETENTION_DAYS)
        return self._utc_span(self.start_date - shift, self.end_date - shift)

    @cached_property
    def seen_until(self) -> datetime:
        """`as_of` in UTC."""
        return self.as_of.astimezone(UTC)

    @property
    def final(self) -> bool:
        """True once `as_of` is at or after local midnight 30 days after the end."""
        settled = midnight(self.end_date + timedelta(days=RETENTION_DAYS), self.zone)
        return self.as_of >= settled

    @property
    def is_month(self) -> bool:
        """True when P is exactly one calendar month."""
        return self.start_date.day == 1 and self.end_date == next_month(self.start_date)

    @cached_property
    def begun_days(self) -> tuple[date, ...]:
        """Calendar days of P that began at or before `as_of`."""
        days = []
        day = self.start_date
        while day < self.end_date and midnight(day, self.zone) <= self.as_of:
            days.append(day)
            day += timedelta(days=1)
        return tuple(days)

    def days(self) -> int:
        """days(P)."""
        return len(self.begun_days)

    def working_days(self) -> int:
        """working_days(P): begun days of P that are working days."""
        return sum(1 for day in self.begun_days if self.calendar.is_working_day(day))

    def visible(self, moment: datetime | None) -> bool:
        """A fact timed at `moment` is visible at `as_of` (exactly `as_of` included)."""
        return moment is not None and moment <= self.seen_until

    def _utc_span(self, start: date, end: date) -> Span:
        return Span(
            midnight(start, self.zone).astimezone(UTC),
            midnight(end, self.zone).astimezone(UTC),
        )


def next_month(day: date) -> date:
    """The first day of the month after the month of `day`."""
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def month_period(month: str) -> tuple[date, date]:
    """`"2025-01"` → (2025-01-01, 2025-02-01)."""
    match = re.fullmatch(r"(\d{4})-(0[1-9]|1[0-2])", month)
    if match is None:
        raise InvalidPeriod(f"{month!r} is not a month like 2025-01")
    start = date(int(match[1]), int(match[2]), 1)
    return start, next_month(start)


def iso_week_period(week: str) -> tuple[date, date]:
    """`"2025-W02"` → Monday 2025-01-06 to Monday 2025-01-13."""
    match = re.fullmatch(r"(\d{4})-W(\d{2})", week)
    if match is None:
        raise InvalidPeriod(f"{week!r} is not an ISO week like 2025-W02")
    try:
        start = date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        raise InvalidPeriod(f"{week!r} is not a week of its year") from None
    return start, start + timedelta(days=7)


def week_just_ended(now: datetime, zone: ZoneInfo) -> tuple[date, date]:
    """The calendar week (Monday to Monday) before the one holding `now`.

    Not "the last 7 days": run on a Monday at 09:00 it gives the whole previous
    week and none of the unfinished Monday (known fault KPI-1).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must carry a UTC offset (known fault Q-3)")
    today = local_date(now, zone)
    this_monday = today - timedelta(days=today.weekday())
    return this_monday - timedelta(days=7), this_monday


def month_of(moment: datetime, zone: ZoneInfo) -> str:
    """The business-zone calendar month of `moment`, as `YYYY-MM`."""
    return local_date(moment, zone).strftime("%Y-%m")


def business_minutes(
    start: datetime, end: datetime, calendar: CalendarRules, zone: ZoneInfo
) -> Fraction:
    """Minutes of `[start, end)` inside working hours, seconds as exact fractions."""
    elapsed = business_time(start, end, calendar, zone)
    return Fraction(elapsed // timedelta(microseconds=1), _MICROSECONDS_PER_MINUTE)


def business_time(
    start: datetime, end: datetime, calendar: CalendarRules, zone: ZoneInfo
) -> timedelta:
    """The part of `[start, end)` inside working hours, to the microsecond."""
    if end <= start:
        return timedelta(0)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    opening, closing = calendar.hours
    total = timedelta(0)
    day = local_date(start, zone)
    last = local_date(end, zone)
    while day <= last:
        if calendar.is_working_day(day):
            # UTC so that subtraction counts real time across offset changes.
            shift_start = datetime.combine(day, opening, tzinfo=zone).astimezone(UTC)
            shift_end = datetime.combine(day, closing, tzinfo=zone).astimezone(UTC)
            overlap = min(end, shift_end) - max(start, shift_start)
            if overlap > timedelta(0):
                total += overlap
        day += timedelta(days=1)
    return total


@dataclass(frozen=True)
class Window:
    """What the loader must read so that one query sees every fact it counts.

    Every span is half-open and a superset is always safe: the engine re-checks each
    timestamp against P, W and `as_of` (known fault B24-4), so reading more costs
    requests, never correctness. Reading less loses facts.
    """

    inquiries: Span
    """`DATE_CREATE` of deals (simple mode) or leads (classic mode)."""
    bookings: Span
    """History rows entering a booked, confirmed, visited or no-show stage here make
    the deal needed (its booking time may lie in P)."""
    visits: Span
    """Deals whose visit-time field, or whose history rows entering a visited or
    no-show stage, fall here are needed (appointments, return visits, cohort W)."""
    history_until: datetime
    """Every stage-history row of every needed deal up to this instant, with no lower
    bound: a role's earliest row decides, and it may be years old."""
    activities: Span
    """Activities by `START_TIME` (touches of P's inquiries and P's calls)."""
    calls_in_progress: Span
    """Also incoming calls (`TYPE_ID` 2, `DIRECTION` 1) by `END_TIME`: a call begun
    before P and answered when an inquiry of P was created is its touch."""


def needed_window(query: KpiQuery, rules: BusinessRules) -> Window:
    """The time ranges the loader reads for `query` (classic: deals also by LEAD_ID)."""
    period = Period.of(query, rules)
    span = period.span
    seen_until = query.as_of + timedelta(microseconds=1)  # `as_of` itself is visible
    first_visit = period.retention_window.start
    return Window(
        inquiries=Span(span.start, min(span.end, seen_until)),
        bookings=Span(span.start, min(span.end, seen_until)),
        visits=Span(first_visit, span.end),
        history_until=query.as_of,
        activities=Span(span.start, seen_until),
        calls_in_progress=Span(span.start, seen_until),
    )
