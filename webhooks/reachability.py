"""Whether a chat can still be written to: a client who blocks the bot cannot be."""

from __future__ import annotations

from arq.connections import ArqRedis

from webhooks.inbound import Channel
from webhooks.keys import InboxKeys, chat_key


class Reachability:
    """Unreachable after a block; reachable again once the client writes."""

    def __init__(self, redis: ArqRedis, *, keys: InboxKeys | None = None) -> None:
        self._redis = redis
        self._keys = keys or InboxKeys()

    async def mark_unreachable(self, channel: Channel, chat_id: str) -> None:
        """The client blocked the bot (or the provider says the number is gone)."""
        # No expiry: a blocked chat stays blocked until the client writes again.
        await self._redis.set(self._key(channel, chat_id), "1")

    async def mark_reachable(self, channel: Channel, chat_id: str) -> None:
        """The client wrote, so the chat is open again."""
        await self._redis.delete(self._key(channel, chat_id))

    async def is_reachable(self, channel: Channel, chat_id: str) -> bool:
        """False once the client blocked the bot and has not written since."""
        return not await self._redis.exists(self._key(channel, chat_id))

    def _key(self, channel: Channel, chat_id: str) -> str:
        return self._keys.unreachable(channel, chat_key(channel, chat_id))
