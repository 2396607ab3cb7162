"""Return visits and the 30-day cohort: shared clients, same-day visits, as_of.

January 2025 in Moscow; W runs 2024-12-02 - 2025-01-02. Visits come from WON rows.
"""

from __future__ import annotations

from typing import Any

from connectors.bitrix24.models import Deal, StageHistory
from tests.kpi_engine.builders import data, deal, kpi, manager, path, rules

PER_RETAINED = '\n[bonus]\nper_retained = "500.00"\n'


def visit(
    deal_id: int, *, manager: int, client: int | None, at: str
) -> tuple[Deal, list[StageHistory]]:
    created = "2024-11-20T10:00:00+03:00"
    made = deal(id=deal_id, created=created, manager=manager, contact=client)
    rows = path(deal_id, ("NEW", created), ("BOOKED", created), ("WON", at))
    return made, rows


def january(*visits: tuple[Deal, list[StageHistory]], as_of: str) -> dict[str, Any]:
    return kpi(
        data(deals=[d for d, _ in visits], history=[r for _, rs in visits for r in rs]),
        "2025-01-01",
        "2025-02-01",
        as_of,
        business=rules(PER_RETAINED),
    )


LATER = "2025-02-10T00:00:00+03:00"


class TestReturnVisits:
    def test_a_client_retained_on_two_managers_deals_is_paid_to_both(self) -> None:
        report = january(
            visit(1, manager=17, client=900, at="2025-01-03T12:00:00+03:00"),
            visit(2, manager=17, client=900, at="2025-01-10T12:00:00+03:00"),
            visit(3, manager=18, client=900, at="2025-01-20T12:00:00+03:00"),
            as_of=LATER,
        )

        assert manager(report, 17)["retained_clients"] == 1
        assert manager(report, 18)["retained_clients"] == 1
        assert manager(report, 18)["evidence"]["retained"] == [
            {"client_id": "900", "return_deal_id": "3", "earlier_deal_id": "2"}
        ]
        assert report["total"]["retained_clients"] == 1
        assert manager(report, 17)["bonus"]["retention_part"] == "500.00"
        assert manager(report, 18)["bonus"]["retention_part"] == "500.00"

    def test_two_visits_on_one_local_date_are_no_return(self) -> None:
        # 00:30 and 23:30 Moscow on 10 January: two UTC dates, one local date.
        report = january(
            visit(1, manager=17, client=900, at="2025-01-09T21:30:00+00:00"),
            visit(2, manager=17, client=900, at="2025-01-10T23:30:00+03:00"),
            as_of=LATER,
        )

        assert report["total"]["retained_clients"] == 0

    def test_a_visit_after_as_of_is_hidden(self) -> None:
        visits = (
            visit(1, manager=17, client=900, at="2025-01-03T12:00:00+03:00"),
            visit(2, manager=17, client=900, at="2025-01-10T12:00:00+03:00"),
        )

        before = january(*visits, as_of="2025-01-10T11:59:59+03:00")
        after = january(*visits, as_of="2025-01-10T12:00:00+03:00")

        assert before["total"]["retained_clients"] == 0
        assert after["total"]["retained_clients"] == 1

    def test_deals_without_a_contact_are_no_visits_of_a_client(self) -> None:
        report = january(
            visit(1, manager=17, client=None, at="2025-01-03T12:00:00+03:00"),
            visit(2, manager=17, client=None, at="2025-01-10T12:00:00+03:00"),
            as_of=LATER,
        )

        assert report["total"]["retained_clients"] == 0
        assert report["total"]["visits"] == 2


class TestCohort:
    def test_a_client_in_two_managers_cohorts_counts_once_in_the_total(self) -> None:
        report = january(
            visit(1, manager=17, client=900, at="2024-12-05T12:00:00+03:00"),
            visit(2, manager=18, client=900, at="2024-12-20T12:00:00+03:00"),
            visit(3, manager=17, client=901, at="2024-12-21T12:00:00+03:00"),
            as_of=LATER,
        )

        # Client 900: visit 1 is followed by visit 2 after 15 days, retained for
        # 17; 18's visit 2 has no follow-up. Client 901 never returns.
        assert manager(report, 17)["retention_30d"] == 0.5
        assert manager(report, 18)["retention_30d"] == 0.0
        assert report["total"]["retention_30d"] == 0.5

    def test_the_cohort_window_ends_thirty_days_before_the_period(self) -> None:
        report = january(
            # 1 January is in W (it ends 2 January 00:00); 2 January is not.
            visit(1, manager=17, client=900, at="2025-01-01T23:59:59+03:00"),
            visit(2, manager=18, client=901, at="2025-01-02T00:00:00+03:00"),
            # 1 December is before W.
            visit(3, manager=18, client=902, at="2024-12-01T12:00:00+03:00"),
            as_of=LATER,
        )

        assert manager(report, 17)["retention_30d"] == 0.0
        assert manager(report, 18)["retention_30d"] is None
