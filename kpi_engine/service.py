"""KPI queries end to end, for the CLI, the API and the worker: one load, compute.

A query reads the portal once (`load.KpiLoader`), computes (`metrics.compute`) and,
when it asks for exactly a closed month, compares with that month's record. The
weekly report loads once for the week and the months it touches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import structlog
from redis.asyncio import Redis

from app.clients import Clients
from app.config import BusinessRules
from app.portal import portal_client
from app.settings import Settings
from connectors.bitrix24.client import Bitrix24Client
from kpi_engine.closing import ClosedMonths, MonthNotOver, close_month
from kpi_engine.data import ClosedMonth, KpiQuery
from kpi_engine.load import KpiLoader
from kpi_engine.metrics import compute
from kpi_engine.period import midnight, month_period
from kpi_engine.result import KpiResult
from kpi_engine.weekly import (
    FeedPost,
    Posted,
    WeeklyPoster,
    WeeklyReport,
    build_report,
    render,
    report_queries,
    week_label,
)

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class KpiService:
    """Answers KPI queries, closes months and builds and posts the weekly report."""

    client: Bitrix24Client
    rules: BusinessRules
    redis: Redis
    clock: Clock = utc_now

    @classmethod
    def on_portal(
        cls, settings: Settings, rules: BusinessRules, clients: Clients
    ) -> KpiService:
        """The service on the configured portal, its requests metered (NotConfigured
        without one)."""
        client = portal_client(settings, rules, clients, metered=True)
        return cls(client, rules, clients.redis)

    @property
    def closed_months(self) -> ClosedMonths:
        return ClosedMonths(self.redis)

    async def figures(self, query: KpiQuery) -> KpiResult:
        """The KPI result of `query`; a closed month's differences are warnings."""
        loaded = await KpiLoader(self.client, self.rules).load(query)
        closed = await self._closed_record(query)
        return compute(loaded.data, query, self.rules, closed=closed)

    async def close(
        self, month: str, *, replace: bool = False
    ) -> tuple[ClosedMonth, list[str]]:
        """Close `month` now; answer its record and why Redis might lose it."""
        start, end = month_period(month)
        now = self.clock()
        if now < midnight(end, self.rules.zone):
            raise MonthNotOver(f"{month} is not over yet")
        query = KpiQuery(start, end, as_of=now)
        loaded = await KpiLoader(self.client, self.rules).load(query)
        result = compute(loaded.data, query, self.rules)
        record = close_month(month, result, loaded.data, self.rules, closed_at=now)
        await self.closed_months.save(record, replace=replace)
        return record, await self.closed_months.durability_problems()

    async def weekly(self, start: date, as_of: datetime | None = None) -> WeeklyReport:
        """The weekly report of the week starting Monday `start`."""
        as_of = as_of or self.clock()
        queries = report_queries(start, as_of)
        loaded = await KpiLoader(self.client, self.rules).load(*queries)
        closed = {}
        for query in queries[1:]:
            record = await self._closed_record(query)
            if record is not None:
                closed[record.month] = record
        return build_report(loaded.data, start, as_of, self.rules, closed)

    async def post_weekly(self, start: date) -> Posted:
        """Post the week's report to the feed once (see `weekly.WeeklyPoster`)."""

        async def build() -> FeedPost:
            return render(await self.weekly(start), self.rules)

        poster = WeeklyPoster(self.client, self.redis)
        return await poster.post(week_label(start), build, self.rules.report.recipients)

    async def _closed_record(self, query: KpiQuery) -> ClosedMonth | None:
        month = query.start.strftime("%Y-%m")
        if (query.start, query.end) != month_period(month):
            return None
        return await self.closed_months.get(month)
