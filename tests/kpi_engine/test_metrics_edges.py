"""Zero denominators, an as_of before the period, and one manager asked for."""

from __future__ import annotations

from typing import Any

import pytest

from kpi_engine.data import UnknownManager
from tests.kpi_engine.builders import (
    call_out,
    data,
    deal,
    kpi,
    manager,
    path,
    rules,
)

WEEK = ("2025-01-06", "2025-01-13")
LATER = "2025-01-20T00:00:00+03:00"

ZERO_TOTAL = {
    "leads": 0,
    "leads_per_day": 0.0,
    "conversion": None,
    "bookings_made": 0,
    "appointments": 0,
    "confirmed_share": None,
    "cancellations": 0,
    "visits": 0,
    "no_shows": 0,
    "no_show_rate": None,
    "revenue": "0.00",
    "average_check": None,
    "calls": 0,
    "calls_per_working_day": 0.0,
    "first_response": {
        "median_min": None,
        "p90_min": None,
        "unanswered": 0,
        "within_sla_share": None,
    },
    "retained_clients": 0,
    "retention_30d": None,
}


class TestZeroDenominators:
    def test_zero_leads_give_null_shares_never_zero(self) -> None:
        report = kpi(data(), *WEEK, LATER)

        assert report["managers"] == []
        assert report["total"] == ZERO_TOTAL
        assert report["warnings"] == []

    def test_as_of_before_the_period_gives_null_rates(self) -> None:
        report = kpi(data(), *WEEK, "2025-01-05T23:59:59+03:00")

        assert report["total"]["leads_per_day"] is None
        assert report["total"]["calls_per_working_day"] is None

    def test_a_period_without_working_days_gives_a_null_call_rate(self) -> None:
        call = call_out(id=1, start="2025-01-12T12:00:00+03:00")

        report = kpi(data(activities=[call]), "2025-01-12", "2025-01-13", LATER)

        # Sunday alone: one day, no working day.
        assert report["total"]["calls"] == 1
        assert report["total"]["leads_per_day"] == 0.0
        assert report["total"]["calls_per_working_day"] is None


def two_managers() -> Any:
    deals = [
        deal(id=1, created="2025-01-06T10:00:00+03:00", manager=17, contact=501),
        deal(id=2, created="2025-01-07T10:00:00+03:00", manager=18, contact=None),
        deal(id=3, created="2025-01-07T11:00:00+03:00", manager=None, contact=503),
    ]
    history = [
        *path(1, ("NEW", "2025-01-06T10:00:00+03:00")),
        *path(
            2,
            ("NEW", "2025-01-07T10:00:00+03:00"),
            ("BOOKED", "2025-01-07T10:10:00+03:00"),
        ),
        *path(3, ("NEW", "2025-01-07T11:00:00+03:00")),
    ]
    return data(deals=deals, history=history, staff=(17, 18, 19))


class TestOneManager:
    def test_only_that_manager_with_the_same_total_and_warnings(self) -> None:
        full = kpi(two_managers(), *WEEK, LATER)
        one = kpi(two_managers(), *WEEK, LATER, manager=18)

        assert [row["id"] for row in full["managers"]] == ["17", "18"]
        assert one["managers"] == [manager(full, 18)]
        assert one["total"] == full["total"]
        assert one["warnings"] == full["warnings"]
        assert [w["code"] for w in one["warnings"]] == [
            "booked_without_visit_time",
            "deal_without_contact",
        ]

    def test_a_manager_with_nothing_in_the_period_has_zero_counts(self) -> None:
        one = kpi(two_managers(), *WEEK, LATER, manager=19)

        row = one["managers"][0]
        assert row["id"] == "19"
        assert {k: v for k, v in row.items() if k not in ("id", "name")} == {
            **ZERO_TOTAL,
            "bonus": None,
            "evidence": {"revenue": [], "revenue_left_out": [], "retained": []},
        }

    def test_a_manager_unknown_to_user_get_is_an_error(self) -> None:
        with pytest.raises(UnknownManager):
            kpi(two_managers(), *WEEK, LATER, manager=99)

    def test_a_deal_without_a_manager_counts_in_the_total_only(self) -> None:
        report = kpi(two_managers(), *WEEK, LATER)

        assert report["total"]["leads"] == 3
        assert sum(row["leads"] for row in report["managers"]) == 2

    def test_a_configured_manager_is_listed_with_nothing_counted(self) -> None:
        configured = rules('\n[bonus.managers."19"]\nplan = "10000.00"\n')

        report = kpi(
            two_managers(), "2025-01-01", "2025-02-01", LATER, business=configured
        )

        row = manager(report, 19)
        assert (row["leads"], row["conversion"]) == (0, None)
        assert row["bonus"]["payout"] == "0.00"
        assert row["bonus"]["over_plan"] == "0.00"
        # 17 and 18 have no plan: each is named in a warning; 19 has one.
        plans = [w for w in report["warnings"] if w["code"] == "manager_without_plan"]
        assert [w["user_ids"] for w in plans] == [["17"], ["18"]]


class TestListedManagers:
    def test_a_manager_whose_deals_count_for_nothing_in_p_is_not_listed(self) -> None:
        # Deal 9 of manager 18 was created and booked, with its visit, in December.
        old = deal(
            id=9,
            created="2024-12-01T10:00:00+03:00",
            manager=18,
            contact=509,
            visit="2024-12-03T12:00:00+03:00",
        )
        history = path(
            9,
            ("NEW", "2024-12-01T10:00:00+03:00"),
            ("BOOKED", "2024-12-01T11:00:00+03:00"),
        )

        report = kpi(data(deals=[old], history=history), *WEEK, LATER)

        assert report["managers"] == []

    def test_a_manager_with_only_calls_is_listed(self) -> None:
        call = call_out(id=1, start="2025-01-07T12:00:00+03:00", responsible=18)

        report = kpi(data(activities=[call]), *WEEK, LATER)

        assert [(row["id"], row["calls"]) for row in report["managers"]] == [("18", 1)]
        # The week has six working days (Mon-Sat): 1 / 6.
        assert report["managers"][0]["calls_per_working_day"] == 0.1667
