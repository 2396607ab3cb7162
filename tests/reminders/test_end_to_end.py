"""End to end over real sockets: the sandbox portal and messengers in their own
thread, leadloop's API served by uvicorn, a real arq worker on real Redis.

A deal booked through REST raises an event the sandbox POSTs (form-encoded) to
`/webhooks/bitrix24`; the worker plans; a test moves the clock and makes the due job
runnable; the reminder reaches the Telegram or WhatsApp sandbox; a tap the sandbox
delivers to the messenger webhook comes back through the inbound chain and changes
the deal in the portal.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from arq.connections import ArqRedis
from pydantic import SecretStr

from app.api import create_app
from app.config import BusinessRules
from app.logging import configure_logging
from app.settings import Settings
from app.worker import build_worker
from reminders import links
from reminders.booking import callback_data, stamp_of
from reminders.keys import ReminderKeys
from reminders.service import reminders_from_ctx
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import SANDBOX_PHONE_NUMBER_ID, SANDBOX_WHATSAPP_ACCESS_TOKEN
from tests.reminders.conftest import (
    APPLICATION_TOKEN,
    MOSCOW,
    TELEGRAM_CHAT,
    VISIT,
    VISIT_FIELD,
    WHATSAPP_CHAT,
    FakeClock,
    Jobs,
)
from tests.sandbox.conftest import RunningSandbox, free_port
from tests.support import REDIS_URL
from webhooks.bitrix24 import EventQueue, get_event_queue
from webhooks.endpoints import get_inbox
from webhooks.inbound import InboundMessage
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

pytestmark = pytest.mark.slow

STAMP = stamp_of(VISIT)
DAY_BEFORE_NOON = datetime(2027, 3, 10, 12, tzinfo=MOSCOW)
TELEGRAM_SECRET = "tg-secret_0123456789"
WHATSAPP_APP_SECRET = "test_app_secret"
WHATSAPP_VERIFY_TOKEN = "verify_me"


@pytest.fixture
def settings(sandbox: RunningSandbox) -> Settings:
    return Settings(
        _env_file=None,
        env="production",
        redis_url=REDIS_URL,
        bitrix24_webhook_url=SecretStr(sandbox.webhook),
        bitrix24_application_token=SecretStr(APPLICATION_TOKEN),
        telegram_bot_token=SecretStr(SANDBOX_BOT_TOKEN),
        telegram_webhook_secret=SecretStr(TELEGRAM_SECRET),
        telegram_api_base=sandbox.base_url,
        whatsapp_access_token=SecretStr(SANDBOX_WHATSAPP_ACCESS_TOKEN),
        whatsapp_app_secret=SecretStr(WHATSAPP_APP_SECRET),
        whatsapp_verify_token=SecretStr(WHATSAPP_VERIFY_TOKEN),
        whatsapp_phone_number_id=SANDBOX_PHONE_NUMBER_ID,
        whatsapp_api_base=f"{sandbox.base_url}/v22.0",
    )


@pytest.fixture
def log_buffer(settings: Settings) -> io.StringIO:
    buffer = io.StringIO()
    configure_logging(settings, stream=buffer)
    return buffer


@pytest.fixture
async def api(
    settings: Settings,
    redis: ArqRedis,
    keys: ReminderKeys,
    inbox_keys: InboxKeys,
) -> AsyncIterator[str]:
    """leadloop's API on a real port in this event loop; jobs go to the test queue."""
    app = create_app(settings)
    events, inbox = EventQueue(redis, keys), Inbox(redis, keys=inbox_keys)

    async def test_events() -> EventQueue:
        return events

    async def test_inbox() -> Inbox:
        return inbox

    app.dependency_overrides[get_event_queue] = test_events
    app.dependency_overrides[get_inbox] = test_inbox
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def control(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """The sandbox reached without blocking this loop, which serves the API."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as client:
        yield client


@dataclass
class Salon:
    """The portal, the messengers and the worker, driven as a test needs."""

    control: httpx.AsyncClient
    redis: ArqRedis
    settings: Settings
    rules: BusinessRules
    clock: FakeClock
    keys: ReminderKeys
    inbox_keys: InboxKeys
    queue: str
    jobs: Jobs
    passed_on: list[InboundMessage] = field(default_factory=list)

    async def rest(self, method: str, params: dict[str, Any]) -> Any:
        response = await self.control.post(f"/rest/1/sandbox/{method}", json=params)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    async def bind(self, handler: str) -> None:
        for event in ("ONCRMDEALADD", "ONCRMDEALUPDATE"):
            await self.rest("event.bind", {"event": event, "handler": handler})

    async def book(self, visit: datetime = VISIT) -> int:
        fields = {
            "TITLE": "Маникюр",
            "STAGE_ID": "PREPARATION",
            "ASSIGNED_BY_ID": 1,
            VISIT_FIELD: visit.isoformat(),
        }
        return int(await self.rest("crm.deal.add", {"fields": fields}))

    async def deal(self, deal_id: int) -> dict[str, Any]:
        row: dict[str, Any] = await self.rest("crm.deal.get", {"id": deal_id})
        return row

    async def comments(self, deal_id: int) -> list[str]:
        rows = await self.rest(
            "crm.timeline.comment.list",
            {"filter": {"ENTITY_ID": deal_id, "ENTITY_TYPE": "deal"}},
        )
        return [row["COMMENT"] for row in rows]

    async def events_delivered(self) -> list[dict[str, Any]]:
        """Wait for the portal's event deliveries; every one so far."""
        answer = await self.control.post(
            "/_sandbox/events/wait", json={"timeout_s": 10}
        )
        body: dict[str, Any] = answer.json()
        assert body["idle"] is True
        deliveries: list[dict[str, Any]] = body["deliveries"]
        return deliveries

    async def telegram(self) -> dict[str, Any]:
        answer = await self.control.get(
            "/_sandbox/telegram/messages", params={"chat_id": TELEGRAM_CHAT}
        )
        record: dict[str, Any] = answer.json()
        return record

    async def whatsapp(self) -> list[dict[str, Any]]:
        answer = await self.control.get("/_sandbox/whatsapp/messages")
        messages: list[dict[str, Any]] = answer.json()["messages"]
        return messages

    async def remember(
        self,
        deal_id: int,
        channel: str,
        chat_id: str,
        *,
        wrote_ago: timedelta | None = None,
    ) -> None:
        """What the intake hand-off (and the inbound chain, for `wrote_ago`) do."""
        await links.remember(self.redis, deal_id, channel, chat_id, keys=self.keys)  # type: ignore[arg-type]
        if wrote_ago is not None:
            at = self.clock() - wrote_ago
            await links.touch(self.redis, channel, chat_id, at, keys=self.keys)  # type: ignore[arg-type]

    async def run(self, jobs: int) -> dict[str, Any]:
        """A fresh burst worker (a restarted process) that runs `jobs` jobs."""
        ctx = self._ctx()
        worker = build_worker(
            self.settings,
            self.rules,
            queue_name=self.queue,
            burst=True,
            max_burst_jobs=jobs,
            handle_signals=False,
            poll_delay=0.01,
            cron_jobs=[],
            ctx=ctx,
        )
        try:
            await asyncio.wait_for(worker.main(), timeout=30)
        finally:
            await worker.close()
        assert worker.jobs_failed == 0
        return ctx

    async def due(self, moment: datetime) -> int:
        self.clock.set(moment)
        return await self.jobs.make_due(moment)

    def _ctx(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "settings": self.settings,
            "rules": self.rules,
            "reminder_clock": self.clock,
            "reminder_keys": self.keys,
            "inbound_keys": self.inbox_keys,
        }
        ctx["inbound_handler"] = self._chain(ctx)
        return ctx

    def _chain(
        self, ctx: dict[str, Any]
    ) -> Callable[[InboundMessage], Awaitable[None]]:
        async def chain(message: InboundMessage) -> None:
            # What the inbound handler chain does first with every message.
            if not await reminders_from_ctx(ctx).answers.offer(message):
                self.passed_on.append(message)

        return chain


@pytest.fixture
async def salon(
    api: str,
    control: httpx.AsyncClient,
    redis: ArqRedis,
    settings: Settings,
    rules: BusinessRules,
    clock: FakeClock,
    keys: ReminderKeys,
    inbox_keys: InboxKeys,
    queue: str,
    jobs: Jobs,
) -> Salon:
    salon = Salon(control, redis, settings, rules, clock, keys, inbox_keys, queue, jobs)
    await salon.bind(f"{api}/webhooks/bitrix24")
    telegram_hook = {"url": f"{api}/webhooks/telegram", "secret_token": TELEGRAM_SECRET}
    answer = await control.post(
        f"/bot{SANDBOX_BOT_TOKEN}/setWebhook", json=telegram_hook
    )
    assert answer.json()["ok"] is True
    whatsapp_hook = {
        "webhook_url": f"{api}/webhooks/whatsapp",
        "verify_token": WHATSAPP_VERIFY_TOKEN,
        "app_secret": WHATSAPP_APP_SECRET,
    }
    answer = await control.post("/_sandbox/whatsapp/settings", json=whatsapp_hook)
    assert answer.status_code == 200, answer.text
    return salon


class TestTelegram:
    async def test_a_booking_reminds_and_a_confirm_tap_confirms_the_deal(
        self, salon: Salon, log_buffer: io.StringIO
    ) -> None:
        """TG-3: the tap is answered once, in the webhook's acknowledgement."""
        deal_id = await salon.book()
        await salon.remember(deal_id, "telegram", TELEGRAM_CHAT)
        [added] = await salon.events_delivered()
        assert (added["event"], added["status"]) == ("ONCRMDEALADD", "delivered")

        await salon.run(jobs=1)  # reminders.watch_deal
        assert len(await salon.jobs.fire_jobs()) == 4

        assert await salon.due(DAY_BEFORE_NOON) == 1
        await salon.run(jobs=1)  # reminders.fire: day_before
        [reminder] = (await salon.telegram())["messages"]
        confirm = callback_data("confirm", deal_id, STAMP)
        assert reminder["buttons"][0] == [
            {"text": "Подтверждаю", "callback_data": confirm}
        ]

        tap = {"chat_id": int(TELEGRAM_CHAT), "callback_data": confirm}
        delivered = (
            await salon.control.post("/_sandbox/telegram/deliver", json=tap)
        ).json()
        assert delivered["deliveries"][0]["status"] == 200
        query_id = delivered["update"]["callback_query"]["id"]
        await salon.run(jobs=1)  # process_chat: the tap

        deal = await salon.deal(deal_id)
        assert deal["STAGE_ID"] == "PREPAYMENT_INVOICE"
        assert await salon.comments(deal_id) == [
            "Клиент подтвердил визит 11 марта в 15:00 кнопкой в напоминании (Telegram)."
        ]
        record = await salon.telegram()
        assert record["messages"][-1]["text"] == "Спасибо! Ждём вас завтра в 15:00."
        # Known fault TG-3: answered once, in the webhook's acknowledgement.
        answered = [
            answer["callback_query_id"] for answer in record["callback_answers"]
        ]
        assert answered == [query_id]
        assert salon.passed_on == []

        # The stage change comes back as an event and leaves the outcome check only.
        updated = (await salon.events_delivered())[-1]
        assert (updated["event"], updated["status"]) == ("ONCRMDEALUPDATE", "delivered")
        await salon.run(jobs=1)
        assert await salon.jobs.fire_jobs() == [(deal_id, STAMP, "outcome")]

        logged = log_buffer.getvalue()
        assert "Спасибо" not in logged
        assert "reminders.sent" in logged
        assert "telegram.callback_expired" not in logged

    async def test_the_same_event_delivered_twice_sends_one_reminder(
        self, salon: Salon, api: str
    ) -> None:
        deal_id = await salon.book()
        await salon.remember(deal_id, "telegram", TELEGRAM_CHAT)
        [added] = await salon.events_delivered()
        body = {
            "event": "ONCRMDEALADD",
            "event_handler_id": "1",
            "data[FIELDS][ID]": str(deal_id),
            "ts": str(int(added["raised_at"])),
            "auth[application_token]": APPLICATION_TOKEN,
        }

        for _ in range(2):
            again = await salon.control.post(f"{api}/webhooks/bitrix24", data=body)
            assert again.status_code == 200
        watches = [
            job for job in await salon.jobs.queued() if job[0] != "reminders.fire"
        ]
        assert len(watches) == 1

        await salon.run(jobs=1)
        await salon.due(DAY_BEFORE_NOON)
        await salon.run(jobs=1)
        assert len((await salon.telegram())["messages"]) == 1

    async def test_a_worker_restarted_between_planning_and_firing_loses_nothing(
        self, salon: Salon
    ) -> None:
        deal_id = await salon.book()
        await salon.remember(deal_id, "telegram", TELEGRAM_CHAT)
        await salon.events_delivered()
        await salon.run(jobs=1)  # plans, then its worker stops
        assert len(await salon.jobs.fire_jobs()) == 4

        # No worker ran through the day before's noon. At 13:00 the next day the
        # day-before (missed), the call check and the 2-hour reminder are all due;
        # a new worker process runs them.
        await salon.due(datetime(2027, 3, 11, 13, tzinfo=MOSCOW))
        await salon.run(jobs=3)

        texts = [message["text"] for message in (await salon.telegram())["messages"]]
        assert texts == ["Ждём вас сегодня в 15:00. Всё в силе?"]
        tasks = await salon.rest("tasks.task.list", {"select": ["ID", "TITLE"]})
        assert [task["title"] for task in tasks["tasks"]] == [
            "Позвонить клиенту: визит 11 марта в 15:00 не подтверждён"
        ]
        assert await salon.jobs.fire_jobs() == [(deal_id, STAMP, "outcome")]

    async def test_a_reminder_whose_deal_was_moved_is_not_sent(
        self, salon: Salon
    ) -> None:
        deal_id = await salon.book()
        await salon.remember(deal_id, "telegram", TELEGRAM_CHAT)
        await salon.events_delivered()
        await salon.run(jobs=1)
        # The portal drops the update's event (it never re-sends one).
        for row in await salon.rest("event.get", {}):
            await salon.rest(
                "event.unbind", {"event": row["event"], "handler": row["handler"]}
            )
        moved = VISIT + timedelta(days=2)
        await salon.rest(
            "crm.deal.update",
            {"id": deal_id, "fields": {VISIT_FIELD: moved.isoformat()}},
        )

        await salon.due(DAY_BEFORE_NOON)
        await salon.run(jobs=1)

        assert (await salon.telegram())["messages"] == []


class TestWhatsApp:
    async def test_reply_buttons_inside_the_window_and_a_tap_confirms(
        self, salon: Salon, log_buffer: io.StringIO
    ) -> None:
        salon.clock.set(DAY_BEFORE_NOON - timedelta(hours=2))
        deal_id = await salon.book()
        await salon.remember(
            deal_id, "whatsapp", WHATSAPP_CHAT, wrote_ago=timedelta(hours=1)
        )
        await salon.events_delivered()
        await salon.run(jobs=1)

        await salon.due(DAY_BEFORE_NOON)
        await salon.run(jobs=1)
        [reminder] = await salon.whatsapp()
        assert reminder["type"] == "interactive"
        confirm = callback_data("confirm", deal_id, STAMP)
        assert reminder["buttons"][0] == {"id": confirm, "title": "Подтверждаю"}

        tap = {
            "from": WHATSAPP_CHAT,
            "button_reply": {"id": confirm, "title": "Подтверждаю"},
        }
        delivered = await salon.control.post("/_sandbox/whatsapp/deliver", json=tap)
        assert delivered.status_code == 200, delivered.text
        await salon.run(jobs=1)

        assert (await salon.deal(deal_id))["STAGE_ID"] == "PREPAYMENT_INVOICE"
        assert await salon.comments(deal_id) == [
            "Клиент подтвердил визит 11 марта в 15:00 кнопкой в напоминании (WhatsApp)."
        ]
        assert (await salon.whatsapp())[-1][
            "text"
        ] == "Спасибо! Ждём вас завтра в 15:00."
        assert WHATSAPP_CHAT not in log_buffer.getvalue()

    async def test_outside_the_window_the_template_and_its_quick_reply_cancel(
        self, salon: Salon
    ) -> None:
        deal_id = await salon.book()
        await salon.remember(deal_id, "whatsapp", WHATSAPP_CHAT)
        await salon.events_delivered()
        await salon.run(jobs=1)

        # The client has not written in the last 24 hours.
        await salon.due(DAY_BEFORE_NOON + timedelta(hours=1))
        await salon.run(jobs=1)
        [reminder] = await salon.whatsapp()
        assert reminder["type"] == "template"
        assert reminder["template"]["name"] == "visit_reminder"

        # The template's second quick reply, cancel, was sent the visit's data.
        cancel = reminder["template"]["components"][2]
        assert cancel["index"] == "1"
        payload = cancel["parameters"][0]["payload"]
        assert payload == callback_data("cancel", deal_id, STAMP)
        button = {"payload": payload, "text": "Отменить запись"}
        tap = {"from": WHATSAPP_CHAT, "button": button}
        delivered = await salon.control.post("/_sandbox/whatsapp/deliver", json=tap)
        assert delivered.status_code == 200, delivered.text
        await salon.run(jobs=1)

        assert (await salon.deal(deal_id))["STAGE_ID"] == "FINAL_INVOICE"
        tasks = await salon.rest("tasks.task.list", {"select": ["ID", "TITLE"]})
        assert [task["title"] for task in tasks["tasks"]] == [
            "Клиент отменил визит 11 марта в 15:00: предложить другое время"
        ]
