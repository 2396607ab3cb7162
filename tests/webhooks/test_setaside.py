"""Set-aside events: listed with their chat, time and reason, put back and replayed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from arq.connections import ArqRedis

from tests.webhooks.conftest import Recorder, RunWorker, text_message
from webhooks.inbound import InboundMessage
from webhooks.jobs import DrainPolicy
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import Inbox
from webhooks.setaside import EventGone, NotSetAside, SetAside, set_aside_table

ONCE = DrainPolicy(retry_delays=(timedelta(0),), max_attempts=1)


async def broken(message: InboundMessage) -> None:
    raise RuntimeError("the portal refused it")


class TestSetAside:
    async def test_a_failing_event_is_listed_then_put_back_and_handled_once(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys, run_worker: RunWorker
    ) -> None:
        await inbox.accept(text_message("e1", "100000091"))
        await inbox.accept(text_message("e2", "100000091"))
        failing_once = Recorder(before=_fail_on("e1"))
        await run_worker(failing_once, policy=ONCE)
        # The chat moved on past it.
        assert failing_once.event_ids == ["e2"]

        aside = SetAside(redis, keys)
        [entry] = await aside.latest()
        assert entry.ref == "telegram:e1"
        assert entry.chat == chat_key("telegram", "100000091")
        assert entry.reason == "tries"
        assert entry.at is not None
        assert abs(entry.at - datetime.now(UTC)) < timedelta(minutes=1)

        await aside.put_back("telegram:e1")
        fixed = Recorder()
        await run_worker(fixed, policy=ONCE)

        assert fixed.event_ids == ["e1"]
        assert await aside.latest() == []
        with pytest.raises(NotSetAside):
            await aside.put_back("telegram:e1")
        # A second worker run finds nothing more to do.
        again = Recorder()
        await run_worker(again, policy=ONCE)
        assert again.event_ids == []

    async def test_an_expired_event_cannot_be_put_back_and_stays_listed(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys, run_worker: RunWorker
    ) -> None:
        await inbox.accept(text_message("e3", "100000092"))
        await run_worker(broken, policy=ONCE)
        await redis.delete(keys.event("telegram", "e3"))
        aside = SetAside(redis, keys)

        with pytest.raises(EventGone, match="expired"):
            await aside.put_back("telegram:e3")

        assert [entry.ref for entry in await aside.latest()] == ["telegram:e3"]

    async def test_put_back_all_takes_what_it_can_and_newest_come_first(
        self, inbox: Inbox, redis: ArqRedis, keys: InboxKeys, run_worker: RunWorker
    ) -> None:
        for event, chat in (("e4", "100000093"), ("e5", "100000094")):
            await inbox.accept(text_message(event, chat))
            await run_worker(broken, policy=ONCE)
        # An entry of an earlier version: no chat, so it cannot be put back.
        await redis.rpush(keys.dead(), "whatsapp:wamid.OLD")  # type: ignore[misc]
        aside = SetAside(redis, keys)

        listed = await aside.latest()
        put = await aside.put_back_all()
        recorder = Recorder()
        await run_worker(recorder, policy=ONCE)

        assert [entry.ref for entry in listed] == [
            "whatsapp:wamid.OLD",
            "telegram:e5",
            "telegram:e4",
        ]
        assert listed[0].reason == "unknown"
        assert listed[0].chat == ""
        assert [ref for ref, _ in put] == ["telegram:e4", "telegram:e5"]
        assert sorted(recorder.event_ids) == ["e4", "e5"]
        assert [entry.ref for entry in await aside.latest()] == ["whatsapp:wamid.OLD"]

    async def test_the_list_keeps_only_the_newest(
        self, redis: ArqRedis, keys: InboxKeys
    ) -> None:
        aside = SetAside(redis, keys, kept=3)
        for n in range(5):
            await aside.add("telegram", "chat", f"e{n}", "tries")

        assert [entry.event_id for entry in await aside.latest()] == ["e4", "e3", "e2"]
        assert [entry.event_id for entry in await aside.latest(1)] == ["e4"]

    async def test_the_table_names_the_event_chat_time_and_reason(
        self, redis: ArqRedis, keys: InboxKeys
    ) -> None:
        aside = SetAside(redis, keys)
        await aside.add("whatsapp", "wa-pseudonym", "wamid.X", "unreadable")

        header, row = set_aside_table(await aside.latest())

        assert header.split()[:2] == ["EVENT", "CHAT"]
        assert row.split()[:2] == ["whatsapp:wamid.X", "wa-pseudonym"]
        assert row.endswith("unreadable")


def _fail_on(event_id: str) -> Callable[[InboundMessage], Awaitable[None]]:
    async def before(message: InboundMessage) -> None:
        if message.event_id == event_id:
            raise RuntimeError("the portal refused it")

    return before
