"""The KPI cases of known-faults.md (KPI-1, KPI-2) and the money and time parts of
B24-4 and B24-5, as the KPI engine meets them. A "won" deal is a visit here: its
visited stage is WON and its check is its OPPORTUNITY.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from app.config import BonusTerms
from connectors.bitrix24.models import Deal, StageHistory
from kpi_engine.bonus import bonus_for
from kpi_engine.period import week_just_ended
from tests.kpi_engine.builders import data, deal, kpi, manager, path, rules

MSK = ZoneInfo("Europe/Moscow")


def won(
    deal_id: int, at: str, amount: str, currency: str = "RUB", client: int = 0
) -> tuple[Deal, list[StageHistory]]:
    made = deal(
        id=deal_id,
        created="2024-12-20T10:00:00+03:00",
        manager=17,
        contact=client or 500 + deal_id,
        opportunity=amount,
        currency=currency,
    )
    rows = path(
        deal_id,
        ("NEW", "2024-12-20T10:00:00+03:00"),
        ("BOOKED", "2024-12-20T10:05:00+03:00"),
        ("WON", at),
    )
    return made, rows


def report(
    visits: Sequence[tuple[Deal, list[StageHistory]]],
    start: str,
    end: str,
    as_of: str,
    extra: str = "",
) -> dict[str, Any]:
    return kpi(
        data(deals=[d for d, _ in visits], history=[r for _, rs in visits for r in rs]),
        start,
        end,
        as_of,
        business=rules(extra),
    )


class TestKpi1CalendarWeek:
    """KPI-1: the weekly report covers the calendar week, not the last 7 days."""

    VISITS = (
        won(1, "2025-01-05T23:59:00+03:00", "10000.00"),  # A: the Sunday before
        won(2, "2025-01-06T00:00:00+03:00", "20000.00"),  # B
        won(3, "2025-01-12T23:59:59+03:00", "30000.00"),  # C
        won(4, "2025-01-13T08:30:00+03:00", "40000.00"),  # D: the unfinished Monday
    )
    RUN_AT = "2025-01-13T09:00:00+03:00"

    def test_the_week_reported_on_monday_is_the_week_before(self) -> None:
        start, end = week_just_ended(datetime.fromisoformat(self.RUN_AT), MSK)

        result = report(self.VISITS, str(start), str(end), self.RUN_AT)

        assert result["period"]["start"] == "2025-01-06T00:00:00+03:00"
        assert result["period"]["end"] == "2025-01-13T00:00:00+03:00"
        assert [
            item["deal_id"] for item in manager(result, 17)["evidence"]["revenue"]
        ] == ["2", "3"]
        assert result["total"]["revenue"] == "50000.00"

    def test_three_percent_of_the_weeks_sum_is_1500(self) -> None:
        bonus = bonus_for(
            Decimal("50000.00"),
            0,
            BonusTerms(
                base=Decimal("0.00"),
                plan=Decimal("0.00"),
                rate=Decimal("0.03"),
                per_retained=Decimal("1000.00"),
            ),
        )

        assert str(bonus.percent_part) == "1500.00"


class TestKpi2HalfAKopeck:
    """KPI-2: Decimal from the raw strings, ROUND_HALF_UP at 0.01 once per part."""

    PLAN_ZERO = '\n[bonus.managers."17"]\nplan = "0.00"\n'

    def test_three_percent_of_1234_50_pays_37_04(self) -> None:
        result = report(
            [won(1, "2025-01-15T12:00:00+03:00", "1234.50")],
            "2025-01-01",
            "2025-02-01",
            "2025-02-01T00:00:00+03:00",
            self.PLAN_ZERO,
        )

        bonus = manager(result, 17)["bonus"]
        assert (bonus["over_plan"], bonus["percent_part"], bonus["payout"]) == (
            "1234.50",
            "37.04",
            "37.04",
        )

    def test_checks_from_strings_sum_exactly(self) -> None:
        visits = [
            won(1, "2025-01-10T12:00:00+03:00", "15000.50"),
            won(2, "2025-01-11T12:00:00+03:00", "0.10"),
            won(3, "2025-01-12T12:00:00+03:00", "0.20"),
        ]

        result = report(visits, "2025-01-01", "2025-02-01", "2025-02-01T00:00:00+03:00")

        assert result["total"]["revenue"] == "15000.80"
        assert manager(result, 17)["revenue"] == "15000.80"
        assert result["total"]["average_check"] == "5000.27"  # 5000.2666… half up


class TestB24Time:
    """B24-4: every timestamp is re-checked tz-aware against the period, so rows a
    portal returns for a dropped filter clause are not counted."""

    def test_only_the_deals_inside_the_week_count_whatever_was_read(self) -> None:
        visits = [
            won(1, "2025-01-05T20:30:00+00:00", "1.00"),  # A, Sunday 23:30 Moscow
            won(2, "2025-01-05T21:15:00+00:00", "2.00"),  # B, Monday 00:15
            won(3, "2025-01-12T23:50:00+03:00", "3.00"),  # C
            won(4, "2025-01-13T00:05:00+03:00", "4.00"),  # D, next week
        ]

        result = report(visits, "2025-01-06", "2025-01-13", "2025-01-20T00:00:00+03:00")

        assert result["total"]["visits"] == 2
        assert result["total"]["revenue"] == "5.00"


class TestB24Money:
    """B24-5: money parsed with Decimal; a USD deal never lands silently in RUB."""

    VISITS = (
        won(11, "2025-01-10T12:00:00+03:00", "15000.50"),
        won(12, "2025-01-10T13:00:00+03:00", "0.10"),
        won(13, "2025-01-10T14:00:00+03:00", "0.20"),
        won(14, "2025-01-10T15:00:00+03:00", "100.00", currency="USD"),
    )

    def test_without_a_rate_the_usd_check_is_reported_apart(self) -> None:
        result = report(
            self.VISITS, "2025-01-06", "2025-01-13", "2025-01-20T00:00:00+03:00"
        )

        assert result["total"]["revenue"] == "15000.80"
        assert manager(result, 17)["evidence"]["revenue_left_out"] == [
            {"deal_id": "14", "reason": "no rate for USD in 2025-01"}
        ]
        assert result["warnings"][0]["deal_ids"] == ["14"]

    def test_with_a_rate_it_is_converted_at_the_recorded_rate(self) -> None:
        result = report(
            self.VISITS,
            "2025-01-06",
            "2025-01-13",
            "2025-01-20T00:00:00+03:00",
            '\n[money.rates]\nUSD = "92.15"\n',
        )

        assert result["total"]["revenue"] == "24215.80"
        assert manager(result, 17)["evidence"]["revenue"][-1] == {
            "deal_id": "14",
            "amount": "9215.00",
            "visit_at": "2025-01-10T15:00:00+03:00",
            "currency": "USD",
            "original_amount": "100.00",
            "rate": "92.15",
        }
        assert result["warnings"] == []
