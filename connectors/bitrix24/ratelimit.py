"""One request budget per portal, shared by every process through Redis.

The portal's front end keeps a leaky bucket per portal and source address: each HTTP
request adds one, the level drains at 2 a second (enterprise: 5), and a request that
would lift it above 50 (250) is refused with 503 QUERY_LIMIT_EXCEEDED (reference
§6.1). API replicas and arq workers behind one address share that bucket, so they
share one budget here.

The bucket is kept as a GCRA "theoretical arrival time" in one Redis key and moved by
an atomic Lua script on Redis' own clock. A caller reserves the next slot and learns
how long to wait before sending: callers queue in arrival order, and the portal sees
the same level the script computes. `limits` and `pyrate-limiter` were considered;
they offer fixed, moving and sliding windows, which either let 100 requests through a
window boundary (a 503 burst) or, after an initial burst, wait out a whole window
where the bucket would already admit one request every half second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

Sleep = Callable[[float], Awaitable[None]]

# KEYS[1]: the bucket's key. ARGV[1]: seconds one request takes to drain (1 / rate);
# ARGV[2]: requests the bucket holds. The key holds the time (Redis clock, seconds)
# at which the bucket will be empty if nothing else arrives; the answer is how long
# this request must wait before it may be sent, as a decimal string.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local empty_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if empty_at < now then
  empty_at = now
end
empty_at = empty_at + interval
local wait = empty_at - now - capacity * interval
if wait < 0 then
  wait = 0
end
local ttl_ms = math.ceil((empty_at - now) * 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.6f', empty_at), 'PX', ttl_ms)
return string.format('%.6f', wait)
"""


@dataclass(frozen=True)
class RatePlan:
    """The portal's bucket: how fast it drains and how many requests it holds."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate plan needs a positive rate and burst")


STANDARD = RatePlan(per_second=2.0, burst=50)  # every plan but Enterprise
ENTERPRISE = RatePlan(per_second=5.0, burst=250)


class RequestLimiter(Protocol):
    """What the client needs: wait until one more request may be sent."""

    async def acquire(self) -> float:
        """Wait for a slot; answer the seconds waited."""
        ...


class PortalRateLimiter:
    """The shared leaky bucket of one portal, in Redis."""

    def __init__(
        self,
        redis: Redis,
        portal: str,
        plan: RatePlan = STANDARD,
        *,
        key_prefix: str = "leadloop:bitrix24",
        headroom: int = 1,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 <= headroom < plan.burst:
            raise ValueError("headroom must leave part of the burst")
        self.plan = plan
        self.key = f"{key_prefix}:{portal}:bucket"
        # The portal counts arrivals, not reservations: the first requests of a burst
        # open new connections and arrive late, a later one on a warm connection
        # arrives early, and a script elsewhere on the same address adds its own.
        # Headroom keeps that many places free (one was enough against the sandbox).
        self._capacity = plan.burst - headroom
        self._reserve = redis.register_script(_RESERVE)
        self._sleep = sleep

    async def reserve(self) -> float:
        """Take the next slot; answer how many seconds to wait before sending."""
        answer = await self._reserve(
            keys=[self.key], args=[1.0 / self.plan.per_second, self._capacity]
        )
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        return float(text)

    async def acquire(self) -> float:
        wait = await self.reserve()
        if wait > 0:
            await self._sleep(wait)
        return wait


class NoRateLimit:
    """For self-hosted portals, which keep no request bucket (reference §6.1)."""

    async def acquire(self) -> float:
        return 0.0


class RequestMeter:
    """A rate limiter that also counts the HTTP requests passing through it."""

    def __init__(self, inner: RequestLimiter) -> None:
        self.inner = inner
        self.requests = 0

    async def acquire(self) -> float:
        self.requests += 1
        return await self.inner.acquire()
