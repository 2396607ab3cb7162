"""Real clients cannot tell the sandbox from a portal: fast-bitrix24 and plain httpx."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import httpx
import pytest
from fast_bitrix24 import BitrixAsync

from tests.sandbox.conftest import RunningSandbox

logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)


def deal_rows(count: int, *, category: str, start_id: int = 1) -> list[dict[str, Any]]:
    rows = []
    for offset in range(count):
        deal_id = start_id + offset
        rows.append(
            {
                "ID": str(deal_id),
                "TITLE": f"Deal {deal_id}",
                "TYPE_ID": "SALE",
                "CATEGORY_ID": category,
                "STAGE_ID": "NEW" if category == "0" else f"C{category}:NEW",
                "STAGE_SEMANTIC_ID": "P",
                "OPPORTUNITY": f"{1000 + deal_id}.00",
                "CURRENCY_ID": "RUB",
                "ASSIGNED_BY_ID": "1",
                "OPENED": "Y",
                "CLOSED": "N",
                "DATE_CREATE": "2026-11-02T10:00:00+03:00",
                "DATE_MODIFY": "2026-11-02T10:00:00+03:00",
            }
        )
    return rows


async def _get_all(webhook: str, method: str, params: dict[str, Any]) -> Any:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(raise_for_status=True, timeout=timeout) as session:
        bitrix = BitrixAsync(
            webhook, verbose=False, requests_per_second=2.0, client=session
        )
        return await bitrix.get_all(method, params)


async def _call(webhook: str, method: str, params: dict[str, Any]) -> Any:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(raise_for_status=True, timeout=timeout) as session:
        bitrix = BitrixAsync(webhook, verbose=False, client=session)
        return await bitrix.call(method, params)


class TestFastBitrix24:
    def test_get_all_returns_every_one_of_3000_filtered_deals(
        self, sandbox: RunningSandbox
    ) -> None:
        wanted = deal_rows(3000, category="1")
        others = deal_rows(700, category="0", start_id=3001)
        sandbox.load({"deals": wanted + others})
        sandbox.settings(rate_limit="standard")

        rows = asyncio.run(
            _get_all(
                sandbox.webhook,
                "crm.deal.list",
                {"filter": {"CATEGORY_ID": 1}, "select": ["ID", "TITLE"]},
            )
        )

        ids = sorted(int(row["ID"]) for row in rows)
        assert ids == list(range(1, 3001))
        stats = sandbox.http.get("/_sandbox/stats").json()
        # Page 1 directly, then 59 pages in two batches: 3 HTTP requests in all.
        assert stats["http_by_method"] == {"batch": 2, "crm.deal.list": 1}
        assert stats["batch_by_method"] == {"crm.deal.list": 59}

    def test_call_of_crm_deal_add_returns_the_new_id(
        self, sandbox: RunningSandbox
    ) -> None:
        new_id = asyncio.run(
            _call(sandbox.webhook, "crm.deal.add", {"fields": {"TITLE": "Маникюр"}})
        )

        assert isinstance(new_id, int)
        deal = sandbox.result("crm.deal.get", {"id": new_id})
        assert deal["TITLE"] == "Маникюр"


class TestPlainHttpx:
    def test_form_encoded_add_then_json_get_round_trips(
        self, sandbox: RunningSandbox
    ) -> None:
        created = httpx.post(
            f"{sandbox.webhook}crm.deal.add.json",
            data={"fields[TITLE]": "Стрижка", "fields[OPPORTUNITY]": "1500.50"},
        ).json()["result"]

        deal = httpx.get(f"{sandbox.webhook}crm.deal.get", params={"id": created})

        assert deal.status_code == 200
        assert deal.json()["result"]["OPPORTUNITY"] == "1500.50"


@pytest.fixture(autouse=True)
def _quiet_fast_bitrix24() -> None:
    logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)
