"""Typed rows from every recorded answer: Decimal money, aware datetimes, real dates."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from connectors.bitrix24.models import (
    Activity,
    Contact,
    Deal,
    InvalidRow,
    Lead,
    StageHistory,
    Task,
    User,
    legacy_user_field_name,
    validate_row,
)
from tests.fixtures import load_fixture

PLUS_TWO = timezone(timedelta(hours=2))


def result_of(name: str) -> Any:
    return load_fixture(f"bitrix24/{name}")["result"]


def a_deal(**fields: Any) -> dict[str, Any]:
    """A legacy deal row with only what the test names besides its id."""
    return {"ID": "7", **fields}


class TestDeal:
    def test_recorded_get_reads_money_dates_links_and_custom_fields(self) -> None:
        deal = Deal.model_validate(result_of("crm.deal.get.response.json"))

        assert deal.id == 410
        assert deal.opportunity == Decimal("1000000.00")
        assert deal.currency_id == "EUR"
        assert (deal.begin_date, deal.close_date) == (
            date(2024, 8, 30),
            date(2024, 9, 9),
        )
        assert deal.created_at == datetime(2024, 8, 30, 14, 29, tzinfo=PLUS_TWO)
        assert (deal.contact_id, deal.company_id, deal.lead_id) == (84, 9, None)
        assert (deal.category_id, deal.stage_id, deal.stage_semantic_id) == (
            0,
            "PREPARATION",
            "P",
        )
        assert (deal.opened, deal.closed, deal.is_return_customer) == (
            True,
            False,
            False,
        )
        assert deal.user_fields == {"UF_CRM_1721244482250": "Hello world!"}

    def test_every_recorded_list_row_keeps_its_exact_amount(self) -> None:
        rows = result_of("crm.deal.list.response.json")

        deals = [Deal.model_validate(row) for row in rows]

        assert [deal.opportunity for deal in deals][:2] == [
            Decimal("19999.99"),
            Decimal("20000.00"),
        ]
        assert {deal.category_id for deal in deals} == {1}
        assert all(deal.created_at and deal.created_at.tzinfo for deal in deals)

    def test_a_recorded_crm_item_reads_like_the_legacy_row(self) -> None:
        item = result_of("crm.item.add.deal.response.json")["item"]

        deal = Deal.model_validate(item)

        assert deal.id == 342
        assert deal.opportunity == Decimal("999.99")
        assert (deal.category_id, deal.stage_id) == (9, "C9:UC_KN8KFI")
        assert (deal.begin_date, deal.close_date) == (
            date(2024, 6, 18),
            date(2024, 7, 30),
        )
        assert deal.created_at == datetime(2024, 7, 18, 14, 0, 14, tzinfo=PLUS_TWO)
        assert deal.modified_at == deal.created_at
        assert (deal.assigned_by_id, deal.contact_id, deal.lead_id) == (6, 4, 102)
        assert deal.is_return_customer is False
        assert deal.opened is False
        assert deal.user_fields == {"UF_CRM_1721244707107": 1111.1}

    @pytest.mark.parametrize(
        ("sent", "amount"),
        [
            ("19999.99", Decimal("19999.99")),
            ("1500,5", Decimal("1500.5")),  # legacy doubles accept a decimal comma
            (999.99, Decimal("999.99")),  # crm.item's JSON number, not 999.99000001
            (19000, Decimal("19000")),
            ("0.00", Decimal("0.00")),
            ("", Decimal("0")),
        ],
    )
    def test_money_is_an_exact_decimal(self, sent: object, amount: Decimal) -> None:
        """B24-5: money strings are parsed into exact Decimals."""
        deal = Deal.model_validate(a_deal(OPPORTUNITY=sent))

        assert deal.opportunity == amount
        assert str(deal.opportunity) == str(amount)

    @pytest.mark.parametrize(
        "sent", ["12a", "1,500.50", "NaN", "Infinity", float("nan"), True, [1]]
    )
    def test_money_that_is_not_a_number_is_refused(self, sent: object) -> None:
        with pytest.raises(InvalidRow, match="OPPORTUNITY"):
            validate_row(Deal, a_deal(OPPORTUNITY=sent))

    @pytest.mark.parametrize(
        ("sent", "day"),
        [
            # Midnight UTC of 30 August, printed on a UTC+2 and a UTC-5 portal.
            ("2024-08-30T02:00:00+02:00", date(2024, 8, 30)),
            ("2024-08-29T19:00:00-05:00", date(2024, 8, 30)),
            ("2024-08-30T03:00:00+03:00", date(2024, 8, 30)),
            ("2024-08-30T00:00:00+00:00", date(2024, 8, 30)),
            # Local midnight cannot be that rule on a non-zero offset: a local date.
            ("2024-08-30T00:00:00+03:00", date(2024, 8, 30)),
            ("2024-08-30", date(2024, 8, 30)),
            ("", None),
            (None, None),
        ],
    )
    def test_date_fields_name_the_calendar_day_on_any_portal_zone(
        self, sent: object, day: date | None
    ) -> None:
        deal = Deal.model_validate(a_deal(CLOSEDATE=sent))

        assert deal.close_date == day

    @pytest.mark.parametrize("sent", ["2024-08-30T02:00:00", "30.08.2024", "soon"])
    def test_a_date_without_an_offset_is_refused(self, sent: str) -> None:
        with pytest.raises(InvalidRow, match="CLOSEDATE"):
            validate_row(Deal, a_deal(CLOSEDATE=sent))

    @pytest.mark.parametrize("sent", ["2024-08-30 14:29:00", "2024-08-30T14:29:00"])
    def test_a_naive_datetime_is_refused(self, sent: str) -> None:
        with pytest.raises(InvalidRow, match="DATE_CREATE"):
            validate_row(Deal, a_deal(DATE_CREATE=sent))

    def test_empty_datetimes_and_links_are_no_value(self) -> None:
        deal = Deal.model_validate(
            a_deal(DATE_MODIFY="", MOVED_TIME=None, COMPANY_ID="0", LEAD_ID="")
        )

        assert (deal.modified_at, deal.moved_at) == (None, None)
        assert (deal.company_id, deal.lead_id) == (None, None)

    @pytest.mark.parametrize(
        ("sent", "flag"), [("Y", True), ("N", False), (True, True), ("", False)]
    )
    def test_flags_are_booleans(self, sent: object, flag: bool) -> None:
        assert Deal.model_validate(a_deal(CLOSED=sent)).closed is flag

    @pytest.mark.parametrize("sent", ["yes", "true", 2])
    def test_a_flag_that_is_not_y_or_n_is_refused(self, sent: object) -> None:
        with pytest.raises(InvalidRow, match="CLOSED"):
            validate_row(Deal, a_deal(CLOSED=sent))

    def test_a_money_custom_field_reads_amount_and_currency(self) -> None:
        """B24-5: an `amount|CURRENCY` field splits in two; an empty one is None."""
        deal = Deal.model_validate(
            a_deal(UF_CRM_PAID="1500.00|RUB", UF_CRM_NONE="", UF_CRM_AT="")
        )

        assert deal.money_field("UF_CRM_PAID") == (Decimal("1500.00"), "RUB")
        assert deal.money_field("UF_CRM_NONE") is None
        assert deal.datetime_field("UF_CRM_AT") is None

    def test_a_visit_time_custom_field_reads_from_a_crm_item_too(self) -> None:
        item = {"id": 5, "ufCrm_VISIT_AT": "2025-03-01T10:30:00+03:00"}

        deal = Deal.model_validate(item)

        assert deal.datetime_field("UF_CRM_VISIT_AT") == datetime(
            2025, 3, 1, 7, 30, tzinfo=UTC
        )


class TestLead:
    def test_recorded_get_reads_status_and_multifields(self) -> None:
        lead = Lead.model_validate(result_of("crm.lead.get.response.json"))

        assert (lead.id, lead.status_id, lead.status_semantic_id) == (
            123,
            "IN_PROCESS",
            "P",
        )
        assert lead.name is None  # "" on the wire
        assert lead.opportunity == Decimal("0.00")
        assert [(p.id, p.value_type, p.value) for p in lead.phones] == [
            (11658, "OTHER", "+79990000000")
        ]
        assert lead.ims[0].value == "imol|livechat|1|67|21"
        assert lead.source_id == "1"

    def test_recorded_item_list_rows_call_the_status_a_stage(self) -> None:
        items = result_of("crm.item.list.lead.response.json")["items"]

        leads = [Lead.model_validate(item) for item in items]

        assert [(lead.id, lead.status_id) for lead in leads] == [
            (253, "NEW"),
            (255, "NEW"),
            (252, "NEW"),
            (254, "IN_PROCESS"),
        ]
        assert leads[0].opportunity == Decimal("19000")
        assert (leads[1].name, leads[1].last_name) == ("Test", "One")
        assert leads[0].last_name is None
        assert leads[0].assigned_by_id == 6


class TestContact:
    def test_a_legacy_contact_keeps_its_phones_and_messengers(self) -> None:
        contact = Contact.model_validate(
            {
                "ID": "15",
                "NAME": "Анна",
                "LAST_NAME": "",
                "PHONE": [
                    {"ID": "156", "VALUE_TYPE": "WORK", "VALUE": "+79990000001",
                     "TYPE_ID": "PHONE"}
                ],
                "IM": [{"ID": "157", "VALUE_TYPE": "TELEGRAM", "VALUE": "@anna",
                        "TYPE_ID": "IM"}],
                "DATE_CREATE": "2024-05-23T18:18:25+03:00",
            }
        )  # fmt: skip

        assert (contact.id, contact.name, contact.last_name) == (15, "Анна", None)
        assert contact.phones[0].value == "+79990000001"
        assert contact.ims[0].value_type == "TELEGRAM"
        assert contact.emails == []

    def test_a_contact_item_reads_its_camel_case_names(self) -> None:
        contact = Contact.model_validate(
            {"id": 15, "name": "Анна", "lastName": "Петрова", "secondName": None}
        )

        assert (contact.name, contact.last_name, contact.second_name) == (
            "Анна",
            "Петрова",
            None,
        )


class TestActivity:
    def test_recorded_call_reads_type_direction_and_times(self) -> None:
        (row,) = result_of("crm.activity.list.response.json")

        call = Activity.model_validate(row)

        assert (call.id, call.type_id, call.direction) == (20, 2, 2)
        assert (call.provider_id, call.provider_type_id) == ("VOXIMPLANT_CALL", "CALL")
        assert call.completed is True
        assert call.start_time == datetime(
            2020, 9, 27, 13, 25, tzinfo=timezone(timedelta(hours=3))
        )
        assert (call.responsible_id, call.author_id) == (505, 505)
        assert call.bound_to() == {(3, 15)}

    def test_bindings_add_to_the_owner(self) -> None:
        activity = Activity.model_validate(
            {
                "ID": "21",
                "TYPE_ID": "6",
                "OWNER_TYPE_ID": "2",
                "OWNER_ID": "5",
                "DIRECTION": "",
                "BINDINGS": [
                    {"OWNER_TYPE_ID": "2", "OWNER_ID": "5"},
                    {"OWNER_TYPE_ID": "3", "OWNER_ID": "9"},
                ],
            }
        )

        assert activity.direction is None
        assert activity.bound_to() == {(2, 5), (3, 9)}


class TestStageHistory:
    def test_recorded_deal_row_has_int_ids_and_an_aware_time(self) -> None:
        (row,) = result_of("crm.stagehistory.list.response.json")["items"]

        move = StageHistory.model_validate(row)

        assert (move.id, move.type_id, move.owner_id, move.category_id) == (
            35,
            1,
            21,
            0,
        )
        assert move.stage == "NEW"
        assert move.semantic_id == "P"
        assert move.created_at == datetime(2024, 4, 25, 14, 59, 11, tzinfo=UTC)

    def test_a_lead_row_records_its_status_as_the_stage(self) -> None:
        move = StageHistory.model_validate(
            {
                "ID": 39,
                "TYPE_ID": 2,
                "OWNER_ID": 5,
                "CREATED_TIME": "2024-04-25T14:59:11+03:00",
                "STATUS_ID": "IN_PROCESS",
                "STATUS_SEMANTIC_ID": "P",
            }
        )

        assert (move.status_id, move.stage_id, move.stage) == (
            "IN_PROCESS",
            None,
            "IN_PROCESS",
        )
        assert move.semantic_id == "P"
        assert move.category_id is None

    @pytest.mark.parametrize("created", ["2024-04-25 14:59:11", "", None])
    def test_a_row_without_an_aware_time_is_refused(self, created: object) -> None:
        row = {"ID": 1, "TYPE_ID": 1, "OWNER_ID": 2, "CREATED_TIME": created}

        with pytest.raises(InvalidRow, match="CREATED_TIME"):
            validate_row(StageHistory, row)


class TestUser:
    def test_recorded_users_are_active_employees_with_departments(self) -> None:
        users = [
            User.model_validate(row) for row in result_of("user.get.response.json")
        ]

        assert [(user.id, user.active) for user in users] == [(1, True), (3, True)]
        assert users[0].departments == [1]
        assert users[0].second_name is None  # "" on the wire
        assert users[1].full_name == "Test Userthree"
        assert users[0].user_type == "employee"

    def test_a_json_false_is_an_inactive_user(self) -> None:
        user = User.model_validate({"ID": "4", "ACTIVE": False, "NAME": ""})

        assert user.active is False
        assert user.full_name == "#4"


class TestTask:
    def test_recorded_list_row_reads_numbers_and_dates(self) -> None:
        (row,) = result_of("tasks.task.list.response.json")["tasks"]

        task = Task.model_validate(row)

        assert (task.id, task.responsible_id, task.priority, task.status) == (
            8017,
            547,
            2,
            2,
        )
        assert task.deadline == datetime(2025, 10, 24, 19, 0, tzinfo=PLUS_TWO)
        assert task.completed is False

    def test_recorded_add_answer_reads_the_new_task(self) -> None:
        task = Task.model_validate(result_of("tasks.task.add.response.json")["task"])

        assert (task.id, task.created_by, task.title) == (3711, 1, "task for test")
        assert task.closed_at is None
        assert task.changed_at == datetime(2024, 11, 2, 10, 6, 8, tzinfo=PLUS_TWO)
        assert task.crm_bindings == []


class TestInvalidRows:
    def test_the_error_names_fields_and_id_but_never_the_values(self) -> None:
        row = {
            "ID": "9",
            "NAME": "Анна",
            "PHONE": [{"VALUE": "+79990000001"}],
            "DATE_CREATE": "+79990000001",
        }

        with pytest.raises(InvalidRow) as caught:
            validate_row(Contact, row)

        assert caught.value.fields == ["DATE_CREATE"]
        assert caught.value.row_id == "9"
        assert "+7999" not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    def test_a_row_that_is_not_an_object_is_refused(self) -> None:
        with pytest.raises(InvalidRow, match="Deal row None"):
            validate_row(Deal, ["ID", "7"])

    @pytest.mark.parametrize(
        ("item_name", "legacy"),
        [
            ("ufCrm_1721244707107", "UF_CRM_1721244707107"),
            ("ufCrm2_1639669411830", "UF_CRM_2_1639669411830"),
            ("ufCrm_visit_at", "UF_CRM_VISIT_AT"),
            ("UF_CRM_KEPT", "UF_CRM_KEPT"),
        ],
    )
    def test_item_names_of_custom_fields_map_back(
        self, item_name: str, legacy: str
    ) -> None:
        assert legacy_user_field_name(item_name) == legacy
