from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from arq.connections import ArqRedis

from reminders import links
from reminders.keys import ReminderKeys
from reminders.links import ChatLink, Links
from tests.reminders.conftest import START, TELEGRAM_CHAT, WHATSAPP_CHAT


class TestRemember:
    async def test_a_deal_is_linked_to_its_clients_chat(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        await links.remember(redis, 42, "whatsapp", WHATSAPP_CHAT, keys=keys)

        found = await Links(redis, keys=keys).chat_for(42)

        assert found == ChatLink("whatsapp", WHATSAPP_CHAT)

    async def test_the_latest_link_wins(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        store = Links(redis, keys=keys)
        await store.remember(42, "whatsapp", WHATSAPP_CHAT)
        await store.remember(42, "telegram", TELEGRAM_CHAT)

        assert await store.chat_for(42) == ChatLink("telegram", TELEGRAM_CHAT)

    async def test_an_unlinked_deal_has_no_chat(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        assert await Links(redis, keys=keys).chat_for(404) is None

    async def test_no_phone_is_part_of_a_key_name(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        await links.remember(redis, 42, "whatsapp", WHATSAPP_CHAT, keys=keys)
        await links.touch(redis, "whatsapp", WHATSAPP_CHAT, START, keys=keys)

        names = [key.decode() async for key in redis.scan_iter(f"{keys.prefix}:*")]

        assert names
        assert not any(WHATSAPP_CHAT in name for name in names)

    async def test_an_unknown_channel_is_refused(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        with pytest.raises(ValueError, match="unknown channel"):
            await Links(redis, keys=keys).remember(42, "vk", "1")  # type: ignore[arg-type]


class TestTouch:
    async def test_records_when_the_client_last_wrote(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        await links.touch(redis, "whatsapp", WHATSAPP_CHAT, START, keys=keys)

        found = await Links(redis, keys=keys).last_inbound_at("whatsapp", WHATSAPP_CHAT)

        assert found == START

    async def test_an_older_message_handled_late_does_not_move_it_back(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        store = Links(redis, keys=keys)
        await store.touch("whatsapp", WHATSAPP_CHAT, START)
        await store.touch("whatsapp", WHATSAPP_CHAT, START - timedelta(hours=3))

        assert await store.last_inbound_at("whatsapp", WHATSAPP_CHAT) == START

    async def test_a_naive_time_is_refused(
        self, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            await Links(redis, keys=keys).touch(
                "telegram", TELEGRAM_CHAT, datetime(2027, 3, 10, 10)
            )
