"""Messages after the hand-off, against the sandbox portal over HTTP, on real Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis

from qualification.dialog import FollowUp
from qualification.followup import FollowUps
from qualification.handoff import DeferredHandOffs, HandedOff
from qualification.managers import ManagerPicker
from qualification.schema import QualifiedLead
from sandbox.server import SandboxOptions
from tests.qualification.conftest import NOW, REDIS_URL
from tests.qualification.test_handoff import (
    STAFF,
    TELEGRAM_CHAT,
    Desk,
    comments_on,
    deal_rows,
    lead,
    open_desk,
    salon,
    task_rows,
)
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from webhooks.inbound import InboundKind, InboundMessage

HEADING = "Клиент написал в Telegram после передачи заявки."


@dataclass
class Chat:
    """A client writing after the hand-off, and what the CRM holds."""

    desk: Desk
    followups: FollowUps
    deferred: DeferredHandOffs
    redis: Redis
    sequence: int = 0

    def message(
        self, text: str | None = "а можно ещё брови?", **fields: Any
    ) -> InboundMessage:
        self.sequence += 1
        values: dict[str, Any] = {
            "channel": "telegram",
            "event_id": f"upd-{self.sequence}",
            "chat_id": TELEGRAM_CHAT,
            "sender_id": TELEGRAM_CHAT,
            "kind": InboundKind.TEXT,
            "received_at": NOW + timedelta(minutes=self.sequence),
            "text": text,
        }
        return InboundMessage(**(values | fields))

    def notifications(self) -> list[dict[str, str]]:
        return self.desk.wire.calls("im.notify.personal.add")


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal in simple mode with managers 17 and 23 besides the admin."""
    portal_server.reset()
    portal_server.settings(rate_limit="off")
    portal_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    return portal_server


@pytest.fixture
async def key_root(redis: Redis) -> AsyncIterator[str]:
    root = f"test:{uuid.uuid4().hex}"
    yield root
    for pattern in (f"{root}:*", f"arq:job:{root}:*"):
        keys = [key async for key in redis.scan_iter(match=pattern)]
        if keys:
            await redis.delete(*keys)


@pytest.fixture
async def arq_redis(key_root: str) -> AsyncIterator[ArqRedis]:
    """For the parked hand-off's job: a queue of the test's own."""
    redis = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL),
        default_queue_name=f"{key_root}:queue",
    )
    redis.auto_close_connection_pool = True
    yield redis
    await redis.aclose()


@pytest.fixture
async def chat(
    portal: RunningSandbox, redis: Redis, arq_redis: ArqRedis, key_root: str
) -> AsyncIterator[Chat]:
    async with open_chat(portal, redis, arq_redis, key_root) as opened:
        yield opened


@contextlib.asynccontextmanager
async def open_chat(
    portal: RunningSandbox, redis: Redis, arq_redis: ArqRedis, key_root: str
) -> AsyncIterator[Chat]:
    # Notifications off, as by default: the manager hears of a follow-up anyway.
    rules = salon(notify=False)
    async with open_desk(portal, redis, key_root, rules) as desk:
        deferred = DeferredHandOffs(arq_redis, prefix=f"{key_root}:intake")
        followups = FollowUps(
            desk.handoff,
            desk.handoff._writer,
            redis,
            rules,
            ManagerPicker(redis, rules, counter_key=f"{key_root}:rr"),
            deferred,
            clock=desk.clock,
            prefix=f"{key_root}:intake",
        )
        yield Chat(desk, followups, deferred, redis)


async def handed_off(chat: Chat) -> tuple[QualifiedLead, HandedOff]:
    new = lead()
    return new, await chat.desk.handoff.hand_off(new)


def on_the_deal(new: QualifiedLead, done: HandedOff, *, first: bool) -> FollowUp:
    return FollowUp(
        new.intake_id,
        "deal",
        done.record_id,
        done.contact_id,
        phone=new.phone,
        first_in_burst=first,
    )


def writes_after(chat: Chat, count: int) -> list[str]:
    return chat.desk.wire.writes()[count:]


class TestOnTheOpenDeal:
    async def test_the_message_is_a_comment_and_the_manager_is_notified(
        self, chat: Chat
    ) -> None:
        new, done = await handed_off(chat)
        message = chat.message()

        placed = await chat.followups.add(message, on_the_deal(new, done, first=True))

        assert (placed.outcome, placed.record_id, placed.manager_id) == (
            "added",
            done.record_id,
            17,
        )
        comment = comments_on(chat.desk, "deal", done.record_id)[-1]
        assert comment == f"{HEADING}\n[08.01 14:06] Клиент: а можно ещё брови?"
        # The hand-off's call-back task is still open: no second task, a notice.
        assert len(task_rows(chat.desk)) == 1
        [notice] = chat.notifications()
        assert notice["USER_ID"] == "17"
        assert f"сделка {done.record_id}" in notice["MESSAGE"]
        assert notice["TAG"] == f"leadloop:followup:deal:{done.record_id}"

    async def test_later_messages_of_a_burst_are_comments_only(
        self, chat: Chat
    ) -> None:
        new, done = await handed_off(chat)
        await chat.followups.add(chat.message(), on_the_deal(new, done, first=True))
        written = len(chat.desk.wire.writes())

        await chat.followups.add(
            chat.message("алло"), on_the_deal(new, done, first=False)
        )

        assert writes_after(chat, written) == ["crm.timeline.comment.add"]
        assert len(comments_on(chat.desk, "deal", done.record_id)) == 3

    async def test_a_replayed_event_changes_nothing(self, chat: Chat) -> None:
        new, done = await handed_off(chat)
        message, follow_up = chat.message(), on_the_deal(new, done, first=True)
        first = await chat.followups.add(message, follow_up)
        written = len(chat.desk.wire.writes())

        again = await chat.followups.add(message, follow_up)

        assert again == first
        assert writes_after(chat, written) == []
        assert len(comments_on(chat.desk, "deal", done.record_id)) == 2

    async def test_a_retry_after_a_crash_before_the_mark_adds_no_second_comment(
        self, chat: Chat, key_root: str
    ) -> None:
        new, done = await handed_off(chat)
        message, follow_up = chat.message(), on_the_deal(new, done, first=False)
        await chat.followups.add(message, follow_up)
        # The worker died after the comment went out, before it was marked.
        await chat.redis.delete(
            f"{key_root}:intake:followup:telegram:{message.event_id}:steps"
        )

        await chat.followups.add(message, follow_up)

        comments = comments_on(chat.desk, "deal", done.record_id)
        assert len(comments) == 2
        assert comments[-1].endswith("а можно ещё брови?")

    async def test_attachments_say_what_arrived(self, chat: Chat) -> None:
        new, done = await handed_off(chat)
        follow_up = on_the_deal(new, done, first=False)

        await chat.followups.add(chat.message(None, kind=InboundKind.MEDIA), follow_up)
        await chat.followups.add(
            chat.message("это я", kind=InboundKind.MEDIA), follow_up
        )
        await chat.followups.add(
            chat.message(
                None, kind=InboundKind.LOCATION, latitude=47.2, longitude=39.7
            ),
            follow_up,
        )

        lines = [
            comment.splitlines()[-1]
            for comment in comments_on(chat.desk, "deal", done.record_id)[1:]
        ]
        assert lines == [
            "[08.01 14:06] Клиент: "
            "[вложение (фото, голосовое, видео, стикер или файл)]",
            "[08.01 14:07] Клиент: "
            "[вложение (фото, голосовое, видео, стикер или файл)] это я",
            "[08.01 14:08] Клиент: [геопозиция: 47.20000, 39.70000]",
        ]

    async def test_a_done_call_back_task_gives_way_to_one_follow_up_task(
        self, chat: Chat
    ) -> None:
        new, done = await handed_off(chat)
        chat.desk.rows(
            "tasks.task.update", {"taskId": done.task_id, "fields": {"STATUS": 5}}
        )

        await chat.followups.add(chat.message(), on_the_deal(new, done, first=True))
        await chat.followups.add(
            chat.message("вы тут?"), on_the_deal(new, done, first=True)
        )

        tasks = sorted(task_rows(chat.desk), key=lambda task: int(task["id"]))
        assert len(tasks) == 2
        follow_up_task = tasks[-1]
        assert follow_up_task["title"] == "Ответить клиенту: новое сообщение в Telegram"
        assert follow_up_task["responsibleId"] == "17"
        assert follow_up_task["ufCrmTask"] == [f"D_{done.record_id}"]
        # The task notified the manager; the second message found it open.
        assert len(chat.notifications()) == 1


class TestFindingTheDeal:
    async def test_without_the_id_the_handoffs_outcome_names_the_deal(
        self, chat: Chat
    ) -> None:
        new, done = await handed_off(chat)

        placed = await chat.followups.add(
            chat.message(), FollowUp(new.intake_id, phone=new.phone)
        )

        assert (placed.outcome, placed.record_id) == ("added", done.record_id)

    async def test_without_any_memory_the_messenger_id_finds_the_deal(
        self, chat: Chat
    ) -> None:
        _, done = await handed_off(chat)

        placed = await chat.followups.add(chat.message(), FollowUp("forgotten"))

        assert (placed.outcome, placed.record_id) == ("added", done.record_id)
        assert len(comments_on(chat.desk, "deal", done.record_id)) == 2


class TestWhenTheInquiryIsOver:
    async def test_a_won_deal_means_a_new_inquiry(self, chat: Chat) -> None:
        new, done = await handed_off(chat)
        chat.desk.rows(
            "crm.deal.update", {"id": done.record_id, "fields": {"STAGE_ID": "WON"}}
        )

        placed = await chat.followups.add(
            chat.message(), on_the_deal(new, done, first=True)
        )

        assert placed.outcome == "gone"
        assert len(comments_on(chat.desk, "deal", done.record_id)) == 1
        assert chat.notifications() == []

    async def test_a_reset_portal_means_a_new_inquiry(
        self, chat: Chat, portal: RunningSandbox
    ) -> None:
        new, done = await handed_off(chat)
        portal.reset()

        placed = await chat.followups.add(
            chat.message(), on_the_deal(new, done, first=True)
        )

        assert placed.outcome == "gone"
        assert deal_rows(chat.desk) == []

    async def test_another_clients_deal_under_the_remembered_id_is_left_alone(
        self, chat: Chat, portal: RunningSandbox
    ) -> None:
        new, done = await handed_off(chat)
        # A sandbox reset and seeded again: the same ids, other people.
        portal.reset()
        portal.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
        chat.desk.rows("crm.contact.add", {"fields": {"NAME": "Пётр"}})
        stranger = chat.desk.rows("crm.contact.add", {"fields": {"NAME": "Ольга"}})
        deal = chat.desk.rows(
            "crm.deal.add", {"fields": {"TITLE": "Стрижка", "CONTACT_IDS": [stranger]}}
        )
        assert deal == done.record_id
        assert stranger != done.contact_id

        placed = await chat.followups.add(
            chat.message(), on_the_deal(new, done, first=True)
        )

        assert placed.outcome == "gone"
        assert comments_on(chat.desk, "deal", deal) == []

    async def test_the_decision_holds_for_a_retry_of_the_event(
        self, chat: Chat
    ) -> None:
        new, done = await handed_off(chat)
        chat.desk.rows(
            "crm.deal.update", {"id": done.record_id, "fields": {"STAGE_ID": "LOSE"}}
        )
        message, follow_up = chat.message(), on_the_deal(new, done, first=True)
        await chat.followups.add(message, follow_up)
        chat.desk.rows(
            "crm.deal.update", {"id": done.record_id, "fields": {"STAGE_ID": "NEW"}}
        )

        again = await chat.followups.add(message, follow_up)

        assert again.outcome == "gone"


class TestWhileTheHandOffIsParked:
    async def test_the_message_joins_the_parked_leads_transcript_once(
        self, chat: Chat
    ) -> None:
        parked = lead()
        await chat.deferred.defer(parked, timedelta(minutes=5))
        message = chat.message()
        follow_up = FollowUp(parked.intake_id, phone=parked.phone)

        placed = await chat.followups.add(message, follow_up)
        await chat.followups.add(message, follow_up)

        assert placed.outcome == "parked"
        later = await chat.deferred.parked(parked.intake_id)
        assert later is not None
        assert [line.text for line in later.transcript] == [
            *(line.text for line in parked.transcript),
            "а можно ещё брови?",
        ]
        assert chat.desk.wire.writes() == []


class TestClassicMode:
    async def test_a_message_goes_on_the_lead_then_on_the_deal_it_became(
        self,
        portal: RunningSandbox,
        redis: Redis,
        arq_redis: ArqRedis,
        key_root: str,
    ) -> None:
        portal.load({"users": STAFF, "settings": {"crm_mode": "classic"}})
        async with open_chat(portal, redis, arq_redis, key_root) as chat:
            new, done = await handed_off(chat)
            follow_up = FollowUp(new.intake_id, "lead", done.record_id, phone=new.phone)
            on_lead = await chat.followups.add(chat.message(), follow_up)
            chat.desk.rows(
                "crm.lead.update",
                {"id": done.record_id, "fields": {"STATUS_ID": "CONVERTED"}},
            )
            deal_id = chat.desk.rows(
                "crm.deal.add",
                {
                    "fields": {
                        "TITLE": "Маникюр — Анна",
                        "CONTACT_IDS": [done.contact_id],
                        "ASSIGNED_BY_ID": 23,
                    }
                },
            )
            on_deal = await chat.followups.add(chat.message("вы тут?"), follow_up)

        assert (on_lead.outcome, on_lead.record, on_lead.record_id) == (
            "added",
            "lead",
            done.record_id,
        )
        assert len(comments_on(chat.desk, "lead", done.record_id)) == 2
        assert (on_deal.record, on_deal.record_id, on_deal.manager_id) == (
            "deal",
            deal_id,
            23,
        )
        [comment] = comments_on(chat.desk, "deal", deal_id)
        assert comment.endswith("Клиент: вы тут?")
