"""`crm.item.*` over HTTP: typed camelCase items read from the legacy tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def a_deal(deal_id: int, **changes: Any) -> dict[str, Any]:
    """A deal row as `crm.deal.list` returns it (the recorded `crm.deal.get`)."""
    row: dict[str, Any] = dict(recorded("crm.deal.get.response.json")["result"])
    row.update(ID=str(deal_id), TITLE=f"Deal {deal_id}", **changes)
    return row


def a_lead(lead_id: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict(recorded("crm.lead.get.response.json")["result"])
    row.update(ID=str(lead_id), TITLE=f"Lead {lead_id}", **changes)
    return row


def item_ids(body: dict[str, Any]) -> list[int]:
    return [item["id"] for item in body["result"]["items"]]


@pytest.fixture
def deals(sandbox: RunningSandbox) -> RunningSandbox:
    """Deals 1..120: every third won, opportunity id*100, pipeline id % 2."""
    rows = [
        a_deal(
            deal_id,
            OPPORTUNITY=f"{deal_id * 100}.00",
            STAGE_ID="WON" if deal_id % 3 == 0 else "NEW",
            CATEGORY_ID=str(deal_id % 2),
        )
        for deal_id in range(1, 121)
    ]
    sandbox.load({"deals": rows})
    return sandbox


class TestItemGet:
    def test_deal_matches_the_recorded_item_shape(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load({"deals": [a_deal(7, LEAD_ID="102", QUOTE_ID="7")]})

        body = sandbox.call("crm.item.get", {"entityTypeId": 2, "id": 7}).json()
        recording = recorded("crm.item.add.deal.response.json")["result"]

        differences = shape_differences(
            body["result"],
            recording,
            allow_missing=frozenset({"ufCrm_1721244707107"}),
        )
        assert differences == []

    def test_values_are_typed(self, deals: RunningSandbox) -> None:
        item = deals.result("crm.item.get", {"entityTypeId": 2, "id": 7})["item"]

        assert item["id"] == 7
        assert item["opportunity"] == 700
        assert item["assignedById"] == 1
        assert item["categoryId"] == 1
        assert item["opened"] == "Y"
        assert item["createdTime"] == "2024-08-30T14:29:00+02:00"
        assert item["contactIds"] == [84]
        assert item["parentId1220"] == 22
        assert item["ufCrm_1721244482250"] == "Hello world!"
        assert item["entityTypeId"] == 2

    def test_missing_item_is_not_found(self, deals: RunningSandbox) -> None:
        response = deals.call("crm.item.get", {"entityTypeId": 2, "id": 999})

        assert response.status_code == 400
        assert response.json() == {
            "error": "NOT_FOUND",
            "error_description": "Element not found",
        }

    def test_missing_id_is_error_100(self, deals: RunningSandbox) -> None:
        response = deals.call("crm.item.get", {"entityTypeId": 2, "ID": 7})

        assert response.status_code == 400
        assert response.json()["error_description"] == (
            "Could not find value for parameter {id}"
        )


class TestItemListShape:
    def test_lead_list_matches_the_recording(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"leads": [a_lead(253, OPPORTUNITY="19000.00")]})
        select = ["id", "assignedById", "stageId", "opportunity", "sourceId", "title"]
        select += ["name", "lastName", "isManualOpportunity"]

        body = sandbox.call(
            "crm.item.list", {"entityTypeId": 1, "select": select}
        ).json()
        recording = recorded("crm.item.list.lead.response.json")

        assert shape_differences(body["result"], recording["result"]) == []
        item = body["result"]["items"][0]
        assert set(item) == set(select)
        assert item["stageId"] == "IN_PROCESS"
        assert item["opportunity"] == 19000
        assert body["total"] == 1

    def test_default_select_is_everything(self, deals: RunningSandbox) -> None:
        item = deals.result("crm.item.list", {"entityTypeId": 2})["items"][0]

        assert {"id", "title", "stageId", "observers", "entityTypeId"} <= set(item)


class TestItemListFilter:
    def test_operators_on_camel_case_names(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list",
            {
                "entityTypeId": 2,
                "filter": {">=opportunity": 11000, "@stageId": ["WON"]},
                "select": ["id"],
            },
        ).json()

        assert item_ids(body) == [111, 114, 117, 120]
        assert body["total"] == 4

    def test_logic_or_nesting(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list",
            {
                "entityTypeId": 2,
                "filter": {
                    "0": {"logic": "OR", "0": {"<id": 3}, "1": {">id": 118}},
                    "!=stageId": "WON",
                },
                "select": ["id"],
            },
        ).json()

        assert item_ids(body) == [1, 2, 119]

    def test_form_encoded_keyset_filter(self, deals: RunningSandbox) -> None:
        response = deals.http.post(
            "/rest/1/sandbox/crm.item.list",
            data={
                "entityTypeId": "2",
                "filter[>id]": "100",
                "order[id]": "ASC",
                "select[0]": "id",
                "start": "-1",
            },
        )
        body = response.json()

        assert item_ids(body) == list(range(101, 121))
        assert "total" not in body
        assert "next" not in body

    def test_unknown_filter_field_is_invalid(self, deals: RunningSandbox) -> None:
        response = deals.call(
            "crm.item.list", {"entityTypeId": 2, "filter": {"noSuchField": 1}}
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "INVALID_ARG_VALUE",
            "error_description": (
                "Invalid filter: field 'NO_SUCH_FIELD' is not allowed in filter"
            ),
        }

    def test_nested_unknown_field_is_invalid_too(self, deals: RunningSandbox) -> None:
        response = deals.call(
            "crm.item.list",
            {"entityTypeId": 2, "filter": {"0": {"logic": "OR", "0": {"bogus": 1}}}},
        )

        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_ARG_VALUE"

    def test_date_filter_reads_portal_local_time(self, deals: RunningSandbox) -> None:
        # The deals were created at 14:29 +02:00, which is 15:29 in Moscow.
        def count(filter_: dict[str, str]) -> int:
            body = deals.call("crm.item.list", {"entityTypeId": 2, "filter": filter_})
            total: int = body.json()["total"]
            return total

        assert count({"<createdTime": "2024-08-30 15:29:00"}) == 0
        assert count({"<=createdTime": "2024-08-30 15:29:00"}) == 120
        assert count({">=createdTime": "2024-08-30T12:29:00Z"}) == 120


class TestItemListOrderAndPages:
    def test_pages_are_fifty_with_next(self, deals: RunningSandbox) -> None:
        first = deals.call("crm.item.list", {"entityTypeId": 2, "select": ["id"]})
        body = first.json()

        assert len(body["result"]["items"]) == 50
        assert body["total"] == 120
        assert body["next"] == 50

    def test_last_page_has_no_next(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list", {"entityTypeId": 2, "select": ["id"], "start": 100}
        ).json()

        assert item_ids(body) == list(range(101, 121))
        assert "next" not in body

    def test_past_the_end_is_empty(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list", {"entityTypeId": 2, "select": ["id"], "start": 500}
        ).json()

        assert body["result"]["items"] == []
        assert body["total"] == 120
        assert "next" not in body

    def test_start_is_rounded_down(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list", {"entityTypeId": 2, "select": ["id"], "start": 60}
        ).json()

        assert item_ids(body)[0] == 51
        assert body["next"] == 100

    def test_order_desc_on_a_number(self, deals: RunningSandbox) -> None:
        body = deals.call(
            "crm.item.list",
            {"entityTypeId": 2, "order": {"opportunity": "DESC"}, "select": ["id"]},
        ).json()

        assert item_ids(body)[:3] == [120, 119, 118]

    def test_unknown_order_field_is_invalid(self, deals: RunningSandbox) -> None:
        response = deals.call(
            "crm.item.list", {"entityTypeId": 2, "order": {"bogus": "ASC"}}
        )

        assert response.status_code == 400
        assert response.json()["error_description"] == (
            "Invalid order: field 'BOGUS' is not allowed in order"
        )

    def test_bad_order_direction_is_invalid(self, deals: RunningSandbox) -> None:
        response = deals.call(
            "crm.item.list", {"entityTypeId": 2, "order": {"id": "UP"}}
        )

        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_ARG_VALUE"


class TestItemEntityTypes:
    def test_missing_entity_type_is_error_100(self, deals: RunningSandbox) -> None:
        response = deals.call("crm.item.list", {"EntityTypeId": 2})

        assert response.status_code == 400
        assert response.json() == {
            "error": "100",
            "error_description": "Could not find value for parameter {entityTypeId}",
        }

    def test_an_old_invoice_is_not_supported(self, deals: RunningSandbox) -> None:
        response = deals.call("crm.item.list", {"entityTypeId": 5})

        assert response.status_code == 400
        assert response.json()["error"] == "ENTITY_TYPE_NOT_SUPPORTED"

    def test_an_unknown_smart_process_is_not_found(self, deals: RunningSandbox) -> None:
        response = deals.call("crm.item.list", {"entityTypeId": 150})

        assert response.status_code == 400
        assert response.json()["error"] == "NOT_FOUND"


class TestItemWrites:
    def test_add_returns_the_typed_item(self, sandbox: RunningSandbox) -> None:
        body = sandbox.call(
            "crm.item.add",
            {
                "entityTypeId": 2,
                "fields": {"title": "Site request", "opportunity": 999.99},
            },
        ).json()

        item = body["result"]["item"]
        assert isinstance(item["id"], int)
        assert item["opportunity"] == 999.99
        assert item["stageId"] == "NEW"
        legacy = sandbox.result("crm.deal.get", {"id": item["id"]})
        assert legacy["OPPORTUNITY"] == "999.99"
        assert legacy["TITLE"] == "Site request"

    def test_update_can_move_a_deal_to_another_pipeline(
        self, sandbox: RunningSandbox
    ) -> None:
        pipeline = sandbox.result(
            "crm.category.add", {"entityTypeId": 2, "fields": {"name": "B2B"}}
        )["category"]["id"]
        deal_id = sandbox.result("crm.item.add", {"entityTypeId": 2, "fields": {}})[
            "item"
        ]["id"]

        item = sandbox.result(
            "crm.item.update",
            {"entityTypeId": 2, "id": deal_id, "fields": {"categoryId": pipeline}},
        )["item"]

        assert item["categoryId"] == pipeline
        assert item["stageId"] == f"C{pipeline}:NEW"
        history = sandbox.result("crm.stagehistory.list", {"entityTypeId": 2})
        assert [row["TYPE_ID"] for row in history["items"]] == [1, 5]

    def test_update_of_a_missing_item_is_not_found(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call(
            "crm.item.update", {"entityTypeId": 2, "id": 404, "fields": {}}
        )

        assert response.status_code == 400
        assert response.json()["error"] == "NOT_FOUND"
