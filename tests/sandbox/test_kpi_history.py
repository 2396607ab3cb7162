"""The generated sales history: reproducible, consistent, served as a portal serves."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime

from sandbox.kpi_history import (
    BOT_USER_ID,
    FIRST_MANAGER_ID,
    INTEGRATION_USER_ID,
    VISIT_FIELD,
    HistoryShape,
    generate,
)
from tests.sandbox.conftest import RunningSandbox

SHAPE = HistoryShape(
    start=date(2024, 12, 1), end=date(2025, 1, 1), managers=3, deals=120, activities=500
)


class TestGeneratedHistory:
    def test_the_same_seed_gives_the_same_portal(self) -> None:
        assert generate(SHAPE) == generate(SHAPE)
        other = HistoryShape(**{**vars(SHAPE), "seed": 8})
        assert generate(other)["deals"] != generate(SHAPE)["deals"]

    def test_it_has_the_size_asked_for(self) -> None:
        snapshot = generate(SHAPE)

        assert len(snapshot["deals"]) == 120
        assert len(snapshot["activities"]) == 500
        managers = {int(row["ASSIGNED_BY_ID"]) for row in snapshot["deals"]}
        assert managers <= set(range(FIRST_MANAGER_ID, FIRST_MANAGER_ID + 3))

    def test_each_deal_was_last_modified_by_its_last_stage_move(self) -> None:
        snapshot = generate(SHAPE)
        last: dict[int, datetime] = {}
        for row in snapshot["stagehistory"]:
            if row["ENTITY_TYPE_ID"] == 2:
                last[row["OWNER_ID"]] = datetime.fromisoformat(row["CREATED_TIME"])

        for deal in snapshot["deals"]:
            modified = datetime.fromisoformat(deal["DATE_MODIFY"])
            assert modified == last[int(deal["ID"])]

    def test_history_ids_rise_with_time_and_each_deal_starts_with_creation(
        self,
    ) -> None:
        rows = generate(SHAPE)["stagehistory"]
        times = [datetime.fromisoformat(row["CREATED_TIME"]) for row in rows]
        by_deal: dict[int, list[dict[str, object]]] = defaultdict(list)
        for row in rows:
            by_deal[int(str(row["OWNER_ID"]))].append(row)

        assert [row["ID"] for row in rows] == list(range(1, len(rows) + 1))
        assert times == sorted(times)
        assert all(deal[0]["TYPE_ID"] == 1 for deal in by_deal.values())

    def test_classic_mode_converts_some_leads_into_deals(self) -> None:
        snapshot = generate(HistoryShape(**{**vars(SHAPE), "classic": True}))

        converted = {d["LEAD_ID"] for d in snapshot["deals"]}
        assert snapshot["settings"] == {"crm_mode": "classic"}
        assert converted <= {lead["ID"] for lead in snapshot["leads"]}
        assert len(snapshot["leads"]) > len(snapshot["deals"])


class TestServedBySandbox:
    def test_the_portal_lists_it_as_a_portal_would(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.load(generate(SHAPE))

        users = sandbox.result("user.get")
        deals = sandbox.result(
            "crm.deal.list",
            {"select": ["ID", "OPPORTUNITY", VISIT_FIELD], "order": {"ID": "ASC"}},
        )
        history = sandbox.result(
            "crm.stagehistory.list",
            {"entityTypeId": 2, "filter": {"OWNER_ID": 1}, "order": {"ID": "ASC"}},
        )

        ids = {int(user["ID"]) for user in users}
        assert INTEGRATION_USER_ID in ids
        assert BOT_USER_ID not in ids  # user.get hides bots
        assert deals[0]["ID"] == "1"
        assert isinstance(deals[0]["OPPORTUNITY"], str)
        assert history["items"][0]["OWNER_ID"] == 1
        assert history["items"][0]["TYPE_ID"] == 1
