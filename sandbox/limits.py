"""The two Bitrix24 limits: the front-end leaky bucket and per-method operating time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# reference/bitrix24.md §6.1: (drain per second, burst) by plan.
RATE_PLANS: dict[str, tuple[float, float] | None] = {
    "standard": (2.0, 50.0),
    "enterprise": (5.0, 250.0),
    "off": None,
}

# §6.2: calls slower than 0.1 s are charged, in 10 one-minute buckets, 420 s per 10 min.
OPERATING_THRESHOLD_S = 0.1
OPERATING_BUCKETS = 10
OPERATING_BUCKET_S = 60.0
OPERATING_LIMIT_S = 420.0

Clock = Callable[[], float]


@dataclass
class LeakyBucket:
    """Each request adds one, the level drains at `rate` a second; over `burst`: 503."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    level: float = 0.0
    updated: float = field(default=-1.0)

    def admit(self) -> bool:
        now = self.clock()
        if self.updated >= 0:
            self.level = max(0.0, self.level - (now - self.updated) * self.rate)
        self.updated = now
        if self.level + 1 > self.burst:
            return False
        self.level += 1
        return True


class RateLimiter:
    """One bucket per portal and source address, as the cloud front end counts."""

    def __init__(self, plan: str, clock: Clock = time.monotonic) -> None:
        if plan not in RATE_PLANS:
            raise ValueError(f"unknown rate-limit plan {plan!r}")
        self.plan = plan
        self.clock = clock
        self._buckets: dict[str, LeakyBucket] = {}

    def admit(self, source: str) -> bool:
        numbers = RATE_PLANS[self.plan]
        if numbers is None:
            return True
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = LeakyBucket(numbers[0], numbers[1], self.clock)
            self._buckets[source] = bucket
        return bucket.admit()

    def set_plan(self, plan: str) -> None:
        if plan not in RATE_PLANS:
            raise ValueError(f"unknown rate-limit plan {plan!r}")
        self.plan = plan
        self._buckets.clear()

    def reset(self) -> None:
        self._buckets.clear()


@dataclass
class _MethodLedger:
    # minute index -> (seconds charged, wall time of the first charged call in it)
    buckets: dict[int, list[float]] = field(default_factory=dict)


class OperatingLimiter:
    """Per method and per caller (webhook or app): seconds spent, over ten minutes."""

    def __init__(
        self, limit_s: float = OPERATING_LIMIT_S, clock: Clock = time.time
    ) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self._ledgers: dict[tuple[str, str], _MethodLedger] = {}

    def _live(self, key: tuple[str, str]) -> _MethodLedger | None:
        ledger = self._ledgers.get(key)
        if ledger is None:
            return None
        current = math.floor(self.clock() / OPERATING_BUCKET_S)
        for minute in [m for m in ledger.buckets if m <= current - OPERATING_BUCKETS]:
            del ledger.buckets[minute]
        return ledger

    def spent(self, method: str, caller: str) -> float:
        ledger = self._live((method, caller))
        return sum(b[0] for b in ledger.buckets.values()) if ledger else 0.0

    def reset_at(self, method: str, caller: str) -> int | None:
        """First call of the oldest bucket + 600 s; None before any bucket exists."""
        ledger = self._live((method, caller))
        if not ledger or not ledger.buckets:
            return None
        oldest = min(ledger.buckets)
        return int(ledger.buckets[oldest][1] + OPERATING_BUCKETS * OPERATING_BUCKET_S)

    def blocked(self, method: str, caller: str) -> bool:
        # LoadLimiter::is blocks once the total is strictly over the limit.
        return self.spent(method, caller) > self.limit_s

    def record(self, method: str, caller: str, seconds: float) -> float:
        """Charge a call; returns the seconds counted (0 for fast calls)."""
        if seconds <= OPERATING_THRESHOLD_S:
            return 0.0
        key = (method, caller)
        ledger = self._ledgers.setdefault(key, _MethodLedger())
        now = self.clock()
        minute = math.floor(now / OPERATING_BUCKET_S)
        bucket = ledger.buckets.setdefault(minute, [0.0, now])
        bucket[0] += seconds
        return seconds

    def reset(self) -> None:
        self._ledgers.clear()
