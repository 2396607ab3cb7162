"""Fixtures and helpers the app, webhook and reminder tests share.

Their conftests import the fixtures by name (autouse ones apply to that folder
only): clean settings, restored logging, real Redis on the app tests' database with
an arq queue and key prefix of each test's own, and the app called in-process.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import structlog
import uvicorn
from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from fastapi import FastAPI
from redis.asyncio import ConnectionPool

from app.clients import ping_redis
from app.settings import get_settings
from tests.sandbox.conftest import free_port

# Database 15 keeps tests away from `make run`'s database 0; keys carry a prefix.
REDIS_URL = "redis://127.0.0.1:6379/15"


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
def queue() -> str:
    """An arq queue of this test's own."""
    return f"leadloop-test:queue:{uuid4().hex}"


async def answering(client: ArqRedis) -> ArqRedis:
    """The client, once Redis answers PING; otherwise the test fails saying so."""
    problem = await ping_redis(client)
    if problem is not None:
        await client.aclose()
        pytest.fail(f"tests need Redis at {REDIS_URL} ({problem}); run `make test`")
    return client


@asynccontextmanager
async def queue_redis(prefix: str, queue: str) -> AsyncIterator[ArqRedis]:
    """Real Redis whose default arq queue is `queue`; afterwards the keys under
    `prefix`, the arq jobs with ids under it and the queue are deleted."""
    client = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL), default_queue_name=queue
    )
    client.auto_close_connection_pool = True
    await answering(client)
    try:
        yield client
    finally:
        patterns = [f"{prefix}:*"] + [
            f"{arq_prefix}{prefix}:*"
            for arq_prefix in (
                job_key_prefix,
                in_progress_key_prefix,
                retry_key_prefix,
                result_key_prefix,
            )
        ]
        doomed = [queue, f"{queue}:health-check"]
        for pattern in patterns:
            doomed += [key async for key in client.scan_iter(match=pattern)]
        await client.delete(*doomed)
        await client.aclose()


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client that calls `app` in-process, its lifespan running around the block."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api") as client,
    ):
        yield client


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """The ASGI app behind uvicorn on a free loopback port, in this event loop; its
    base URL while the block runs."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
