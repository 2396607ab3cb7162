"""Directories over HTTP: statuses, pipelines, user fields and the CRM mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def status_ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["STATUS_ID"] for row in rows]


class TestFreshPortal:
    def test_default_pipeline_has_the_eight_stages_in_sort_order(
        self, sandbox: RunningSandbox
    ) -> None:
        rows = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}
        )

        assert status_ids(rows) == [
            "NEW",
            "PREPARATION",
            "PREPAYMENT_INVOICE",
            "EXECUTING",
            "FINAL_INVOICE",
            "WON",
            "LOSE",
            "APOLOGY",
        ]
        semantics = {row["STATUS_ID"]: row["SEMANTICS"] for row in rows}
        assert semantics["WON"] == "S"
        assert semantics["LOSE"] == semantics["APOLOGY"] == "F"
        assert semantics["NEW"] is None

    def test_lead_statuses_end_with_converted_and_junk(
        self, sandbox: RunningSandbox
    ) -> None:
        rows = sandbox.result("crm.status.list", {"filter": {"ENTITY_ID": "STATUS"}})

        assert status_ids(rows) == [
            "NEW",
            "IN_PROCESS",
            "PROCESSED",
            "CONVERTED",
            "JUNK",
        ]
        assert [row["SEMANTICS"] for row in rows[-2:]] == ["S", "F"]

    def test_sources_carry_the_portal_sorts(self, sandbox: RunningSandbox) -> None:
        rows = sandbox.result("crm.status.list", {"filter": {"ENTITY_ID": "SOURCE"}})

        sorts = {row["STATUS_ID"]: row["SORT"] for row in rows}
        assert sorts["CALL"] == "10"
        assert sorts["WEBFORM"] == "75"
        assert sorts["BOOKING"] == "81"
        assert "EXTRA" not in rows[0]

    def test_deal_types_and_other_directories_exist(
        self, sandbox: RunningSandbox
    ) -> None:
        for entity_id in ("CONTACT_TYPE", "COMPANY_TYPE", "HONORIFIC"):
            assert sandbox.result(
                "crm.status.list", {"filter": {"ENTITY_ID": entity_id}}
            )
        deal_types = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_TYPE"}}
        )
        assert status_ids(deal_types) == ["SALE", "COMPLEX", "SERVICE"]

    def test_crm_mode_is_classic(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.settings.mode.get")

        assert response.status_code == 200
        assert response.json()["result"] == 1


class TestStatusList:
    def test_matches_the_recorded_deal_stage_answer(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}
        )
        body = response.json()
        recording = recorded("crm.status.list.deal-stage.response.json")

        assert shape_differences(body["result"], recording["result"]) == []
        assert body["total"] == 8
        assert "next" not in body

    def test_unknown_filter_key_is_dropped_silently(
        self, sandbox: RunningSandbox
    ) -> None:
        everything = sandbox.call("crm.status.list").json()
        widened = sandbox.call(
            "crm.status.list", {"filter": {"NO_SUCH_FIELD": "x"}}
        ).json()

        assert widened["total"] == everything["total"] == len(everything["result"])
        assert widened["total"] > 40

    def test_order_desc_reverses_sort(self, sandbox: RunningSandbox) -> None:
        rows = sandbox.result(
            "crm.status.list",
            {"filter": {"ENTITY_ID": "DEAL_STAGE"}, "order": {"SORT": "DESC"}},
        )

        assert rows[0]["STATUS_ID"] == "APOLOGY"

    def test_non_array_filter_is_a_legacy_error(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.status.list", {"filter": "ENTITY_ID"})

        assert response.status_code == 400
        assert response.json() == {
            "error": "",
            "error_description": "Parameter 'filter' must be array.",
        }

    def test_form_encoded_filter_works(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post(
            "/rest/1/sandbox/crm.status.list",
            data={"filter[ENTITY_ID]": "DEAL_TYPE"},
        )

        assert [row["STATUS_ID"] for row in response.json()["result"]] == [
            "SALE",
            "COMPLEX",
            "SERVICE",
        ]


class TestStatusAdd:
    def test_adds_a_stage_and_returns_its_int_id(self, sandbox: RunningSandbox) -> None:
        new_id = sandbox.result(
            "crm.status.add",
            {
                "fields": {
                    "ENTITY_ID": "DEAL_STAGE",
                    "STATUS_ID": "UC_DEMO",
                    "NAME": "Demo booked",
                    "SORT": 45,
                }
            },
        )

        assert isinstance(new_id, int)
        rows = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE"}}
        )
        assert status_ids(rows).index("UC_DEMO") == 4
        added = rows[4]
        assert added["ID"] == str(new_id)
        assert added["SYSTEM"] == "N"
        assert added["EXTRA"]["SEMANTICS"] == "process"

    def test_stage_of_a_pipeline_gets_its_prefix(self, sandbox: RunningSandbox) -> None:
        pipeline = sandbox.result(
            "crm.category.add", {"entityTypeId": 2, "fields": {"name": "Partners"}}
        )["category"]["id"]

        sandbox.result(
            "crm.status.add",
            {
                "fields": {
                    "ENTITY_ID": f"DEAL_STAGE_{pipeline}",
                    "STATUS_ID": "CHECK",
                    "NAME": "Check",
                }
            },
        )

        rows = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": f"DEAL_STAGE_{pipeline}"}}
        )
        assert f"C{pipeline}:CHECK" in status_ids(rows)
        assert {row["CATEGORY_ID"] for row in rows} == {str(pipeline)}

    def test_missing_required_fields_are_listed_together(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.status.add", {"fields": {"NAME": "x"}})

        assert response.status_code == 400
        assert response.json()["error_description"] == (
            "The field ENTITY_ID is required.\nThe field STATUS_ID is required."
        )

    def test_unknown_directory_is_refused(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.status.add",
            {"fields": {"ENTITY_ID": "DEAL_STAGE_77", "STATUS_ID": "X", "NAME": "X"}},
        )

        assert response.status_code == 400
        assert response.json()["error_description"] == (
            "Specified entity type is not supported."
        )


class TestCategories:
    def test_list_matches_the_recorded_answer(self, sandbox: RunningSandbox) -> None:
        sandbox.result(
            "crm.category.add",
            {"entityTypeId": 2, "fields": {"name": "Funnel", "sort": 200}},
        )

        body = sandbox.call("crm.category.list", {"entityTypeId": 2}).json()
        recording = recorded("crm.category.list.deal.response.json")

        assert shape_differences(body["result"], recording["result"]) == []
        assert body["total"] == 2
        general = body["result"]["categories"][-1]
        assert general == {
            "id": 0,
            "name": "General",
            "sort": 300,
            "entityTypeId": 2,
            "isDefault": "Y",
        }

    def test_add_creates_the_pipeline_stages(self, sandbox: RunningSandbox) -> None:
        category = sandbox.result(
            "crm.category.add", {"entityTypeId": 2, "fields": {"name": "B2B"}}
        )["category"]

        assert category["isDefault"] == "N"
        assert category["sort"] == 500
        stages = sandbox.result(
            "crm.status.list",
            {"filter": {"ENTITY_ID": f"DEAL_STAGE_{category['id']}"}},
        )
        assert status_ids(stages)[0] == f"C{category['id']}:NEW"
        assert len(stages) == 8

    def test_get_answers_one_category(self, sandbox: RunningSandbox) -> None:
        body = sandbox.call("crm.category.get", {"entityTypeId": 2, "id": 0}).json()

        assert body["result"]["category"]["name"] == "General"

    def test_get_of_a_missing_category_is_not_found(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.category.get", {"entityTypeId": 2, "id": 99})

        assert response.status_code == 400
        assert response.json()["error"] == "NOT_FOUND"

    def test_missing_entity_type_is_error_100(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.category.list", {"EntityTypeId": 2})

        assert response.status_code == 400
        assert response.json() == {
            "error": "100",
            "error_description": "Could not find value for parameter {entityTypeId}",
        }

    def test_leads_have_no_pipelines(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.category.list", {"entityTypeId": 1})

        assert response.status_code == 400
        assert response.json()["error"] == "ENTITY_TYPE_NOT_SUPPORTED"

    def test_unknown_type_is_not_found(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.category.list", {"entityTypeId": 999})

        assert response.status_code == 400
        assert response.json()["error"] == "NOT_FOUND"

    def test_add_without_name_is_refused(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.category.add", {"entityTypeId": 2, "fields": {}})

        assert response.status_code == 400
        assert response.json() == {
            "error": "0",
            "error_description": "Field 'NAME' is required",
        }


class TestDealUserfields:
    def test_add_prefixes_the_name_and_returns_an_int(
        self, sandbox: RunningSandbox
    ) -> None:
        new_id = sandbox.result(
            "crm.deal.userfield.add",
            {"fields": {"FIELD_NAME": "SCORE", "USER_TYPE_ID": "double"}},
        )

        assert isinstance(new_id, int)
        rows = sandbox.result("crm.deal.userfield.list")
        assert rows[0]["FIELD_NAME"] == "UF_CRM_SCORE"
        assert rows[0]["ENTITY_ID"] == "CRM_DEAL"
        assert rows[0]["ID"] == str(new_id)

    def test_duplicate_name_is_refused(self, sandbox: RunningSandbox) -> None:
        fields = {"FIELD_NAME": "UF_CRM_SCORE", "USER_TYPE_ID": "string"}
        sandbox.result("crm.deal.userfield.add", {"fields": fields})

        response = sandbox.call("crm.deal.userfield.add", {"fields": fields})

        assert response.status_code == 400
        assert response.json()["error"] == ""
        assert "UF_CRM_SCORE" in response.json()["error_description"]

    def test_a_name_over_20_characters_with_its_prefix_is_refused(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = {"FIELD_NAME": "LEADLOOP_VISIT_AT", "USER_TYPE_ID": "datetime"}

        response = sandbox.call("crm.deal.userfield.add", {"fields": fields})
        longest = sandbox.result(
            "crm.deal.userfield.add",
            {"fields": {"FIELD_NAME": "ABCDEFGHIJKLM", "USER_TYPE_ID": "string"}},
        )

        assert response.status_code == 400
        assert "more than 20 characters" in response.json()["error_description"]
        assert isinstance(longest, int)

    def test_labels_appear_only_with_lang(self, sandbox: RunningSandbox) -> None:
        sandbox.result(
            "crm.deal.userfield.add",
            {
                "fields": {
                    "FIELD_NAME": "SOURCE_NOTE",
                    "USER_TYPE_ID": "string",
                    "LABEL": "Source note",
                }
            },
        )

        plain = sandbox.result("crm.deal.userfield.list")[0]
        labelled = sandbox.result(
            "crm.deal.userfield.list", {"filter": {"LANG": "en"}}
        )[0]

        assert "EDIT_FORM_LABEL" not in plain
        assert labelled["EDIT_FORM_LABEL"] == "Source note"
        assert labelled["SETTINGS"]["ROWS"] == 1

    def test_list_matches_the_documented_row_shape(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.result(
            "crm.deal.userfield.add",
            {"fields": {"FIELD_NAME": "FLAG", "USER_TYPE_ID": "boolean"}},
        )

        row = sandbox.result("crm.deal.userfield.list")[0]

        expected_flags = ("MULTIPLE", "MANDATORY", "SHOW_FILTER", "EDIT_IN_LIST")
        assert all(row[key] in ("Y", "N") for key in expected_flags)
        assert row["SORT"] == "100"
        assert row["XML_ID"] is None
        assert isinstance(row["SETTINGS"], dict)

    def test_missing_type_is_a_legacy_error(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call(
            "crm.deal.userfield.add", {"fields": {"FIELD_NAME": "X"}}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "",
            "error_description": "The 'USER_TYPE_ID' field is not found.",
        }

    def test_lead_fields_are_kept_apart(self, sandbox: RunningSandbox) -> None:
        sandbox.result(
            "crm.lead.userfield.add",
            {"fields": {"FIELD_NAME": "CHANNEL", "USER_TYPE_ID": "string"}},
        )

        assert sandbox.result("crm.deal.userfield.list") == []
        lead_rows = sandbox.result("crm.lead.userfield.list")
        assert lead_rows[0]["ENTITY_ID"] == "CRM_LEAD"


class TestCrmMode:
    def test_simple_mode_from_a_snapshot_answers_2(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"settings": {"crm_mode": "simple"}})

        assert sandbox.result("crm.settings.mode.get") == 2

    def test_enum_lists_both_modes(self, sandbox: RunningSandbox) -> None:
        modes = sandbox.result("crm.enum.settings.mode")

        assert [(mode["ID"], mode["NAME"]) for mode in modes] == [
            (1, "Classic CRM"),
            (2, "Simple CRM"),
        ]
