"""Legacy CRM over real HTTP: `crm.{deal,lead,contact,company}.*` and findbycomm."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"
MOSCOW = ZoneInfo("Europe/Moscow")
UNREACHABLE_HANDLER = "http://127.0.0.1:9/hook"
# Present only once a method has run long enough to be charged (reference §2).
QUIET = frozenset({"operating_reset_at"})


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def error_of(response: httpx.Response) -> tuple[int, dict[str, Any]]:
    return response.status_code, response.json()


def date_field(days_from_today: int = 0) -> str:
    """A date field as a Moscow portal prints it: midnight UTC, +03:00."""
    day = datetime.now(MOSCOW).date() + timedelta(days=days_from_today)
    return f"{day.isoformat()}T03:00:00+03:00"


def snapshot(sandbox: RunningSandbox) -> dict[str, Any]:
    dumped: dict[str, Any] = sandbox.http.get("/_sandbox/snapshot").json()
    return dumped


def history(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = snapshot(sandbox)["stagehistory"]
    return rows


def events_after(sandbox: RunningSandbox) -> list[tuple[str, Any]]:
    response = sandbox.http.post("/_sandbox/events/wait", json={"timeout_s": 5})
    return [(entry["event"], entry["data"]) for entry in response.json()["deliveries"]]


def add_user_field(sandbox: RunningSandbox, row: dict[str, Any]) -> None:
    current = snapshot(sandbox)
    fields = {"ID": str(len(current["userfields"]) + 1), "MULTIPLE": "N"}
    fields.update(row)
    current["userfields"].append(fields)
    sandbox.load({"userfields": current["userfields"]})


class TestDealAdd:
    def test_answers_the_new_id_as_a_json_int(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.deal.add", {"fields": {"TITLE": "Haircut"}})

        assert response.status_code == 200
        assert response.json()["result"] == 1
        assert sandbox.result("crm.deal.add", {"fields": {}}) == 2

    def test_a_new_deal_gets_the_documented_defaults(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})

        deal = sandbox.result("crm.deal.get", {"id": deal_id})
        assert deal["TITLE"] == f"Deal #{deal_id}"
        assert deal["TYPE_ID"] == "SALE"
        assert deal["CATEGORY_ID"] == "0"
        assert (deal["STAGE_ID"], deal["STAGE_SEMANTIC_ID"]) == ("NEW", "P")
        assert (deal["IS_NEW"], deal["CLOSED"], deal["OPENED"]) == ("Y", "N", "Y")
        assert (deal["OPPORTUNITY"], deal["CURRENCY_ID"]) == ("0.00", "RUB")
        assert deal["BEGINDATE"] == date_field(0)
        assert deal["CLOSEDATE"] == date_field(7)
        assert deal["ASSIGNED_BY_ID"] == deal["CREATED_BY_ID"] == "1"
        assert deal["DATE_CREATE"].endswith("+03:00")
        assert deal["LEAD_ID"] is None
        assert deal["COMPANY_ID"] is None

    def test_unknown_miscased_and_read_only_keys_are_dropped_silently(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = {
            "TITLE": "Kept",
            "title": "miscased",
            "opportunity": 99,
            "NO_SUCH_FIELD": "x",
            "DATE_CREATE": "2020-01-01T00:00:00+03:00",
            "STAGE_SEMANTIC_ID": "S",
            "ID": 500,
        }

        deal_id = sandbox.result("crm.deal.add", {"fields": fields})

        deal = sandbox.result("crm.deal.get", {"id": deal_id})
        assert deal_id == 1
        assert deal["TITLE"] == "Kept"
        assert deal["OPPORTUNITY"] == "0.00"
        assert not deal["DATE_CREATE"].startswith("2020")
        assert deal["STAGE_SEMANTIC_ID"] == "P"
        assert "NO_SUCH_FIELD" not in deal

    def test_top_level_names_are_read_in_lower_upper_and_title_case(
        self, sandbox: RunningSandbox
    ) -> None:
        for name in ("fields", "FIELDS", "Fields"):
            deal_id = sandbox.result("crm.deal.add", {name: {"TITLE": name}})
            assert sandbox.result("crm.deal.get", {"ID": deal_id})["TITLE"] == name

    def test_php_form_bodies_and_get_queries_are_read(
        self, sandbox: RunningSandbox
    ) -> None:
        posted = sandbox.http.post(
            "/rest/1/sandbox/crm.deal.add",
            data={"fields[TITLE]": "Form", "fields[OPPORTUNITY]": "1500,5"},
        )
        queried = sandbox.http.get(
            "/rest/1/sandbox/crm.deal.add.json",
            params={"fields[TITLE]": "Query", "fields[ORIGIN_ID]": "intake-7"},
        )

        assert posted.json()["result"] == 1
        assert queried.json()["result"] == 2
        first = sandbox.result("crm.deal.get", {"id": 1})
        second = sandbox.result("crm.deal.get", {"id": 2})
        assert (first["TITLE"], first["OPPORTUNITY"]) == ("Form", "1500.50")
        assert (second["TITLE"], second["ORIGIN_ID"]) == ("Query", "intake-7")

    def test_money_and_ids_are_stored_as_strings(self, sandbox: RunningSandbox) -> None:
        fields = {"OPPORTUNITY": 19999.99, "ASSIGNED_BY_ID": 7, "PROBABILITY": "99"}

        deal = sandbox.result(
            "crm.deal.get", {"id": sandbox.result("crm.deal.add", {"fields": fields})}
        )

        assert deal["OPPORTUNITY"] == "19999.99"
        assert deal["ASSIGNED_BY_ID"] == "7"
        assert deal["PROBABILITY"] == "99"

    def test_dates_are_read_with_the_portal_zone_and_printed_with_its_offset(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = {"BEGINDATE": "30.08.2024", "CLOSEDATE": "2024-09-09T23:30:00+02:00"}

        deal = sandbox.result(
            "crm.deal.get", {"id": sandbox.result("crm.deal.add", {"fields": fields})}
        )

        assert deal["BEGINDATE"] == "2024-08-30T03:00:00+03:00"
        # 23:30 at +02:00 is already 10 September in Moscow.
        assert deal["CLOSEDATE"] == "2024-09-10T03:00:00+03:00"

    def test_an_unparsable_date_is_dropped(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result(
            "crm.deal.add", {"fields": {"BEGINDATE": "someday", "TITLE": "x"}}
        )

        assert sandbox.result("crm.deal.get", {"id": deal_id})["BEGINDATE"] == (
            date_field(0)
        )

    def test_a_final_stage_closes_the_deal_today(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"STAGE_ID": "WON"}})

        deal = sandbox.result("crm.deal.get", {"id": deal_id})
        assert (deal["STAGE_ID"], deal["STAGE_SEMANTIC_ID"]) == ("WON", "S")
        assert (deal["CLOSED"], deal["IS_NEW"]) == ("Y", "N")
        assert deal["CLOSEDATE"] == date_field(0)

    def test_an_unknown_stage_falls_back_to_the_first_stage(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"STAGE_ID": "C9:NOPE"}})

        assert sandbox.result("crm.deal.get", {"id": deal_id})["STAGE_ID"] == "NEW"

    def test_a_pipeline_deal_starts_in_its_first_stage(
        self, sandbox: RunningSandbox
    ) -> None:
        created = sandbox.result(
            "crm.category.add", {"entityTypeId": 2, "fields": {"name": "Visits"}}
        )
        category_id = created["category"]["id"]

        deal_id = sandbox.result(
            "crm.deal.add", {"fields": {"CATEGORY_ID": category_id}}
        )

        deal = sandbox.result("crm.deal.get", {"id": deal_id})
        assert deal["CATEGORY_ID"] == str(category_id)
        assert deal["STAGE_ID"] == f"C{category_id}:NEW"

    def test_an_unknown_pipeline_becomes_the_default_one(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"CATEGORY_ID": 42}})

        assert sandbox.result("crm.deal.get", {"id": deal_id})["CATEGORY_ID"] == "0"

    def test_fields_that_are_not_an_array_are_an_error(
        self, sandbox: RunningSandbox
    ) -> None:
        status, body = error_of(sandbox.call("crm.deal.add", {"fields": "TITLE"}))

        assert status == 400
        assert body == {
            "error": "",
            "error_description": "Parameter 'fields' must be array.",
        }

    def test_params_that_are_not_an_array_are_an_error(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.deal.add", {"fields": {}, "params": "N"})

        assert error_of(response) == (
            400,
            {"error": "", "error_description": "Parameter 'params' must be array."},
        )


class TestDealGet:
    def test_matches_the_recorded_answer(self, sandbox: RunningSandbox) -> None:
        fields = {
            "TITLE": "New Deal #1",
            "COMPANY_ID": 9,
            "CONTACT_ID": 84,
            "PROBABILITY": 99,
            "COMMENTS": "[B]Example comment[/B]",
            "ADDITIONAL_INFO": "Additional information",
            "SOURCE_ID": "CALLBACK",
            "SOURCE_DESCRIPTION": "Additional source information",
            "UTM_SOURCE": "google",
            "UTM_MEDIUM": "CPC",
        }
        deal_id = sandbox.result("crm.deal.add", {"fields": fields})

        response = sandbox.call("crm.deal.get", {"id": deal_id})

        fixture = recorded("crm.deal.get.response.json")
        assert response.status_code == 200
        assert (
            shape_differences(
                response.json(),
                fixture,
                allow_missing=frozenset({"PARENT_ID_1220", "UF_CRM_1721244482250"}),
            )
            == []
        )
        assert list(response.json()["result"]) == [
            key
            for key in fixture["result"]
            if key not in ("PARENT_ID_1220", "UF_CRM_1721244482250")
        ]

    def test_an_unknown_id_is_the_recorded_not_found(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.deal.get", {"id": 999})

        assert response.status_code == 400
        assert response.json() == recorded("crm.lead.get.error-not-found.json")

    @pytest.mark.parametrize("bad", ["abc", 0, -3, ""])
    def test_a_bad_id_is_not_defined_or_invalid(
        self, sandbox: RunningSandbox, bad: Any
    ) -> None:
        response = sandbox.call("crm.deal.get", {"id": bad})

        assert error_of(response) == (
            400,
            {"error": "", "error_description": "ID is not defined or invalid."},
        )

    def test_user_fields_are_returned(self, sandbox: RunningSandbox) -> None:
        add_user_field(
            sandbox,
            {
                "ENTITY_ID": "CRM_DEAL",
                "FIELD_NAME": "UF_CRM_NOTE",
                "USER_TYPE_ID": "string",
            },
        )
        deal_id = sandbox.result("crm.deal.add", {"fields": {"UF_CRM_NOTE": "Hello"}})

        deal = sandbox.result("crm.deal.get", {"id": deal_id})

        assert deal["UF_CRM_NOTE"] == "Hello"


class TestDealUpdate:
    def test_answers_true_and_changes_the_fields(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Before"}})

        result = sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"TITLE": "After"}}
        )

        assert result is True
        assert sandbox.result("crm.deal.get", {"id": deal_id})["TITLE"] == "After"

    def test_a_blank_title_or_date_is_ignored(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Kept"}})
        before = sandbox.result("crm.deal.get", {"id": deal_id})

        sandbox.result(
            "crm.deal.update",
            {"id": deal_id, "fields": {"TITLE": " ", "CLOSEDATE": ""}},
        )

        after = sandbox.result("crm.deal.get", {"id": deal_id})
        assert (after["TITLE"], after["CLOSEDATE"]) == ("Kept", before["CLOSEDATE"])

    def test_category_cannot_be_changed(self, sandbox: RunningSandbox) -> None:
        sandbox.result("crm.category.add", {"entityTypeId": 2, "fields": {"name": "B"}})
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})

        sandbox.result("crm.deal.update", {"id": deal_id, "fields": {"CATEGORY_ID": 1}})

        assert sandbox.result("crm.deal.get", {"id": deal_id})["CATEGORY_ID"] == "0"

    def test_a_stage_move_updates_semantics_and_the_move_stamp(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})

        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "LOSE"}}
        )

        deal = sandbox.result("crm.deal.get", {"id": deal_id})
        assert (deal["STAGE_ID"], deal["STAGE_SEMANTIC_ID"]) == ("LOSE", "F")
        assert (deal["CLOSED"], deal["IS_NEW"]) == ("Y", "N")
        assert deal["MOVED_BY_ID"] == "1"

    def test_an_unknown_stage_is_ignored(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"STAGE_ID": "EXECUTING"}})

        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "NOPE"}}
        )

        assert (
            sandbox.result("crm.deal.get", {"id": deal_id})["STAGE_ID"] == "EXECUTING"
        )

    def test_an_unknown_id_is_not_found(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.deal.update", {"id": 77, "fields": {"TITLE": "x"}})

        assert error_of(response) == (
            400,
            {"error": "", "error_description": "Not found"},
        )

    def test_a_form_encoded_update_reads_bracketed_fields(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})

        response = sandbox.http.post(
            "/rest/1/sandbox/crm.deal.update",
            data={"id": str(deal_id), "fields[STAGE_ID]": "PREPARATION"},
        )

        assert response.json()["result"] is True
        assert (
            sandbox.result("crm.deal.get", {"id": deal_id})["STAGE_ID"] == "PREPARATION"
        )


class TestDealDelete:
    def test_answers_true_and_the_deal_is_gone(self, sandbox: RunningSandbox) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})

        assert sandbox.result("crm.deal.delete", {"id": deal_id}) is True
        assert sandbox.call("crm.deal.get", {"id": deal_id}).status_code == 400
        assert history(sandbox) == []

    def test_an_unknown_id_is_not_found(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.deal.delete", {"id": 5})

        assert error_of(response) == (
            400,
            {"error": "", "error_description": "Not found"},
        )


class TestFields:
    def test_deal_fields_match_the_recorded_metadata(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.deal.fields")

        fixture = recorded("crm.deal.fields.response.json")
        assert shape_differences(response.json(), fixture) == []
        assert response.json()["result"] == fixture["result"]

    @pytest.mark.parametrize(
        ("entity", "field", "flag"),
        [
            ("lead", "STATUS_ID", "statusType"),
            ("lead", "PHONE", "isMultiple"),
            ("contact", "LAST_NAME", "type"),
            ("company", "TITLE", "isRequired"),
        ],
    )
    def test_other_entities_describe_their_fields(
        self, sandbox: RunningSandbox, entity: str, field: str, flag: str
    ) -> None:
        described = sandbox.result(f"crm.{entity}.fields")

        assert described[field][flag] in ("STATUS", True, "string")
        assert described["ID"]["isReadOnly"] is True

    def test_user_fields_are_described_as_dynamic(
        self, sandbox: RunningSandbox
    ) -> None:
        add_user_field(
            sandbox,
            {
                "ENTITY_ID": "CRM_DEAL",
                "FIELD_NAME": "UF_CRM_VISIT",
                "USER_TYPE_ID": "datetime",
                "MANDATORY": "Y",
                "LIST_COLUMN_LABEL": "Visit",
                "EDIT_FORM_LABEL": "Visit",
                "LIST_FILTER_LABEL": "Visit",
                "SETTINGS": {"DEFAULT_VALUE": ""},
            },
        )

        described = sandbox.result("crm.deal.fields")["UF_CRM_VISIT"]

        assert described == {
            "type": "datetime",
            "isRequired": True,
            "isReadOnly": False,
            "isImmutable": False,
            "isMultiple": False,
            "isDynamic": True,
            "title": "UF_CRM_VISIT",
            "listLabel": "Visit",
            "formLabel": "Visit",
            "filterLabel": "Visit",
            "settings": {"DEFAULT_VALUE": ""},
        }


class TestLead:
    def test_matches_the_recorded_answer(self, sandbox: RunningSandbox) -> None:
        fields = {
            "NAME": "",
            "SOURCE_ID": "1",
            "STATUS_ID": "IN_PROCESS",
            "CURRENCY_ID": "EUR",
            "PHONE": [{"VALUE": "+79990000000", "VALUE_TYPE": "OTHER"}],
            "IM": [{"VALUE": "imol|livechat|1|67|21", "VALUE_TYPE": "OPENLINE"}],
        }
        lead_id = sandbox.result("crm.lead.add", {"fields": fields})

        response = sandbox.call("crm.lead.get", {"id": lead_id})

        fixture = recorded("crm.lead.get.response.json")
        assert shape_differences(response.json(), fixture, allow_missing=QUIET) == []
        assert list(response.json()["result"]) == list(fixture["result"])
        lead = response.json()["result"]
        assert (lead["HAS_PHONE"], lead["HAS_EMAIL"], lead["HAS_IMOL"]) == (
            "Y",
            "N",
            "Y",
        )
        assert lead["IM"][0]["TYPE_ID"] == "IM"

    def test_a_new_lead_is_new_in_progress_and_titled(
        self, sandbox: RunningSandbox
    ) -> None:
        lead_id = sandbox.result("crm.lead.add", {"fields": {"NAME": "Test"}})

        lead = sandbox.result("crm.lead.get", {"id": lead_id})
        assert lead["TITLE"] == f"Lead #{lead_id}"
        assert (lead["STATUS_ID"], lead["STATUS_SEMANTIC_ID"]) == ("NEW", "P")
        assert lead["DATE_CLOSED"] == ""
        assert lead["BIRTHDATE"] == ""

    def test_a_status_move_to_junk_closes_the_lead(
        self, sandbox: RunningSandbox
    ) -> None:
        lead_id = sandbox.result("crm.lead.add", {"fields": {}})

        sandbox.result(
            "crm.lead.update", {"id": lead_id, "fields": {"STATUS_ID": "JUNK"}}
        )

        lead = sandbox.result("crm.lead.get", {"id": lead_id})
        assert lead["STATUS_SEMANTIC_ID"] == "F"
        assert lead["DATE_CLOSED"].endswith("+03:00")


class TestContactMultifields:
    @pytest.fixture
    def contact_id(self, sandbox: RunningSandbox) -> int:
        phones = [{"VALUE": str(n), "VALUE_TYPE": "WORK"} for n in (111111, 222222)]
        phones += [{"VALUE": str(n), "VALUE_TYPE": "WORK"} for n in (333333, 44444)]
        created: int = sandbox.result(
            "crm.contact.add", {"fields": {"NAME": "Test", "PHONE": phones}}
        )
        return created

    def test_items_read_back_with_id_value_type_value_and_type(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        phones = sandbox.result("crm.contact.get", {"id": contact_id})["PHONE"]

        assert phones[0] == {
            "ID": "1",
            "VALUE_TYPE": "WORK",
            "VALUE": "111111",
            "TYPE_ID": "PHONE",
        }
        assert [phone["ID"] for phone in phones] == ["1", "2", "3", "4"]

    def test_the_recorded_delete_request_leaves_the_unmentioned_item(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        request = recorded("crm.contact.update.multifield-delete.request.json")
        for item, item_id in zip(request["fields"]["PHONE"], (1, 2, 3), strict=True):
            item["ID"] = item_id

        sandbox.result("crm.contact.update", {"id": contact_id, **request})

        phones = sandbox.result("crm.contact.get", {"id": contact_id})["PHONE"]
        assert phones == [
            {"ID": "4", "VALUE_TYPE": "WORK", "VALUE": "44444", "TYPE_ID": "PHONE"}
        ]

    def test_an_item_with_an_id_is_changed_and_one_without_is_appended(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        phones = [
            {"ID": 2, "VALUE": "+79990000002", "VALUE_TYPE": "MOBILE"},
            {"VALUE": "+79990000005"},
        ]

        sandbox.result(
            "crm.contact.update", {"id": contact_id, "fields": {"PHONE": phones}}
        )

        after = sandbox.result("crm.contact.get", {"id": contact_id})["PHONE"]
        assert after[1] == {
            "ID": "2",
            "VALUE_TYPE": "MOBILE",
            "VALUE": "+79990000002",
            "TYPE_ID": "PHONE",
        }
        assert after[-1]["VALUE"] == "+79990000005"
        assert after[-1]["VALUE_TYPE"] == "WORK"
        assert len(after) == 5

    def test_bracketed_form_items_are_written(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post(
            "/rest/1/sandbox/crm.contact.add",
            content=(
                "fields[NAME]=Test&fields[PHONE][0][VALUE]=%2B79990000001"
                "&fields[PHONE][0][VALUE_TYPE]=MOBILE"
                "&fields[EMAIL][0][VALUE]=test%40example.com"
            ),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

        contact = sandbox.result("crm.contact.get", {"id": response.json()["result"]})
        assert contact["PHONE"][0]["VALUE"] == "+79990000001"
        assert contact["PHONE"][0]["VALUE_TYPE"] == "MOBILE"
        assert contact["EMAIL"][0]["VALUE"] == "test@example.com"
        assert (contact["HAS_PHONE"], contact["HAS_EMAIL"]) == ("Y", "Y")

    def test_lists_carry_multifields_only_when_selected(
        self, sandbox: RunningSandbox, contact_id: int
    ) -> None:
        plain = sandbox.result("crm.contact.list", {"select": ["*"]})
        named = sandbox.result("crm.contact.list", {"select": ["NAME", "PHONE"]})

        assert "PHONE" not in plain[0]
        assert named == [
            {
                "NAME": "Test",
                "ID": str(contact_id),
                "PHONE": sandbox.result("crm.contact.get", {"id": contact_id})["PHONE"],
            }
        ]

    def test_a_contact_without_a_name_gets_a_default_last_name(
        self, sandbox: RunningSandbox
    ) -> None:
        contact_id = sandbox.result("crm.contact.add", {"fields": {}})

        contact = sandbox.result("crm.contact.get", {"id": contact_id})
        assert contact["LAST_NAME"] == f"Contact #{contact_id}"
        assert "PHONE" not in contact


class TestCompany:
    def test_add_get_update_delete_round_trip(self, sandbox: RunningSandbox) -> None:
        company_id = sandbox.result(
            "crm.company.add",
            {"fields": {"TITLE": "Salon", "EMAIL": [{"VALUE": "a@example.com"}]}},
        )

        sandbox.result(
            "crm.company.update", {"id": company_id, "fields": {"TITLE": "Spa"}}
        )
        company = sandbox.result("crm.company.get", {"id": company_id})

        assert (company["ID"], company["TITLE"]) == (str(company_id), "Spa")
        assert company["HAS_EMAIL"] == "Y"
        assert sandbox.result("crm.company.delete", {"id": company_id}) is True


class TestStageHistory:
    def test_creation_and_moves_write_rows_in_the_list_shape(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {}})
        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "EXECUTING"}}
        )
        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"TITLE": "no move"}}
        )
        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "WON"}}
        )

        rows = history(sandbox)

        assert [(row["TYPE_ID"], row["STAGE_ID"]) for row in rows] == [
            (1, "NEW"),
            (2, "EXECUTING"),
            (3, "WON"),
        ]
        recorded_row = recorded("crm.stagehistory.list.response.json")["result"][
            "items"
        ][0]
        assert shape_differences(rows[0], recorded_row) == []
        assert rows[0]["ENTITY_TYPE_ID"] == 2
        assert rows[2]["STAGE_SEMANTIC_ID"] == "S"
        assert rows[0]["CREATED_TIME"].endswith("+03:00")

    def test_lead_rows_carry_status_fields(self, sandbox: RunningSandbox) -> None:
        lead_id = sandbox.result(
            "crm.lead.add", {"fields": {"STATUS_ID": "IN_PROCESS"}}
        )

        [row] = history(sandbox)

        assert row == {
            "ID": 1,
            "TYPE_ID": 1,
            "OWNER_ID": lead_id,
            "CREATED_TIME": row["CREATED_TIME"],
            "STATUS_SEMANTIC_ID": "P",
            "STATUS_ID": "IN_PROCESS",
            "ENTITY_TYPE_ID": 1,
        }


class TestEvents:
    def test_writes_raise_add_update_and_delete_events_with_the_id(
        self, sandbox: RunningSandbox
    ) -> None:
        for event in ("ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"):
            sandbox.result(
                "event.bind", {"event": event, "handler": UNREACHABLE_HANDLER}
            )

        deal_id = sandbox.result("crm.deal.add", {"fields": {}})
        sandbox.result("crm.deal.update", {"id": deal_id, "fields": {"TITLE": "x"}})
        sandbox.result("crm.deal.delete", {"id": deal_id})

        assert events_after(sandbox) == [
            ("ONCRMDEALADD", {"FIELDS": {"ID": str(deal_id)}}),
            ("ONCRMDEALUPDATE", {"FIELDS": {"ID": str(deal_id)}}),
            ("ONCRMDEALDELETE", {"FIELDS": {"ID": str(deal_id)}}),
        ]

    def test_leads_and_contacts_raise_their_own_events(
        self, sandbox: RunningSandbox
    ) -> None:
        for event in ("ONCRMLEADADD", "ONCRMCONTACTUPDATE"):
            sandbox.result(
                "event.bind", {"event": event, "handler": UNREACHABLE_HANDLER}
            )

        sandbox.result("crm.lead.add", {"fields": {}})
        contact_id = sandbox.result("crm.contact.add", {"fields": {"NAME": "A"}})
        sandbox.result(
            "crm.contact.update", {"id": contact_id, "fields": {"NAME": "B"}}
        )

        assert [event for event, _ in events_after(sandbox)] == [
            "ONCRMLEADADD",
            "ONCRMCONTACTUPDATE",
        ]


class TestIdempotencyKeys:
    def test_originator_and_origin_ids_are_written_and_filterable(
        self, sandbox: RunningSandbox
    ) -> None:
        keys = {"ORIGINATOR_ID": "leadloop", "ORIGIN_ID": "intake-42"}
        sandbox.result("crm.deal.add", {"fields": {"TITLE": "other"}})
        deal_id = sandbox.result("crm.deal.add", {"fields": keys})

        found = sandbox.result(
            "crm.deal.list", {"filter": keys, "select": ["ID", "ORIGIN_ID"]}
        )

        assert found == [{"ID": str(deal_id), "ORIGIN_ID": "intake-42"}]


class TestUserFieldValues:
    @pytest.fixture(autouse=True)
    def _user_fields(self, sandbox: RunningSandbox) -> None:
        rows = [
            ("UF_CRM_PRICE", "double", {}),
            ("UF_CRM_IS_HOT", "boolean", {"DEFAULT_VALUE": 0}),
            ("UF_CRM_BUDGET", "money", {}),
            ("UF_CRM_VISIT", "datetime", {}),
        ]
        current = snapshot(sandbox)["userfields"]
        for index, (name, type_id, settings) in enumerate(rows, start=len(current) + 1):
            current.append(
                {
                    "ID": str(index),
                    "ENTITY_ID": "CRM_DEAL",
                    "FIELD_NAME": name,
                    "USER_TYPE_ID": type_id,
                    "MULTIPLE": "N",
                    "MANDATORY": "N",
                    "SETTINGS": settings,
                }
            )
        sandbox.load({"userfields": current})

    def test_values_read_back_as_strings(self, sandbox: RunningSandbox) -> None:
        fields = {
            "UF_CRM_PRICE": 134.43,
            "UF_CRM_IS_HOT": "Y",
            "UF_CRM_BUDGET": "1500|RUB",
            "UF_CRM_VISIT": "2026-05-04 15:00:00",
        }

        deal = sandbox.result(
            "crm.deal.get", {"id": sandbox.result("crm.deal.add", {"fields": fields})}
        )

        assert deal["UF_CRM_PRICE"] == "134.43"
        assert deal["UF_CRM_IS_HOT"] == "1"
        assert deal["UF_CRM_BUDGET"] == "1500.00|RUB"
        assert deal["UF_CRM_VISIT"] == "2026-05-04T15:00:00+03:00"

    def test_an_unset_boolean_takes_its_default(self, sandbox: RunningSandbox) -> None:
        deal = sandbox.result(
            "crm.deal.get", {"id": sandbox.result("crm.deal.add", {"fields": {}})}
        )

        assert deal["UF_CRM_IS_HOT"] == "0"
        assert deal["UF_CRM_PRICE"] is None


class TestFindByCommunication:
    @pytest.fixture(autouse=True)
    def _people(self, sandbox: RunningSandbox) -> None:
        phone = {"VALUE": "+7 (999) 000-00-01", "VALUE_TYPE": "WORK"}
        for _ in range(2):
            sandbox.result(
                "crm.contact.add", {"fields": {"NAME": "A", "PHONE": [phone]}}
            )
        sandbox.result(
            "crm.lead.add",
            {"fields": {"PHONE": [{"VALUE": "89990000001 доб. 12"}]}},
        )
        sandbox.result(
            "crm.contact.add",
            {"fields": {"EMAIL": [{"VALUE": "Test@Example.com"}]}},
        )

    def test_matches_the_recorded_answer(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.duplicate.findbycomm",
            {"entity_type": "CONTACT", "type": "PHONE", "values": ["79990000001"]},
        )

        fixture = recorded("crm.duplicate.findbycomm.response.json")
        assert shape_differences(response.json(), fixture, allow_missing=QUIET) == []
        assert response.json()["result"] == {"CONTACT": [1, 2]}

    def test_phone_formatting_and_extensions_do_not_matter(
        self, sandbox: RunningSandbox
    ) -> None:
        found = sandbox.result(
            "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["8-999-000-00-01"]}
        )

        assert found == {"LEAD": [1], "CONTACT": [1, 2]}

    def test_emails_compare_without_case(self, sandbox: RunningSandbox) -> None:
        found = sandbox.result(
            "crm.duplicate.findbycomm",
            {"type": "EMAIL", "values": ["", "test@example.COM"]},
        )

        assert found == {"CONTACT": [3]}

    def test_no_hit_is_an_empty_list(self, sandbox: RunningSandbox) -> None:
        found = sandbox.result(
            "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+15550000000"]}
        )

        assert found == []

    def test_only_the_first_twenty_values_are_used(
        self, sandbox: RunningSandbox
    ) -> None:
        values = [f"+7999111{n:04d}" for n in range(20)] + ["+79990000001"]

        found = sandbox.result(
            "crm.duplicate.findbycomm", {"type": "PHONE", "values": values}
        )

        assert found == []

    @pytest.mark.parametrize(
        ("params", "description"),
        [
            ({"values": ["1"]}, "Communication type is not defined."),
            (
                {"type": "FAX", "values": ["1"]},
                "Communication type 'FAX' is not supported in current context.",
            ),
            ({"type": "PHONE"}, "Communication values is not defined."),
            (
                {"type": "PHONE", "values": ["1"], "entity_type": "DEAL"},
                "Deal is not supported in current context.",
            ),
        ],
    )
    def test_bad_requests_are_legacy_errors(
        self, sandbox: RunningSandbox, params: dict[str, Any], description: str
    ) -> None:
        response = sandbox.call("crm.duplicate.findbycomm", params)

        assert error_of(response) == (
            400,
            {"error": "", "error_description": description},
        )
