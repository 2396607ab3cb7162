"""`crm.stagehistory.list` over HTTP: rows from the `stagehistory` table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"


def a_deal_move(
    history_id: int, owner_id: int, stage: str, when: str, type_id: int = 2
) -> dict[str, Any]:
    return {
        "ID": history_id,
        "TYPE_ID": type_id,
        "OWNER_ID": owner_id,
        "CREATED_TIME": when,
        "CATEGORY_ID": 0,
        "STAGE_SEMANTIC_ID": "S" if stage == "WON" else "P",
        "STAGE_ID": stage,
        "ENTITY_TYPE_ID": 2,
    }


def a_lead_move(history_id: int, owner_id: int, status: str) -> dict[str, Any]:
    return {
        "ID": history_id,
        "TYPE_ID": 1,
        "OWNER_ID": owner_id,
        "CREATED_TIME": "2024-04-25T14:59:11+03:00",
        "STATUS_SEMANTIC_ID": "P",
        "STATUS_ID": status,
        "ENTITY_TYPE_ID": 1,
    }


@pytest.fixture
def history(sandbox: RunningSandbox) -> RunningSandbox:
    sandbox.load(
        {
            "stagehistory": [
                a_deal_move(35, 21, "NEW", "2024-04-25T14:59:11+00:00", type_id=1),
                a_deal_move(36, 21, "PREPARATION", "2024-04-26T09:00:00+00:00"),
                a_deal_move(37, 22, "NEW", "2024-04-26T10:00:00+00:00", type_id=1),
                a_deal_move(38, 21, "WON", "2024-04-27T10:00:00+00:00", type_id=3),
                a_lead_move(39, 5, "NEW"),
            ]
        }
    )
    return sandbox


def ids(body: dict[str, Any]) -> list[int]:
    return [row["ID"] for row in body["result"]["items"]]


class TestStageHistoryList:
    def test_matches_the_recorded_answer(self, history: RunningSandbox) -> None:
        body = history.call("crm.stagehistory.list", {"entityTypeId": 2}).json()
        recording = json.loads(
            (FIXTURES / "crm.stagehistory.list.response.json").read_text("utf-8")
        )

        assert shape_differences(body["result"], recording["result"]) == []
        assert body["total"] == 4
        assert list(body["result"]["items"][0]) == list(recording["result"]["items"][0])

    def test_entity_type_id_is_not_printed(self, history: RunningSandbox) -> None:
        rows = history.result("crm.stagehistory.list", {"entityTypeId": 2})["items"]

        assert all("ENTITY_TYPE_ID" not in row for row in rows)

    def test_lead_history_has_status_fields(self, history: RunningSandbox) -> None:
        rows = history.result("crm.stagehistory.list", {"entityTypeId": 1})["items"]

        assert rows == [
            {
                "ID": 39,
                "TYPE_ID": 1,
                "OWNER_ID": 5,
                "CREATED_TIME": "2024-04-25T14:59:11+03:00",
                "STATUS_SEMANTIC_ID": "P",
                "STATUS_ID": "NEW",
            }
        ]

    def test_filter_operators_and_datetimes(self, history: RunningSandbox) -> None:
        body = history.call(
            "crm.stagehistory.list",
            {
                "entityTypeId": 2,
                "filter": {"OWNER_ID": 21, ">=CREATED_TIME": "2024-04-26"},
            },
        ).json()

        assert ids(body) == [36, 38]

    def test_in_filter_on_stages(self, history: RunningSandbox) -> None:
        body = history.call(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "filter": {"@STAGE_ID": ["WON", "PREPARATION"]}},
        ).json()

        assert ids(body) == [36, 38]

    def test_unknown_filter_field_is_invalid(self, history: RunningSandbox) -> None:
        response = history.call(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "filter": {"STATUS_ID": "NEW"}},
        )

        assert response.status_code == 400
        assert response.json() == {
            "error": "INVALID_ARG_VALUE",
            "error_description": (
                "Invalid filter: field 'STATUS_ID' is not allowed in filter"
            ),
        }

    def test_miscased_filter_field_is_invalid(self, history: RunningSandbox) -> None:
        response = history.call(
            "crm.stagehistory.list", {"entityTypeId": 2, "filter": {"owner_id": 21}}
        )

        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_ARG_VALUE"

    def test_unreadable_created_time_is_wrong_format(
        self, history: RunningSandbox
    ) -> None:
        response = history.call(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "filter": {">CREATED_TIME": "last week"}},
        )

        assert response.status_code == 400
        assert response.json()["error"] == "WRONG_DATETIME_FORMAT"

    def test_unknown_order_field_is_dropped(self, history: RunningSandbox) -> None:
        body = history.call(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "order": {"BOGUS": "DESC", "ID": "sideways"}},
        ).json()

        assert ids(body) == [35, 36, 37, 38]

    def test_order_desc(self, history: RunningSandbox) -> None:
        body = history.call(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "order": {"CREATED_TIME": "desc"}},
        ).json()

        assert ids(body) == [38, 37, 36, 35]

    def test_select_keeps_known_fields_and_adds_id(
        self, history: RunningSandbox
    ) -> None:
        rows = history.result(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "select": ["STAGE_ID", "NOPE"]},
        )["items"]

        assert rows[0] == {"STAGE_ID": "NEW", "ID": 35}

    def test_start_minus_one_emits_neither_total_nor_next(
        self, history: RunningSandbox
    ) -> None:
        body = history.call(
            "crm.stagehistory.list", {"entityTypeId": 2, "start": -1}
        ).json()

        assert ids(body) == [35, 36, 37, 38]
        assert "total" not in body
        assert "next" not in body

    def test_other_entity_types_are_not_supported(
        self, history: RunningSandbox
    ) -> None:
        response = history.call("crm.stagehistory.list", {"entityTypeId": 3})

        assert response.status_code == 400
        assert response.json()["error"] == "ENTITY_TYPE_NOT_SUPPORTED"

    def test_missing_entity_type_is_error_100(self, history: RunningSandbox) -> None:
        response = history.call("crm.stagehistory.list", {})

        assert response.status_code == 400
        assert response.json()["error"] == "100"


class TestStageHistoryPages:
    def test_engine_paging_over_many_rows(self, sandbox: RunningSandbox) -> None:
        moves = [
            a_deal_move(n, n, "NEW", "2024-04-25T14:59:11+00:00", type_id=1)
            for n in range(1, 76)
        ]
        sandbox.load({"stagehistory": moves})

        first = sandbox.call("crm.stagehistory.list", {"entityTypeId": 2}).json()
        second = sandbox.call(
            "crm.stagehistory.list", {"entityTypeId": 2, "start": 50}
        ).json()
        beyond = sandbox.call(
            "crm.stagehistory.list", {"entityTypeId": 2, "start": 100}
        ).json()

        assert (len(ids(first)), first["total"], first["next"]) == (50, 75, 50)
        assert ids(second) == list(range(51, 76))
        assert "next" not in second
        assert beyond["result"]["items"] == []

    def test_rows_written_by_legacy_stage_moves_are_listed(
        self, sandbox: RunningSandbox
    ) -> None:
        deal_id = sandbox.result("crm.deal.add", {"fields": {"TITLE": "Moved"}})
        sandbox.result(
            "crm.deal.update", {"id": deal_id, "fields": {"STAGE_ID": "PREPARATION"}}
        )

        rows = sandbox.result(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "filter": {"OWNER_ID": deal_id}},
        )["items"]

        assert [(row["TYPE_ID"], row["STAGE_ID"]) for row in rows] == [
            (1, "NEW"),
            (2, "PREPARATION"),
        ]
