"""`crm.item.fields`: every item field described, each one the list accepts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox

ENTRY_KEYS = [
    "type",
    "isRequired",
    "isReadOnly",
    "isImmutable",
    "isMultiple",
    "isDynamic",
    "title",
    "upperName",
]


def item_fields(sandbox: RunningSandbox, **params: Any) -> dict[str, Any]:
    fields: dict[str, Any] = sandbox.result("crm.item.fields", params)["fields"]
    return fields


def add_deal_field(sandbox: RunningSandbox, name: str, user_type: str) -> None:
    response = sandbox.call(
        "crm.deal.userfield.add",
        {"fields": {"FIELD_NAME": name, "USER_TYPE_ID": user_type}},
    )
    assert response.status_code == 200, response.text


class TestItemFields:
    def test_deal_entries_carry_the_documented_keys_in_order(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = item_fields(sandbox, entityTypeId=2)

        assert fields["id"] == {
            "type": "integer",
            "isRequired": False,
            "isReadOnly": True,
            "isImmutable": False,
            "isMultiple": False,
            "isDynamic": False,
            "title": "ID",
            "upperName": "ID",
        }
        for name, entry in fields.items():
            keys = [key for key in entry if key in ENTRY_KEYS]
            assert keys == ENTRY_KEYS, name

    def test_names_are_the_item_names_with_their_upper_form(
        self, sandbox: RunningSandbox
    ) -> None:
        fields = item_fields(sandbox, entityTypeId=2)

        upper = {name: entry["upperName"] for name, entry in fields.items()}
        assert upper["createdBy"] == "CREATED_BY"
        assert upper["createdTime"] == "CREATED_TIME"
        assert upper["assignedById"] == "ASSIGNED_BY_ID"
        assert upper["stageId"] == "STAGE_ID"
        assert upper["observers"] == "OBSERVERS"
        assert "DATE_CREATE" not in fields
        assert "PHONE" not in fields

    def test_types_and_details_follow_the_engine(self, sandbox: RunningSandbox) -> None:
        fields = item_fields(sandbox, entityTypeId=2)

        assert fields["opened"]["type"] == "boolean"  # a Y/N char in crm.deal.fields
        assert fields["opportunity"]["type"] == "double"
        assert fields["stageId"]["statusType"] == "DEAL_STAGE"
        assert fields["companyId"]["settings"] == {"parentEntityTypeId": 4}
        assert fields["contactId"]["isDeprecated"] is True
        assert fields["contactIds"]["isMultiple"] is True
        assert fields["observers"]["isMultiple"] is True

    def test_a_lead_calls_its_status_the_stage(self, sandbox: RunningSandbox) -> None:
        fields = item_fields(sandbox, entityTypeId=1)

        assert fields["stageId"]["upperName"] == "STAGE_ID"
        assert fields["stageId"]["statusType"] == "STATUS"
        assert "statusId" not in fields

    def test_user_fields_are_dynamic_with_camel_case_names(
        self, sandbox: RunningSandbox
    ) -> None:
        add_deal_field(sandbox, "VISIT_AT", "datetime")

        fields = item_fields(sandbox, entityTypeId=2)
        original = item_fields(sandbox, entityTypeId=2, useOriginalUfNames="Y")

        assert fields["ufCrm_VISIT_AT"]["isDynamic"] is True
        assert fields["ufCrm_VISIT_AT"]["type"] == "datetime"
        assert fields["ufCrm_VISIT_AT"]["upperName"] == "UF_CRM_VISIT_AT"
        assert "UF_CRM_VISIT_AT" in original
        assert "ufCrm_VISIT_AT" not in original
        assert original["title"] == fields["title"]

    @pytest.mark.parametrize("entity_type_id", [1, 2, 3, 4])
    def test_every_single_valued_field_is_accepted_by_the_list_filter(
        self, sandbox: RunningSandbox, entity_type_id: int
    ) -> None:
        fields = item_fields(sandbox, entityTypeId=entity_type_id)

        for name in fields:
            response = sandbox.call(
                "crm.item.list",
                {"entityTypeId": entity_type_id, "filter": {f"!{name}": ""}},
            )
            assert response.status_code == 200, (name, response.text)

    def test_a_missing_entity_type_is_error_100(self, sandbox: RunningSandbox) -> None:
        response = sandbox.call("crm.item.fields", {})

        assert response.status_code == 400
        assert response.json()["error"] == "100"

    @pytest.mark.parametrize(
        ("entity_type_id", "error"),
        [(7, "ENTITY_TYPE_NOT_SUPPORTED"), (130, "NOT_FOUND")],
    )
    def test_types_the_portal_lacks_are_refused(
        self, sandbox: RunningSandbox, entity_type_id: int, error: str
    ) -> None:
        response = sandbox.call("crm.item.fields", {"entityTypeId": entity_type_id})

        assert response.status_code == 400
        assert response.json()["error"] == error
