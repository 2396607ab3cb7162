"""Messages after the hand-off while Bitrix24 is down: they wait, then land in order.

The sandbox portal over HTTP plays the outage (503 on every method), real Redis
holds the queue, and a real arq worker runs the follow-up job.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Retry, Worker
from redis.asyncio import ConnectionPool, Redis

from app.worker import WorkerSettings
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import RateLimited
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.writes import Writer
from qualification.dialog import FollowUp
from qualification.followup import FollowUps
from qualification.handoff import DeferredHandOffs, HandedOff, HandOff
from qualification.managers import ManagerPicker
from qualification.pending import (
    CTX_KEY,
    FOLLOW_UP_JOB,
    PendingFollowUps,
    PendingPolicy,
    follow_up_job,
)
from reminders.keys import ReminderKeys
from reminders.links import Links
from sandbox.server import SandboxOptions
from tests.qualification.conftest import MOSCOW, NOW, REDIS_URL, FakeClock
from tests.qualification.test_handoff import (
    STAFF,
    TELEGRAM_CHAT,
    Desk,
    Wire,
    comments_on,
    lead,
    salon,
)
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from webhooks.inbound import InboundKind, InboundMessage
from webhooks.keys import chat_key

# Short waits, so a test sees several tries of the job in a fraction of a second.
POLICY = PendingPolicy(
    first_delay=timedelta(0),
    max_delay=timedelta(milliseconds=50),
    max_tries=5,
)
CHAT = chat_key("telegram", TELEGRAM_CHAT)


@dataclass
class Outage:
    """The chat, its follow-ups with a pending queue, and the portal's controls."""

    desk: Desk
    followups: FollowUps
    pending: PendingFollowUps
    queue: ArqRedis
    queue_name: str
    root: str
    sequence: int = 0

    def message(self, text: str) -> InboundMessage:
        self.sequence += 1
        return InboundMessage(
            channel="telegram",
            event_id=f"upd-{self.sequence}",
            chat_id=TELEGRAM_CHAT,
            sender_id=TELEGRAM_CHAT,
            kind=InboundKind.TEXT,
            received_at=NOW + timedelta(minutes=self.sequence),
            text=text,
        )

    def portal_down(self, *, calls: int = 10_000) -> None:
        """The next `calls` requests answer 503, as a portal under maintenance."""
        fault = {"method": "*", "kind": "error", "status": 503, "times": calls}
        response = self.desk.portal.http.post("/_sandbox/faults", json=fault)
        response.raise_for_status()

    def portal_up(self) -> None:
        self.desk.portal.http.delete("/_sandbox/faults").raise_for_status()

    def client_lines(self, record_id: int) -> list[str]:
        comments = comments_on(self.desk, "deal", record_id)
        return [comment.rsplit("Клиент: ", 1)[-1] for comment in comments[1:]]

    async def run_worker(self) -> Worker:
        """A burst worker on the test's queue, until no job is left."""
        worker = Worker(
            functions=[follow_up_job(POLICY)],
            redis_settings=RedisSettings.from_dsn(REDIS_URL),
            queue_name=self.queue_name,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            keep_result=0,
            ctx={CTX_KEY: self.followups},
        )
        try:
            await asyncio.wait_for(worker.main(), timeout=30)
        finally:
            await worker.close()
        return worker

    async def queued_jobs(self) -> list[Job]:
        ids = await self.queue.zrange(self.queue_name, 0, -1)
        return [
            Job(raw.decode(), self.queue, _queue_name=self.queue_name) for raw in ids
        ]


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    portal_server.reset()
    portal_server.settings(rate_limit="off")
    portal_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    return portal_server


@pytest.fixture
async def outage(portal: RunningSandbox, redis: Redis) -> AsyncIterator[Outage]:
    root = f"test:{uuid.uuid4().hex}"
    queue_name = f"{root}:queue"
    queue = ArqRedis(
        pool_or_conn=ConnectionPool.from_url(REDIS_URL),
        default_queue_name=queue_name,
    )
    queue.auto_close_connection_pool = True
    async with open_outage(portal, redis, queue, root, queue_name) as opened:
        yield opened
    await queue.aclose()
    keys = [key async for key in redis.scan_iter(match=f"*{root}*")]
    if keys:
        await redis.delete(*keys)


@contextlib.asynccontextmanager
async def open_outage(
    portal: RunningSandbox, redis: Redis, queue: ArqRedis, root: str, queue_name: str
) -> AsyncIterator[Outage]:
    rules = salon(notify=False)
    wire = Wire([])
    http = httpx.AsyncClient(timeout=10, event_hooks={"request": [wire.record]})
    # One attempt per request: the portal's refusal reaches the follow-up at once
    # instead of after the gateway's own backoff.
    client = Bitrix24Client(
        http,
        WebhookCredentials(portal.webhook),
        portal_zone=MOSCOW,
        retry=RetryPolicy(attempts=1),
    )
    batcher = Batcher(client)
    writer = Writer(client, batcher)
    clock = FakeClock()
    picker = ManagerPicker(redis, rules, counter_key=f"{root}:rr")
    links = Links(redis, keys=ReminderKeys(f"{root}:reminders"))
    handoff = HandOff(
        writer,
        redis,
        rules,
        picker,
        links,
        clock=clock,
        prefix=f"{root}:intake",
        contact_locks=ContactLocks(redis, prefix=f"{root}:lock:contact"),
    )
    pending = PendingFollowUps(queue, prefix=f"{root}:intake", policy=POLICY)
    followups = FollowUps(
        handoff,
        writer,
        redis,
        rules,
        picker,
        DeferredHandOffs(queue, prefix=f"{root}:intake"),
        clock=clock,
        prefix=f"{root}:intake",
        pending=pending,
    )
    desk = Desk(handoff, links, wire, portal, clock)
    try:
        yield Outage(desk, followups, pending, queue, queue_name, root)
    finally:
        await batcher.aclose()
        await http.aclose()


async def handed_off(outage: Outage) -> tuple[HandedOff, FollowUp]:
    new = lead()
    done = await outage.desk.handoff.hand_off(new)
    follow_up = FollowUp(
        new.intake_id, "deal", done.record_id, done.contact_id, phone=new.phone
    )
    return done, follow_up


class TestWhileThePortalIsDown:
    async def test_the_message_waits_and_the_chats_job_finishes(
        self, outage: Outage
    ) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down()

        placed = await outage.followups.add(
            outage.message("а можно ещё брови?"), follow_up
        )

        assert placed.outcome == "pending"
        outage.portal_up()
        assert outage.client_lines(done.record_id) == []
        [job] = await outage.queued_jobs()
        info = await job.info()
        assert info is not None
        assert info.function == FOLLOW_UP_JOB
        # Ids only: the text waits in Redis under the event's key.
        assert info.args == ("telegram", CHAT)
        assert job.job_id == f"{outage.root}:intake:followup:pending:job:telegram:upd-1"

    async def test_a_later_message_queues_behind_without_calling_the_portal(
        self, outage: Outage
    ) -> None:
        _, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        await outage.followups.add(outage.message("первое"), follow_up)
        requests = len(outage.desk.wire.requests)

        placed = await outage.followups.add(outage.message("второе"), follow_up)

        assert placed.outcome == "pending"
        assert len(outage.desk.wire.requests) == requests
        # One job drains the chat's queue: the second message started none.
        assert len(await outage.queued_jobs()) == 1

    async def test_a_retried_chat_event_is_queued_once(self, outage: Outage) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        message = outage.message("первое")
        await outage.followups.add(message, follow_up)

        again = await outage.followups.add(message, follow_up)
        await outage.run_worker()

        assert again.outcome == "pending"
        assert outage.client_lines(done.record_id) == ["первое"]


class TestWhenThePortalIsBack:
    async def test_the_comments_land_once_and_in_order(self, outage: Outage) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        await outage.followups.add(outage.message("первое"), follow_up)
        await outage.followups.add(outage.message("второе"), follow_up)

        worker = await outage.run_worker()

        assert worker.jobs_complete == 1
        assert outage.client_lines(done.record_id) == ["первое", "второе"]

    async def test_the_job_tries_again_until_the_portal_answers(
        self, outage: Outage
    ) -> None:
        done, follow_up = await handed_off(outage)
        # The message's own try and the job's first two fail; the third lands.
        outage.portal_down(calls=3)
        await outage.followups.add(outage.message("первое"), follow_up)

        worker = await outage.run_worker()

        assert (worker.jobs_retried, worker.jobs_complete) == (2, 1)
        assert outage.client_lines(done.record_id) == ["первое"]

    async def test_the_next_message_after_the_queue_drained_goes_on_at_once(
        self, outage: Outage
    ) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        await outage.followups.add(outage.message("первое"), follow_up)
        await outage.run_worker()

        placed = await outage.followups.add(outage.message("второе"), follow_up)

        assert placed.outcome == "added"
        assert outage.client_lines(done.record_id) == ["первое", "второе"]
        assert await outage.queued_jobs() == []

    async def test_a_retry_after_a_crash_adds_no_second_comment(
        self, outage: Outage, redis: Redis
    ) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        message = outage.message("первое")
        await outage.followups.add(message, follow_up)
        intake = f"{outage.root}:intake:followup"
        item_key = f"{intake}:pending:event:telegram:{message.event_id}"
        queue_key = f"{intake}:pending:queue:{CHAT}"
        parked = await redis.get(item_key)
        assert parked is not None
        await outage.run_worker()
        # The worker died after the comment went out, before it was marked and the
        # message left the queue: the state a crash leaves, restored by hand.
        await redis.set(item_key, parked)
        await cast(Awaitable[int], redis.rpush(queue_key, message.event_id))
        await redis.delete(f"{intake}:telegram:{message.event_id}:steps")

        await outage.followups.drain("telegram", CHAT, "after-the-crash", 1)

        assert outage.client_lines(done.record_id) == ["первое"]
        assert await redis.exists(item_key, queue_key) == 0

    async def test_a_deal_closed_meanwhile_takes_nothing_and_frees_the_queue(
        self, outage: Outage
    ) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down(calls=1)
        await outage.followups.add(outage.message("первое"), follow_up)
        outage.desk.rows(
            "crm.deal.update", {"id": done.record_id, "fields": {"STAGE_ID": "WON"}}
        )

        worker = await outage.run_worker()
        placed = await outage.followups.add(outage.message("второе"), follow_up)

        assert worker.jobs_complete == 1
        assert outage.client_lines(done.record_id) == []
        # Nothing waits any more: the next message is decided at once.
        assert placed.outcome == "gone"


class TestGivingUp:
    async def test_the_queue_outlives_the_job_and_the_next_message_restarts_it(
        self, outage: Outage
    ) -> None:
        done, follow_up = await handed_off(outage)
        outage.portal_down()
        await outage.followups.add(outage.message("первое"), follow_up)
        [job] = await outage.queued_jobs()
        await outage.queue.zrem(outage.queue_name, job.job_id)
        await outage.queue.delete(f"arq:job:{job.job_id}")
        with pytest.raises(Retry):
            await outage.followups.drain("telegram", CHAT, job.job_id, 1)

        with pytest.raises(RateLimited):
            await outage.followups.drain("telegram", CHAT, job.job_id, POLICY.max_tries)
        outage.portal_up()
        placed = await outage.followups.add(outage.message("второе"), follow_up)
        [restarted] = await outage.queued_jobs()
        await outage.run_worker()

        assert placed.outcome == "pending"
        assert restarted.job_id.endswith(":upd-2")
        assert outage.client_lines(done.record_id) == ["первое", "второе"]


class TestTheWorker:
    def test_runs_the_follow_up_job(self) -> None:
        names = {
            getattr(function, "name", None) for function in WorkerSettings.functions
        }

        assert FOLLOW_UP_JOB in names

    def test_the_job_retries_for_hours(self) -> None:
        policy = PendingPolicy()
        waited = sum(
            (policy.delay(attempt) for attempt in range(1, policy.max_tries)),
            timedelta(0),
        )

        assert timedelta(hours=5) < waited < timedelta(hours=8)
        assert follow_up_job().max_tries == policy.max_tries
