"""The ids behind each figure: as many rows as the figure counts, for every manager."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from functools import cache
from typing import Any

import pytest

from kpi_engine.data import KpiData, KpiQuery
from kpi_engine.drilldown import Drilldown, UnknownMetric, drilldown
from kpi_engine.metrics import compute
from kpi_engine.result import KpiResult, Metrics
from kpi_engine.rounding import share
from sandbox.kpi_history import HistoryShape, generate
from tests.kpi_engine.test_load import MSK, rules, whole_portal

AS_OF = datetime(2025, 2, 20, 12, tzinfo=MSK)
PERIODS = {
    "month": (date(2025, 1, 1), date(2025, 2, 1)),
    "week": (date(2025, 1, 6), date(2025, 1, 13)),
    "open month": (date(2025, 2, 1), date(2025, 3, 1)),
}


@cache
def portal(classic: bool) -> KpiData:
    shape = HistoryShape(
        start=date(2024, 12, 1),
        end=date(2025, 2, 15),
        deals=400,
        activities=1500,
        classic=classic,
        now=AS_OF,
    )
    return whole_portal(generate(shape))


Explained = tuple[KpiResult, Drilldown]


@pytest.fixture(params=[False, True], ids=["simple", "classic"])
def explained(request: pytest.FixtureRequest) -> Callable[[str], Explained]:
    data = portal(request.param)
    business = rules()

    def explain(name: str) -> Explained:
        query = KpiQuery(*PERIODS[name], as_of=AS_OF)
        result = compute(data, query, business)
        return result, drilldown(data, query, business, result)

    return explain


def rows(result: KpiResult) -> list[tuple[int | None, Metrics]]:
    return [(None, result.total)] + [(row.id, row.metrics) for row in result.managers]


COUNTS: dict[str, Callable[[Metrics], Any]] = {
    "leads": lambda m: m.leads,
    "bookings_made": lambda m: m.bookings_made,
    "appointments": lambda m: m.appointments,
    "cancellations": lambda m: m.cancellations,
    "visits": lambda m: m.visits,
    "no_shows": lambda m: m.no_shows,
    "calls": lambda m: m.calls,
    "unanswered": lambda m: m.first_response.unanswered,
    "retained": lambda m: m.retained_clients,
}


class TestDrilldown:
    @pytest.mark.parametrize("period", list(PERIODS))
    @pytest.mark.parametrize("metric", list(COUNTS))
    def test_each_count_lists_as_many_rows(
        self, explained: Callable[[str], Explained], period: str, metric: str
    ) -> None:
        result, behind = explained(period)

        for manager, metrics in rows(result):
            assert len(behind.behind(metric, manager)) == COUNTS[metric](metrics), (
                manager
            )
        assert result.total.leads > 0

    @pytest.mark.parametrize("period", list(PERIODS))
    def test_each_share_is_its_rows_over_its_base(
        self, explained: Callable[[str], Explained], period: str
    ) -> None:
        result, behind = explained(period)

        for manager, metrics in rows(result):
            leads = len(behind.behind("leads", manager))
            booked = len(behind.behind("booked_leads", manager))
            confirmed = len(behind.behind("confirmed", manager))
            sla = len(behind.behind("within_sla", manager))
            cohort = len(behind.behind("cohort", manager))
            retained = len(behind.behind("cohort_retained", manager))
            assert share(booked, leads) == metrics.conversion
            assert share(retained, cohort) == metrics.retention_30d
            assert share(confirmed, metrics.appointments) == metrics.confirmed_share
            assert share(sla, leads) == metrics.first_response.within_sla_share

    @pytest.mark.parametrize("period", list(PERIODS))
    def test_revenue_lists_the_checks_of_the_evidence(
        self, explained: Callable[[str], Explained], period: str
    ) -> None:
        result, behind = explained(period)

        everyone = set()
        for row in result.managers:
            checks = {item.deal_id for item in row.evidence.revenue}
            assert set(behind.behind("revenue", row.id)) == checks
            everyone |= checks
        assert set(behind.behind("revenue")) == everyone
        assert everyone

    def test_the_funnel_narrows_from_leads_to_bookings(
        self, explained: Callable[[str], Explained]
    ) -> None:
        result, behind = explained("month")

        leads = set(behind.behind("leads"))
        booked = set(behind.behind("booked_leads"))
        assert set(behind.behind("confirmed_leads")) <= booked <= leads
        assert set(behind.behind("visited_leads")) <= booked
        assert set(behind.inquiries) == leads
        assert set(behind.behind("cohort_retained")) <= set(behind.behind("cohort"))
        assert result.total.retention_30d is not None

    def test_rows_carry_what_the_lists_show(
        self, explained: Callable[[str], Explained]
    ) -> None:
        _, behind = explained("month")

        inquiry = behind.inquiries[behind.behind("leads")[0]]
        assert inquiry.created_at.tzinfo == MSK
        assert inquiry.title
        call = behind.calls[behind.behind("calls")[0]]
        assert call.type_id == 2

    def test_a_metric_without_rows_is_refused(
        self, explained: Callable[[str], Explained]
    ) -> None:
        _, behind = explained("week")

        with pytest.raises(UnknownMetric):
            behind.behind("leads_per_day")
