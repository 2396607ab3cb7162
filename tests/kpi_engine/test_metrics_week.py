"""A hand-computed week that crosses a month: every metric for two managers.

Week Mon 2025-09-29 - Mon 2025-10-06 (Moscow), seen on Monday 09:00 after it ended.

Deal 1 (manager 17): lead Mon 10:00; outgoing call 10:05:30 (5.5 business minutes);
    booked 10:20; confirmed Wed 12:00; visit field Thu 14:00; visited; 3000.00.
Deal 2 (manager 17): lead Tue 20:55; a bot's SMS, a to-do and a call to the contact
    before the lead do not count; SMS to the contact Wed 09:02:36 (5 + 2.6 = 7.6
    minutes); booked Wed; visit field Fri 11:00; cancelled Thu.
Deal 3 (manager 18): lead Wed 00:30 Moscow (Tuesday 21:30 UTC); only a bot's message,
    an integration's e-mail and a missed incoming call: unanswered.
Deal 4 (manager 18): created before the week; jumps from NEW to WON on Tue 13:00
    (no booked stage): booked and visited then; no visit field; 5000.00.
Deal 5 (manager 18): booked before the week; visit field Sat 12:00; no-show.
Calls: deal 1's call and the call to deal 2's contact before its lead (17; a call
    counts whatever it is bound to), an unbound call on Sunday (18); a call not
    completed, an incoming call, one at the week's end and one just before its start
    do not count. Working days: Monday to Saturday, 6.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from connectors.bitrix24.models import Activity, Deal, StageHistory
from kpi_engine.data import KpiData
from kpi_engine.metrics import compute
from tests.kpi_engine.builders import (
    BOT,
    call_in,
    call_out,
    data,
    deal,
    email_out,
    kpi,
    manager,
    message_out,
    path,
    query,
    rules,
)

AS_OF = "2025-10-06T09:00:00+03:00"


def _deals() -> list[Deal]:
    return [
        deal(
            id=1,
            created="2025-09-29T10:00:00+03:00",
            manager=17,
            contact=501,
            opportunity="3000.00",
            visit="2025-10-02T14:00:00+03:00",
        ),
        deal(
            id=2,
            created="2025-09-30T20:55:00+03:00",
            manager=17,
            contact=502,
            visit="2025-10-03T11:00:00+03:00",
        ),
        deal(id=3, created="2025-09-30T21:30:00+00:00", manager=18, contact=503),
        deal(
            id=4,
            created="2025-09-25T12:00:00+03:00",
            manager=18,
            contact=504,
            opportunity="5000.00",
        ),
        deal(
            id=5,
            created="2025-09-20T12:00:00+03:00",
            manager=18,
            contact=505,
            visit="2025-10-04T12:00:00+03:00",
        ),
    ]


def _history() -> list[StageHistory]:
    return [
        *path(
            1,
            ("NEW", "2025-09-29T07:00:00+00:00"),
            ("BOOKED", "2025-09-29T10:20:00+03:00"),
            ("CONFIRMED", "2025-10-01T12:00:00+03:00"),
            ("WON", "2025-10-02T15:00:00+03:00"),
        ),
        *path(
            2,
            ("NEW", "2025-09-30T20:55:00+03:00"),
            ("BOOKED", "2025-10-01T09:10:00+03:00"),
            ("CANCELLED", "2025-10-02T10:00:00+03:00"),
        ),
        *path(3, ("NEW", "2025-09-30T21:30:00+00:00")),
        *path(
            4,
            ("NEW", "2025-09-25T12:00:00+03:00"),
            ("WON", "2025-09-30T13:00:00+03:00"),
        ),
        *path(
            5,
            ("NEW", "2025-09-20T12:00:00+03:00"),
            ("BOOKED", "2025-09-22T12:00:00+03:00"),
            ("NO_SHOW", "2025-10-04T13:00:00+03:00"),
        ),
    ]


def _activities() -> list[Activity]:
    return [
        call_out(id=11, start="2025-09-29T10:05:30+03:00", on=(2, 1)),
        message_out(id=21, start="2025-10-01T09:02:36+03:00", on=(3, 502)),
        message_out(id=22, start="2025-09-30T20:56:00+03:00", on=(2, 2), author=BOT),
        message_out(
            id=23, start="2025-09-30T20:57:00+03:00", on=(2, 2), provider="CRM_TODO"
        ),
        call_out(id=24, start="2025-09-30T20:00:00+03:00", on=(3, 502)),
        message_out(
            id=31,
            start="2025-10-01T10:00:00+03:00",
            on=(2, 3),
            responsible=18,
            author=BOT,
        ),
        email_out(
            id=32,
            start="2025-10-01T10:05:00+03:00",
            on=(2, 3),
            responsible=18,
            author=901,
        ),
        call_in(
            id=33,
            start="2025-10-01T10:10:00+03:00",
            end="2025-10-01T10:10:00+03:00",
            on=(2, 3),
            responsible=18,
            completed=False,
        ),
        call_out(id=41, start="2025-10-05T12:00:00+03:00", responsible=18),
        call_out(id=42, start="2025-10-03T12:00:00+03:00", completed=False),
        call_in(
            id=43, start="2025-10-03T12:00:00+03:00", end="2025-10-03T12:05:00+03:00"
        ),
        call_out(id=44, start="2025-10-06T00:00:00+03:00"),
        call_out(id=45, start="2025-09-28T23:59:59+03:00"),
    ]


def _week() -> KpiData:
    return data(
        deals=_deals(),
        history=_history(),
        activities=_activities(),
        staff=(17, 18, BOT),
    )


def _report() -> dict[str, Any]:
    return kpi(_week(), "2025-09-29", "2025-10-06", AS_OF)


NO_EVIDENCE: dict[str, Any] = {"revenue": [], "revenue_left_out": [], "retained": []}


class TestWeekAcrossMonths:
    def test_period_is_reported_in_local_time(self) -> None:
        assert _report()["period"] == {
            "start": "2025-09-29T00:00:00+03:00",
            "end": "2025-10-06T00:00:00+03:00",
            "as_of": "2025-10-06T09:00:00+03:00",
            "timezone": "Europe/Moscow",
            "final": False,
        }

    def test_managers_are_the_users_with_something_counted(self) -> None:
        assert [row["id"] for row in _report()["managers"]] == ["17", "18"]

    def test_manager_17(self) -> None:
        row = manager(_report(), 17)

        assert row == {
            "id": "17",
            "name": "Анна М17",
            "leads": 2,
            "leads_per_day": 0.2857,
            "conversion": 1.0,
            "bookings_made": 2,
            "appointments": 2,
            "confirmed_share": 0.5,
            "cancellations": 1,
            "visits": 1,
            "no_shows": 0,
            "no_show_rate": 0.0,
            "revenue": "3000.00",
            "average_check": "3000.00",
            "calls": 2,
            "calls_per_working_day": 0.3333,
            # 5.5 and 7.6: the median 6.55 rounds half up to 6.6 (a float gives
            # 6.5499999…); p90 = 5.5 + 0.9 * 2.1 = 7.39.
            "first_response": {
                "median_min": 6.6,
                "p90_min": 7.4,
                "unanswered": 0,
                "within_sla_share": 1.0,
            },
            "retained_clients": 0,
            "retention_30d": None,
            "bonus": None,
            "evidence": {
                "revenue": [
                    {
                        "deal_id": "1",
                        "amount": "3000.00",
                        "visit_at": "2025-10-02T14:00:00+03:00",
                    }
                ],
                "revenue_left_out": [],
                "retained": [],
            },
        }

    def test_manager_18(self) -> None:
        row = manager(_report(), 18)

        assert {k: v for k, v in row.items() if k != "evidence"} == {
            "id": "18",
            "name": "Анна М18",
            "leads": 1,
            "leads_per_day": 0.1429,
            "conversion": 0.0,
            "bookings_made": 1,
            "appointments": 2,
            "confirmed_share": 0.0,
            "cancellations": 0,
            "visits": 1,
            "no_shows": 1,
            "no_show_rate": 0.5,
            "revenue": "5000.00",
            "average_check": "5000.00",
            "calls": 1,
            "calls_per_working_day": 0.1667,
            "first_response": {
                "median_min": None,
                "p90_min": None,
                "unanswered": 1,
                "within_sla_share": 0.0,
            },
            "retained_clients": 0,
            "retention_30d": None,
            "bonus": None,
        }

    def test_a_visit_without_visit_field_is_timed_by_its_visited_stage(self) -> None:
        assert manager(_report(), 18)["evidence"]["revenue"] == [
            {
                "deal_id": "4",
                "amount": "5000.00",
                "visit_at": "2025-09-30T13:00:00+03:00",
            }
        ]

    def test_total(self) -> None:
        assert _report()["total"] == {
            "leads": 3,
            "leads_per_day": 0.4286,
            "conversion": 0.6667,
            "bookings_made": 3,
            "appointments": 4,
            "confirmed_share": 0.25,
            "cancellations": 1,
            "visits": 2,
            "no_shows": 1,
            "no_show_rate": 0.3333,
            "revenue": "8000.00",
            "average_check": "4000.00",
            "calls": 3,
            "calls_per_working_day": 0.5,
            "first_response": {
                "median_min": 6.6,
                "p90_min": 7.4,
                "unanswered": 1,
                "within_sla_share": 0.6667,
            },
            "retained_clients": 0,
            "retention_30d": None,
        }

    def test_nothing_is_warned_about(self) -> None:
        assert _report()["warnings"] == []


class TestLeadAtHalfPastMidnight:
    """Deal 3 was created at 00:30 on 1 October in Moscow: 30 September in UTC."""

    def test_it_is_a_lead_of_october(self) -> None:
        october = kpi(_week(), "2025-10-01", "2025-11-01", "2025-11-01T00:00:00+03:00")

        assert manager(october, 18)["leads"] == 1
        assert october["total"]["leads"] == 1

    def test_it_is_not_a_lead_of_september(self) -> None:
        september = kpi(_week(), "2025-09-01", "2025-10-01", AS_OF)

        # Deals 1 and 2 (17), 4 and 5 (18); not deal 3.
        assert september["total"]["leads"] == 4
        assert manager(september, 18)["leads"] == 2
        assert manager(september, 17)["leads"] == 2


class TestWaits:
    def test_each_lead_of_the_week_carries_its_exact_wait(self) -> None:
        result = compute(_week(), query("2025-09-29", "2025-10-06", AS_OF), rules())

        assert [
            (w.inquiry_id, w.manager, w.minutes, str(w.touched_at))
            for w in result.waits
        ] == [
            (1, 17, Fraction(11, 2), "2025-09-29 10:05:30+03:00"),
            (2, 17, Fraction(38, 5), "2025-10-01 09:02:36+03:00"),
            (3, 18, None, "None"),
        ]
        assert result.waits[2].created_at.isoformat() == "2025-10-01T00:30:00+03:00"
