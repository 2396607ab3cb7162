"""Fixtures for the service shell: clean settings, real Redis, restored logging."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from arq.connections import ArqRedis

from app.clients import ping_redis, redis_client
from app.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
# Tests use a real Redis; database 15 keeps them away from `make run`'s database 0.
REDIS_URL = "redis://127.0.0.1:6379/15"
# A port where nothing listens: Redis and Bitrix24 "down" without any mock.
DEAD_URL_PORT = 1

MakeSettings = Callable[..., Settings]


@pytest.fixture(autouse=True)
def isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[None]:
    """No LEADLOOP_* variable or .env file of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LEADLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """Undo `configure_logging`: root handlers and level, structlog's defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def make_settings() -> MakeSettings:
    """Settings from keyword arguments only, on the test Redis."""

    def make(**values: Any) -> Settings:
        values.setdefault("redis_url", REDIS_URL)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    """A client of the real test Redis; the test fails if none answers."""
    client = redis_client(REDIS_URL)
    problem = await ping_redis(client)
    if problem is not None:
        await client.aclose()
        pytest.fail(f"tests need Redis at {REDIS_URL} ({problem}); run `make test`")
    yield client
    await client.aclose()
