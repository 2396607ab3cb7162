"""When each reminder and check of one visit is due: pure functions of the rules.

A visit planned at `now` gets up to four kinds of slot:

- client messages: `day_before` (the local day before, at `day_before_at`) and
  `<N>h` (N hours before), each moved out of the quiet hours to the nearest moment
  that is still before the visit and not in the past, or dropped when there is none;
- `call`: a call task for the manager if the visit is still unconfirmed then;
- `outcome`: a task to record the outcome on the next working morning.

Quiet hours are an open interval: a message may go at 21:00 or at 09:00 itself,
never between. Nothing here reads a clock; callers pass `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import Enum

from app.config import BusinessRules, CalendarRules, ReminderRules

DAY_BEFORE = "day_before"
CALL = "call"
OUTCOME = "outcome"
# A slot a little behind `now` still goes out at once: the reconcile job runs every
# few minutes and a worker may pick a job up late. Older message slots are history.
GRACE = timedelta(minutes=15)
# The next working day is searched this far; a calendar with no working day in it
# is a configuration nobody means.
_LOOKAHEAD_DAYS = 31


def hours_kind(hours: int) -> str:
    """The kind of the reminder `hours` before the visit: `2h`."""
    return f"{hours}h"


def is_message(kind: str) -> bool:
    """True for kinds that message the client; the others are manager tasks."""
    return kind not in (CALL, OUTCOME)


@dataclass(frozen=True)
class Slot:
    """One planned reminder or check: its kind and when it is due."""

    kind: str
    due: datetime


@dataclass(frozen=True)
class Dropped:
    """A slot that will not run, and why (for the log)."""

    kind: str
    reason: str


@dataclass(frozen=True)
class Plan:
    slots: tuple[Slot, ...]
    dropped: tuple[Dropped, ...]


@dataclass(frozen=True)
class QuietHours:
    """The nightly (or any daily) span in which no client message goes out."""

    start: time
    end: time
    zone: tzinfo

    def contains(self, moment: datetime) -> bool:
        """Strictly inside the quiet span; its boundaries are allowed."""
        clock = moment.astimezone(self.zone).timetz().replace(tzinfo=None)
        if self.start < self.end:
            return self.start < clock < self.end
        return clock > self.start or clock < self.end

    def span(self, moment: datetime) -> tuple[datetime, datetime]:
        """The quiet span around `moment` (which must be inside it): start, end."""
        local = moment.astimezone(self.zone)
        today = local.date()
        if self.start < self.end or local.timetz().replace(tzinfo=None) > self.start:
            start_day = today
        else:
            start_day = today - timedelta(days=1)
        end_day = start_day if self.start < self.end else start_day + timedelta(1)
        return _at(start_day, self.start, self.zone), _at(end_day, self.end, self.zone)


def quiet_hours(rules: BusinessRules) -> QuietHours:
    start, end = rules.reminders.quiet_hours
    return QuietHours(start, end, rules.zone)


def place(
    due: datetime, visit: datetime, quiet: QuietHours, *, not_before: datetime
) -> datetime | None:
    """`due`, or the nearest allowed moment before the visit; None when none is."""
    if not quiet.contains(due):
        return due if due < visit else None
    start, end = quiet.span(due)
    for moment in sorted((start, end), key=lambda edge: abs(edge - due)):
        if not_before - GRACE <= moment < visit:
            return moment
    return None


def plan(visit: datetime, role: str, rules: BusinessRules, now: datetime) -> Plan:
    """The slots of a visit whose deal currently has `role`, as planned at `now`."""
    wanted: list[Slot] = []
    if role == "booked":
        wanted += _messages(visit, rules.reminders, rules.zone)
        wanted += _call(visit, rules.reminders)
    if role in ("booked", "confirmed") and rules.reminders.outcome_check:
        wanted.append(Slot(OUTCOME, next_working_morning(visit, rules)))
    return _placed(wanted, visit, rules, now)


def _messages(visit: datetime, reminders: ReminderRules, zone: tzinfo) -> list[Slot]:
    slots = []
    if reminders.day_before:
        day = visit.astimezone(zone).date() - timedelta(days=1)
        slots.append(Slot(DAY_BEFORE, _at(day, reminders.day_before_at, zone)))
    for hours in reminders.hours_before:
        slots.append(Slot(hours_kind(hours), visit - timedelta(hours=hours)))
    return sorted(slots, key=lambda slot: slot.due)


def _call(visit: datetime, reminders: ReminderRules) -> list[Slot]:
    hours = reminders.call_if_unconfirmed_hours
    return [Slot(CALL, visit - timedelta(hours=hours))] if hours else []


def _placed(
    wanted: list[Slot], visit: datetime, rules: BusinessRules, now: datetime
) -> Plan:
    quiet = quiet_hours(rules)
    slots: list[Slot] = []
    dropped: list[Dropped] = []
    for slot in wanted:
        if slot.kind == OUTCOME:
            # Late is still useful: the KPIs wait for the outcome.
            slots.append(slot)
            continue
        due = _due(slot, visit, quiet, now)
        reason = _why_not(due, slot, slots, now)
        if reason is None and due is not None:
            slots.append(Slot(slot.kind, due))
        else:
            dropped.append(Dropped(slot.kind, reason or "no_allowed_time"))
    return Plan(tuple(slots), tuple(dropped))


def _due(
    slot: Slot, visit: datetime, quiet: QuietHours, now: datetime
) -> datetime | None:
    if is_message(slot.kind):
        return place(slot.due, visit, quiet, not_before=now)
    return slot.due if slot.due < visit else None


def _why_not(
    due: datetime | None, slot: Slot, taken: list[Slot], now: datetime
) -> str | None:
    if due is None:
        return "no_allowed_time"
    if due < now - GRACE:
        return "passed"
    if is_message(slot.kind) and any(
        other.due == due and is_message(other.kind) for other in taken
    ):
        # Two reminders moved to the same boundary: the client reads one.
        return "same_time_as_another"
    return None


def superseded(kind: str, visit: datetime, rules: BusinessRules, now: datetime) -> bool:
    """True when a later reminder of the visit is due too: a job run late (after an
    outage) gives way to the one the client should read now."""
    quiet = quiet_hours(rules)
    # Where the planner put each reminder, whenever it planned.
    long_ago = visit - timedelta(days=_LOOKAHEAD_DAYS)
    times = {
        slot.kind: place(slot.due, visit, quiet, not_before=long_ago)
        for slot in _messages(visit, rules.reminders, rules.zone)
    }
    mine = times.get(kind)
    if mine is None:
        return False
    return any(
        other is not None and mine < other <= now
        for other_kind, other in times.items()
        if other_kind != kind
    )


def next_working_morning(visit: datetime, rules: BusinessRules) -> datetime:
    """Opening time of the first working day after the visit's local date."""
    calendar: CalendarRules = rules.calendar
    day = visit.astimezone(rules.zone).date()
    for _ in range(_LOOKAHEAD_DAYS):
        day += timedelta(days=1)
        if calendar.is_working_day(day):
            return _at(day, calendar.hours[0], rules.zone)
    return _at(day, calendar.hours[0], rules.zone)


class Decision(Enum):
    SEND = "send"
    DEFER = "defer"
    SKIP = "skip"


@dataclass(frozen=True)
class WhenToSend:
    """What a message reminder does when its job runs: send, wait, or give up."""

    decision: Decision
    until: datetime | None = None
    reason: str = ""


def when_to_send(now: datetime, visit: datetime, quiet: QuietHours) -> WhenToSend:
    """Judged at fire time: a worker may run a job late, into the quiet hours."""
    if now >= visit:
        return WhenToSend(Decision.SKIP, reason="visit_passed")
    if not quiet.contains(now):
        return WhenToSend(Decision.SEND)
    _, end = quiet.span(now)
    if end < visit:
        return WhenToSend(Decision.DEFER, until=end)
    return WhenToSend(Decision.SKIP, reason="quiet_until_visit")


def _at(day: date, clock: time, zone: tzinfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone)
