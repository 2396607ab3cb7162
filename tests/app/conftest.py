"""Fixtures for the service shell: clean settings, real Redis, restored logging."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from app.clients import redis_client
from app.settings import Settings
from sandbox.kpi_history import HistoryShape, generate
from sandbox.server import SandboxOptions
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.support import REDIS_URL, answering, isolated_environment, restored_logging

__all__ = ["isolated_environment", "restored_logging"]  # autouse fixtures

REPO = Path(__file__).resolve().parents[2]
# A port where nothing listens: Redis and Bitrix24 "down" without any mock.
DEAD_URL_PORT = 1

MakeSettings = Callable[..., Settings]


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
    client = await answering(redis_client(REDIS_URL))
    yield client
    await client.aclose()


@contextlib.contextmanager
def kpi_portal(*, deals: int, activities: int) -> Iterator[RunningSandbox]:
    """A sandbox portal with a generated November to January of history."""
    with (
        kept_uvicorn_log_levels(),
        running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as sandbox,
    ):
        shape = HistoryShape(
            start=date(2024, 11, 1),
            end=date(2025, 2, 1),
            deals=deals,
            activities=activities,
        )
        sandbox.load(generate(shape))
        yield sandbox


@contextlib.contextmanager
def kept_uvicorn_log_levels() -> Iterator[None]:
    """uvicorn sets its loggers' levels when a server starts; later tests expect
    the levels they had."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
