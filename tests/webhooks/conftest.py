"""Webhook tests: the real app in-process, real Redis, a real arq worker.

Each test gets its own key prefix and arq queue, deleted afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import structlog
from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import deserialize_job
from pydantic import SecretStr
from redis.asyncio import ConnectionPool

from app.api import create_app
from app.clients import ping_redis
from app.config import BusinessRules
from app.logging import configure_logging
from app.settings import Settings, get_settings
from app.worker import build_worker
from webhooks.endpoints import get_inbox
from webhooks.inbound import InboundMessage
from webhooks.jobs import DrainPolicy
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

REPO = Path(__file__).resolve().parents[2]
# Database 15 is the app tests' database; keys carry a per-test prefix.
REDIS_URL = "redis://127.0.0.1:6379/15"
TELEGRAM_SECRET = "tg-secret_0123456789"
WHATSAPP_APP_SECRET = "test_app_secret"
WHATSAPP_VERIFY_TOKEN = "verify_me"


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
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,
        env="production",
        redis_url=REDIS_URL,
        telegram_webhook_secret=SecretStr(TELEGRAM_SECRET),
        whatsapp_app_secret=SecretStr(WHATSAPP_APP_SECRET),
        whatsapp_verify_token=SecretStr(WHATSAPP_VERIFY_TOKEN),
    )


@pytest.fixture
def logs(settings: Settings) -> Callable[[], list[dict[str, Any]]]:
    """Send logs to a buffer; call the result to read the lines as dicts."""
    buffer = io.StringIO()
    configure_logging(settings, stream=buffer)
    return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


@pytest.fixture
def keys() -> InboxKeys:
    return InboxKeys(prefix=f"leadloop-test:{uuid4().hex}")


@pytest.fixture
def queue() -> str:
    return f"leadloop-test:queue:{uuid4().hex}"


@pytest.fixture
async def redis(keys: InboxKeys, queue: str) -> AsyncIterator[ArqRedis]:
    """Real Redis whose default arq queue is this test's own; cleaned afterwards."""
    client = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL), default_queue_name=queue
    )
    client.auto_close_connection_pool = True
    problem = await ping_redis(client)
    if problem is not None:
        await client.aclose()
        pytest.fail(f"tests need Redis at {REDIS_URL} ({problem})")
    yield client
    await _delete_test_keys(client, keys, queue)
    await client.aclose()


async def _delete_test_keys(client: ArqRedis, keys: InboxKeys, queue: str) -> None:
    doomed = [key async for key in client.scan_iter(match=f"{keys.prefix}:*")]
    for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix):
        pattern = f"{prefix}{keys.prefix}:*"
        doomed += [key async for key in client.scan_iter(match=pattern)]
    pattern = f"{result_key_prefix}{keys.prefix}:*"
    doomed += [key async for key in client.scan_iter(match=pattern)]
    doomed += [queue, f"{queue}:health-check"]
    await client.delete(*doomed)


@pytest.fixture
def inbox(redis: ArqRedis, keys: InboxKeys) -> Inbox:
    return Inbox(redis, keys=keys)


OpenApi = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_api(settings: Settings, inbox: Inbox) -> OpenApi:
    """The whole app (lifespan included), its inbox on this test's keys and queue."""

    @asynccontextmanager
    async def open_app() -> AsyncIterator[httpx.AsyncClient]:
        async def test_inbox() -> Inbox:
            return inbox

        app = create_app(settings)
        app.dependency_overrides[get_inbox] = test_inbox
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://api") as client,
        ):
            yield client

    return open_app


@dataclass
class Recorder:
    """An inbound handler that records what it was given, in order."""

    messages: list[InboundMessage] = field(default_factory=list)
    before: Callable[[InboundMessage], Awaitable[None]] | None = None

    async def __call__(self, message: InboundMessage) -> None:
        if self.before is not None:
            await self.before(message)
        self.messages.append(message)

    @property
    def event_ids(self) -> list[str]:
        return [message.event_id for message in self.messages]


RunWorker = Callable[..., Awaitable[Any]]


@pytest.fixture
def run_worker(settings: Settings, keys: InboxKeys, queue: str) -> RunWorker:
    """Run a burst worker on this test's queue until no job is left."""

    async def run(
        handler: Callable[[InboundMessage], Awaitable[None]],
        *,
        policy: DrainPolicy | None = None,
    ) -> Any:
        ctx: dict[str, Any] = {
            "settings": settings,
            "inbound_handler": handler,
            "inbound_keys": keys,
        }
        if policy is not None:
            ctx["inbound_policy"] = policy
        worker = build_worker(
            settings,
            BusinessRules(),
            queue_name=queue,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            ctx=ctx,
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    return run


async def queued_jobs(redis: ArqRedis, queue: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The queued jobs as (function, args), read back from what arq stored."""
    jobs = []
    for job_id in await redis.zrange(queue, 0, -1):
        raw = await redis.get(job_key_prefix + job_id.decode())
        definition = deserialize_job(raw)
        jobs.append((definition.function, tuple(definition.args)))
    return jobs


def sign(body: bytes, secret: str = WHATSAPP_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
