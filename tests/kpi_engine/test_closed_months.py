"""Closed-month records in real Redis: kept forever, first close wins, replaceable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from kpi_engine.closing import ClosedMonths, MonthAlreadyClosed, redis_durability
from kpi_engine.data import ClosedMonth, DealValues
from tests.support import REDIS_URL

MSK = ZoneInfo("Europe/Moscow")


@pytest.fixture
async def store(redis: Redis) -> AsyncIterator[ClosedMonths]:
    prefix = f"test:{uuid.uuid4().hex}:closed"
    yield ClosedMonths(redis, prefix=prefix)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)


def record(payout: str = "37.04", *, day: int = 2) -> ClosedMonth:
    return ClosedMonth(
        month="2025-01",
        closed_at=datetime(2025, 2, day, 10, tzinfo=MSK),
        figures={"managers": [{"id": "17", "bonus": {"payout": payout}}]},
        deals={
            101: DealValues(
                opportunity=Decimal("1234.50"),
                currency_id="RUB",
                assigned_by_id=17,
                contact_id=7001,
                category_id=0,
                visit_field=datetime(2025, 1, 15, 12, tzinfo=MSK),
            )
        },
    )


class TestClosedMonths:
    async def test_a_record_reads_back_as_it_was_stored(
        self, store: ClosedMonths
    ) -> None:
        await store.save(record())

        assert await store.get("2025-01") == record()
        assert await store.get("2025-02") is None

    async def test_the_key_never_expires(
        self, store: ClosedMonths, redis: Redis
    ) -> None:
        await store.save(record())

        assert await redis.ttl(store.key("2025-01")) == -1

    async def test_a_second_close_is_refused_and_names_the_first(
        self, store: ClosedMonths
    ) -> None:
        await store.save(record())

        with pytest.raises(MonthAlreadyClosed) as refused:
            await store.save(record("40.00", day=5))

        assert refused.value.closed_at == record().closed_at
        assert await store.get("2025-01") == record()

    async def test_of_two_processes_closing_at_once_one_wins(
        self, store: ClosedMonths
    ) -> None:
        other = ClosedMonths(Redis.from_url(REDIS_URL), prefix=store.prefix)
        try:
            outcomes = await asyncio.gather(
                store.save(record("37.04")),
                other.save(record("40.00")),
                return_exceptions=True,
            )
        finally:
            await other.redis.aclose()

        refused = [o for o in outcomes if isinstance(o, MonthAlreadyClosed)]
        assert len(refused) == 1
        kept = await store.get("2025-01")
        assert kept is not None
        assert kept.figures["managers"][0]["bonus"]["payout"] in ("37.04", "40.00")

    async def test_replacing_keeps_the_replaced_record_beside_it(
        self, store: ClosedMonths, redis: Redis
    ) -> None:
        await store.save(record("37.04"))

        await store.save(record("40.00", day=5), replace=True)

        assert await store.get("2025-01") == record("40.00", day=5)
        [replaced] = await redis.lrange(store.key("2025-01") + ":replaced", 0, -1)
        assert b'"payout": "37.04"' in replaced


class TestDurability:
    def test_an_allkeys_policy_may_evict_closed_months(self) -> None:
        [problem] = redis_durability(
            {"maxmemory-policy": "allkeys-lru", "appendonly": "yes", "save": ""}
        )
        assert "allkeys-lru" in problem

    def test_no_persistence_loses_them_on_restart(self) -> None:
        [problem] = redis_durability(
            {"maxmemory-policy": "noeviction", "appendonly": "no", "save": ""}
        )
        assert "persists nothing" in problem

    def test_snapshots_or_an_append_only_file_keep_them(self) -> None:
        assert redis_durability({"appendonly": "no", "save": "3600 1"}) == []
        assert redis_durability({"appendonly": "yes", "save": ""}) == []

    async def test_the_test_redis_is_judged_by_its_own_config(
        self, store: ClosedMonths, redis: Redis
    ) -> None:
        config = {}
        for name in ("maxmemory-policy", "appendonly", "save"):
            config |= await redis.config_get(name)

        assert await store.durability_problems() == redis_durability(config)
        assert set(config) == {"maxmemory-policy", "appendonly", "save"}
