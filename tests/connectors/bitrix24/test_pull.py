"""Complete keyset pulls: every row once, in id order, in rows / 2,500 requests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
import respx

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import (
    IncompletePull,
    OperationTimeLimited,
    Rejected,
    UnknownField,
)
from connectors.bitrix24.models import Deal, InvalidRow, StageHistory, Task, User
from connectors.bitrix24.pull import (
    TASKS,
    USERS,
    Puller,
    crm_item,
    pull,
    resolve_entity,
    stage_history,
)
from tests.connectors.bitrix24.conftest import MOSCOW, Sleeps, Wire
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox

PORTAL = "https://example.bitrix24.ru/rest/1/s3cretc0de/"


def deals(ids: range, **fields: Any) -> list[dict[str, Any]]:
    """Legacy deal rows as `crm.deal.list` returns them (strings throughout)."""
    return [
        {
            "ID": str(deal_id),
            "TITLE": f"Deal {deal_id}",
            "OPENED": "Y" if deal_id % 2 else "N",
            "OPPORTUNITY": f"{deal_id}.00",
            "CURRENCY_ID": "RUB",
            **fields,
        }
        for deal_id in ids
    ]


async def collect(
    rows: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    collected = [] if into is None else into
    async for row in rows:
        collected.append(row)
    return collected


Model = TypeVar("Model")


async def collect_models(
    models: AsyncIterator[Model], into: list[Model] | None = None
) -> list[Model]:
    collected = [] if into is None else into
    async for model in models:
        collected.append(model)
    return collected


def ids_of(rows: list[dict[str, Any]], field: str = "ID") -> list[int]:
    return [int(row[field]) for row in rows]


def batch_commands(wire: Wire) -> list[dict[str, str]]:
    return [body["cmd"] for body in wire.bodies("/batch")]


class TestPullAgainstTheSandbox:
    async def test_three_thousand_deals_arrive_once_each_in_three_requests(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(2, 6002, 2))})

        rows = await collect(pull(webhook_client, "deal", select=["ID", "TITLE"]))

        assert ids_of(rows) == list(range(2, 6002, 2))
        assert rows[0] == {"ID": "2", "TITLE": "Deal 2"}
        # 3,000 rows / 2,500 per batch -> 2 batches, plus one crm.deal.fields.
        stats = portal.http.get("/_sandbox/stats").json()
        assert stats["requests"] == 3
        assert stats["http_by_method"] == {"batch": 2, "crm.deal.fields": 1}

    async def test_a_boolean_filter_goes_out_as_y_on_every_page(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        """B24-1: every batched page carries the boolean filter as Y."""
        # Known fault B24-1: page 1 and the batched pages must filter alike.
        portal.load({"deals": deals(range(1, 3001))})

        puller = Puller(webhook_client, pages_per_batch=10)

        rows = await collect(puller.pull("deal", {"OPENED": True}, ["ID", "OPENED"]))

        assert ids_of(rows) == list(range(1, 3001, 2))
        # 1,500 rows in 30 full pages: three full batches, then one empty page.
        commands = [command for cmd in batch_commands(wire) for command in cmd.values()]
        assert len(commands) == 4 * 10
        assert all("&filter[OPENED]=Y&" in command for command in commands)

    async def test_rows_deleted_and_added_during_the_pull_are_neither_lost_nor_repeated(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load({"deals": deals(range(1, 301))})
        puller = Puller(webhook_client, pages_per_batch=2)  # 100 rows per request
        seen: list[int] = []

        async for row in puller.pull("deal", select=["ID"]):
            seen.append(int(row["ID"]))
            if seen[-1] == 100:
                # Between two requests: one row behind, one ahead, one new.
                await webhook_client.call("crm.deal.delete", {"id": 20})
                await webhook_client.call("crm.deal.delete", {"id": 150})
                added = await webhook_client.call(
                    "crm.deal.add", {"fields": {"TITLE": "Arrived mid-pull"}}
                )

        expected = [n for n in range(1, 301) if n != 150] + [added]
        assert seen == expected

    async def test_a_filter_with_operators_and_dates_is_applied_on_every_page(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        modified = "2024-05-01T10:00:00+03:00"
        portal.load({"deals": deals(range(1, 201), DATE_MODIFY=modified)})
        since = datetime(2020, 1, 1, tzinfo=UTC)

        rows = await collect(
            Puller(webhook_client, pages_per_batch=3).pull(
                "deal",
                {">=OPPORTUNITY": 51, "<OPPORTUNITY": 180},
                ["ID", "OPPORTUNITY"],
            )
        )
        later = await collect(
            pull(webhook_client, "deal", {">=DATE_MODIFY": since}, ["ID"])
        )

        assert ids_of(rows) == list(range(51, 180))
        assert len(later) == 200
        first_command = batch_commands(wire)[-1]["p0"]
        assert "filter[%3E%3DDATE_MODIFY]=2020-01-01%2003%3A00%3A00" in first_command

    async def test_a_pull_resumes_after_a_given_id(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load({"deals": deals(range(1, 121))})

        rows = await collect(pull(webhook_client, "deal", None, ["ID"], after_id=100))

        assert ids_of(rows) == list(range(101, 121))

    async def test_an_empty_result_costs_one_batch(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        rows = await collect(pull(webhook_client, "deal", {"TITLE": "nothing"}))

        assert rows == []
        assert wire.count("/batch") == 1

    async def test_fields_are_fetched_once_per_puller(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(1, 11))})
        puller = Puller(webhook_client)

        await collect(puller.pull("deal", select=["ID"]))
        await collect(puller.pull("deal", {"OPENED": False}, ["ID"]))

        assert wire.count("/crm.deal.fields") == 1

    @pytest.mark.parametrize(
        ("filter_", "select", "hint"),
        [
            ({"UF_CRM_NOPE": 1}, ["ID"], "UF_CRM_NOPE"),
            ({"opened": "Y"}, ["ID"], "spelled 'OPENED'"),
            ({">=opportunity": 5}, ["ID"], "spelled 'OPPORTUNITY'"),
            ({}, ["ID", "title"], "spelled 'TITLE'"),
            ({}, ["ID", "UF_CRM_GONE"], "UF_CRM_GONE"),
            ({"=>OPPORTUNITY": 5}, ["ID"], "is not FIELD or opFIELD"),
        ],
    )
    async def test_keys_the_portal_would_ignore_are_refused_before_any_page(
        self,
        portal: RunningSandbox,
        webhook_client: Bitrix24Client,
        wire: Wire,
        filter_: dict[str, Any],
        select: list[str],
        hint: str,
    ) -> None:
        with pytest.raises(UnknownField, match=hint):
            await collect(pull(webhook_client, "deal", filter_, select))

        assert wire.count("/batch") == 0

    @pytest.mark.parametrize("key", [">ID", ">=ID"])
    async def test_a_lower_id_bound_in_the_filter_is_refused(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, key: str
    ) -> None:
        with pytest.raises(ValueError, match="after_id"):
            await collect(pull(webhook_client, "deal", {key: 5}, ["ID"]))

    @pytest.mark.parametrize(
        ("entity", "section", "row"),
        [
            ("contact", "contacts", {"NAME": "Анна"}),
            ("lead", "leads", {"TITLE": "Site request"}),
            ("company", "companies", {"TITLE": "ООО Ромашка"}),
            ("activity", "activities", {"SUBJECT": "Call", "OWNER_TYPE_ID": "2"}),
        ],
    )
    async def test_other_legacy_entities_pull_the_same_way(
        self,
        portal: RunningSandbox,
        webhook_client: Bitrix24Client,
        entity: str,
        section: str,
        row: dict[str, str],
    ) -> None:
        portal.load({section: [{"ID": str(n), **row} for n in range(1, 61)]})

        rows = await collect(pull(webhook_client, entity))

        assert ids_of(rows) == list(range(1, 61))

    async def test_without_a_select_custom_fields_are_asked_for_too(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        await collect(pull(webhook_client, "deal"))

        command = batch_commands(wire)[0]["p0"]
        assert command.endswith("&select[0]=%2A&select[1]=UF_%2A&start=-1")

    async def test_unknown_entities_fail_on_first_iteration(
        self, webhook_client: Bitrix24Client
    ) -> None:
        with pytest.raises(ValueError, match="unknown entity"):
            await collect(pull(webhook_client, "invoice"))


@pytest.fixture
async def mocked_client() -> AsyncIterator[Bitrix24Client]:
    async with httpx.AsyncClient() as http:
        yield Bitrix24Client(
            http, WebhookCredentials(PORTAL), portal_zone=MOSCOW, sleep=Sleeps()
        )


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=PORTAL, assert_all_called=False) as router:
        yield router


def answer(
    pages: dict[str, Any], errors: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {
        "result": {
            "result": pages,
            "result_error": errors or [],
            "result_total": [],
            "result_next": [],
            "result_time": [],
        },
        "time": {},
    }
    return httpx.Response(200, json=body)


def rows_from(first: int, count: int) -> list[dict[str, str]]:
    return [{"ID": str(n)} for n in range(first, first + count)]


DEAL_FIELDS = load_fixture("bitrix24/crm.deal.fields.response.json")["result"]
HOT = {
    "type": "boolean",
    "isRequired": False,
    "isReadOnly": False,
    "isImmutable": False,
    "isMultiple": False,
    "isDynamic": True,
    "title": "UF_CRM_IS_HOT",
}


class TestPullOnTheWire:
    async def test_pages_are_chained_on_the_last_id_of_the_page_before(
        self, mocked_client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        """B24-1: a boolean user field is sent as 1 on each chained page."""
        fields = {**DEAL_FIELDS, "UF_CRM_IS_HOT": HOT}
        mock.post("crm.deal.fields").respond(200, json={"result": fields, "time": {}})
        batch = mock.post("batch").mock(
            return_value=answer({"p0": rows_from(1, 50), "p1": rows_from(51, 7)})
        )
        won_after = datetime(2025, 1, 5, 21, 0, tzinfo=UTC)

        rows = await collect(
            Puller(mocked_client, pages_per_batch=2).pull(
                "deal",
                {"UF_CRM_IS_HOT": True, "OPENED": True, ">=CLOSEDATE": won_after},
                ["ID"],
            )
        )

        assert ids_of(rows) == list(range(1, 58))
        common = (
            "crm.deal.list?order[ID]=ASC&filter[UF_CRM_IS_HOT]=1&filter[OPENED]=Y"
            "&filter[%3E%3DCLOSEDATE]=2025-01-06%2000%3A00%3A00"
        )
        assert json.loads(batch.calls.last.request.content) == {
            "halt": 1,
            "cmd": {
                "p0": f"{common}&filter[%3EID]=0&select[0]=ID&start=-1",
                "p1": f"{common}&filter[%3EID]=$result[p0][49][ID]"
                "&select[0]=ID&start=-1",
            },
        }

    async def test_crm_items_chain_on_the_items_list(
        self, mocked_client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        fields = {
            "id": {"type": "integer", "upperName": "ID"},
            "title": {"type": "string", "upperName": "TITLE"},
            "stageId": {"type": "crm_status", "upperName": "STAGE_ID"},
            "ufCrm_1_HOT": {**HOT, "upperName": "UF_CRM_1_HOT"},
        }
        mock.post("crm.item.fields").respond(
            200, json={"result": {"fields": fields}, "time": {}}
        )
        items = [{"id": n, "title": f"Deal {n}"} for n in range(1, 54)]
        batch = mock.post("batch").mock(
            return_value=answer(
                {"p0": {"items": items[:50]}, "p1": {"items": items[50:]}}
            )
        )

        rows = await collect(
            Puller(mocked_client, pages_per_batch=2).pull(
                crm_item(2),
                {
                    "ufCrm_1_HOT": True,
                    "0": {"logic": "OR", "@stageId": ["NEW"], "%title": "VIP"},
                },
                ["title"],
            )
        )

        assert [row["id"] for row in rows] == list(range(1, 54))
        cmd = json.loads(batch.calls.last.request.content)["cmd"]
        assert cmd["p1"] == (
            "crm.item.list?entityTypeId=2&order[id]=ASC&filter[ufCrm_1_HOT]=1"
            "&filter[0][logic]=OR&filter[0][%40stageId][0]=NEW"
            "&filter[0][%25title]=VIP&filter[%3Eid]=$result[p0][items][49][id]"
            "&select[0]=title&select[1]=id&start=-1"
        )

    async def test_a_bad_field_inside_a_nested_item_filter_is_refused(
        self, mocked_client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        mock.post("crm.item.fields").respond(
            200, json={"result": {"fields": {"id": {}, "title": {}}}, "time": {}}
        )

        with pytest.raises(UnknownField, match="TITLE"):
            await collect(
                pull(mocked_client, crm_item(2), {"0": {"logic": "OR", "TITLE": "x"}})
            )

    @pytest.mark.parametrize(
        ("pages", "reason"),
        [
            # The keyset filter was not applied: page 2 starts over.
            ({"p0": rows_from(1, 50), "p1": rows_from(1, 50)}, "after 50"),
            ({"p0": rows_from(1, 51)}, "more than 50"),
            ({"p0": [{"ID": "2"}, {"ID": "1"}]}, "after 2"),
            ({"p0": [{"TITLE": "no id"}]}, "without a numeric ID"),
            ({"p0": {"unexpected": "shape"}}, "not a list of rows"),
            # A command the portal never ran although nothing failed.
            ({"p0": rows_from(1, 50)}, "did not run"),
        ],
    )
    async def test_pages_that_cannot_be_trusted_stop_the_pull(
        self,
        mocked_client: Bitrix24Client,
        mock: respx.MockRouter,
        pages: dict[str, Any],
        reason: str,
    ) -> None:
        """B24-1: pages that cannot be trusted raise IncompletePull, not a warning."""
        mock.post("crm.deal.fields").respond(
            200, json={"result": DEAL_FIELDS, "time": {}}
        )
        mock.post("batch").mock(return_value=answer(pages))

        with pytest.raises(IncompletePull, match=reason):
            await collect(Puller(mocked_client, pages_per_batch=2).pull("deal"))

    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            ({"error": "ERROR_CORE", "error_description": "boom"}, Rejected),
            ({"error": "OPERATION_TIME_LIMIT"}, OperationTimeLimited),
        ],
    )
    async def test_a_failing_page_raises_its_own_error(
        self,
        mocked_client: Bitrix24Client,
        mock: respx.MockRouter,
        error: dict[str, str],
        expected: type[Exception],
    ) -> None:
        mock.post("crm.deal.fields").respond(
            200, json={"result": DEAL_FIELDS, "time": {}}
        )
        mock.post("batch").mock(
            return_value=answer({"p0": rows_from(1, 50)}, {"p1": error})
        )
        seen: list[dict[str, Any]] = []
        rows = Puller(mocked_client, pages_per_batch=2).pull("deal")

        with pytest.raises(expected):
            await collect(rows, into=seen)

        assert len(seen) == 50


def people(ids: range, **fields: Any) -> list[dict[str, Any]]:
    """Users as a snapshot holds them (`user.get` rows)."""
    return [
        {
            "ID": str(user_id),
            "ACTIVE": user_id % 4 != 0,
            "NAME": f"Name{user_id}",
            "LAST_NAME": "Manager",
            "UF_DEPARTMENT": [1],
            "USER_TYPE": "employee",
            **fields,
        }
        for user_id in ids
    ]


def tasks(ids: range, **fields: Any) -> list[dict[str, Any]]:
    """Tasks as a snapshot holds them (`tasks.task.list` rows)."""
    return [
        {
            "id": str(task_id),
            "title": f"Call back {task_id}",
            "responsibleId": str(1 + task_id % 2),
            "createdBy": "1",
            "status": "5" if task_id % 3 == 0 else "2",
            "createdDate": "2025-03-03T10:00:00+03:00",
            **fields,
        }
        for task_id in ids
    ]


def deal_moves(ids: range) -> list[dict[str, Any]]:
    return [
        {
            "ID": move_id,
            "TYPE_ID": 2,
            "OWNER_ID": move_id // 3 + 1,
            "CREATED_TIME": "2025-03-03T10:00:00+03:00",
            "CATEGORY_ID": move_id % 2,
            "STAGE_SEMANTIC_ID": "P",
            "STAGE_ID": "PREPARATION",
            "ENTITY_TYPE_ID": 2,
        }
        for move_id in ids
    ]


def lead_moves(ids: range) -> list[dict[str, Any]]:
    return [
        {
            "ID": move_id,
            "TYPE_ID": 1,
            "OWNER_ID": move_id,
            "CREATED_TIME": "2025-03-03T10:00:00+03:00",
            "STATUS_SEMANTIC_ID": "P",
            "STATUS_ID": "NEW" if move_id % 2 else "IN_PROCESS",
            "ENTITY_TYPE_ID": 1,
        }
        for move_id in ids
    ]


def http_by_method(portal: RunningSandbox) -> dict[str, int]:
    stats: dict[str, int] = portal.http.get("/_sandbox/stats").json()["http_by_method"]
    return stats


class TestPullOfUsers:
    async def test_every_employee_arrives_in_id_order_by_keyset_pages(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        bot = {"ID": "500", "ACTIVE": True, "NAME": "Bot", "USER_TYPE": "bot"}
        portal.load({"users": [*people(range(1, 131)), bot]})

        users = await collect_models(
            Puller(webhook_client, pages_per_batch=2).pull_models(USERS, User)
        )

        assert [user.id for user in users] == list(range(1, 131))
        assert users[3].active is False
        assert http_by_method(portal) == {"batch": 2, "user.fields": 1}
        second = batch_commands(wire)[1]
        assert second["p1"] == (
            "user.get?sort=ID&order=ASC&filter[%3EID]=$result[p0][49][ID]"
            "&select[0]=%2A&select[1]=UF_%2A&start=-1"
        )

    async def test_an_active_filter_and_a_select_apply_on_every_page(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"users": people(range(1, 201))})

        rows = await collect(
            Puller(webhook_client, pages_per_batch=2).pull(
                USERS, {"ACTIVE": True, "HAS_DEPARTAMENT": "Y"}, ["NAME"]
            )
        )

        assert ids_of(rows) == [n for n in range(1, 201) if n % 4]
        assert set(rows[0]) == {"ID", "NAME"}
        commands = [cmd for body in batch_commands(wire) for cmd in body.values()]
        assert all(
            "&filter[ACTIVE]=Y&filter[HAS_DEPARTAMENT]=Y&" in c for c in commands
        )

    @pytest.mark.parametrize(
        ("filter_", "hint"),
        [({"active": True}, "spelled 'ACTIVE'"), ({"UF_USR_NOPE": 1}, "UF_USR_NOPE")],
    )
    async def test_keys_user_get_would_drop_are_refused(
        self,
        portal: RunningSandbox,
        webhook_client: Bitrix24Client,
        wire: Wire,
        filter_: dict[str, Any],
        hint: str,
    ) -> None:
        with pytest.raises(UnknownField, match=hint):
            await collect(pull(webhook_client, USERS, filter_))

        assert wire.count("/batch") == 0


class TestPullOfTasks:
    async def test_tasks_chain_on_the_camel_case_id_of_the_tasks_list(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"users": people(range(1, 3)), "tasks": tasks(range(1, 121))})

        found = await collect_models(
            Puller(webhook_client, pages_per_batch=2).pull_models(TASKS, Task)
        )

        assert [task.id for task in found] == list(range(1, 121))
        assert found[2].completed is True
        assert http_by_method(portal) == {"batch": 2, "tasks.task.getfields": 1}
        assert batch_commands(wire)[0]["p1"] == (
            "tasks.task.list?order[ID]=ASC&filter[%3EID]=$result[p0][tasks][49][id]"
            "&start=-1"
        )

    async def test_upper_filter_and_select_keys_pick_the_rows(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load({"users": people(range(1, 3)), "tasks": tasks(range(1, 121))})

        rows = await collect(
            pull(
                webhook_client,
                TASKS,
                {"RESPONSIBLE_ID": 2, "REAL_STATUS": 5},
                ["TITLE", "UF_CRM_TASK"],
            )
        )

        assert [int(row["id"]) for row in rows] == list(range(3, 121, 6))
        assert set(rows[0]) >= {"id", "title", "ufCrmTask"}

    async def test_a_camel_case_filter_key_is_refused(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        with pytest.raises(UnknownField, match="responsibleId"):
            await collect(pull(webhook_client, TASKS, {"responsibleId": 2}))

        assert wire.count("/batch") == 0


class TestPullOfStageHistory:
    async def test_deal_moves_arrive_without_asking_for_fields(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load(
            {"stagehistory": [*deal_moves(range(1, 131)), *lead_moves(range(200, 260))]}
        )

        moves = await collect_models(
            Puller(webhook_client, pages_per_batch=2).pull_models(
                stage_history(2), StageHistory, {"CATEGORY_ID": 1}
            )
        )

        assert [move.id for move in moves] == list(range(1, 131, 2))
        assert {move.stage for move in moves} == {"PREPARATION"}
        assert http_by_method(portal) == {"batch": 1}
        assert batch_commands(wire)[0]["p1"] == (
            "crm.stagehistory.list?entityTypeId=2&order[ID]=ASC&filter[CATEGORY_ID]=1"
            "&filter[%3EID]=$result[p0][items][49][ID]"
            "&select[0]=ID&select[1]=TYPE_ID&select[2]=OWNER_ID&select[3]=CREATED_TIME"
            "&select[4]=CATEGORY_ID&select[5]=STAGE_ID&select[6]=STAGE_SEMANTIC_ID"
            "&start=-1"
        )

    async def test_lead_moves_filter_on_their_status(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load(
            {"stagehistory": [*deal_moves(range(1, 11)), *lead_moves(range(20, 140))]}
        )
        since = datetime(2025, 1, 1, tzinfo=UTC)

        moves = await collect_models(
            Puller(webhook_client).pull_models(
                stage_history(1),
                StageHistory,
                {"STATUS_ID": "IN_PROCESS", ">=CREATED_TIME": since},
            )
        )

        assert [move.id for move in moves] == list(range(20, 140, 2))
        assert all(move.stage == "IN_PROCESS" for move in moves)

    @pytest.mark.parametrize(
        ("entity_type_id", "filter_"),
        [(2, {"STATUS_ID": "NEW"}), (1, {"STAGE_ID": "NEW"}), (2, {"stage_id": "X"})],
    )
    async def test_a_field_of_the_other_history_is_refused_before_sending(
        self,
        portal: RunningSandbox,
        webhook_client: Bitrix24Client,
        wire: Wire,
        entity_type_id: int,
        filter_: dict[str, str],
    ) -> None:
        with pytest.raises(UnknownField, match=r"fixed fields of crm\.stagehistory"):
            await collect(pull(webhook_client, stage_history(entity_type_id), filter_))

        assert wire.requests == []

    @pytest.mark.parametrize("entity_type_id", [3, 4, 7, 0])
    def test_entities_without_stages_have_no_history(self, entity_type_id: int) -> None:
        with pytest.raises(ValueError, match="no stage history"):
            stage_history(entity_type_id)


class TestPullOfCrmItems:
    async def test_deal_items_pull_with_their_fields_from_the_sandbox(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(1, 121), CATEGORY_ID="1", STAGE_ID="C1:NEW")})
        puller = Puller(webhook_client, pages_per_batch=2)

        found = await collect_models(
            puller.pull_models(
                crm_item(2), Deal, {">=opportunity": 100}, ["title", "opportunity"]
            )
        )
        again = await collect(puller.pull(crm_item(2), {"categoryId": 1}, ["id"]))

        assert [deal.id for deal in found] == list(range(100, 121))
        assert found[0].opportunity == Decimal("100")
        assert len(again) == 120
        assert http_by_method(portal) == {"batch": 3, "crm.item.fields": 1}

    async def test_a_legacy_name_is_refused_for_items(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        with pytest.raises(UnknownField, match="'TITLE'"):
            await collect(pull(webhook_client, crm_item(2), {"TITLE": "x"}))

        assert wire.count("/batch") == 0


class TestPullModels:
    async def test_a_row_the_model_refuses_stops_the_pull_without_its_values(
        self, mocked_client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        mock.post("crm.deal.fields").respond(
            200, json={"result": DEAL_FIELDS, "time": {}}
        )
        rows = [{"ID": "1", "TITLE": "Анна"}, {"ID": "2", "DATE_CREATE": "2025-01-01"}]
        mock.post("batch").mock(return_value=answer({"p0": rows}))
        seen: list[Deal] = []

        deals = Puller(mocked_client).pull_models("deal", Deal)

        with pytest.raises(InvalidRow, match="Deal row '2': invalid DATE_CREATE"):
            await collect_models(deals, into=seen)

        assert [deal.title for deal in seen] == ["Анна"]

    async def test_named_entities_include_users_and_tasks(self) -> None:
        assert resolve_entity("user") is USERS
        assert resolve_entity("task") is TASKS
        assert resolve_entity("deal").list_method == "crm.deal.list"


def commands_sent(wire: Wire) -> list[list[str]]:
    """The command names of every batch, in order."""
    return [list(cmd) for cmd in batch_commands(wire)]


class TestPullByIds:
    async def test_ids_go_fifty_to_a_command_and_fifty_commands_to_a_batch(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(1, 3001))})
        asked = list(range(2, 5202, 2))  # 2,600 ids, 1,500 of them deals

        rows = await collect(Puller(webhook_client).pull_ids("deal", "ID", asked))

        assert sorted(ids_of(rows)) == list(range(2, 3001, 2))
        assert len(rows) == 1500
        assert [len(names) for names in commands_sent(wire)] == [50, 2]
        first = batch_commands(wire)[0]["c0"]
        assert first.count("filter[%40ID]") == 50
        assert http_by_method(portal) == {"batch": 2, "crm.deal.fields": 1}

    async def test_a_full_page_by_another_key_is_continued_by_a_keyset_pull(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load(
            {
                "deals": deals(range(1, 131), CONTACT_ID="7")
                + deals(range(131, 141), CONTACT_ID="8")
            }
        )

        rows = await collect(
            Puller(webhook_client).pull_ids(
                "deal", "CONTACT_ID", [7, 9], select=["ID"], per_command=1
            )
        )

        assert ids_of(rows) == list(range(1, 131))
        # c0 (contact 7) came back full and was continued above its 50th row;
        # c1 (contact 9) came back empty.
        first, rest = batch_commands(wire)
        assert list(first) == ["c0", "c1"]
        assert "filter[%40CONTACT_ID][0]=7&" in rest["p0"]
        assert "filter[%3EID]=50&" in rest["p0"]

    async def test_the_filter_applies_beside_the_ids(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load({"deals": deals(range(1, 101))})

        rows = await collect(
            Puller(webhook_client).pull_ids(
                "deal", "ID", [10, 60, 70, 99], {">=OPPORTUNITY": 50}, ["ID"]
            )
        )

        assert ids_of(rows) == [60, 70, 99]

    async def test_no_ids_send_no_list_command(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        rows = await collect(Puller(webhook_client).pull_ids("deal", "ID", []))

        assert rows == []
        assert wire.count("/batch") == 0

    async def test_an_unknown_key_is_refused_before_a_list_is_sent(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        with pytest.raises(UnknownField, match="'@CONTACTID'"):
            await collect(Puller(webhook_client).pull_ids("deal", "CONTACTID", [1, 2]))

        assert wire.count("/batch") == 0

    async def test_rows_by_id_that_were_not_asked_for_are_an_incomplete_pull(
        self, mocked_client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        # A portal that dropped the filter answers its first rows, asked or not.
        mock.post("crm.deal.fields").respond(
            200, json={"result": DEAL_FIELDS, "time": {}}
        )
        mock.post("batch").mock(return_value=answer({"c0": rows_from(1, 3)}))

        with pytest.raises(IncompletePull, match="not asked for"):
            await collect(Puller(mocked_client).pull_ids("deal", "ID", [2]))

    @pytest.mark.parametrize("per_command", [0, 51])
    async def test_per_command_is_at_most_a_page(
        self, mocked_client: Bitrix24Client, per_command: int
    ) -> None:
        with pytest.raises(ValueError, match="per_command"):
            await collect(
                Puller(mocked_client).pull_ids(
                    "deal", "ID", [1], per_command=per_command
                )
            )


class TestPagesPerBatchOfOnePull:
    async def test_one_pull_chains_fewer_pages_and_the_puller_keeps_its_own(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(1, 121))})
        puller = Puller(webhook_client)

        short = await collect(puller.pull("deal", select=["ID"], pages_per_batch=2))
        whole = await collect(puller.pull("deal", select=["ID"]))

        assert ids_of(short) == ids_of(whole) == list(range(1, 121))
        # 120 rows: two full pages, then a page of 20 in the second batch.
        assert [len(names) for names in commands_sent(wire)] == [2, 2, 50]

    @pytest.mark.parametrize("pages", [0, 51])
    async def test_a_count_outside_one_to_fifty_is_refused(
        self, mocked_client: Bitrix24Client, pages: int
    ) -> None:
        with pytest.raises(ValueError, match="pages_per_batch"):
            await collect(Puller(mocked_client).pull("deal", pages_per_batch=pages))
