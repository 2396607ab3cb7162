"""The CRM ids behind each KPI figure: which inquiries, deals and calls it counts.

`compute` keeps counts only; the dashboard links every number to the rows behind it
and draws its charts from them. This module walks the same facts the same way
(`metrics.tracked_deals`, `find_inquiries`, `DealFacts`) and takes what `compute`
already lists from its result: the waits of every inquiry, the checks in revenue and
the retained clients. `tests/kpi_engine/test_drilldown.py` holds every count here
equal to the figure it explains.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from app.config import BusinessRules
from connectors.bitrix24.models import Activity, Lead
from kpi_engine.data import KpiData, KpiQuery
from kpi_engine.facts import DealFacts, check_of, is_call, utc
from kpi_engine.metrics import Inquiry, find_inquiries, tracked_deals
from kpi_engine.period import RETENTION_DAYS, Period, local_date
from kpi_engine.result import KpiResult, RevenueItem

RowKind = Literal["inquiry", "deal", "call"]

# What each drill-down lists: the inquiries of P, deals, or calls (activities).
METRIC_ROWS: dict[str, RowKind] = {
    "leads": "inquiry",
    "booked_leads": "inquiry",
    "confirmed_leads": "inquiry",
    "visited_leads": "inquiry",
    "unanswered": "inquiry",
    "within_sla": "inquiry",
    "bookings_made": "deal",
    "appointments": "deal",
    "confirmed": "deal",
    "cancellations": "deal",
    "visits": "deal",
    "no_shows": "deal",
    "revenue": "deal",
    "retained": "deal",
    "cohort": "deal",
    "cohort_retained": "deal",
    "calls": "call",
}


class UnknownMetric(ValueError):
    """A drill-down asked for a metric that lists no rows."""


@dataclass(frozen=True)
class InquiryFacts:
    """An inquiry of P as the funnel and the channel chart see it."""

    id: int
    created_at: datetime
    """In the business zone."""
    manager: int | None
    source_id: str | None
    title: str
    deal_ids: tuple[int, ...]
    booked: bool
    confirmed: bool
    visited: bool


@dataclass(frozen=True)
class Drilldown:
    """The rows of one query and, per metric and manager, the ids behind a figure."""

    inquiry_entity: Literal["deal", "lead"]
    inquiries: Mapping[int, InquiryFacts]
    deals: Mapping[int, DealFacts]
    calls: Mapping[int, Activity]
    by_metric: Mapping[tuple[str, int | None], tuple[int, ...]]

    def behind(self, metric: str, manager: int | None = None) -> tuple[int, ...]:
        """Ids behind `metric` for `manager` (None: the total), ascending."""
        if metric not in METRIC_ROWS:
            raise UnknownMetric(f"{metric!r} lists no rows")
        return self.by_metric.get((metric, manager), ())


class _Ids:
    def __init__(self) -> None:
        self.found: dict[tuple[str, int | None], set[int]] = defaultdict(set)

    def add(self, metric: str, manager: int | None, row_id: int) -> None:
        self.found[(metric, None)].add(row_id)
        if manager is not None:
            self.found[(metric, manager)].add(row_id)

    def frozen(self) -> dict[tuple[str, int | None], tuple[int, ...]]:
        return {key: tuple(sorted(ids)) for key, ids in self.found.items()}


def drilldown(
    data: KpiData, query: KpiQuery, rules: BusinessRules, result: KpiResult
) -> Drilldown:
    """What `result` (computed from `data` for `query`) counts, row by row."""
    period = Period.of(query, rules)
    deals = tracked_deals(data, period, rules)
    # Classic mode: an inquiry is a lead, whose ids may equal some deal's.
    leads = {lead.id: lead for lead in data.leads} if data.mode == "classic" else {}
    inquiries = {
        inquiry.id: _inquiry_facts(inquiry, leads, period)
        for inquiry in find_inquiries(data, deals, period)
    }
    ids = _Ids()
    _add_inquiries(ids, inquiries.values())
    _add_waits(ids, result, rules)
    _add_deals(ids, deals.values(), period, rules)
    calls = _add_calls(ids, data.activities, period)
    _add_retained(ids, result, deals)
    _add_cohort(ids, deals.values(), period)
    return Drilldown(
        inquiry_entity="deal" if data.mode == "simple" else "lead",
        inquiries=inquiries,
        deals=deals,
        calls=calls,
        by_metric=ids.frozen(),
    )


def _inquiry_facts(
    inquiry: Inquiry, leads: Mapping[int, Lead], period: Period
) -> InquiryFacts:
    lead = leads.get(inquiry.id)
    if lead is not None:
        source_id, title = lead.source_id, lead.title
    else:
        deal = inquiry.deals[0].deal
        source_id, title = deal.source_id, deal.title
    return InquiryFacts(
        id=inquiry.id,
        created_at=inquiry.created_at.astimezone(period.zone),
        manager=inquiry.manager,
        source_id=source_id,
        title=title,
        deal_ids=tuple(facts.deal.id for facts in inquiry.deals),
        booked=inquiry.booked,
        confirmed=any("confirmed" in facts.reached for facts in inquiry.deals),
        visited=any(facts.outcome == "visited" for facts in inquiry.deals),
    )


def _add_inquiries(ids: _Ids, inquiries: Iterable[InquiryFacts]) -> None:
    for inquiry in inquiries:
        ids.add("leads", inquiry.manager, inquiry.id)
        if inquiry.booked:
            ids.add("booked_leads", inquiry.manager, inquiry.id)
        if inquiry.confirmed:
            ids.add("confirmed_leads", inquiry.manager, inquiry.id)
        if inquiry.visited:
            ids.add("visited_leads", inquiry.manager, inquiry.id)


def _add_waits(ids: _Ids, result: KpiResult, rules: BusinessRules) -> None:
    for wait in result.waits:
        if wait.minutes is None:
            ids.add("unanswered", wait.manager, wait.inquiry_id)
        elif wait.minutes <= rules.kpi.sla_minutes:
            ids.add("within_sla", wait.manager, wait.inquiry_id)


def _add_deals(
    ids: _Ids, deals: Iterable[DealFacts], period: Period, rules: BusinessRules
) -> None:
    span = period.span
    for facts in deals:
        if facts.booked_at is None:
            continue
        deal, manager = facts.deal, facts.deal.assigned_by_id
        if facts.booked_at in span:
            ids.add("bookings_made", manager, deal.id)
        visit_at = facts.visit_at
        if visit_at is None or visit_at not in span:
            continue
        ids.add("appointments", manager, deal.id)
        if facts.confirmed_before_visit:
            ids.add("confirmed", manager, deal.id)
        if "cancelled" in facts.reached:
            ids.add("cancellations", manager, deal.id)
        if facts.outcome == "visited":
            ids.add("visits", manager, deal.id)
            check = check_of(deal, visit_at, rules.money, period.zone)
            if isinstance(check, RevenueItem):
                ids.add("revenue", manager, deal.id)
        elif facts.outcome == "no_show":
            ids.add("no_shows", manager, deal.id)


def _add_calls(
    ids: _Ids, activities: Iterable[Activity], period: Period
) -> dict[int, Activity]:
    span, seen_until = period.span, period.seen_until
    calls = {}
    for activity in activities:
        if activity.start_time is None or not is_call(activity):
            continue
        start = utc(activity.start_time)
        if span.start <= start < span.end and start <= seen_until:
            calls[activity.id] = activity
            ids.add("calls", activity.responsible_id, activity.id)
    return calls


def _add_retained(ids: _Ids, result: KpiResult, deals: Mapping[int, DealFacts]) -> None:
    """Each manager's return visits from the evidence; the total names one return
    visit per client, the earliest of its managers' (it counts distinct clients)."""
    earliest: dict[int, int] = {}
    for row in result.managers:
        for item in row.evidence.retained:
            ids.found[("retained", row.id)].add(item.return_deal_id)
            known = earliest.get(item.client_id)
            if known is None or _visit_key(deals, item.return_deal_id) < _visit_key(
                deals, known
            ):
                earliest[item.client_id] = item.return_deal_id
    ids.found[("retained", None)].update(earliest.values())


def _visit_key(deals: Mapping[int, DealFacts], deal_id: int) -> tuple[datetime, int]:
    visit_at = deals[deal_id].visit_at
    assert visit_at is not None  # a return visit is a visited deal
    return visit_at, deal_id


def _add_cohort(ids: _Ids, deals: Iterable[DealFacts], period: Period) -> None:
    """`retention_30d`'s clients, one visit in W each: the cohort's first visit on
    the manager's deals, and for the retained the first visit a return followed."""
    limit = timedelta(days=RETENTION_DAYS)
    clients: dict[int, list[tuple[date, datetime, int, int | None]]] = defaultdict(list)
    for facts in deals:
        visit_at, client = facts.visit_at, facts.deal.contact_id
        if facts.outcome == "visited" and visit_at is not None and client is not None:
            day = local_date(visit_at, period.zone)
            clients[client].append(
                (day, visit_at, facts.deal.id, facts.deal.assigned_by_id)
            )

    named: set[tuple[str, int | None, int]] = set()
    for client, visits in clients.items():
        visits.sort()
        days = [visit[0] for visit in visits]
        for day, at, deal_id, manager in visits:
            if at not in period.retention_window:
                continue
            after = bisect_right(days, day)
            retained = after < len(days) and days[after] - day <= limit
            for metric in ("cohort", "cohort_retained") if retained else ("cohort",):
                for who in {None, manager}:
                    if (metric, who, client) not in named:
                        named.add((metric, who, client))
                        ids.found[(metric, who)].add(deal_id)
