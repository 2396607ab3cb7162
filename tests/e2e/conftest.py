"""The whole service over real sockets: sandbox, API, and an arq worker on Redis.

The sandbox (Bitrix24 portal, Bot API, Graph API) serves from its own thread; the
API (uvicorn) and a live arq worker run in the test's event loop, so every call
from the test to the sandbox is async: the sandbox delivers each update to the API
while the test waits for its answer. The worker starts through the real
`on_startup`, which builds the intake chain from settings, as `leadloop worker`
does; each test has its own key prefix and arq queue, removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from arq.worker import Worker
from pydantic import SecretStr
from redis.asyncio import ConnectionPool

from app.api import create_app
from app.clients import ping_redis
from app.config import BusinessRules, CalendarRules, IntakeRules
from app.local import connect_sandbox_messengers
from app.settings import Settings, get_settings
from app.worker import build_worker
from sandbox.server import SandboxOptions
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import (
    SANDBOX_APP_SECRET,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)
from tests.qualification.conftest import SERVICES
from tests.qualification.test_handoff import STAFF
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from webhooks.endpoints import get_inbox
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

REDIS_URL = "redis://127.0.0.1:6379/15"
TELEGRAM_SECRET = "e2e-telegram-secret"
VERIFY_TOKEN = "e2e-verify-token"
# A job still running when a test ends (its last reply on the way) gets this long.
JOBS_END_WITHIN_S = 15.0
# A calendar with no closed hours, so that a run at any time of day reads the same.
ALWAYS_OPEN = {
    "working_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    "hours": ["00:00", "23:59"],
}


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LEADLOOP_* variable of the machine leaks into a test."""
    for name in list(os.environ):
        if name.startswith("LEADLOOP_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def salon_rules() -> BusinessRules:
    return BusinessRules(
        services=SERVICES,
        calendar=CalendarRules.model_validate(ALWAYS_OPEN),
        intake=IntakeRules(managers=["17", "23"]),
    )


def service_settings(sandbox: str) -> Settings:
    """Settings that point every upstream at the sandbox, as `leadloop run` does."""
    return Settings(
        _env_file=None,
        env="production",
        redis_url=REDIS_URL,
        bitrix24_webhook_url=SecretStr(f"{sandbox}/rest/1/sandbox/"),
        telegram_bot_token=SecretStr(SANDBOX_BOT_TOKEN),
        telegram_api_base=sandbox,
        telegram_webhook_secret=SecretStr(TELEGRAM_SECRET),
        whatsapp_access_token=SecretStr(SANDBOX_WHATSAPP_ACCESS_TOKEN),
        whatsapp_phone_number_id=SANDBOX_PHONE_NUMBER_ID,
        whatsapp_app_secret=SecretStr(SANDBOX_APP_SECRET),
        whatsapp_verify_token=SecretStr(VERIFY_TOKEN),
        whatsapp_api_base=f"{sandbox}/v22.0",
    )


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal in simple mode with managers 17 and 23, bots forgotten."""
    sandbox_server.reset()
    sandbox_server.settings(rate_limit="off")
    sandbox_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    return sandbox_server


@dataclass
class Stack:
    """The running service and the sandbox it talks to, as a client sees them."""

    sandbox: httpx.AsyncClient
    api: str
    redis: ArqRedis
    queue: str
    root: str

    async def tell_telegram(self, update: dict[str, Any]) -> dict[str, Any]:
        """Deliver one update (complete or shorthand) to the bot's webhook."""
        answer = await self.sandbox.post("/_sandbox/telegram/deliver", json=update)
        answer.raise_for_status()
        outcome: dict[str, Any] = answer.json()
        assert [d["status"] for d in outcome["deliveries"]] == [200], outcome
        return outcome

    async def tell_whatsapp(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver one signed notification (an event, or `raw` bytes as text)."""
        answer = await self.sandbox.post("/_sandbox/whatsapp/deliver", json=event)
        answer.raise_for_status()
        outcome: dict[str, Any] = answer.json()
        assert outcome["status"] == 200, outcome
        return outcome

    async def settle(self, timeout_s: float = 20.0) -> None:
        """Wait until the worker has drained every chat and holds no job."""
        async with asyncio.timeout(timeout_s):
            quiet = 0
            while quiet < 3:
                await asyncio.sleep(0.02)
                quiet = quiet + 1 if await self._idle() else 0

    async def _idle(self) -> bool:
        if await self.redis.zcard(self.queue):
            return False
        pattern = f"{self.root}:inbound:[il][no][bc]*"  # inbox:* and lock:*
        async for _ in self.redis.scan_iter(match=pattern):
            return False
        return True

    async def telegram_messages(self, chat_id: int) -> list[dict[str, Any]]:
        answer = await self.sandbox.get(
            "/_sandbox/telegram/messages", params={"chat_id": chat_id}
        )
        return list(answer.json()["messages"])

    async def whatsapp_messages(self, wa_id: str) -> list[dict[str, Any]]:
        answer = await self.sandbox.get(
            "/_sandbox/whatsapp/messages", params={"to": wa_id}
        )
        return list(answer.json()["messages"])

    async def rest(self, method: str, params: dict[str, Any] | None = None) -> Any:
        answer = await self.sandbox.post(f"/rest/1/sandbox/{method}", json=params or {})
        assert answer.status_code == 200, answer.text
        return answer.json()["result"]

    async def crm(self) -> dict[str, list[Any]]:
        """What the portal holds: contacts, deals, tasks, and each deal's comments."""
        contacts = await self.rest(
            "crm.contact.list",
            {"select": ["ID", "NAME", "PHONE", "IM", "ASSIGNED_BY_ID"]},
        )
        deals = await self.rest(
            "crm.deal.list",
            {
                "select": [
                    "ID", "TITLE", "CONTACT_ID", "ASSIGNED_BY_ID", "SOURCE_ID",
                    "STAGE_ID", "COMMENTS",
                ]
            },
        )  # fmt: skip
        tasks = await self.rest(
            "tasks.task.list",
            {"select": ["ID", "TITLE", "RESPONSIBLE_ID", "DEADLINE", "UF_CRM_TASK"]},
        )
        comments = []
        for deal in deals:
            comments += await self.rest(
                "crm.timeline.comment.list",
                {"filter": {"ENTITY_ID": deal["ID"], "ENTITY_TYPE": "deal"}},
            )
        return {
            "contacts": contacts,
            "deals": deals,
            "tasks": sorted(tasks["tasks"], key=lambda task: int(task["id"])),
            "comments": comments,
        }


@contextlib.asynccontextmanager
async def serve_stack(
    sandbox: RunningSandbox, rules: BusinessRules, **settings_values: Any
) -> AsyncIterator[Stack]:
    """API and worker on a fresh prefix and queue, wired to the sandbox's bots;
    `settings_values` change the service's settings (a model endpoint, say)."""
    root = f"e2e:{uuid.uuid4().hex}"
    queue, keys = f"{root}:queue", InboxKeys(f"{root}:inbound")
    settings = service_settings(sandbox.base_url).model_copy(update=settings_values)
    redis = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL), default_queue_name=queue
    )
    redis.auto_close_connection_pool = True
    if await ping_redis(redis) is not None:
        await redis.aclose()
        pytest.fail(f"end-to-end tests need Redis at {REDIS_URL}")
    api = await _start_api(settings, Inbox(redis, keys=keys))
    worker = build_worker(
        settings,
        rules,
        queue_name=queue,
        handle_signals=False,
        poll_delay=0.01,
        cron_jobs=(),
        ctx={
            "settings": settings,
            "rules": rules,
            "key_prefix": root,
            "inbound_keys": keys,
        },
    )
    worker_task = asyncio.create_task(worker.async_run())
    try:
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as http:
            await connect_sandbox_messengers(settings, sandbox.base_url, api.url, http)
            yield Stack(http, api.url, redis, queue, root)
    finally:
        await _stop(worker, worker_task)
        api.server.should_exit = True
        await api.task
        await _forget(redis, root)
        await redis.aclose()


async def _stop(worker: Worker, worker_task: asyncio.Task[None]) -> None:
    """Stop taking jobs, let the running ones end, then close the worker.

    arq's close (without its signal handlers) cancels jobs still running and lets
    their CancelledError out: a test's last reply may still be on its way.
    """
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker_task
    deadline = asyncio.get_running_loop().time() + JOBS_END_WITHIN_S
    while any(not task.done() for task in worker.tasks.values()):
        if asyncio.get_running_loop().time() > deadline:
            break  # close cancels them, and the fixture fails with a hung job
        await asyncio.sleep(0.05)
    await worker.close()


@dataclass
class _Api:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]


async def _start_api(settings: Settings, inbox: Inbox) -> _Api:
    app = create_app(settings)

    async def test_inbox() -> Inbox:
        return inbox

    app.dependency_overrides[get_inbox] = test_inbox
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
        await asyncio.sleep(0.01)
    return _Api(f"http://127.0.0.1:{port}", server, task)


async def _forget(redis: ArqRedis, root: str) -> None:
    doomed = [key async for key in redis.scan_iter(match=f"{root}:*")]
    for prefix in ("arq:job:", "arq:in-progress:", "arq:retry:", "arq:result:"):
        doomed += [key async for key in redis.scan_iter(match=f"{prefix}{root}:*")]
    if doomed:
        await redis.delete(*doomed)


@pytest.fixture
async def stack(sandbox: RunningSandbox) -> AsyncIterator[Stack]:
    async with serve_stack(sandbox, salon_rules()) as running:
        yield running
