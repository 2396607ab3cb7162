"""Keyset pages of `crm.stagehistory.list`, direct and chained in one `batch`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.conftest import RunningSandbox


def moves(entity_type_id: int, ids: range) -> list[dict[str, Any]]:
    stage: dict[str, Any]
    if entity_type_id == 1:
        stage = {"STATUS_ID": "NEW", "STATUS_SEMANTIC_ID": "P"}
    else:
        stage = {"CATEGORY_ID": 0, "STAGE_ID": "NEW", "STAGE_SEMANTIC_ID": "P"}
    return [
        {"ID": move_id, "TYPE_ID": 2, "OWNER_ID": move_id,
         "CREATED_TIME": "2025-03-03T10:00:00+03:00", "ENTITY_TYPE_ID": entity_type_id,
         **stage}
        for move_id in ids
    ]  # fmt: skip


def item_ids(items: list[dict[str, Any]]) -> list[int]:
    return [item["ID"] for item in items]


@pytest.fixture
def history(sandbox: RunningSandbox) -> RunningSandbox:
    """Deal moves 1..120 and lead moves 121..170, interleaved by nothing but id."""
    sandbox.load(
        {"stagehistory": [*moves(2, range(1, 121)), *moves(1, range(121, 171))]}
    )
    return sandbox


class TestStageHistoryKeyset:
    @pytest.mark.parametrize(
        ("entity_type_id", "above", "expected"),
        [(2, 60, range(61, 111)), (1, 0, range(121, 171)), (2, 120, range(0))],
    )
    def test_above_an_id_in_id_order_without_a_count(
        self,
        history: RunningSandbox,
        entity_type_id: int,
        above: int,
        expected: range,
    ) -> None:
        body = history.call(
            "crm.stagehistory.list",
            {
                "entityTypeId": entity_type_id,
                "order": {"ID": "ASC"},
                "filter": {">ID": above},
                "start": -1,
            },
        ).json()

        assert item_ids(body["result"]["items"]) == list(expected)
        assert "total" not in body
        assert "next" not in body

    def test_a_batch_chains_pages_on_the_last_id_of_items(
        self, history: RunningSandbox
    ) -> None:
        page = (
            "crm.stagehistory.list?entityTypeId=2&order[ID]=ASC&select[0]=ID"
            "&start=-1&filter[%3EID]="
        )

        body = history.call(
            "batch",
            {
                "halt": 1,
                "cmd": {
                    "p0": page + "0",
                    "p1": page + "$result[p0][items][49][ID]",
                    "p2": page + "$result[p1][items][49][ID]",
                },
            },
        ).json()

        pages = body["result"]["result"]
        assert [item_ids(pages[name]["items"]) for name in ("p0", "p1", "p2")] == [
            list(range(1, 51)),
            list(range(51, 101)),
            list(range(101, 121)),
        ]
        assert pages["p0"]["items"][0] == {"ID": 1}
