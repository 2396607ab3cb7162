"""A closed month recomputed: `compute` names every difference from the stored record
as a warning (the record itself is kept by `kpi_engine.closing`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from kpi_engine.closing import MonthNotOver, NarrowedToManager, close_month
from kpi_engine.data import ClosedMonth, InvalidPeriod, KpiData
from kpi_engine.metrics import compute
from kpi_engine.result import KpiResult
from tests.kpi_engine.builders import data, deal, kpi, path, query, rules

BONUS = '\n[bonus.managers."17"]\nplan = "1000.00"\n'
AS_OF = "2025-02-02T00:00:00+03:00"
CLOSED_AT = datetime.fromisoformat("2025-02-02T10:00:00+03:00")


def january(amount: str = "1234.50", *, with_second: bool = False) -> KpiData:
    deals = [
        deal(
            id=101,
            created="2025-01-10T10:00:00+03:00",
            contact=7001,
            opportunity=amount,
            visit="2025-01-15T12:00:00+03:00",
        )
    ]
    history = path(
        101,
        ("NEW", "2025-01-10T10:00:00+03:00"),
        ("BOOKED", "2025-01-10T10:30:00+03:00"),
        ("WON", "2025-01-15T13:00:00+03:00"),
    )
    if with_second:
        deals.append(deal(id=102, created="2025-01-20T10:00:00+03:00", contact=7002))
        history += path(102, ("NEW", "2025-01-20T10:00:00+03:00"))
    return data(deals=deals, history=history)


def closed(kpi_data: KpiData) -> ClosedMonth:
    result = compute(kpi_data, query("2025-01-01", "2025-02-01", AS_OF), rules(BONUS))
    stored = close_month("2025-01", result, kpi_data, rules(BONUS), closed_at=CLOSED_AT)
    # Through JSON text, as it is stored.
    return ClosedMonth.from_json(json.loads(json.dumps(stored.to_json())))


def differences(kpi_data: KpiData, month: ClosedMonth) -> list[dict[str, Any]]:
    report = kpi(
        kpi_data,
        "2025-01-01",
        "2025-02-01",
        AS_OF,
        business=rules(BONUS),
        closed=month,
    )
    return [w for w in report["warnings"] if w["code"].startswith("closed_")]


def figures(warnings: list[dict[str, Any]]) -> set[str]:
    """`scope name` of each figure warning: "total revenue", "manager 17 leads"."""
    return {
        w["message"].split(":")[0]
        for w in warnings
        if w["code"] == "closed_month_figure_changed"
    }


class TestClosedMonthRecord:
    def test_it_keeps_the_figures_and_the_values_of_the_deals_behind_them(
        self,
    ) -> None:
        month = closed(january())

        assert month.month == "2025-01"
        assert month.figures["managers"][0]["revenue"] == "1234.50"
        assert month.to_json()["deals"] == {
            "101": {
                "opportunity": "1234.50",
                "currency_id": "RUB",
                "assigned_by_id": "17",
                "contact_id": "7001",
                "category_id": "0",
                "visit_field": "2025-01-15T12:00:00+03:00",
            }
        }

    def test_json_text_round_trips(self) -> None:
        month = closed(january())

        assert ClosedMonth.from_json(json.loads(json.dumps(month.to_json()))) == month


def report_of(start: str, end: str, manager: int | None = None) -> KpiResult:
    return compute(january(), query(start, end, AS_OF, manager), rules(BONUS))


class TestClosingRefuses:
    def test_a_report_of_one_manager(self) -> None:
        narrowed = report_of("2025-01-01", "2025-02-01", manager=17)

        with pytest.raises(NarrowedToManager, match=r"manager 17 alone \(--manager\)"):
            close_month(
                "2025-01", narrowed, january(), rules(BONUS), closed_at=CLOSED_AT
            )

    @pytest.mark.parametrize(
        ("start", "end", "covers"),
        [
            ("2025-01-06", "2025-01-13", "2025-01-06 to 2025-01-12"),  # a week
            ("2025-01-01", "2025-01-31", "2025-01-01 to 2025-01-30"),  # a day short
            ("2024-12-01", "2025-02-01", "2024-12-01 to 2025-01-31"),  # two months
            ("2024-12-01", "2025-01-01", "2024-12-01 to 2024-12-31"),  # another
        ],
    )
    def test_a_report_of_anything_but_the_calendar_month(
        self, start: str, end: str, covers: str
    ) -> None:
        with pytest.raises(InvalidPeriod) as refused:
            close_month(
                "2025-01",
                report_of(start, end),
                january(),
                rules(BONUS),
                closed_at=CLOSED_AT,
            )

        assert str(refused.value) == (
            f"the report covers {covers}, not the calendar month 2025-01 "
            "(2025-01-01 to 2025-01-31)"
        )

    def test_a_month_that_is_not_a_month(self) -> None:
        whole = report_of("2025-01-01", "2025-02-01")

        with pytest.raises(InvalidPeriod, match="'2025-1' is not a month"):
            close_month("2025-1", whole, january(), rules(BONUS), closed_at=CLOSED_AT)

    def test_a_month_not_over_yet(self) -> None:
        whole = report_of("2025-01-01", "2025-02-01")
        early = datetime.fromisoformat("2025-01-31T23:59:00+03:00")

        with pytest.raises(MonthNotOver):
            close_month("2025-01", whole, january(), rules(BONUS), closed_at=early)


class TestRecomputedMonth:
    def test_an_unchanged_month_has_no_differences(self) -> None:
        assert differences(january(), closed(january())) == []

    def test_a_changed_check_names_each_figure_and_the_deal(self) -> None:
        warnings = differences(january("1300.00"), closed(january()))

        assert figures(warnings) == {
            "total revenue",
            "total average_check",
            "manager 17 revenue",
            "manager 17 average_check",
            "manager 17 bonus.over_plan",
            "manager 17 bonus.percent_part",
            "manager 17 bonus.payout",
        }
        deal_changes = [w for w in warnings if w["deal_ids"]]
        assert [(w["deal_ids"], w["user_ids"]) for w in deal_changes] == [
            (["101"], ["17"])
        ]
        assert "OPPORTUNITY 1234.50 → 1300.00" in deal_changes[0]["message"]

    def test_a_deal_counted_only_now_is_named(self) -> None:
        warnings = differences(january(with_second=True), closed(january()))

        assert "total leads" in figures(warnings)
        assert [w["deal_ids"] for w in warnings if w["deal_ids"]] == [["102"]]

    def test_a_deal_gone_since_closing_is_named(self) -> None:
        warnings = differences(data(), closed(january()))

        assert "manager 17 revenue" in figures(warnings)
        assert [w["deal_ids"] for w in warnings if w["deal_ids"]] == [["101"]]

    def test_only_the_same_month_can_be_compared(self) -> None:
        with pytest.raises(InvalidPeriod):
            kpi(january(), "2025-02-01", "2025-03-01", AS_OF, closed=closed(january()))

    def test_a_week_is_no_closed_month(self) -> None:
        with pytest.raises(InvalidPeriod):
            kpi(january(), "2025-01-06", "2025-01-13", AS_OF, closed=closed(january()))
