"""Classic CRM mode: inquiries are leads; roles come through the deals they became.

Week 2025-01-06 - 2025-01-13 in Moscow.
Lead 1 (17): created Mon 10:00, called on the lead at 10:04 (4 minutes); converted to
    deal 1 (manager 18, client 601): booked Mon 11:05, visit Wed 12:00, 1000.00.
Lead 2 (17): created Tue 10:00, junk, no deal; a message on the lead at 10:30.
Lead 3 (18): created Tue 12:00; its deal 3 is in an untracked pipeline; a call on
    that deal is no touch of the lead.
Deal 4 (18): created without a lead, booked Wed: a booking, no lead; no visit time.
Lead 5 (17): created after the week; its deal 5 was booked then: nothing.
"""

from __future__ import annotations

from typing import Any

from tests.kpi_engine.builders import (
    call_out,
    data,
    deal,
    kpi,
    lead,
    manager,
    message_out,
    path,
)


def report() -> dict[str, Any]:
    leads = [
        lead(
            id=1,
            created="2025-01-06T10:00:00+03:00",
            manager=17,
            contact=601,
            status="CONVERTED",
        ),
        lead(id=2, created="2025-01-07T10:00:00+03:00", manager=17, status="JUNK"),
        lead(id=3, created="2025-01-07T12:00:00+03:00", manager=18, status="CONVERTED"),
        lead(id=5, created="2025-01-14T10:00:00+03:00", manager=17, status="CONVERTED"),
    ]
    deals = [
        deal(
            id=1,
            created="2025-01-06T11:00:00+03:00",
            manager=18,
            contact=601,
            lead=1,
            visit="2025-01-08T12:00:00+03:00",
            opportunity="1000.00",
        ),
        deal(
            id=3,
            created="2025-01-07T12:01:00+03:00",
            manager=18,
            contact=603,
            lead=3,
            category=5,
        ),
        deal(id=4, created="2025-01-08T10:00:00+03:00", manager=18, contact=604),
        deal(
            id=5, created="2025-01-14T10:05:00+03:00", manager=17, contact=605, lead=5
        ),
    ]
    history = [
        *path(
            1,
            ("NEW", "2025-01-06T11:00:00+03:00"),
            ("BOOKED", "2025-01-06T11:05:00+03:00"),
            ("WON", "2025-01-08T13:00:00+03:00"),
        ),
        *path(
            3,
            ("NEW", "2025-01-07T12:01:00+03:00"),
            ("BOOKED", "2025-01-07T12:02:00+03:00"),
        ),
        *path(
            4,
            ("NEW", "2025-01-08T10:00:00+03:00"),
            ("BOOKED", "2025-01-08T10:30:00+03:00"),
        ),
        *path(
            5,
            ("NEW", "2025-01-14T10:05:00+03:00"),
            ("BOOKED", "2025-01-14T10:06:00+03:00"),
        ),
    ]
    activities = [
        call_out(id=11, start="2025-01-06T10:04:00+03:00", on=(1, 1)),
        message_out(id=21, start="2025-01-07T10:30:00+03:00", on=(1, 2)),
        call_out(id=31, start="2025-01-07T12:05:00+03:00", on=(2, 3), responsible=18),
    ]
    return kpi(
        data(
            mode="classic",
            leads=leads,
            deals=deals,
            history=history,
            activities=activities,
        ),
        "2025-01-06",
        "2025-01-13",
        "2025-01-20T00:00:00+03:00",
    )


def pick(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: row[key] for key in keys}


class TestClassicMode:
    def test_leads_and_conversion_follow_the_lead_and_its_deal(self) -> None:
        result = report()

        assert pick(manager(result, 17), "leads", "conversion", "bookings_made") == {
            "leads": 2,
            "conversion": 0.5,
            "bookings_made": 0,
        }
        assert pick(manager(result, 18), "leads", "conversion", "bookings_made") == {
            "leads": 1,
            "conversion": 0.0,
            "bookings_made": 2,
        }

    def test_appointments_and_revenue_belong_to_the_deals_manager(self) -> None:
        row = manager(report(), 18)

        assert pick(row, "appointments", "visits", "revenue") == {
            "appointments": 1,
            "visits": 1,
            "revenue": "1000.00",
        }

    def test_first_response_is_timed_on_the_lead(self) -> None:
        result = report()

        # 4 and 30 minutes: median 17.0, p90 = 4 + 0.9 x 26 = 27.4.
        assert manager(result, 17)["first_response"] == {
            "median_min": 17.0,
            "p90_min": 27.4,
            "unanswered": 0,
            "within_sla_share": 0.5,
        }
        assert manager(result, 18)["first_response"]["unanswered"] == 1

    def test_total(self) -> None:
        total = report()["total"]

        assert pick(
            total, "leads", "conversion", "bookings_made", "appointments", "calls"
        ) == {
            "leads": 3,
            "conversion": 0.3333,
            "bookings_made": 2,
            "appointments": 1,
            "calls": 2,
        }
        assert total["first_response"]["within_sla_share"] == 0.3333

    def test_a_booked_deal_without_a_lead_and_without_visit_time_is_warned(
        self,
    ) -> None:
        assert report()["warnings"] == [
            {
                "code": "booked_without_visit_time",
                "message": "booked deals without a visit time are no appointments",
                "deal_ids": ["4"],
                "user_ids": ["18"],
            }
        ]
