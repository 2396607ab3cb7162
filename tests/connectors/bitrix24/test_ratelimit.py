"""The shared leaky bucket in real Redis matches the portal's: burst, then a drip."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from connectors.bitrix24.ratelimit import (
    ENTERPRISE,
    STANDARD,
    NoRateLimit,
    PortalRateLimiter,
    RatePlan,
)
from tests.connectors.bitrix24.conftest import Sleeps


def _limiter(
    redis: Redis,
    key_prefix: str,
    plan: RatePlan = STANDARD,
    *,
    headroom: int = 0,
    sleep: Sleeps | None = None,
) -> PortalRateLimiter:
    if sleep is None:
        return PortalRateLimiter(
            redis, "example.bitrix24.ru", plan, key_prefix=key_prefix, headroom=headroom
        )
    return PortalRateLimiter(
        redis,
        "example.bitrix24.ru",
        plan,
        key_prefix=key_prefix,
        headroom=headroom,
        sleep=sleep,
    )


async def reserve_in_turn(
    limiter: PortalRateLimiter, count: int
) -> tuple[list[float], float]:
    """The waits of `count` reservations made one after another, and their time."""
    started = time.monotonic()
    waits = [await limiter.reserve() for _ in range(count)]
    return waits, time.monotonic() - started


def assert_leaky_bucket(
    waits: list[float], elapsed: float, per_second: float, burst: int
) -> None:
    """A full burst at once, then one request per drain interval.

    The bucket drains while the reservations are made, so a slow machine may let a
    few more through at once; never fewer.
    """
    interval = 1 / per_second
    ordered = sorted(waits)
    at_once = sum(1 for wait in ordered if wait == 0.0)
    assert burst <= at_once <= burst + math.ceil(elapsed * per_second)
    queued = ordered[at_once:]
    assert queued, "every reservation went through at once"
    assert 0 < queued[0] <= interval
    gaps = [later - earlier for earlier, later in itertools.pairwise(queued)]
    assert all(interval - 0.05 < gap <= interval + 1e-6 for gap in gaps), gaps


class TestPortalRateLimiter:
    async def test_a_burst_of_fifty_goes_at_once_then_one_each_half_second(
        self, redis: Redis, key_prefix: str
    ) -> None:
        limiter = _limiter(redis, key_prefix)

        waits, elapsed = await reserve_in_turn(limiter, 53)

        assert waits[:50] == [0.0] * 50
        assert_leaky_bucket(waits, elapsed, per_second=2.0, burst=50)

    async def test_the_enterprise_plan_holds_250_and_drains_five_a_second(
        self, redis: Redis, key_prefix: str
    ) -> None:
        limiter = _limiter(redis, key_prefix, ENTERPRISE)

        waits, elapsed = await reserve_in_turn(limiter, 260)

        assert waits[:250] == [0.0] * 250
        assert_leaky_bucket(waits, elapsed, per_second=5.0, burst=250)

    async def test_two_processes_share_one_budget(
        self, key_prefix: str, redis_factory: Callable[[], Redis]
    ) -> None:
        api = _limiter(redis_factory(), key_prefix)
        worker = _limiter(redis_factory(), key_prefix)
        started = time.monotonic()

        from_api = [await api.reserve() for _ in range(30)]
        from_worker = [await worker.reserve() for _ in range(23)]

        waits = from_api + from_worker
        assert waits[:50] == [0.0] * 50
        assert_leaky_bucket(waits, time.monotonic() - started, 2.0, 50)

    async def test_concurrent_callers_are_spaced_by_the_drain_rate(
        self, key_prefix: str, redis_factory: Callable[[], Redis]
    ) -> None:
        limiters = [_limiter(redis_factory(), key_prefix) for _ in range(2)]
        started = time.monotonic()

        waits = await asyncio.gather(*(limiters[n % 2].reserve() for n in range(60)))

        assert_leaky_bucket(list(waits), time.monotonic() - started, 2.0, 50)

    async def test_the_bucket_drains_with_time(
        self, redis: Redis, key_prefix: str
    ) -> None:
        limiter = _limiter(redis, key_prefix, RatePlan(per_second=20.0, burst=5))
        for _ in range(5):
            await limiter.reserve()

        await asyncio.sleep(0.25)  # 5 requests drain at 20 a second

        assert await limiter.reserve() == 0.0

    async def test_acquire_sleeps_the_reserved_wait(
        self, redis: Redis, key_prefix: str
    ) -> None:
        sleeps = Sleeps()
        limiter = _limiter(
            redis, key_prefix, RatePlan(per_second=2.0, burst=1), sleep=sleeps
        )

        first = await limiter.acquire()
        second = await limiter.acquire()

        assert first == 0.0
        assert sleeps.delays == [second]
        assert 0 < second <= 0.5

    async def test_headroom_keeps_places_free_for_other_callers(
        self, redis: Redis, key_prefix: str
    ) -> None:
        limiter = _limiter(redis, key_prefix, headroom=2)

        waits, elapsed = await reserve_in_turn(limiter, 51)

        assert_leaky_bucket(waits, elapsed, per_second=2.0, burst=48)

    async def test_the_bucket_key_expires_once_drained(
        self, redis: Redis, key_prefix: str
    ) -> None:
        limiter = _limiter(redis, key_prefix)

        await limiter.reserve()

        ttl_ms = await redis.pttl(limiter.key)
        assert 0 < ttl_ms <= 1500

    def test_a_plan_needs_a_positive_rate(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            RatePlan(per_second=0, burst=50)


class TestNoRateLimit:
    async def test_self_hosted_portals_never_wait(self) -> None:
        started = time.monotonic()

        waits = [await NoRateLimit().acquire() for _ in range(100)]

        assert waits == [0.0] * 100
        assert time.monotonic() - started < 0.1
