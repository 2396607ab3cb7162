"""Every metric of KPI.md, per manager and in total, from one read of the portal."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from app.config import BusinessRules
from connectors.bitrix24.models import Lead
from kpi_engine.bonus import bonus_for
from kpi_engine.closing import compare_with_closed
from kpi_engine.data import (
    ClosedMonth,
    InvalidPeriod,
    KpiData,
    KpiQuery,
    UnknownManager,
)
from kpi_engine.data_warnings import collect_warnings
from kpi_engine.facts import (
    CONTACT,
    DEAL,
    LEAD,
    DealFacts,
    TouchIndex,
    check_of,
    deal_facts,
    history_by_owner,
    is_call,
    role_map,
    utc,
)
from kpi_engine.period import RETENTION_DAYS, Period, business_time, local_date
from kpi_engine.result import (
    Bonus,
    Evidence,
    FirstResponse,
    KpiResult,
    LeftOut,
    ManagerResult,
    Metrics,
    PeriodInfo,
    RetainedItem,
    RevenueItem,
    Wait,
)
from kpi_engine.rounding import half_up, money, share

_MEDIAN, _P90 = Fraction(1, 2), Fraction(9, 10)
_MICROSECOND = timedelta(microseconds=1)
_MICROSECONDS_PER_MINUTE = 60_000_000


@dataclass
class _Tally:
    """Counts and items of one manager, or of the total."""

    leads: int = 0
    booked_leads: int = 0
    bookings: int = 0
    appointments: int = 0
    confirmed: int = 0
    cancellations: int = 0
    visits: int = 0
    no_shows: int = 0
    revenue: list[RevenueItem] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    calls: int = 0
    answered: list[int] = field(default_factory=list)  # business microseconds
    unanswered: int = 0
    within_sla: int = 0
    retained: dict[int, RetainedItem] = field(default_factory=dict)
    cohort: set[int] = field(default_factory=set)
    cohort_retained: set[int] = field(default_factory=set)


class _Counter:
    """Adds each fact to the total and to its manager's tally."""

    def __init__(self) -> None:
        self.total = _Tally()
        self.managers: dict[int, _Tally] = {}

    def tallies(self, manager: int | None) -> tuple[_Tally, ...]:
        if manager is None:
            return (self.total,)
        return self.total, self.managers.setdefault(manager, _Tally())


@dataclass(frozen=True)
class Inquiry:
    """A lead of P: a deal (simple mode) or a lead and the deals it became (classic)."""

    id: int
    created_at: datetime
    manager: int | None
    bindings: tuple[tuple[int, int], ...]
    deals: tuple[DealFacts, ...]

    @property
    def booked(self) -> bool:
        return any(facts.booked_at is not None for facts in self.deals)


@dataclass(frozen=True)
class _Visit:
    """A visited deal of a client, for retention."""

    day: date
    at: datetime
    deal_id: int
    manager: int | None


def compute(
    data: KpiData,
    query: KpiQuery,
    rules: BusinessRules,
    *,
    closed: ClosedMonth | None = None,
) -> KpiResult:
    """Every metric, bonus, evidence and warning of KPI.md for `query`."""
    if query.manager is not None and query.manager not in data.users:
        raise UnknownManager(query.manager)
    period = Period.of(query, rules)

    deals = tracked_deals(data, period, rules)
    inquiries = find_inquiries(data, deals, period)
    counter = _Counter()
    wanted = {binding for inquiry in inquiries for binding in inquiry.bindings}
    touches = TouchIndex(data.activities, _humans(data, rules), wanted)
    waits = _count_inquiries(counter, inquiries, touches, period, rules)
    counted = _count_deals(counter, deals.values(), period, rules)
    counted |= _inquiry_deal_ids(inquiries)
    _count_calls(counter, data, period)
    visits = _count_retention(counter, deals.values(), period)

    result = _result(counter, data, period, rules)
    warnings = collect_warnings(
        counted=[deals[deal_id] for deal_id in sorted(counted)],
        left_out=counter.total.left_out,
        deals=deals,
        managers=result.managers,
    )
    result = replace(
        result,
        warnings=tuple(warnings),
        counted_deal_ids=frozenset(counted | visits),
        waits=tuple(sorted(waits, key=lambda wait: wait.inquiry_id)),
    )
    if closed is not None:
        _check_closed_month(period, closed)
        differences = compare_with_closed(result, closed, data, rules)
        result = replace(result, warnings=result.warnings + tuple(differences))
    if query.manager is not None:
        result = _only(result, query.manager, data, period, rules)
    return result


def _check_closed_month(period: Period, closed: ClosedMonth) -> None:
    month = period.start_date.strftime("%Y-%m")
    if not period.is_month or closed.month != month:
        raise InvalidPeriod(f"the closed month {closed.month} is not this period")


def tracked_deals(
    data: KpiData, period: Period, rules: BusinessRules
) -> dict[int, DealFacts]:
    """Facts of every deal in a tracked pipeline created by `as_of`, by deal id."""
    pipelines = set(rules.crm.pipelines)
    roles = role_map(rules.crm.stages)
    history = history_by_owner(data.deal_history, period.as_of)
    return {
        deal.id: deal_facts(
            deal, history.get(deal.id, ()), roles, rules.crm.visit_field
        )
        for deal in data.deals
        if deal.category_id in pipelines
        and (deal.created_at is None or period.visible(deal.created_at))
    }


def find_inquiries(
    data: KpiData, deals: Mapping[int, DealFacts], period: Period
) -> list[Inquiry]:
    """The inquiries created in P, by the CRM mode."""
    span = period.span
    if data.mode == "simple":
        return [
            Inquiry(
                id=facts.deal.id,
                created_at=utc(facts.deal.created_at),
                manager=facts.deal.assigned_by_id,
                bindings=_bindings(DEAL, facts.deal.id, facts.deal.contact_id),
                deals=(facts,),
            )
            for facts in deals.values()
            if facts.deal.created_at is not None
            and facts.deal.created_at in span
            and period.visible(facts.deal.created_at)
        ]
    converted: dict[int, list[DealFacts]] = defaultdict(list)
    for facts in deals.values():
        if facts.deal.lead_id is not None:
            converted[facts.deal.lead_id].append(facts)
    return [
        _lead_inquiry(lead, converted.get(lead.id, []))
        for lead in data.leads
        if lead.created_at is not None
        and lead.created_at in span
        and period.visible(lead.created_at)
    ]


def _lead_inquiry(lead: Lead, deals: list[DealFacts]) -> Inquiry:
    assert lead.created_at is not None
    return Inquiry(
        id=lead.id,
        created_at=utc(lead.created_at),
        manager=lead.assigned_by_id,
        bindings=_bindings(LEAD, lead.id, lead.contact_id),
        deals=tuple(sorted(deals, key=lambda facts: facts.deal.id)),
    )


def _bindings(
    entity_type: int, entity_id: int, contact_id: int | None
) -> tuple[tuple[int, int], ...]:
    if contact_id is None:
        return ((entity_type, entity_id),)
    return (entity_type, entity_id), (CONTACT, contact_id)


def _humans(data: KpiData, rules: BusinessRules) -> set[int]:
    bots = {int(user_id) for user_id in rules.kpi.non_human_users}
    return {user_id for user_id in data.users if user_id not in bots}


def _inquiry_deal_ids(inquiries: Iterable[Inquiry]) -> set[int]:
    return {facts.deal.id for inquiry in inquiries for facts in inquiry.deals}


# --- counting ------------------------------------------------------------------------


def _count_inquiries(
    counter: _Counter,
    inquiries: Iterable[Inquiry],
    touches: TouchIndex,
    period: Period,
    rules: BusinessRules,
) -> list[Wait]:
    sla = rules.kpi.sla_minutes * _MICROSECONDS_PER_MINUTE
    waits = []
    for inquiry in inquiries:
        touch = touches.first_touch(
            inquiry.bindings, inquiry.created_at, period.seen_until
        )
        waited = None
        if touch is not None:
            elapsed = business_time(
                inquiry.created_at, touch, rules.calendar, period.zone
            )
            waited = elapsed // _MICROSECOND
        for tally in counter.tallies(inquiry.manager):
            tally.leads += 1
            tally.booked_leads += inquiry.booked
            if waited is None:
                tally.unanswered += 1
            else:
                tally.answered.append(waited)
                tally.within_sla += waited <= sla
        waits.append(_wait(inquiry, touch, waited, period))
    return waits


def _wait(
    inquiry: Inquiry, touch: datetime | None, waited: int | None, period: Period
) -> Wait:
    return Wait(
        inquiry_id=inquiry.id,
        manager=inquiry.manager,
        created_at=inquiry.created_at.astimezone(period.zone),
        touched_at=touch.astimezone(period.zone) if touch is not None else None,
        minutes=(
            Fraction(waited, _MICROSECONDS_PER_MINUTE) if waited is not None else None
        ),
    )


def _count_deals(
    counter: _Counter,
    deals: Iterable[DealFacts],
    period: Period,
    rules: BusinessRules,
) -> set[int]:
    """Count bookings and appointments; return the ids of the deals counted."""
    span = period.span
    counted: set[int] = set()
    for facts in deals:
        if facts.booked_at is None:
            continue
        if facts.booked_at in span:
            counted.add(facts.deal.id)
            for tally in counter.tallies(facts.deal.assigned_by_id):
                tally.bookings += 1
        if facts.visit_at in span:
            counted.add(facts.deal.id)
            tallies = counter.tallies(facts.deal.assigned_by_id)
            _count_appointment(tallies, facts, period, rules)
    return counted


def _count_appointment(
    tallies: Sequence[_Tally], facts: DealFacts, period: Period, rules: BusinessRules
) -> None:
    assert facts.visit_at is not None
    check = None
    if facts.outcome == "visited":
        check = check_of(facts.deal, facts.visit_at, rules.money, period.zone)
    for tally in tallies:
        tally.appointments += 1
        tally.confirmed += facts.confirmed_before_visit
        tally.cancellations += "cancelled" in facts.reached
        tally.visits += facts.outcome == "visited"
        tally.no_shows += facts.outcome == "no_show"
        if isinstance(check, RevenueItem):
            tally.revenue.append(check)
        elif isinstance(check, LeftOut):
            tally.left_out.append(check)


def _count_calls(counter: _Counter, data: KpiData, period: Period) -> None:
    span, seen_until = period.span, period.seen_until
    for activity in data.activities:
        if activity.start_time is None or not is_call(activity):
            continue
        start = utc(activity.start_time)
        if span.start <= start < span.end and start <= seen_until:
            for tally in counter.tallies(activity.responsible_id):
                tally.calls += 1


def _count_retention(
    counter: _Counter, deals: Iterable[DealFacts], period: Period
) -> set[int]:
    """Count return visits in P and the cohort of W; return the visits' deal ids."""
    span, window = period.span, period.retention_window
    clients: dict[int, list[_Visit]] = defaultdict(list)
    seen: set[int] = set()
    for facts in deals:
        if facts.outcome != "visited" or facts.visit_at is None:
            continue
        if window.start <= facts.visit_at < span.end:
            seen.add(facts.deal.id)
        if facts.deal.contact_id is not None:
            visit = _Visit(
                day=local_date(facts.visit_at, period.zone),
                at=facts.visit_at,
                deal_id=facts.deal.id,
                manager=facts.deal.assigned_by_id,
            )
            clients[facts.deal.contact_id].append(visit)

    limit = timedelta(days=RETENTION_DAYS)
    for client, visits in clients.items():
        visits.sort(key=lambda visit: (visit.day, visit.at, visit.deal_id))
        days = [visit.day for visit in visits]
        for visit in visits:
            if visit.at in span:
                _count_return(counter, client, visit, visits, days, limit)
            if visit.at in window:
                _count_cohort(counter, client, visit, days, limit)
    return seen


def _count_return(
    counter: _Counter,
    client: int,
    visit: _Visit,
    visits: Sequence[_Visit],
    days: Sequence[date],
    limit: timedelta,
) -> None:
    before = bisect_left(days, visit.day)
    if before == 0 or visit.day - days[before - 1] > limit:
        return
    evidence = RetainedItem(client, visit.deal_id, visits[before - 1].deal_id)
    for tally in counter.tallies(visit.manager):
        tally.retained.setdefault(client, evidence)


def _count_cohort(
    counter: _Counter,
    client: int,
    visit: _Visit,
    days: Sequence[date],
    limit: timedelta,
) -> None:
    after = bisect_right(days, visit.day)
    retained = after < len(days) and days[after] - visit.day <= limit
    for tally in counter.tallies(visit.manager):
        tally.cohort.add(client)
        if retained:
            tally.cohort_retained.add(client)


# --- figures -------------------------------------------------------------------------


def _result(
    counter: _Counter, data: KpiData, period: Period, rules: BusinessRules
) -> KpiResult:
    days, working_days = period.days(), period.working_days()
    configured = {int(user_id) for user_id in rules.bonus.managers}
    managers = tuple(
        _manager_row(
            user_id, counter.managers.get(user_id, _Tally()), data, period, rules
        )
        for user_id in sorted(configured | set(counter.managers))
    )
    return KpiResult(
        period=PeriodInfo(
            start=period.span.start.astimezone(period.zone),
            end=period.span.end.astimezone(period.zone),
            as_of=period.as_of.astimezone(period.zone),
            timezone=rules.timezone,
            final=period.final,
            days=days,
            working_days=working_days,
        ),
        managers=managers,
        total=_metrics(counter.total, days, working_days),
        warnings=(),
    )


def _manager_row(
    user_id: int,
    tally: _Tally,
    data: KpiData,
    period: Period,
    rules: BusinessRules,
) -> ManagerResult:
    metrics = _metrics(tally, period.days(), period.working_days())
    bonus: Bonus | None = None
    if period.is_month:
        assert metrics.revenue is not None
        terms = rules.bonus.terms_for(str(user_id))
        bonus = bonus_for(metrics.revenue, metrics.retained_clients, terms)
    user = data.users.get(user_id)
    return ManagerResult(
        id=user_id,
        name=user.full_name if user is not None else None,
        metrics=metrics,
        bonus=bonus,
        evidence=Evidence(
            revenue=tuple(sorted(tally.revenue, key=lambda i: (i.visit_at, i.deal_id))),
            revenue_left_out=tuple(sorted(tally.left_out, key=lambda i: i.deal_id)),
            retained=tuple(tally.retained[client] for client in sorted(tally.retained)),
        ),
    )


def _metrics(tally: _Tally, days: int, working_days: int) -> Metrics:
    revenue = sum((item.amount for item in tally.revenue), Decimal("0.00"))
    checks = len(tally.revenue)
    return Metrics(
        leads=tally.leads,
        leads_per_day=share(tally.leads, days),
        conversion=share(tally.booked_leads, tally.leads),
        bookings_made=tally.bookings,
        appointments=tally.appointments,
        confirmed_share=share(tally.confirmed, tally.appointments),
        cancellations=tally.cancellations,
        visits=tally.visits,
        no_shows=tally.no_shows,
        no_show_rate=share(tally.no_shows, tally.visits + tally.no_shows),
        revenue=money(revenue),
        average_check=half_up(Fraction(revenue) / checks, 2) if checks else None,
        calls=tally.calls,
        calls_per_working_day=share(tally.calls, working_days),
        first_response=_first_response(tally),
        retained_clients=len(tally.retained),
        retention_30d=share(len(tally.cohort_retained), len(tally.cohort)),
    )


def _first_response(tally: _Tally) -> FirstResponse:
    waits = sorted(tally.answered)
    return FirstResponse(
        median_min=_minutes(percentile(waits, _MEDIAN)),
        p90_min=_minutes(percentile(waits, _P90)),
        unanswered=tally.unanswered,
        within_sla_share=share(tally.within_sla, tally.leads),
    )


def percentile(ordered: Sequence[int | Fraction], p: Fraction) -> Fraction | None:
    """Linear interpolation between closest ranks at `(n - 1)·p` (numpy's default),
    exactly."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * p
    low = int(position)
    if low + 1 >= len(ordered):
        return Fraction(ordered[low])
    return ordered[low] + (position - low) * (ordered[low + 1] - ordered[low])


def _minutes(microseconds: Fraction | None) -> Decimal | None:
    if microseconds is None:
        return None
    return half_up(microseconds / _MICROSECONDS_PER_MINUTE, 1)


def _only(
    result: KpiResult,
    manager: int,
    data: KpiData,
    period: Period,
    rules: BusinessRules,
) -> KpiResult:
    rows = [row for row in result.managers if row.id == manager]
    row = rows[0] if rows else _manager_row(manager, _Tally(), data, period, rules)
    return replace(result, managers=(row,), manager=manager)
