"""Stage roles from stage history: reaching, as_of, outcomes, confirmation, warnings.

Week Mon 2025-01-06 - Mon 2025-01-13 in Moscow unless a test says otherwise.
"""

from __future__ import annotations

import random
from typing import Any

from connectors.bitrix24.models import Deal, StageHistory
from tests.kpi_engine.builders import data, deal, kpi, manager, path, row, warning

WEEK = ("2025-01-06", "2025-01-13")
LATER = "2025-01-20T00:00:00+03:00"
CREATED = "2025-01-06T09:00:00+03:00"


def week(
    deals: list[Deal], history: list[StageHistory], as_of: str = LATER
) -> dict[str, Any]:
    return kpi(data(deals=deals, history=history), *WEEK, as_of)


def one(stage_rows: list[StageHistory], as_of: str = LATER, **fields: Any) -> Any:
    fields.setdefault("contact", 501)
    return week([deal(id=1, created=CREATED, **fields)], stage_rows, as_of)


class TestAsOf:
    ROWS = path(1, ("NEW", CREATED), ("BOOKED", "2025-01-06T10:00:00+03:00"))

    def test_a_row_after_as_of_is_hidden(self) -> None:
        total = one(self.ROWS, "2025-01-06T09:59:59+03:00")["total"]

        assert (total["leads"], total["bookings_made"], total["conversion"]) == (
            1,
            0,
            0.0,
        )

    def test_a_row_exactly_at_as_of_is_visible(self) -> None:
        total = one(self.ROWS, "2025-01-06T10:00:00+03:00")["total"]

        assert (total["bookings_made"], total["conversion"]) == (1, 1.0)

    def test_a_deal_created_after_as_of_is_hidden(self) -> None:
        total = one(self.ROWS, "2025-01-06T08:59:59+03:00")["total"]

        assert total["leads"] == 0
        assert total["conversion"] is None

    def test_an_as_of_in_utc_is_the_same_instant(self) -> None:
        total = one(self.ROWS, "2025-01-06T07:00:00+00:00")["total"]

        assert total["bookings_made"] == 1


class TestBooking:
    def test_a_deal_that_skips_the_booked_stage_is_booked_when_it_jumps(self) -> None:
        report = one(
            path(1, ("NEW", CREATED), ("CONFIRMED", "2025-01-07T10:00:00+03:00")),
            visit="2025-01-09T12:00:00+03:00",
        )

        assert report["total"]["bookings_made"] == 1
        assert report["total"]["appointments"] == 1
        assert report["total"]["confirmed_share"] == 1.0

    def test_cancelled_and_lost_do_not_make_a_deal_booked(self) -> None:
        deals = [
            deal(id=1, created=CREATED, contact=501),
            deal(id=2, created=CREATED, contact=502),
        ]
        history = [
            *path(1, ("NEW", CREATED), ("CANCELLED", "2025-01-07T10:00:00+03:00")),
            *path(2, ("NEW", CREATED), ("LOSE", "2025-01-07T10:00:00+03:00")),
        ]

        total = week(deals, history)["total"]

        assert (total["leads"], total["bookings_made"], total["conversion"]) == (
            2,
            0,
            0.0,
        )

    def test_a_booking_is_dated_by_its_first_booked_row(self) -> None:
        # Booked before the week, moved back to NEW and booked again inside it.
        history = path(
            1,
            ("NEW", "2025-01-03T09:00:00+03:00"),
            ("BOOKED", "2025-01-03T10:00:00+03:00"),
            ("NEW", "2025-01-04T10:00:00+03:00"),
            ("BOOKED", "2025-01-07T10:00:00+03:00"),
        )
        made = deal(id=1, created="2025-01-03T09:00:00+03:00", contact=501)

        assert week([made], history)["total"]["bookings_made"] == 0

    def test_the_current_stage_is_not_used(self) -> None:
        report = one(path(1, ("NEW", CREATED)), stage="WON", opportunity="100.00")

        assert report["total"]["bookings_made"] == 0
        assert report["total"]["visits"] == 0

    def test_rows_are_ordered_by_time_then_id_whatever_order_they_come_in(
        self,
    ) -> None:
        rows = [
            row(id=7, deal=1, stage="NEW", at=CREATED),
            row(id=9, deal=1, stage="BOOKED", at="2025-01-07T10:00:00+03:00"),
            row(id=8, deal=1, stage="CANCELLED", at="2025-01-07T10:00:00+03:00"),
            row(id=3, deal=1, stage="BOOKED", at="2025-01-12T21:00:00+00:00"),
        ]
        random.Random(6).shuffle(rows)

        report = one(rows, visit="2025-01-10T12:00:00+03:00")

        assert report["total"]["bookings_made"] == 1
        assert report["total"]["cancellations"] == 1

    def test_deals_of_other_pipelines_are_not_counted(self) -> None:
        report = one(
            path(
                1,
                ("NEW", CREATED),
                ("BOOKED", "2025-01-06T10:00:00+03:00"),
                ("WON", "2025-01-08T12:00:00+03:00"),
            ),
            category=3,
            opportunity="100.00",
        )

        assert report["managers"] == []
        assert report["total"]["leads"] == 0
        assert report["total"]["revenue"] == "0.00"


class TestOutcome:
    def visit(self, *steps: tuple[str, str], as_of: str = LATER) -> dict[str, Any]:
        rows = path(1, ("NEW", CREATED), ("BOOKED", "2025-01-06T10:00:00+03:00"))
        rows += [
            row(id=200 + index, deal=1, stage=stage, at=at)
            for index, (stage, at) in enumerate(steps)
        ]
        total = one(rows, as_of, visit="2025-01-08T12:00:00+03:00")["total"]
        return {key: total[key] for key in ("appointments", "visits", "no_shows")}

    def test_visited_after_a_no_show_counts_as_visited(self) -> None:
        assert self.visit(
            ("NO_SHOW", "2025-01-08T13:00:00+03:00"),
            ("WON", "2025-01-08T15:00:00+03:00"),
        ) == {"appointments": 1, "visits": 1, "no_shows": 0}

    def test_a_no_show_after_visited_counts_as_a_no_show(self) -> None:
        assert self.visit(
            ("WON", "2025-01-08T13:00:00+03:00"),
            ("NO_SHOW", "2025-01-08T15:00:00+03:00"),
        ) == {"appointments": 1, "visits": 0, "no_shows": 1}

    def test_at_the_same_time_the_higher_row_id_is_later(self) -> None:
        assert self.visit(
            ("NO_SHOW", "2025-01-08T13:00:00+03:00"),
            ("WON", "2025-01-08T10:00:00+00:00"),
        ) == {"appointments": 1, "visits": 1, "no_shows": 0}

    def test_the_later_outcome_after_as_of_is_hidden(self) -> None:
        assert self.visit(
            ("NO_SHOW", "2025-01-08T13:00:00+03:00"),
            ("WON", "2025-01-08T15:00:00+03:00"),
            as_of="2025-01-08T14:00:00+03:00",
        ) == {"appointments": 1, "visits": 0, "no_shows": 1}

    def test_a_later_visit_counts_from_the_first_time_each_was_reached(self) -> None:
        # WON first at 13:00, NO_SHOW at 14:00, WON again at 15:00: no-show.
        assert self.visit(
            ("WON", "2025-01-08T13:00:00+03:00"),
            ("NO_SHOW", "2025-01-08T14:00:00+03:00"),
            ("WON", "2025-01-08T15:00:00+03:00"),
        ) == {"appointments": 1, "visits": 0, "no_shows": 1}


class TestVisitTime:
    def test_a_field_without_a_time_falls_back_to_the_visited_row(self) -> None:
        report = one(
            path(
                1,
                ("NEW", CREATED),
                ("BOOKED", "2025-01-06T10:00:00+03:00"),
                ("WON", "2025-01-16T12:00:00+03:00"),
            ),
            visit="2025-01-08",
            opportunity="100.00",
        )

        # The WON row (16th) is after the week: no appointment in it.
        assert report["total"]["appointments"] == 0
        assert report["total"]["bookings_made"] == 1

    def test_an_appointment_later_than_as_of_is_counted(self) -> None:
        report = one(
            path(1, ("NEW", CREATED), ("BOOKED", "2025-01-06T10:00:00+03:00")),
            "2025-01-07T00:00:00+03:00",
            visit="2025-01-11T12:00:00+03:00",
        )

        assert report["total"]["appointments"] == 1
        assert report["total"]["visits"] == 0

    def test_an_appointment_needs_a_booking_by_as_of(self) -> None:
        report = one(path(1, ("NEW", CREATED)), visit="2025-01-11T12:00:00+03:00")

        assert report["total"]["appointments"] == 0


class TestConfirmation:
    VISIT = "2025-01-09T12:00:00+03:00"

    def appointment(
        self, deal_id: int, *steps: tuple[str, str]
    ) -> tuple[Deal, list[StageHistory]]:
        made = deal(
            id=deal_id, created=CREATED, contact=500 + deal_id, visit=self.VISIT
        )
        rows = path(deal_id, ("NEW", CREATED), *steps)
        return made, rows

    def test_confirmed_share_needs_confirmation_strictly_before_the_visit(
        self,
    ) -> None:
        booked = ("BOOKED", "2025-01-06T10:00:00+03:00")
        cases = [
            self.appointment(1, booked, ("CONFIRMED", self.VISIT)),
            self.appointment(2, booked, ("CONFIRMED", "2025-01-09T08:59:59+00:00")),
            self.appointment(
                3,
                booked,
                ("CONFIRMED", "2025-01-08T10:00:00+03:00"),
                ("BOOKED", "2025-01-08T11:00:00+03:00"),
            ),
            self.appointment(4, booked, ("CANCELLED", "2025-01-07T10:00:00+03:00")),
        ]

        report = week([d for d, _ in cases], [r for _, rows in cases for r in rows])

        # Deal 2 confirmed one second before; deal 3 left the stage, still counts;
        # the cancelled deal 4 stays in the denominator.
        assert report["total"]["appointments"] == 4
        assert report["total"]["confirmed_share"] == 0.5
        assert report["total"]["cancellations"] == 1

    def test_a_confirmation_after_as_of_is_hidden(self) -> None:
        made, rows = self.appointment(
            1,
            ("BOOKED", "2025-01-06T10:00:00+03:00"),
            ("CONFIRMED", "2025-01-08T10:00:00+03:00"),
        )

        report = week([made], rows, "2025-01-08T09:00:00+03:00")

        assert report["total"]["appointments"] == 1
        assert report["total"]["confirmed_share"] == 0.0


class TestWarnings:
    def report(self) -> dict[str, Any]:
        deals = [
            # booked in the week, no visit time, no contact, a stage without a role
            deal(id=1, created=CREATED, contact=None),
            # fine: the visit time comes from the WON row
            deal(id=2, created=CREATED, contact=502, manager=18),
            # outside the week entirely: never warned about
            deal(id=3, created="2024-12-01T10:00:00+03:00", contact=None),
        ]
        history = [
            *path(
                1,
                ("NEW", CREATED),
                ("IN_PROCESS", "2025-01-06T09:30:00+03:00"),
                ("BOOKED", "2025-01-06T10:00:00+03:00"),
            ),
            *path(
                2,
                ("NEW", CREATED),
                ("IN_PROCESS", "2025-01-06T09:40:00+03:00"),
                ("WON", "2025-01-07T10:00:00+03:00"),
            ),
            *path(
                3,
                ("NEW", "2024-12-01T10:00:00+03:00"),
                ("UNKNOWN", "2024-12-01T11:00:00+03:00"),
                ("BOOKED", "2024-12-02T10:00:00+03:00"),
            ),
        ]
        return week(deals, history)

    def test_booked_deals_without_a_visit_time(self) -> None:
        assert warning(self.report(), "booked_without_visit_time") == {
            "code": "booked_without_visit_time",
            "message": "booked deals without a visit time are no appointments",
            "deal_ids": ["1"],
            "user_ids": ["17"],
        }

    def test_deals_without_a_contact(self) -> None:
        assert warning(self.report(), "deal_without_contact")["deal_ids"] == ["1"]

    def test_stages_without_a_role_name_the_stage_and_the_deals(self) -> None:
        assert warning(self.report(), "stage_without_role") == {
            "code": "stage_without_role",
            "message": "stage IN_PROCESS has no role in [crm.stages] and is ignored",
            "deal_ids": ["1", "2"],
            "user_ids": ["17", "18"],
        }

    def test_warnings_come_in_a_fixed_order(self) -> None:
        assert [w["code"] for w in self.report()["warnings"]] == [
            "booked_without_visit_time",
            "deal_without_contact",
            "stage_without_role",
        ]

    def test_a_deal_without_a_contact_takes_no_part_in_retention(self) -> None:
        report = self.report()

        assert manager(report, 17)["bookings_made"] == 1
        assert report["total"]["retained_clients"] == 0
