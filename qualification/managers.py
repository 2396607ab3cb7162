"""Who calls a new client back, and by when.

The client's previous manager keeps the client. Otherwise managers take new clients
in turn (one Redis counter shared by every worker) among those on shift now; when
nobody is, among those whose shift starts first. A call-back deadline counts working
minutes of the manager's own shift, so a hot lead at 20:55 is due at 09:10 the next
working morning, not at 21:10 when nobody is there; "next_morning" is the next
opening plus a grace period for the night's leads.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal, cast
from zoneinfo import ZoneInfo

import structlog
from redis.asyncio import Redis

from app.config import NEXT_MORNING, WEEKDAYS, BusinessRules, IntakeDeadlines, Shift
from qualification.schema import QualifiedLead
from qualification.timeparse import WEEKDAY_ACCUSATIVE

log = structlog.stdlib.get_logger(__name__)

Tier = Literal["hot", "warm", "cold"]
Reason = Literal["previous", "round_robin", "next_to_start"]
# A calendar without a working day in a year is a configuration mistake.
_SEARCH_DAYS = 366


@dataclass(frozen=True)
class Schedule:
    """When one person works: weekdays, daily hours, the business's days off."""

    zone: ZoneInfo
    weekdays: frozenset[int]
    hours: tuple[time, time]
    holidays: frozenset[date] = frozenset()
    extra_working_days: frozenset[date] = frozenset()

    @classmethod
    def of(cls, rules: BusinessRules, shift: Shift | None = None) -> Schedule:
        """The business calendar, narrowed to a shift where one is configured."""
        calendar = rules.calendar
        days = shift.working_days if shift and shift.working_days else None
        return cls(
            zone=rules.zone,
            weekdays=frozenset(
                WEEKDAYS.index(day) for day in days or calendar.working_days
            ),
            hours=shift.hours if shift and shift.hours else calendar.hours,
            holidays=frozenset(calendar.holidays),
            extra_working_days=frozenset(calendar.extra_working_days),
        )

    def works_on(self, day: date) -> bool:
        if day in self.extra_working_days:
            return True
        return day.weekday() in self.weekdays and day not in self.holidays

    def is_working(self, at: datetime) -> bool:
        """On shift at `at`: a working day, within the hours (end exclusive)."""
        local = at.astimezone(self.zone)
        start, end = self.hours
        return self.works_on(local.date()) and start <= local.time() < end

    def next_start(self, at: datetime) -> datetime:
        """`at` itself while on shift, otherwise the next moment a shift begins."""
        if self.is_working(at):
            return at
        return self._first_opening(at)

    def next_morning(self, at: datetime) -> datetime:
        """The first shift start after `at`: today's when it is still ahead."""
        return self._first_opening(at)

    def add_working_minutes(self, at: datetime, minutes: int) -> datetime:
        """`minutes` of working time from `at`, carried over closed hours."""
        left = timedelta(minutes=minutes)
        moment = self.next_start(at)
        for _ in range(_SEARCH_DAYS):
            closing = self._at(moment.astimezone(self.zone).date(), self.hours[1])
            if moment + left <= closing:
                return moment + left
            left -= closing - moment
            moment = self.next_start(closing)
        raise ValueError("the calendar has no working time within a year")

    def _first_opening(self, at: datetime) -> datetime:
        local = at.astimezone(self.zone)
        for offset in range(_SEARCH_DAYS):
            day = local.date() + timedelta(days=offset)
            opening = self._at(day, self.hours[0])
            if self.works_on(day) and opening > at:
                return opening
        raise ValueError("the calendar has no working day within a year")

    def _at(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, tzinfo=self.zone)


def tier_of(lead: QualifiedLead) -> Tier:
    """How fast the lead needs a call: asking for a person or urgent counts as hot."""
    qualification = lead.qualification
    if lead.handover or qualification.urgency == "urgent":
        return "hot"
    return qualification.readiness


def call_back_by(
    schedule: Schedule, tier: Tier, deadlines: IntakeDeadlines, now: datetime
) -> datetime:
    """The task deadline for a lead of `tier` handed over at `now`."""
    rule = cast(int | str, getattr(deadlines, tier))
    if rule == NEXT_MORNING:
        morning = schedule.next_morning(now)
        return morning + timedelta(minutes=deadlines.morning_grace_minutes)
    return schedule.add_working_minutes(now, int(rule))


def when_words(schedule: Schedule, now: datetime, deadline: datetime) -> str:
    """When the client hears from the manager, in Russian, as a promise we keep."""
    start = schedule.next_start(now)
    if start > now:
        return f"{day_words(start, now, schedule.zone)} после {_clock(start, schedule)}"
    local_now = now.astimezone(schedule.zone)
    local_deadline = deadline.astimezone(schedule.zone)
    if local_deadline.date() == local_now.date():
        minutes = math.ceil((deadline - now).total_seconds() / 60)
        if minutes <= 60:
            return f"в течение {minutes} {_minutes_genitive(minutes)}"
    return f"{day_words(deadline, now, schedule.zone)} до {_clock(deadline, schedule)}"


def day_words(moment: datetime, now: datetime, zone: ZoneInfo) -> str:
    """сегодня, завтра, в пятницу, or 12.01 for a day further away."""
    day = moment.astimezone(zone).date()
    offset = (day - now.astimezone(zone).date()).days
    if offset == 0:
        return "сегодня"
    if offset == 1:
        return "завтра"
    if 1 < offset < 7:
        return WEEKDAY_ACCUSATIVE[day.weekday()]
    return f"{day.day:02d}.{day.month:02d}"


def _clock(moment: datetime, schedule: Schedule) -> str:
    return f"{moment.astimezone(schedule.zone):%H:%M}"


def _minutes_genitive(count: int) -> str:
    # "в течение" takes the genitive: 1, 21, 31 минуты; every other count минут.
    return "минуты" if count % 10 == 1 and count % 100 != 11 else "минут"


@dataclass(frozen=True)
class Assignment:
    """The responsible manager, their shift, and why they were chosen."""

    manager_id: int
    schedule: Schedule
    reason: Reason


class ManagerPicker:
    """Chooses the responsible manager of a new lead."""

    def __init__(
        self,
        redis: Redis,
        rules: BusinessRules,
        *,
        counter_key: str = "leadloop:intake:round_robin",
    ) -> None:
        self._redis = redis
        self._rules = rules
        self._counter_key = counter_key
        self.managers: tuple[int, ...] = tuple(rules.intake.manager_ids(rules.bonus))
        shifts: Mapping[str, Shift] = rules.intake.shifts
        self._schedules = {
            manager: Schedule.of(rules, shifts.get(str(manager)))
            for manager in self.managers
        }
        self._calendar = Schedule.of(rules)

    def schedule_of(self, manager_id: int) -> Schedule:
        """A manager's shift; the business calendar for anyone not configured."""
        return self._schedules.get(manager_id, self._calendar)

    def keeps(self, manager_id: int | None) -> bool:
        """Whether a client's previous manager may keep the client."""
        if manager_id is None or manager_id <= 0:
            return False
        return not self.managers or manager_id in self.managers

    async def pick(self, now: datetime, previous: int | None) -> Assignment | None:
        """The previous manager, else the next in turn; None when none is configured."""
        if previous is not None and self.keeps(previous):
            return Assignment(previous, self.schedule_of(previous), "previous")
        if not self.managers:
            return None

        on_shift = [m for m in self.managers if self._schedules[m].is_working(now)]
        reason: Reason = "round_robin"
        if not on_shift:
            on_shift, reason = self._first_to_start(now), "next_to_start"
        turn = await cast(Awaitable[int], self._redis.incr(self._counter_key))
        manager = on_shift[(turn - 1) % len(on_shift)]
        log.info("intake.manager_picked", manager_id=manager, reason=reason)
        return Assignment(manager, self._schedules[manager], reason)

    def _first_to_start(self, now: datetime) -> list[int]:
        starts = {m: self._schedules[m].next_start(now) for m in self.managers}
        first = min(starts.values())
        return [manager for manager, start in starts.items() if start == first]
