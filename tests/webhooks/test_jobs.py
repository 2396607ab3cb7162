from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Retry

from tests.webhooks.conftest import Recorder, RunWorker, queued_jobs, text_message
from webhooks.inbound import InboundKind, InboundMessage
from webhooks.jobs import DrainPolicy, process_chat, sweep_inboxes
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import Inbox
from webhooks.reachability import Reachability

Logs = Callable[[], list[dict[str, Any]]]
QUICK_RETRY = DrainPolicy(retry_delays=(timedelta(milliseconds=20),))


def by_chat(messages: list[InboundMessage]) -> dict[str, list[str]]:
    chats: dict[str, list[str]] = {}
    for message in messages:
        chats.setdefault(message.chat_id, []).append(message.event_id)
    return chats


class OneAtATime:
    """Counts how many events of each chat are inside the handler at once."""

    def __init__(self) -> None:
        self.inside: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def enter(self, chat_id: str) -> None:
        self.inside[chat_id] += 1
        self.most[chat_id] = max(self.most[chat_id], self.inside[chat_id])

    def leave(self, chat_id: str) -> None:
        self.inside[chat_id] -= 1


class TestOrdering:
    async def test_one_chat_in_order_two_chats_in_parallel_with_a_burst_worker(
        self, inbox: Inbox, run_worker: RunWorker
    ) -> None:
        for n in range(1, 6):
            await inbox.accept(text_message(f"a{n}", "100000001"))
            await inbox.accept(text_message(f"b{n}", "100000002"))
        gauge = OneAtATime()
        # a1 and b1 wait for each other: only chats handled in parallel get past.
        both_first = asyncio.Barrier(2)

        async def before(message: InboundMessage) -> None:
            gauge.enter(message.chat_id)
            if message.event_id in ("a1", "b1"):
                await asyncio.wait_for(both_first.wait(), timeout=5)
            await asyncio.sleep(0.005)
            gauge.leave(message.chat_id)

        recorder = Recorder(before=before)
        await run_worker(recorder)

        assert by_chat(recorder.messages) == {
            "100000001": ["a1", "a2", "a3", "a4", "a5"],
            "100000002": ["b1", "b2", "b3", "b4", "b5"],
        }
        assert gauge.most == {"100000001": 1, "100000002": 1}

    async def test_events_accepted_while_workers_drain_are_each_handled_once_in_order(
        self, inbox: Inbox, run_worker: RunWorker
    ) -> None:
        chats = ["100000011", "100000012", "100000013"]
        rng = random.Random(4)
        gauge = OneAtATime()

        async def before(message: InboundMessage) -> None:
            gauge.enter(message.chat_id)
            await asyncio.sleep(rng.uniform(0, 0.004))
            gauge.leave(message.chat_id)

        recorder = Recorder(before=before)

        async def produce() -> None:
            for n in range(15):
                for chat in chats:
                    await inbox.accept(text_message(f"{chat}-{n:02}", chat))
                await asyncio.sleep(rng.uniform(0, 0.003))

        producing = asyncio.create_task(produce())
        while not producing.done():
            await run_worker(recorder)
            await asyncio.sleep(0)
        await producing
        # A wake-up lost between a drain's last look and its release would leave
        # an event here with no job to run it; the final burst would miss it.
        await run_worker(recorder)

        assert by_chat(recorder.messages) == {
            chat: [f"{chat}-{n:02}" for n in range(15)] for chat in chats
        }
        assert max(gauge.most.values()) == 1

    async def test_a_failing_event_is_retried_before_the_next_one_of_its_chat(
        self, inbox: Inbox, run_worker: RunWorker, logs: Logs
    ) -> None:
        await inbox.accept(text_message("c1", "100000021"))
        await inbox.accept(text_message("c2", "100000021"))
        failures = iter([RuntimeError("LLM timed out")])

        async def before(message: InboundMessage) -> None:
            if message.event_id == "c1":
                failure = next(failures, None)
                if failure is not None:
                    raise failure

        recorder = Recorder(before=before)
        await run_worker(recorder, policy=QUICK_RETRY)

        assert recorder.event_ids == ["c1", "c2"]
        handled = [
            (line["event_id"], line["attempt"])
            for line in logs()
            if line["event"] == "webhooks.event_handled"
        ]
        assert handled == [("c1", 2), ("c2", 1)]

    async def test_a_long_drain_hands_the_chat_to_a_fresh_job_and_keeps_order(
        self, inbox: Inbox, run_worker: RunWorker, logs: Logs
    ) -> None:
        for n in range(4):
            await inbox.accept(text_message(f"d{n}", "100000031"))
        recorder = Recorder()

        await run_worker(recorder, policy=DrainPolicy(run_budget=timedelta(0)))

        assert recorder.event_ids == ["d0", "d1", "d2", "d3"]
        hand_offs = [
            line for line in logs() if line["event"] == "webhooks.chat_handed_off"
        ]
        assert len(hand_offs) == 4


class TestDeferral:
    """A handler's arq `Retry` (a messenger's SlowDown) sets when the chat goes on."""

    @pytest.mark.parametrize(
        ("asked", "expected"),
        [
            # Telegram's 429 with retry_after 12: the policy's 5 s would be refused.
            (timedelta(seconds=12), timedelta(seconds=12)),
            # Asking for less than the policy's pause gets the policy's pause.
            (timedelta(seconds=1), timedelta(seconds=5)),
            (None, timedelta(seconds=5)),
        ],
    )
    async def test_the_chat_waits_as_long_as_the_handler_asked_or_the_policy_says(
        self,
        inbox: Inbox,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
        logs: Logs,
        asked: timedelta | None,
        expected: timedelta,
    ) -> None:
        await inbox.accept(text_message("r1", "100000081"))
        await redis.delete(queue)  # the accept's own job, as if a worker took it
        chat = chat_key("telegram", "100000081")

        async def slow_down(message: InboundMessage) -> None:
            raise Retry(defer=asked)

        ctx = {
            "redis": redis,
            "inbound_keys": keys,
            "inbound_handler": slow_down,
            "job_id": "first-job",
        }
        before_ms = time.time() * 1000
        await process_chat(ctx, "telegram", chat)
        after_ms = time.time() * 1000

        [(successor, due_ms)] = await redis.zrange(queue, 0, -1, withscores=True)
        wait_ms = expected.total_seconds() * 1000
        assert before_ms + wait_ms - 50 <= due_ms <= after_ms + wait_ms + 50
        assert await redis.get(keys.lock("telegram", chat)) == successor
        assert await redis.lrange(keys.inbox("telegram", chat), 0, -1) == [b"r1"]
        deferred = [
            line for line in logs() if line["event"] == "webhooks.handler_deferred"
        ]
        assert [(line["attempt"], line["delay_s"]) for line in deferred] == [
            (1, expected.total_seconds())
        ]

    async def test_a_deferred_event_is_handled_once_the_wait_is_over(
        self, inbox: Inbox, run_worker: RunWorker, logs: Logs
    ) -> None:
        await inbox.accept(text_message("s1", "100000082"))
        await inbox.accept(text_message("s2", "100000082"))
        refusals = iter([Retry(defer=timedelta(milliseconds=300))])

        async def before(message: InboundMessage) -> None:
            if message.event_id == "s1":
                refusal = next(refusals, None)
                if refusal is not None:
                    raise refusal

        recorder = Recorder(before=before)
        started = time.monotonic()
        await run_worker(recorder, policy=QUICK_RETRY)

        assert recorder.event_ids == ["s1", "s2"]
        assert time.monotonic() - started >= 0.3
        failed = [line for line in logs() if line["event"] == "webhooks.handler_failed"]
        assert failed == []


class TestReachability:
    async def test_writing_again_after_a_block_makes_the_chat_reachable(
        self,
        inbox: Inbox,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        blocked = InboundMessage(
            channel="telegram",
            event_id="e1",
            chat_id="100000041",
            sender_id="100000041",
            kind=InboundKind.BLOCKED,
            received_at=datetime(2025, 1, 13, 9, 0, tzinfo=UTC),
        )
        reachability = Reachability(redis, keys=keys)
        await inbox.accept(blocked)
        await run_worker(Recorder())
        assert await reachability.is_reachable("telegram", "100000041") is False

        await inbox.accept(text_message("e2", "100000041"))
        await run_worker(Recorder())

        assert await reachability.is_reachable("telegram", "100000041") is True


class TestGuards:
    async def test_without_a_handler_the_events_wait_in_the_inbox(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys
    ) -> None:
        await inbox.accept(text_message("f1", "100000051"))
        chat = chat_key("telegram", "100000051")
        ctx = {"redis": redis, "inbound_keys": keys, "job_id": "no-handler"}

        await process_chat(ctx, "telegram", chat)

        assert await redis.lrange(keys.inbox("telegram", chat), 0, -1) == [b"f1"]
        assert await redis.exists(keys.lock("telegram", chat)) == 0

    async def test_a_job_finding_the_chat_locked_leaves_it_to_the_holder(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys
    ) -> None:
        await inbox.accept(text_message("g1", "100000061"))
        chat = chat_key("telegram", "100000061")
        await redis.set(keys.lock("telegram", chat), "another-job", px=60_000)
        recorder = Recorder()
        ctx = {
            "redis": redis,
            "inbound_keys": keys,
            "inbound_handler": recorder,
            "job_id": "late-job",
        }

        await process_chat(ctx, "telegram", chat)

        assert recorder.messages == []
        assert await redis.get(keys.lock("telegram", chat)) == b"another-job"

    async def test_the_sweep_wakes_an_inbox_no_job_holds(
        self,
        inbox: Inbox,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
        run_worker: RunWorker,
    ) -> None:
        await inbox.accept(text_message("h1", "100000071"))
        await inbox.accept(text_message("h2", "100000072"))
        # Both jobs lost (arq gave up on them); chat 72's lock is still held.
        await redis.delete(queue)
        held = chat_key("telegram", "100000072")
        await redis.set(keys.lock("telegram", held), "a-live-job", px=60_000)
        ctx = {"redis": redis, "inbound_keys": keys}

        woken = await sweep_inboxes(ctx)

        assert woken == 1
        assert [args for _, args in await queued_jobs(redis, queue)] == [
            ("telegram", chat_key("telegram", "100000071"))
        ]
        recorder = Recorder()
        await run_worker(recorder)
        assert recorder.event_ids == ["h1"]

    async def test_a_chat_whose_drain_still_waits_in_the_queue_is_not_queued_again(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys, queue: str
    ) -> None:
        await inbox.accept(text_message("h1", "100000071"))
        ctx = {"redis": redis, "inbound_keys": keys}

        # A long backlog: the event's job has not started, the chat holds no lock.
        assert await sweep_inboxes(ctx) == 0
        assert len(await queued_jobs(redis, queue)) == 1

        # That job lost: the sweep queues one, and only one while it waits.
        await redis.delete(queue)
        assert await sweep_inboxes(ctx) == 1
        assert await sweep_inboxes(ctx) == 0
        [swept] = await redis.zrange(queue, 0, -1)

        # The swept job died with its worker: arq keeps it queued and marked in
        # progress; once the chat's lease has lapsed the sweep wakes the chat again.
        await redis.set(in_progress_key_prefix + swept.decode(), b"1", px=60_000)
        assert await sweep_inboxes(ctx) == 1
        assert len(await queued_jobs(redis, queue)) == 2
