"""What the dashboard shows for one period: the KPI result, the rows behind it, charts.

One load serves the period and each calendar week it touches (`KpiLoader.load` takes
several queries, as the weekly report's does); the period's figures are then
`metrics.compute` on that data with the month's closed record, which is what
`KpiService.figures` does, so the table equals `GET /api/kpi` for the same query.
The loader reads a superset of what each query counts and the engine re-checks every
timestamp, so a wider load never changes a figure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction

from app.config import BusinessRules
from kpi_engine.data import ClosedMonth, InvalidPeriod, KpiQuery
from kpi_engine.drilldown import Drilldown, InquiryFacts, drilldown
from kpi_engine.load import KpiLoader
from kpi_engine.metrics import compute
from kpi_engine.period import Period, midnight, month_period
from kpi_engine.result import KpiResult
from kpi_engine.service import KpiService

# A year of days fits a chart; longer periods are refused rather than drawn unreadable.
LONGEST_PERIOD = timedelta(days=366)
PHONE_SOURCES = frozenset({"CALL", "CALLBACK"})  # Bitrix24's own phone sources
# First-response bins in business minutes: the SLA's neighbourhood, then hours.
WAIT_BINS = (Fraction(5), Fraction(15), Fraction(60), Fraction(240))


class PeriodTooLong(InvalidPeriod):
    """More days than one chart can show."""


@dataclass(frozen=True)
class WeekRate:
    """The no-show rate of one calendar week touching the period."""

    start: date
    no_shows: int
    visits: int

    @property
    def rate(self) -> Fraction | None:
        seen = self.no_shows + self.visits
        return Fraction(self.no_shows, seen) if seen else None


@dataclass(frozen=True)
class DayLeads:
    """Leads created on one local day, per channel."""

    day: date
    channels: dict[str, int]


@dataclass(frozen=True)
class Dashboard:
    """Everything one dashboard page shows."""

    query: KpiQuery
    result: KpiResult
    drill: Drilldown
    days: tuple[DayLeads, ...]
    weeks: tuple[WeekRate, ...]
    waits: tuple[int, ...]
    """Inquiries per `WAIT_BINS` bin, the last two: over the last bound, unanswered."""


def checked_period(query: KpiQuery) -> KpiQuery:
    """`query`, unless it is too long to draw."""
    if query.end - query.start > LONGEST_PERIOD:
        raise PeriodTooLong("the dashboard shows at most 366 days at once")
    return query


def week_queries(query: KpiQuery, rules: BusinessRules) -> tuple[KpiQuery, ...]:
    """Monday-to-Monday weeks that touch the period and began by `as_of`."""
    monday = query.start - timedelta(days=query.start.weekday())
    weeks = []
    while monday < query.end and midnight(monday, rules.zone) <= query.as_of:
        weeks.append(KpiQuery(monday, monday + timedelta(days=7), query.as_of))
        monday += timedelta(days=7)
    return tuple(weeks)


def channel_of(source_id: str | None, rules: BusinessRules) -> str:
    """`telegram`, `whatsapp` (by `[intake.sources]`), `phone` or `other`."""
    for channel, source in rules.intake.sources.items():
        if source_id == source:
            return channel
    return "phone" if source_id in PHONE_SOURCES else "other"


@dataclass
class DashboardService:
    """Loads a period once and answers the dashboard and its deal lists."""

    kpi: KpiService

    @property
    def rules(self) -> BusinessRules:
        return self.kpi.rules

    async def dashboard(self, query: KpiQuery) -> Dashboard:
        """The page of `query`: figures, the rows behind them and the charts' data."""
        weeks = week_queries(checked_period(query), self.rules)
        loaded = await KpiLoader(self.kpi.client, self.rules).load(query, *weeks)
        data = loaded.data
        result = compute(data, query, self.rules, closed=await self._closed(query))
        drill = drilldown(data, query, self.rules, result)
        week_rates = []
        for week in weeks:
            total = compute(data, week, self.rules).total
            week_rates.append(WeekRate(week.start, total.no_shows, total.visits))
        return Dashboard(
            query=query,
            result=result,
            drill=drill,
            days=self._days(query, drill.inquiries.values()),
            weeks=tuple(week_rates),
            waits=_wait_bins(result),
        )

    async def rows(self, query: KpiQuery) -> tuple[KpiResult, Drilldown]:
        """The figures of `query` and the rows behind them, for a deal list."""
        loaded = await KpiLoader(self.kpi.client, self.rules).load(
            checked_period(query)
        )
        result = compute(
            loaded.data, query, self.rules, closed=await self._closed(query)
        )
        return result, drilldown(loaded.data, query, self.rules, result)

    async def _closed(self, query: KpiQuery) -> ClosedMonth | None:
        # As `KpiService.figures`: a closed month's differences become warnings.
        month = query.start.strftime("%Y-%m")
        if (query.start, query.end) != month_period(month):
            return None
        return await self.kpi.closed_months.get(month)

    def _days(
        self, query: KpiQuery, inquiries: Iterable[InquiryFacts]
    ) -> tuple[DayLeads, ...]:
        period = Period.of(query, self.rules)
        counts: dict[date, Counter[str]] = {day: Counter() for day in period.begun_days}
        for inquiry in inquiries:
            channel = channel_of(inquiry.source_id, self.rules)
            counts.setdefault(inquiry.created_at.date(), Counter())[channel] += 1
        return tuple(
            DayLeads(day, dict(channels)) for day, channels in sorted(counts.items())
        )


def _wait_bins(result: KpiResult) -> tuple[int, ...]:
    bins = [0] * (len(WAIT_BINS) + 2)
    for wait in result.waits:
        if wait.minutes is None:
            bins[-1] += 1
            continue
        index = next(
            (i for i, bound in enumerate(WAIT_BINS) if wait.minutes < bound),
            len(WAIT_BINS),
        )
        bins[index] += 1
    return tuple(bins)
