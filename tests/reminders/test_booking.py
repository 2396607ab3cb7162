from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.config import BusinessRules, parse_rules
from connectors.bitrix24.models import Deal
from reminders.booking import (
    ButtonPress,
    booking_of,
    callback_data,
    parse_callback,
    reminders_off_because,
    stage_for,
    stamp_of,
    visit_of,
)
from tests.reminders.conftest import VISIT, VISIT_FIELD, make_rules


def deal(**fields: object) -> Deal:
    row = {
        "ID": "42",
        "CATEGORY_ID": "0",
        "STAGE_ID": "PREPARATION",
        "ASSIGNED_BY_ID": "7",
        "CONTACT_ID": "9",
        VISIT_FIELD: "2027-03-11T15:00:00+03:00",
        **fields,
    }
    return Deal.model_validate(row)


class TestBookingOf:
    def test_reads_the_visit_role_manager_and_contact(self) -> None:
        booking = booking_of(deal(), make_rules())

        assert booking is not None
        assert booking.visit == VISIT
        assert (booking.role, booking.manager_id, booking.contact_id) == (
            "booked",
            7,
            9,
        )
        assert booking.active

    def test_a_deal_without_a_visit_is_no_booking(self) -> None:
        assert booking_of(deal(**{VISIT_FIELD: ""}), make_rules()) is None

    def test_a_deal_of_an_untracked_pipeline_is_no_booking(self) -> None:
        assert booking_of(deal(CATEGORY_ID="3"), make_rules()) is None

    def test_without_a_visit_field_nothing_is_a_booking(self) -> None:
        assert booking_of(deal(), BusinessRules()) is None

    def test_a_stage_without_a_role_is_not_active(self) -> None:
        booking = booking_of(deal(STAGE_ID="C5:ODD"), make_rules())

        assert booking is not None
        assert booking.role is None
        assert not booking.active


class TestStamps:
    def test_a_stamp_names_the_visit_in_utc(self) -> None:
        assert stamp_of(VISIT) == "20270311T120000Z"
        assert visit_of("20270311T120000Z") == datetime(2027, 3, 11, 12, tzinfo=UTC)

    def test_anything_else_is_not_a_stamp(self) -> None:
        with pytest.raises(ValueError, match="not a visit stamp"):
            visit_of("2027-03-11")


class TestCallbackData:
    def test_round_trips_and_fits_telegram(self) -> None:
        data = callback_data("cancel", 123456789, "20270311T120000Z")

        assert data == "rm:x:123456789:20270311T120000Z"
        assert len(data.encode()) <= 64
        assert parse_callback(data) == ButtonPress(
            123456789, "20270311T120000Z", "cancel"
        )

    @pytest.mark.parametrize(
        "data",
        [None, "", "budget:100-300k", "rm:y:1:20270311T120000Z", "rm:c:1:tomorrow"],
    )
    def test_other_button_data_is_not_a_reminder_answer(self, data: str | None) -> None:
        assert parse_callback(data) is None


class TestStageFor:
    def test_takes_the_stage_of_the_deals_pipeline(self) -> None:
        rules = parse_rules(
            "[crm]\npipelines = [0, 2]\nvisit_field = 'UF_CRM_VISIT_AT'\n"
            "[crm.stages]\nbooked = ['PREPARATION', 'C2:BOOKED']\n"
            "confirmed = ['PREPAYMENT_INVOICE', 'C2:CONFIRMED']\n"
        )

        assert stage_for("confirmed", 0, rules) == "PREPAYMENT_INVOICE"
        assert stage_for("confirmed", 2, rules) == "C2:CONFIRMED"
        assert stage_for("confirmed", 5, rules) is None


class TestRemindersOff:
    def test_default_rules_name_what_is_missing(self) -> None:
        assert reminders_off_because(BusinessRules()) == "no_visit_field"

    def test_configured_rules_run(self) -> None:
        assert reminders_off_because(make_rules()) is None

    def test_turned_off_says_so(self) -> None:
        rules = make_rules("[reminders]\nenabled = false\n")

        assert reminders_off_because(rules) == "disabled"
