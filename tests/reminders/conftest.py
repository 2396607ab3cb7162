"""Reminder tests: the sandbox (Bitrix24, Telegram, WhatsApp) over real sockets, real
Redis with a key prefix and arq queue of each test's own, and a clock tests move.

Times are fixed in March 2027, after the real present: a job the planner queues
waits in Redis until a test makes it due (`Jobs.make_due`) and runs it in a real
burst worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from arq.utils import timestamp_ms

from app.config import BusinessRules, parse_rules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.messengers.base import Sender
from connectors.messengers.telegram import TelegramSender
from connectors.messengers.whatsapp import WhatsAppSender
from reminders.keys import ReminderKeys
from reminders.service import Reminders, build_reminders
from sandbox.server import SandboxOptions
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import (
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)
from tests.connectors.bitrix24.conftest import Sleeps, http, wire
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.support import isolated_environment, queue, queue_redis, restored_logging
from webhooks.keys import InboxKeys

__all__ = [
    "http",
    "isolated_environment",
    "queue",
    "restored_logging",
    "wire",
]  # fixtures

MOSCOW = ZoneInfo("Europe/Moscow")
APPLICATION_TOKEN = "fake_app_token_123"
VISIT_FIELD = "UF_CRM_VISIT_AT"
TELEGRAM_CHAT = "100000001"
WHATSAPP_CHAT = "79990000001"
MANAGER = 1
# Wednesday 10 March 2027, 10:00 in Moscow; the visit is Thursday at 15:00.
START = datetime(2027, 3, 10, 10, 0, tzinfo=MOSCOW)
VISIT = datetime(2027, 3, 11, 15, 0, tzinfo=MOSCOW)

RULES = """
[crm]
visit_field = "UF_CRM_VISIT_AT"

[crm.stages]
new = ["NEW"]
booked = ["PREPARATION"]
confirmed = ["PREPAYMENT_INVOICE"]
visited = ["WON"]
no_show = ["EXECUTING"]
cancelled = ["FINAL_INVOICE"]
lost = ["LOSE", "APOLOGY"]
"""


def make_rules(extra: str = "") -> BusinessRules:
    """The test salon's rules, with more TOML appended."""
    return parse_rules(RULES + extra)


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    options = SandboxOptions(
        port=free_port(), rate_limit="off", application_token=APPLICATION_TOKEN
    )
    with running_sandbox(options) as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal with the visit field, and the client's Telegram chat."""
    sandbox_server.reset()
    sandbox_server.settings(rate_limit="off")
    sandbox_server.http.delete("/_sandbox/faults").raise_for_status()
    sandbox_server.result(
        "crm.deal.userfield.add",
        {"fields": {"FIELD_NAME": "VISIT_AT", "USER_TYPE_ID": "datetime"}},
    )
    chat = {"id": int(TELEGRAM_CHAT), "first_name": "Test"}
    sandbox_server.http.post("/_sandbox/telegram/chats", json=chat).raise_for_status()
    return sandbox_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def rules() -> BusinessRules:
    return make_rules()


@pytest.fixture
def keys() -> ReminderKeys:
    return ReminderKeys(prefix=f"leadloop-test:{uuid4().hex}")


@pytest.fixture
def inbox_keys(keys: ReminderKeys) -> InboxKeys:
    return InboxKeys(prefix=f"{keys.prefix}:inbound")


@pytest.fixture
async def redis(keys: ReminderKeys, queue: str) -> AsyncIterator[ArqRedis]:
    """Real Redis whose default arq queue is this test's; cleaned afterwards."""
    async with queue_redis(keys.prefix, queue) as client:
        yield client


@pytest.fixture
def client(sandbox: RunningSandbox, http: httpx.AsyncClient) -> Bitrix24Client:
    return Bitrix24Client(
        http,
        WebhookCredentials(sandbox.webhook),
        portal_zone=MOSCOW,
        sleep=Sleeps(),
        retry=RetryPolicy(),
    )


@pytest.fixture
def senders(sandbox: RunningSandbox, http: httpx.AsyncClient) -> dict[str, Sender]:
    return {
        "telegram": TelegramSender(http, SANDBOX_BOT_TOKEN, sandbox.base_url),
        "whatsapp": WhatsAppSender(
            http,
            SANDBOX_WHATSAPP_ACCESS_TOKEN,
            SANDBOX_PHONE_NUMBER_ID,
            f"{sandbox.base_url}/v22.0",
        ),
    }


MakeReminders = Callable[..., Reminders]


@pytest.fixture
def make_reminders(
    redis: ArqRedis,
    client: Bitrix24Client,
    senders: dict[str, Sender],
    clock: FakeClock,
    keys: ReminderKeys,
    inbox_keys: InboxKeys,
    rules: BusinessRules,
) -> MakeReminders:
    """The reminders on this test's Redis, portal, senders and clock."""

    def make(rules: BusinessRules = rules, **parts: Any) -> Reminders:
        options: dict[str, Any] = {
            "redis": redis,
            "client": client,
            "senders": senders,
            "rules": rules,
        } | parts
        return build_reminders(**options, clock=clock, keys=keys, inbox_keys=inbox_keys)

    return make


@pytest.fixture
def reminders(make_reminders: MakeReminders) -> Reminders:
    return make_reminders()


@dataclass
class Portal:
    """The sandbox portal as a salon's manager uses it."""

    sandbox: RunningSandbox

    def contact(self, **fields: Any) -> int:
        fields.setdefault("NAME", "Test")
        return int(self.sandbox.result("crm.contact.add", {"fields": fields}))

    def book(
        self,
        visit: datetime = VISIT,
        *,
        stage: str = "PREPARATION",
        contact_id: int | None = None,
        **fields: Any,
    ) -> int:
        """A deal booked for `visit` by manager 1."""
        values = {
            "TITLE": "Маникюр",
            "STAGE_ID": stage,
            "ASSIGNED_BY_ID": MANAGER,
            VISIT_FIELD: visit.isoformat(),
            **fields,
        }
        if contact_id is not None:
            values["CONTACT_ID"] = contact_id
        return int(self.sandbox.result("crm.deal.add", {"fields": values}))

    def update(self, deal_id: int, **fields: Any) -> None:
        self.sandbox.result("crm.deal.update", {"id": deal_id, "fields": fields})

    def deal(self, deal_id: int) -> dict[str, Any]:
        row: dict[str, Any] = self.sandbox.result("crm.deal.get", {"id": deal_id})
        return row

    def comments(self, deal_id: int) -> list[str]:
        rows = self.sandbox.result(
            "crm.timeline.comment.list",
            {"filter": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal"}},
        )
        return [row["COMMENT"] for row in rows]

    def tasks(self) -> list[dict[str, Any]]:
        answer = self.sandbox.result(
            "tasks.task.list",
            {
                "select": [
                    "ID",
                    "TITLE",
                    "RESPONSIBLE_ID",
                    "DEADLINE",
                    "PRIORITY",
                    "XML_ID",
                    "UF_CRM_TASK",
                ]
            },
        )
        tasks: list[dict[str, Any]] = answer["tasks"]
        return tasks

    def notifications(self) -> list[dict[str, Any]]:
        return list(self.sandbox.app.sandbox.portal.table("notify"))

    def telegram_messages(self, chat_id: str = TELEGRAM_CHAT) -> dict[str, Any]:
        response = self.sandbox.http.get(
            "/_sandbox/telegram/messages", params={"chat_id": chat_id}
        )
        record: dict[str, Any] = response.json()
        return record

    def answer_callback(self, callback_id: str) -> None:
        """Answer a button press as the webhook's acknowledgement does."""
        body = {"callback_query_id": callback_id}
        answer = self.sandbox.http.post(
            f"/bot{SANDBOX_BOT_TOKEN}/answerCallbackQuery", json=body
        )
        assert answer.status_code == 200, answer.text

    def whatsapp_messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sandbox.http.get(
            "/_sandbox/whatsapp/messages"
        ).json()["messages"]
        return messages

    def fault(self, target: str, **fault: Any) -> None:
        body = {"target": target, **fault}
        response = self.sandbox.http.post("/_sandbox/faults", json=body)
        assert response.status_code == 200, response.text


@pytest.fixture
def portal(sandbox: RunningSandbox) -> Portal:
    return Portal(sandbox)


@dataclass
class Jobs:
    """The arq jobs of this test's queue, and a way to make them due."""

    redis: ArqRedis
    queue: str

    async def queued(self) -> list[tuple[str, tuple[Any, ...], float]]:
        """(function, args, score) of every queued job, by due time."""
        jobs = []
        for job_id, score in await self.redis.zrange(
            self.queue, 0, -1, withscores=True
        ):
            raw = await self.redis.get(job_key_prefix + job_id.decode())
            if raw is None:
                continue
            definition = deserialize_job(raw)
            jobs.append((definition.function, tuple(definition.args), score))
        return jobs

    async def fire_jobs(self) -> list[tuple[Any, ...]]:
        """The (deal id, stamp, kind) of every queued reminder or check."""
        return [
            args
            for function, args, _ in await self.queued()
            if function == "reminders.fire"
        ]

    async def make_due(self, until: datetime) -> int:
        """Every job due by `until` (a fake time) becomes due now; how many."""
        due = 0
        now = timestamp_ms()
        for job_id, score in await self.redis.zrange(
            self.queue, 0, -1, withscores=True
        ):
            if score <= until.timestamp() * 1000:
                await self.redis.zadd(self.queue, {job_id: now})
                due += 1
        return due


@pytest.fixture
def jobs(redis: ArqRedis, queue: str) -> Jobs:
    return Jobs(redis, queue)
