"""Which chat a deal's client uses, and when each chat last wrote to us.

The intake hand-off calls `remember` once it has opened a deal for a chat; the
inbound handler calls `touch` for every client message. A reminder goes to the
remembered chat; WhatsApp free-form messages (buttons) are allowed only within 24
hours of the client's last message, so `touch` is what keeps that window known.

    await links.remember(redis, deal_id, "telegram", chat_id)
    await links.touch(redis, message.channel, message.chat_id, message.received_at)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast, get_args

from redis.asyncio import Redis

from reminders.keys import ReminderKeys, px
from webhooks.inbound import CHANNELS, Channel

# A client books again months later from the same chat; a year covers a salon's
# regulars.
LINK_LIFETIME = timedelta(days=365)
# WhatsApp's window is 24 hours; the mark only needs to outlive it.
INBOUND_LIFETIME = timedelta(hours=48)
WHATSAPP_WINDOW = timedelta(hours=24)

# KEYS: the mark. ARGV: epoch ms, lifetime ms. Only ever moves forward: messages of
# one chat may be handled out of order across channels and retries.
_TOUCH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


@dataclass(frozen=True)
class ChatLink:
    """A chat on one channel: where a deal's reminders go."""

    channel: Channel
    chat_id: str


class Links:
    """Deal-to-chat links and each chat's last inbound time, in Redis."""

    def __init__(self, redis: Redis, *, keys: ReminderKeys | None = None) -> None:
        self._redis = redis
        self._keys = keys or ReminderKeys()
        self._touch = redis.register_script(_TOUCH)

    async def remember(self, deal_id: int, channel: Channel, chat_id: str) -> None:
        """The client of `deal_id` writes to us from this chat."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        value = json.dumps({"channel": channel, "chat_id": str(chat_id)})
        await self._redis.set(self._keys.link(deal_id), value, px=px(LINK_LIFETIME))

    async def chat_for(self, deal_id: int) -> ChatLink | None:
        """The chat remembered for the deal, if any."""
        raw = await self._redis.get(self._keys.link(deal_id))
        if raw is None:
            return None
        stored: dict[str, Any] = json.loads(raw)
        channel = stored.get("channel")
        if channel not in get_args(Channel):
            return None
        return ChatLink(cast(Channel, channel), str(stored["chat_id"]))

    async def touch(self, channel: Channel, chat_id: str, at: datetime) -> None:
        """The client wrote at `at` (the provider's time, aware)."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        stamp = int(at.timestamp() * 1000)
        key = self._keys.last_inbound(channel, chat_id)
        await self._touch(keys=[key], args=[stamp, px(INBOUND_LIFETIME)])

    async def last_inbound_at(self, channel: Channel, chat_id: str) -> datetime | None:
        """When the client last wrote, as far as the last 48 hours go."""
        raw = await self._redis.get(self._keys.last_inbound(channel, chat_id))
        if raw is None:
            return None
        return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)


async def remember(
    redis: Redis,
    deal_id: int,
    channel: Channel,
    chat_id: str,
    *,
    keys: ReminderKeys | None = None,
) -> None:
    """Link a deal to the chat its client used (the intake hand-off calls this)."""
    await Links(redis, keys=keys).remember(deal_id, channel, chat_id)


async def touch(
    redis: Redis,
    channel: Channel,
    chat_id: str,
    at: datetime,
    *,
    keys: ReminderKeys | None = None,
) -> None:
    """Record a client's inbound message time (the inbound handler calls this)."""
    await Links(redis, keys=keys).touch(channel, chat_id, at)
