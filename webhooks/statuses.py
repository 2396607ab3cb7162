"""Delivery statuses of the messages leadloop sent, kept against their provider id.

WhatsApp repeats statuses and sends them out of order; the recorded state only moves
forward (sent < delivered < read; failed is final). A status for a message leadloop
did not send (one from the WhatsApp Business app, say) is ignored (case WA-2).
"""

from __future__ import annotations

from collections.abc import Awaitable
from enum import StrEnum
from typing import cast

from arq.connections import ArqRedis

from webhooks.inbound import Channel
from webhooks.keys import REMEMBER, InboxKeys

# KEYS: the sent message's hash. ARGV: new status, its rank. Returns -1 unknown
# message, 0 no change, 1 moved forward.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
if current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', ARGV[2])
return 1
"""
_RANKS = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}


class StatusChange(StrEnum):
    UNKNOWN_MESSAGE = "unknown_message"
    UNCHANGED = "unchanged"
    ADVANCED = "advanced"


class SentMessages:
    """The provider ids of the messages leadloop sent, with their latest status."""

    def __init__(self, redis: ArqRedis, *, keys: InboxKeys | None = None) -> None:
        self._redis = redis
        self._keys = keys or InboxKeys()
        self._record = redis.register_script(_RECORD)

    async def remember(
        self, channel: Channel, provider_message_id: str, chat_id: str
    ) -> None:
        """Called by the sender with the id the provider returned."""
        key = self._keys.sent(channel, provider_message_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "chat_id", chat_id)
            pipe.pexpire(key, int(REMEMBER.total_seconds() * 1000))
            await pipe.execute()

    async def record(
        self, channel: Channel, provider_message_id: str, status: str
    ) -> StatusChange:
        """Move the message's status forward; statuses never move back."""
        # A status name WhatsApp adds later ranks lowest: recorded for no message.
        rank = _RANKS.get(status, 0)
        outcome = await self._record(
            keys=[self._keys.sent(channel, provider_message_id)], args=[status, rank]
        )
        if outcome == -1:
            return StatusChange.UNKNOWN_MESSAGE
        return StatusChange.ADVANCED if outcome == 1 else StatusChange.UNCHANGED

    async def status_of(self, channel: Channel, provider_message_id: str) -> str | None:
        """The latest recorded status, None before the first one."""
        key = self._keys.sent(channel, provider_message_id)
        raw = await cast(Awaitable[bytes | None], self._redis.hget(key, "status"))
        return None if raw is None else raw.decode()
