"""Legacy lists over real HTTP: pages, `start`, order, select, and big pulls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox.listing import engine_window, legacy_window
from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.shapes import shape_differences

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitrix24"
QUIET = frozenset({"operating_reset_at"})
STAGES = ["NEW", "PREPARATION", "EXECUTING", "WON", "LOSE"]


def deal(deal_id: int, **fields: Any) -> dict[str, Any]:
    stage = STAGES[deal_id % len(STAGES)]
    row = {
        "ID": str(deal_id),
        "TITLE": f"Deal {deal_id}",
        "TYPE_ID": "COMPLEX",
        "CATEGORY_ID": "0",
        "STAGE_ID": stage,
        "STAGE_SEMANTIC_ID": {"WON": "S", "LOSE": "F"}.get(stage, "P"),
        "OPPORTUNITY": f"{1000 + deal_id % 7}.00",
        "IS_MANUAL_OPPORTUNITY": "Y",
        "ASSIGNED_BY_ID": str(1 + deal_id % 3),
        "DATE_CREATE": f"2026-05-{1 + deal_id % 28:02d}T10:00:00+03:00",
        "UF_CRM_NOTE": f"note {deal_id}",
    }
    row.update(fields)
    return row


NOTE_FIELD = {
    "ID": "1",
    "ENTITY_ID": "CRM_DEAL",
    "FIELD_NAME": "UF_CRM_NOTE",
    "USER_TYPE_ID": "string",
    "MULTIPLE": "N",
    "MANDATORY": "N",
}


def load_deals(sandbox: RunningSandbox, count: int) -> None:
    rows = [deal(deal_id) for deal_id in range(1, count + 1)]
    sandbox.load({"deals": rows, "userfields": [NOTE_FIELD]})


def page(sandbox: RunningSandbox, **params: Any) -> dict[str, Any]:
    response = sandbox.call("crm.deal.list", {"select": ["ID"], **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def page_ids(body: dict[str, Any]) -> list[int]:
    return [int(row["ID"]) for row in body["result"]]


class TestPages:
    @pytest.fixture(autouse=True)
    def _deals(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 123)

    def test_fifty_rows_a_page_with_total_and_next(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox)

        assert page_ids(body) == list(range(1, 51))
        assert (body["total"], body["next"]) == (123, 50)

    def test_the_last_page_has_no_next(self, sandbox: RunningSandbox) -> None:
        body = page(sandbox, start=100)

        assert page_ids(body) == list(range(101, 124))
        assert body["total"] == 123
        assert "next" not in body

    def test_a_start_between_pages_is_rounded_down(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox, start=60)

        assert page_ids(body)[0] == 51
        assert body["next"] == 100

    def test_a_start_past_the_end_answers_page_one_again(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox, start=150)

        assert page_ids(body) == list(range(1, 51))
        assert (body["total"], body["next"]) == (123, 50)

    def test_start_minus_one_skips_the_count(self, sandbox: RunningSandbox) -> None:
        body = page(sandbox, start=-1)

        assert len(body["result"]) == 50
        assert body["total"] == 0
        assert "next" not in body

    def test_start_is_read_from_a_query_string(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.get(
            "/rest/1/sandbox/crm.deal.list", params={"start": "50", "select[]": "ID"}
        )

        assert response.json()["result"][0]["ID"] == "51"
        assert response.json()["next"] == 100

    def test_an_empty_answer_has_total_zero_and_no_next(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox, filter={"ID": 99999})

        assert (body["result"], body["total"]) == ([], 0)
        assert "next" not in body

    def test_following_next_visits_every_row_once(
        self, sandbox: RunningSandbox
    ) -> None:
        seen: list[int] = []
        start: int | None = 0
        while start is not None:
            body = page(sandbox, start=start, filter={">=ID": 3})
            seen += page_ids(body)
            start = body.get("next")

        assert seen == list(range(3, 124))


class TestKeysetScan:
    def test_keyset_pages_walk_the_table_by_id(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 180)
        seen: list[int] = []
        last = 0
        while True:
            body = page(
                sandbox,
                order={"ID": "ASC"},
                filter={">ID": last, "ASSIGNED_BY_ID": 2},
                start=-1,
            )
            seen += page_ids(body)
            if len(body["result"]) < 50:
                break
            last = seen[-1]

        assert seen == [n for n in range(1, 181) if 1 + n % 3 == 2]

    def test_a_keyset_page_only_reads_rows_above_the_bound(
        self, sandbox: RunningSandbox
    ) -> None:
        load_deals(sandbox, 5000)

        body = page(
            sandbox,
            order={"ID": "ASC"},
            filter={">ID": 4000, "TYPE_ID": "COMPLEX"},
            start=-1,
        )

        assert page_ids(body) == list(range(4001, 4051))
        # Only the rows tested were parsed: none below the bound, none after the 50th.
        parsed = sandbox.app.portal.table("deal").cache("\x00string:TYPE_ID")
        assert sorted(parsed) == list(range(4001, 4051))

    def test_keyset_pages_chained_in_one_batch(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 120)
        head = "crm.deal.list?order[ID]=ASC&select[0]=ID&start=-1"

        result = sandbox.result(
            "batch",
            {
                "halt": 1,
                "cmd": {
                    "req_0": f"{head}&filter[%3EID]=0",
                    "req_1": f"{head}&filter[%3EID]=$result[req_0][49][ID]",
                    "req_2": f"{head}&filter[%3EID]=$result[req_1][49][ID]",
                },
            },
        )

        pages = [result["result"][name] for name in ("req_0", "req_1", "req_2")]
        assert [len(rows) for rows in pages] == [50, 50, 20]
        assert pages[2][-1] == {"ID": "120"}
        assert result["result_total"] == {"req_0": 0, "req_1": 0, "req_2": 0}


class TestOrder:
    @pytest.fixture(autouse=True)
    def _deals(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 20)

    def test_keys_are_upper_cased_and_any_direction_but_asc_is_desc(
        self, sandbox: RunningSandbox
    ) -> None:
        for direction in ("desc", "DOWN", 1):
            body = page(sandbox, order={"id": direction})
            assert page_ids(body)[:3] == [20, 19, 18], direction

        assert page_ids(page(sandbox, order={"Id": "asc"}))[:2] == [1, 2]

    def test_unknown_order_fields_are_ignored(self, sandbox: RunningSandbox) -> None:
        body = page(sandbox, order={"NOPE": "DESC", "ID": "DESC"})

        assert page_ids(body)[0] == 20

    def test_ties_keep_id_order_and_later_keys_break_them(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox, order={"ASSIGNED_BY_ID": "ASC", "ID": "DESC"})

        assert page_ids(body)[:7] == [18, 15, 12, 9, 6, 3, 19]

    def test_money_sorts_as_a_number(self, sandbox: RunningSandbox) -> None:
        sandbox.load(
            {"deals": [deal(1, OPPORTUNITY="900.00"), deal(2, OPPORTUNITY="10000.00")]}
        )

        assert page_ids(page(sandbox, order={"OPPORTUNITY": "DESC"})) == [2, 1]

    def test_stage_sorts_by_the_pipeline_order(self, sandbox: RunningSandbox) -> None:
        body = page(sandbox, order={"STAGE_ID": "ASC"}, select=["ID", "STAGE_ID"])

        stages = [row["STAGE_ID"] for row in body["result"]]
        # Directory SORT: NEW 10, PREPARATION 20, EXECUTING 40, WON 60, LOSE 70.
        assert stages == sorted(stages, key=STAGES.index)
        assert stages[0] == "NEW"
        assert stages[-1] == "LOSE"

    def test_a_miscased_stage_key_sorts_by_the_code(
        self, sandbox: RunningSandbox
    ) -> None:
        body = page(sandbox, order={"stage_id": "ASC"}, select=["ID", "STAGE_ID"])

        stages = [row["STAGE_ID"] for row in body["result"]]
        assert stages == sorted(stages)

    def test_nulls_come_first_when_ascending(self, sandbox: RunningSandbox) -> None:
        sandbox.load({"deals": [deal(1), deal(2, OPPORTUNITY=None), deal(3)]})

        assert page_ids(page(sandbox, order={"OPPORTUNITY": "ASC"}))[0] == 2
        assert page_ids(page(sandbox, order={"OPPORTUNITY": "DESC"}))[-1] == 2

    def test_an_order_that_is_not_an_array_is_an_error(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.call("crm.deal.list", {"order": "ID"})

        assert response.status_code == 400
        assert (
            response.json()["error_description"] == "Parameter 'order' must be array."
        )


class TestSelect:
    @pytest.fixture(autouse=True)
    def _deals(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 3)

    def first_row(self, sandbox: RunningSandbox, select: Any) -> dict[str, Any]:
        row: dict[str, Any] = sandbox.result("crm.deal.list", {"select": select})[0]
        return row

    def test_no_select_gives_standard_and_user_fields(
        self, sandbox: RunningSandbox
    ) -> None:
        row = self.first_row(sandbox, None)

        assert {"ID", "TITLE", "STAGE_ID", "UF_CRM_NOTE"} <= set(row)
        assert "CONTACT_IDS" not in row

    def test_star_gives_standard_fields_only(self, sandbox: RunningSandbox) -> None:
        row = self.first_row(sandbox, ["*"])

        assert "UF_CRM_NOTE" not in row
        assert row["TITLE"] == "Deal 1"
        assert row["CLOSEDATE"] == ""

    def test_uf_star_gives_user_fields_and_the_id(
        self, sandbox: RunningSandbox
    ) -> None:
        assert self.first_row(sandbox, ["UF_*"]) == {"ID": "1", "UF_CRM_NOTE": "note 1"}

    def test_named_fields_and_the_id_always(self, sandbox: RunningSandbox) -> None:
        assert self.first_row(sandbox, ["title", "NOPE"]) == {
            "TITLE": "Deal 1",
            "ID": "1",
        }

    def test_a_select_that_is_not_an_array_selects_everything(
        self, sandbox: RunningSandbox
    ) -> None:
        row = self.first_row(sandbox, "ID")

        assert {"ID", "TITLE", "UF_CRM_NOTE"} <= set(row)

    def test_select_from_a_query_string(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.get(
            "/rest/1/sandbox/crm.deal.list",
            params=[("select[]", "ID"), ("select[]", "STAGE_ID")],
        )

        assert response.json()["result"][0] == {"ID": "1", "STAGE_ID": "PREPARATION"}

    def test_rows_match_the_recorded_list(self, sandbox: RunningSandbox) -> None:
        fixture = json.loads((FIXTURES / "crm.deal.list.response.json").read_text())
        select = list(fixture["result"][0])

        response = sandbox.call("crm.deal.list", {"select": select})

        assert shape_differences(response.json(), fixture, allow_missing=QUIET) == []
        assert list(response.json()["result"][0]) == select


class TestBigLists:
    def test_three_thousand_deals_page_by_page(self, sandbox: RunningSandbox) -> None:
        load_deals(sandbox, 3000)
        seen: list[int] = []
        start: int | None = 0
        while start is not None:
            body = page(sandbox, start=start, filter={"TYPE_ID": "COMPLEX"})
            assert body["total"] == 3000
            seen += page_ids(body)
            start = body.get("next")

        assert seen == list(range(1, 3001))

    def test_three_thousand_deals_in_batches_of_fifty_pages(
        self, sandbox: RunningSandbox
    ) -> None:
        load_deals(sandbox, 3000)
        commands = {
            f"p{start}": f"crm.deal.list?select[]=ID&order[ID]=ASC&start={start}"
            for start in range(0, 2500, 50)
        }

        result = sandbox.result("batch", {"halt": 0, "cmd": commands})

        rows = [row for name in commands for row in result["result"][name]]
        assert len(rows) == 2500
        assert len({row["ID"] for row in rows}) == 2500
        assert result["result_next"]["p2450"] == 2500


class TestWindows:
    """The page arithmetic shared with the engine lists."""

    @pytest.mark.parametrize(
        ("start", "total", "expected"),
        [
            (0, 123, (0, 123, 50)),
            (10, 123, (0, 123, 50)),
            (100, 123, (100, 123, None)),
            (150, 123, (0, 123, 50)),
            (-1, 123, (0, 0, None)),
            (0, 0, (0, 0, None)),
        ],
    )
    def test_legacy_windows(
        self, start: int, total: int, expected: tuple[int, int, int | None]
    ) -> None:
        window = legacy_window(start, total)

        assert (window.offset, window.total, window.next) == expected

    @pytest.mark.parametrize(
        ("start", "total", "expected"),
        [
            (0, 123, (0, 123, 50)),
            (100, 123, (100, 123, None)),
            (150, 123, (150, 123, None)),
            (-1, 123, (0, None, None)),
        ],
    )
    def test_engine_windows(
        self, start: int, total: int, expected: tuple[int, int | None, int | None]
    ) -> None:
        window = engine_window(start, total)

        assert (window.offset, window.total, window.next) == expected
