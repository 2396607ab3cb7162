"""The inbound handler chain, with the sandbox's Bot API, Graph API and portal."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import Retry
from redis.asyncio import ConnectionPool

from app.config import BusinessRules, IntakeRules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.writes import Writer
from connectors.messengers.base import Button, Sender, Unavailable
from connectors.messengers.telegram import TelegramSender
from connectors.messengers.whatsapp import WhatsAppSender
from qualification.dialog import DialogEngine, Reply
from qualification.handler import (
    BACKGROUND_GRACE,
    HAND_OFF_FIRST_DELAY,
    InboundHandler,
    ReplySender,
    parked_retry_delay,
)
from qualification.handoff import DeferredHandOffs, HandOff
from qualification.managers import ManagerPicker
from qualification.rules import RuleQualifier
from reminders.keys import ReminderKeys
from reminders.links import Links
from sandbox.server import SandboxOptions
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import SANDBOX_PHONE_NUMBER_ID, SANDBOX_WHATSAPP_ACCESS_TOKEN
from tests.qualification.conftest import MOSCOW, NOW, REDIS_URL, SERVICES, FakeClock
from tests.qualification.test_handoff import STAFF, lead
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from webhooks.inbound import Channel, InboundKind, InboundMessage
from webhooks.keys import InboxKeys
from webhooks.reachability import Reachability
from webhooks.statuses import SentMessages, StatusChange

CHAT = "100000001"
WA_ID = "79990000002"


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal (simple mode, managers 17 and 23) and bots that know CHAT."""
    sandbox_server.reset()
    sandbox_server.settings(rate_limit="off")
    sandbox_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    chat = {"id": int(CHAT), "first_name": "Анна", "type": "private"}
    sandbox_server.http.post("/_sandbox/telegram/chats", json=chat).raise_for_status()
    return sandbox_server


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    """Real Redis whose default arq queue is this test's own; keys removed after."""
    root = f"test:{uuid.uuid4().hex}"
    client = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL),
        default_queue_name=f"{root}:queue",
    )
    client.auto_close_connection_pool = True
    yield client
    doomed = [key async for key in client.scan_iter(match=f"{root}:*")]
    doomed += [key async for key in client.scan_iter(match=f"arq:job:{root}:*")]
    if doomed:
        await client.delete(*doomed)
    await client.aclose()


@pytest.fixture
def root(redis: ArqRedis) -> str:
    return str(redis.default_queue_name).removesuffix(":queue")


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Answers:
    """The reminders' side, answering as told and recording what it was offered."""

    takes: set[InboundKind] = field(default_factory=set)
    offered: list[InboundKind] = field(default_factory=list)

    async def handle_answer(self, message: InboundMessage) -> bool:
        return self._offer(message)

    async def handle_status(self, message: InboundMessage) -> bool:
        return self._offer(message)

    async def forward_text(self, message: InboundMessage) -> bool:
        return self._offer(message)

    def _offer(self, message: InboundMessage) -> bool:
        self.offered.append(message.kind)
        return message.kind in self.takes


@dataclass
class Chain:
    handler: InboundHandler
    make: Callable[..., InboundHandler]
    replies: ReplySender
    answers: Answers
    links: Links
    sleeps: Sleeps
    keys: InboxKeys
    sandbox: RunningSandbox
    events: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def message(
        self, kind: InboundKind, channel: Channel = "telegram", **content: Any
    ) -> InboundMessage:
        chat = CHAT if channel == "telegram" else WA_ID
        return InboundMessage(
            channel=channel,
            event_id=f"{channel}-{next(self.events)}",
            chat_id=chat,
            sender_id=chat,
            kind=kind,
            received_at=NOW,
            sender_name="Анна",
            **content,
        )

    def telegram_sent(self) -> list[dict[str, Any]]:
        answer = self.sandbox.http.get(
            "/_sandbox/telegram/messages", params={"chat_id": CHAT}
        )
        return list(answer.json()["messages"])

    def whatsapp_sent(self) -> list[dict[str, Any]]:
        answer = self.sandbox.http.get("/_sandbox/whatsapp/messages")
        return list(answer.json()["messages"])

    def deals(self) -> list[dict[str, Any]]:
        return list(self.sandbox.result("crm.deal.list", {"select": ["ID", "TITLE"]}))

    def fault(self, **fault: Any) -> None:
        self.sandbox.http.post("/_sandbox/faults", json=fault).raise_for_status()


@pytest.fixture
async def chain(
    sandbox: RunningSandbox, redis: ArqRedis, root: str
) -> AsyncIterator[Chain]:
    rules = BusinessRules(services=SERVICES, intake=IntakeRules(managers=["17", "23"]))
    clock = FakeClock()
    async with httpx.AsyncClient(timeout=10) as http:
        client = Bitrix24Client(
            http, WebhookCredentials(sandbox.webhook), portal_zone=MOSCOW
        )
        async with Batcher(client) as batcher:
            links = Links(redis, keys=ReminderKeys(f"{root}:reminders"))
            handoff = HandOff(
                Writer(client, batcher),
                redis,
                rules,
                ManagerPicker(redis, rules, counter_key=f"{root}:rr"),
                links,
                clock=clock,
                prefix=f"{root}:intake",
                contact_locks=ContactLocks(redis, prefix=f"{root}:lock"),
            )
            senders: dict[Channel, Sender] = {
                "telegram": TelegramSender(http, SANDBOX_BOT_TOKEN, sandbox.base_url),
                "whatsapp": WhatsAppSender(
                    http,
                    SANDBOX_WHATSAPP_ACCESS_TOKEN,
                    SANDBOX_PHONE_NUMBER_ID,
                    f"{sandbox.base_url}/v22.0",
                ),
            }
            keys = InboxKeys(f"{root}:inbound")
            sleeps = Sleeps()
            replies = ReplySender(
                senders, redis, keys=keys, prefix=f"{root}:intake", sleep=sleeps
            )
            answers = Answers()
            dialog = DialogEngine(
                redis,
                rules,
                RuleQualifier(rules.services, rules.zone),
                clock,
                key_prefix=f"{root}:dialog",
            )

            def make(**overrides: Any) -> InboundHandler:
                return InboundHandler(
                    dialog,
                    replies,
                    handoff=handoff,
                    deferred=DeferredHandOffs(redis, prefix=f"{root}:intake"),
                    answers=answers,
                    times=links,
                    **overrides,
                )

            handler = make()
            yield Chain(handler, make, replies, answers, links, sleeps, keys, sandbox)
            await handler.aclose()


async def converse(chain: Chain) -> list[InboundMessage]:
    """A whole Telegram conversation, ending with the shared contact."""
    steps = [
        chain.message(InboundKind.TEXT, text="Здравствуйте, хочу на маникюр"),
        chain.message(InboundKind.TEXT, text="Анна"),
        chain.message(InboundKind.TEXT, text="завтра после 18"),
        chain.message(InboundKind.CONTACT, phone="89990000001", phone_is_senders=True),
    ]
    for step in steps:
        await chain.handler(step)
    return steps


class TestConversation:
    async def test_ends_with_a_deal_and_a_promise_the_salon_keeps(
        self, chain: Chain
    ) -> None:
        await converse(chain)

        sent = chain.telegram_sent()
        assert [m["text"] for m in sent] == [
            "Здравствуйте! Маникюр: от 1\u00a0500 до 2\u00a0500\u00a0₽. "
            "Как к вам обращаться?",
            "Когда вам удобно прийти?",
            "Оставьте, пожалуйста, номер телефона для связи.",
            "Ваша заявка: Маникюр, завтра, 9 января, после 18:00. "
            "Менеджер свяжется с вами в течение 15 минут.",
        ]
        assert [m["request_contact"] for m in sent] == [False, False, True, False]
        assert [deal["TITLE"] for deal in chain.deals()] == ["Маникюр — Анна"]

    async def test_every_event_replayed_sends_and_creates_nothing_more(
        self, chain: Chain
    ) -> None:
        steps = await converse(chain)

        for step in steps:
            await chain.handler(step)

        assert len(chain.telegram_sent()) == 4
        assert len(chain.deals()) == 1

    async def test_a_client_message_keeps_the_reply_window_known(
        self, chain: Chain
    ) -> None:
        await chain.handler(chain.message(InboundKind.TEXT, "whatsapp", text="Привет"))

        assert await chain.links.last_inbound_at("whatsapp", WA_ID) == NOW

    async def test_a_failed_hand_off_still_answers_and_parks_the_lead(
        self, chain: Chain, redis: ArqRedis, root: str
    ) -> None:
        chain.fault(
            method="crm.duplicate.findbycomm",
            kind="error",
            status=400,
            code="ERROR_CORE",
            description="internal",
        )

        steps = await converse(chain)

        last = chain.telegram_sent()[-1]["text"]
        # The dialog's own words, honest without a manager's name or deadline.
        assert last.endswith("Администратор свяжется с вами, чтобы подтвердить запись.")
        assert chain.deals() == []
        [parked] = [
            key async for key in redis.scan_iter(match=f"{root}:intake:parked:*")
        ]
        intake_id = parked.decode().rsplit(":", 1)[-1]
        queued = await redis.zrange(redis.default_queue_name, 0, -1)
        assert queued == [f"{root}:intake:job:handoff:{intake_id}".encode()]

        await chain.handler.hand_off_parked(intake_id, job_try=1)

        assert len(chain.deals()) == 1
        assert await redis.exists(parked) == 0
        await chain.handler(steps[-1])
        assert len(chain.telegram_sent()) == 4


async def parked_ids(redis: ArqRedis, root: str) -> list[str]:
    keys = [key async for key in redis.scan_iter(match=f"{root}:intake:parked:*")]
    return [key.decode().rsplit(":", 1)[-1] for key in keys]


async def converse_slowly(chain: Chain, **overrides: Any) -> InboundHandler:
    """The conversation with the portal's first answer 1 s late, the budget 0.2 s."""
    chain.fault(method="crm.duplicate.findbycomm", kind="latency", seconds=1.0)
    chain.handler = chain.make(inline_budget_s=0.2, **overrides)
    await converse(chain)
    return chain.handler


class TestSlowHandOff:
    """A hand-off past its inline budget: the client is answered, the work goes on."""

    async def test_goes_on_in_the_background_parked_until_done(
        self, chain: Chain, redis: ArqRedis, root: str
    ) -> None:
        handler = await converse_slowly(chain)

        # Answered at once with the dialog's own words; nothing in the CRM yet, and
        # the lead parked with its job a grace period away, should this worker die.
        last = chain.telegram_sent()[-1]["text"]
        assert last.endswith("Администратор свяжется с вами, чтобы подтвердить запись.")
        assert handler.background_hand_offs == 1
        [intake_id] = await parked_ids(redis, root)
        job = f"{root}:intake:job:handoff:{intake_id}".encode()
        [(queued, due_ms)] = await redis.zrange(
            redis.default_queue_name, 0, -1, withscores=True
        )
        assert queued == job
        assert due_ms / 1000 - time.time() > BACKGROUND_GRACE.total_seconds() - 30

        # The job, should it run while the hand-off goes on, waits its turn.
        with pytest.raises(Retry):
            await handler.hand_off_parked(intake_id, job_try=1)
        for _ in range(100):
            if handler.background_hand_offs == 0 and not await parked_ids(redis, root):
                break
            await asyncio.sleep(0.05)

        assert [deal["TITLE"] for deal in chain.deals()] == ["Маникюр — Анна"]
        assert await parked_ids(redis, root) == []
        # Its waiting job is taken off the queue; had it started already, it would
        # find nothing to do: still one deal.
        assert await redis.zrange(redis.default_queue_name, 0, -1) == []
        assert not await redis.exists(f"arq:job:{job.decode()}")
        await handler.hand_off_parked(intake_id, job_try=1)
        assert len(chain.deals()) == 1

    async def test_beyond_the_background_limit_a_slow_one_is_parked_instead(
        self, chain: Chain, redis: ArqRedis, root: str
    ) -> None:
        handler = await converse_slowly(chain, max_background=0)

        assert handler.background_hand_offs == 0
        [intake_id] = await parked_ids(redis, root)
        [(_, due_ms)] = await redis.zrange(
            redis.default_queue_name, 0, -1, withscores=True
        )
        assert due_ms / 1000 - time.time() < HAND_OFF_FIRST_DELAY.total_seconds() + 5
        await asyncio.sleep(1.5)  # the stopped request's answer would have come
        assert chain.deals() == []

        await handler.hand_off_parked(intake_id, job_try=1)

        assert len(chain.deals()) == 1
        assert await parked_ids(redis, root) == []

    async def test_closing_the_worker_stops_it_and_leaves_the_lead_parked(
        self, chain: Chain, redis: ArqRedis, root: str
    ) -> None:
        handler = await converse_slowly(chain)

        await handler.aclose()

        assert handler.background_hand_offs == 0
        [intake_id] = await parked_ids(redis, root)
        await handler.hand_off_parked(intake_id, job_try=1)
        assert len(chain.deals()) == 1


class TestWithdraw:
    async def test_takes_a_waiting_job_off_the_queue_but_never_a_running_one(
        self, redis: ArqRedis, root: str
    ) -> None:
        deferred = DeferredHandOffs(redis, prefix=f"{root}:intake")
        waiting, running = lead(), lead(chat_id="100000099")
        for one in (waiting, running):
            await deferred.defer(one, timedelta(minutes=2))
        running_job = f"{root}:intake:job:handoff:{running.intake_id}"
        await redis.set(f"arq:in-progress:{running_job}", b"1", px=60_000)

        await deferred.withdraw(waiting.intake_id)
        await deferred.withdraw(running.intake_id)

        assert await redis.zrange(redis.default_queue_name, 0, -1) == [
            running_job.encode()
        ]
        assert await deferred.parked(waiting.intake_id) is None
        assert await deferred.parked(running.intake_id) is None


class TestRouting:
    async def test_a_reminder_button_never_reaches_the_dialog(
        self, chain: Chain
    ) -> None:
        chain.answers.takes = {InboundKind.CALLBACK}

        await chain.handler(
            chain.message(
                InboundKind.CALLBACK, callback_id="1", callback_data="r:confirm"
            )
        )

        assert chain.answers.offered == [InboundKind.CALLBACK]
        assert chain.telegram_sent() == []

    async def test_text_answering_a_reminder_is_forwarded_not_qualified(
        self, chain: Chain
    ) -> None:
        chain.answers.takes = {InboundKind.TEXT}

        await chain.handler(chain.message(InboundKind.TEXT, text="Опоздаю на 10 минут"))

        assert chain.telegram_sent() == []

    async def test_statuses_go_to_the_reminders_and_blocks_nowhere(
        self, chain: Chain
    ) -> None:
        """WA-2: a status reaches the reminders only and sends nothing."""
        status = chain.message(
            InboundKind.STATUS, "whatsapp", status="read", provider_message_id="w1"
        )

        await chain.handler(status)
        await chain.handler(chain.message(InboundKind.BLOCKED))

        assert chain.answers.offered == [InboundKind.STATUS]
        assert chain.telegram_sent() == chain.whatsapp_sent() == []


class TestReplies:
    async def test_telegram_gets_buttons_and_the_contact_request(
        self, chain: Chain
    ) -> None:
        replies = [
            Reply("Выберите услугу", buttons=(Button("Маникюр", "service:manicure"),)),
            Reply("Номер?", request_phone=True),
        ]

        await chain.replies.send(chain.message(InboundKind.TEXT), replies)

        first, second = chain.telegram_sent()
        assert first["buttons"] == [
            [{"text": "Маникюр", "callback_data": "service:manicure"}]
        ]
        assert second["request_contact"] is True

    async def test_whatsapp_shows_at_most_ten_choices_and_tracks_statuses(
        self, chain: Chain, redis: ArqRedis
    ) -> None:
        buttons = tuple(Button(f"Услуга {n}", f"service:{n}") for n in range(12))

        await chain.replies.send(
            chain.message(InboundKind.TEXT, "whatsapp"), [Reply("Какая?", buttons)]
        )

        [sent] = chain.whatsapp_sent()
        assert len(sent["rows"]) == 10
        statuses = SentMessages(redis, keys=chain.keys)
        change = await statuses.record("whatsapp", sent["id"], "delivered")
        assert change is StatusChange.ADVANCED

    async def test_a_retry_after_a_failed_send_sends_only_what_is_missing(
        self, chain: Chain
    ) -> None:
        message = chain.message(InboundKind.TEXT)
        replies = [Reply("Первое"), Reply("Второе")]
        # The first send goes through (no delay), the second meets a proxy's 502.
        chain.fault(target="telegram", kind="latency", method="sendMessage")
        chain.fault(target="telegram", kind="bad_gateway", method="sendMessage")

        with pytest.raises(Unavailable, match="502"):
            await chain.replies.send(message, replies)
        await chain.replies.send(message, replies)

        assert [m["text"] for m in chain.telegram_sent()] == ["Первое", "Второе"]

    async def test_a_blocked_bot_marks_the_chat_and_sends_no_more(
        self, chain: Chain, redis: ArqRedis
    ) -> None:
        chain.fault(target="telegram", kind="blocked", method="sendMessage")

        sent = await chain.replies.send(
            chain.message(InboundKind.TEXT), [Reply("Первое"), Reply("Второе")]
        )

        assert sent == 0
        reachability = Reachability(redis, keys=chain.keys)
        assert not await reachability.is_reachable("telegram", CHAT)
        assert chain.telegram_sent() == []

    async def test_a_short_slow_down_is_waited_out(self, chain: Chain) -> None:
        chain.fault(
            target="telegram", kind="retry_after", method="sendMessage", retry_after=2
        )

        await chain.replies.send(chain.message(InboundKind.TEXT), [Reply("Привет")])

        assert chain.sleeps.delays == [2.0]
        assert len(chain.telegram_sent()) == 1

    async def test_a_long_slow_down_sends_the_event_back_with_its_delay(
        self, chain: Chain
    ) -> None:
        chain.fault(
            target="telegram", kind="retry_after", method="sendMessage", retry_after=40
        )

        with pytest.raises(Retry) as retry:
            await chain.replies.send(chain.message(InboundKind.TEXT), [Reply("Hi")])

        assert retry.value.defer_score == 40_000
        assert chain.sleeps.delays == []

    async def test_outside_the_whatsapp_window_nothing_is_sent(
        self, chain: Chain
    ) -> None:
        chain.fault(target="whatsapp", kind="outside_window", method="messages")

        sent = await chain.replies.send(
            chain.message(InboundKind.TEXT, "whatsapp"), [Reply("Привет")]
        )

        assert sent == 0
        assert chain.whatsapp_sent() == []


def test_hand_off_retries_grow_to_a_ceiling() -> None:
    assert [parked_retry_delay(n) for n in (1, 2, 3, 6, 30)] == [
        timedelta(seconds=30),
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=15),
        timedelta(minutes=15),
    ]
