"""Shared pieces for the dialog and qualifier tests: a fixed clock and the services."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import BusinessRules, Service

MOSCOW = ZoneInfo("Europe/Moscow")
# Wednesday 8 January 2025, 14:05 in Moscow: the salon (Mon–Sat 09–21) is open.
NOW = datetime(2025, 1, 8, 14, 5, tzinfo=MOSCOW)

SERVICES = {
    # Money in the rules file is a string; validation turns it into Decimal.
    "manicure": Service.model_validate(
        {
            "title": "Маникюр",
            "price_from": "1500.00",
            "price_to": "2500.00",
            "synonyms": ["маникюрчик", "ногти", "ноготочки", "гель-лак"],
        }
    ),
    "pedicure": Service.model_validate({"title": "Педикюр", "price_from": "2000.00"}),
    "haircut": Service(
        title="Стрижка", synonyms=["подстричься", "постричься", "подстричь"]
    ),
    "coloring": Service(title="Окрашивание волос", synonyms=["окрашивание"]),
    "brows": Service(title="Брови", synonyms=["окрашивание бровей"]),
}


def salon_rules() -> BusinessRules:
    """The defaults with the test services."""
    return BusinessRules(services=SERVICES)


REDIS_URL = "redis://127.0.0.1:6379/15"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """The real test Redis; fails the test if none answers."""
    client = Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except RedisError as exc:
        await client.aclose()
        pytest.fail(f"tests need Redis at {REDIS_URL} ({exc}); run `make test`")
    yield client
    await client.aclose()


@pytest.fixture
async def key_prefix(redis: Redis) -> AsyncIterator[str]:
    """A fresh key prefix per test, its keys deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:dialog"
    yield prefix
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
