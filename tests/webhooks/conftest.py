"""Webhook tests: the real app in-process, real Redis, a real arq worker.

Each test gets its own key prefix and arq queue, deleted afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from pydantic import SecretStr

from app.api import create_app
from app.config import BusinessRules
from app.logging import configure_logging
from app.settings import Settings
from app.worker import build_worker
from tests.support import (
    REDIS_URL,
    in_process,
    isolated_environment,
    queue,
    queue_redis,
    restored_logging,
)
from webhooks.endpoints import get_inbox
from webhooks.inbound import InboundKind, InboundMessage
from webhooks.jobs import DrainPolicy
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

__all__ = ["isolated_environment", "queue", "restored_logging"]  # fixtures

REPO = Path(__file__).resolve().parents[2]
TELEGRAM_SECRET = "tg-secret_0123456789"
WHATSAPP_APP_SECRET = "test_app_secret"
WHATSAPP_VERIFY_TOKEN = "verify_me"


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
async def redis(keys: InboxKeys, queue: str) -> AsyncIterator[ArqRedis]:
    """Real Redis whose default arq queue is this test's own; cleaned afterwards."""
    async with queue_redis(keys.prefix, queue) as client:
        yield client


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
        async with in_process(app) as client:
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


def text_message(event_id: str, chat_id: str = "100000001") -> InboundMessage:
    """A Telegram text as the route stores it."""
    return InboundMessage(
        channel="telegram",
        event_id=event_id,
        chat_id=chat_id,
        sender_id=chat_id,
        kind=InboundKind.TEXT,
        received_at=datetime(2025, 1, 13, 9, 0, tzinfo=UTC),
        text="Хочу записаться",
    )


def sign(body: bytes, secret: str = WHATSAPP_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
