"""Accepting an event: dedupe on the provider's id, store it, queue it for its chat.

One Lua script, one round trip, all or nothing: the dedupe mark, the stored event,
its place at the end of its chat's inbox and the arq job that drains the chat. There
is no moment where the mark exists without the job, so a failure never turns the
provider's retry into a skipped duplicate. The job carries the chat's pseudonym
only; the event stays in Redis until it is processed.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import structlog
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import RedisError

from webhooks.inbound import Channel, InboundMessage
from webhooks.keys import REMEMBER, InboxKeys, chat_key

log = structlog.stdlib.get_logger(__name__)

PROCESS_CHAT = "process_chat"

# The enqueue half writes what arq's own enqueue_job writes (the pickled job under
# arq:job:<id>, the id in the queue's sorted set, scored by due time in ms), so
# arq's worker runs it as any other job. Types are checked before the first write:
# Redis does not roll a script back, and a half-done accept would lose the event.
# KEYS: seen, event, inbox, job, queue.
# ARGV: remember ms, event json, event id, job bytes, job id, score ms.
_ACCEPT = """
local function kind(key) return redis.call('TYPE', key)['ok'] end
if kind(KEYS[3]) ~= 'none' and kind(KEYS[3]) ~= 'list' then
  return redis.error_reply('WRONGTYPE inbox is not a list')
end
if kind(KEYS[5]) ~= 'none' and kind(KEYS[5]) ~= 'zset' then
  return redis.error_reply('WRONGTYPE arq queue is not a sorted set')
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
return 1
"""


class InboxUnavailable(Exception):
    """Redis did not take the event; nothing of it was written."""


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


class Inbox:
    """The enqueue side: one call per event, safe to repeat for the same event."""

    def __init__(self, redis: ArqRedis, *, keys: InboxKeys | None = None) -> None:
        # Jobs go to the client's default queue, the one the worker reads.
        self._redis = redis
        self._keys = keys or InboxKeys()
        self._accept_script = redis.register_script(_ACCEPT)

    @property
    def redis(self) -> ArqRedis:
        return self._redis

    async def accept(self, message: InboundMessage) -> bool:
        """True when the event is new and queued; False for a repeat delivery."""
        channel, event_id = message.channel, message.event_id
        chat = chat_key(channel, message.chat_id)
        keys = self._keys
        # A fresh id per job: arq refuses an id while a kept result holds it (arq
        # issue 432), so ids are never reused.
        job_id = keys.job_id(channel, event_id, uuid4().hex[:12])
        now = timestamp_ms()
        job = serialize_job(
            PROCESS_CHAT,
            (channel, chat),
            {},
            None,
            now,
            serializer=self._redis.job_serializer,
        )

        try:
            fresh = await self._accept_script(
                keys=[
                    keys.seen(channel, event_id),
                    keys.event(channel, event_id),
                    keys.inbox(channel, chat),
                    job_key_prefix + job_id,
                    self._redis.default_queue_name,
                ],
                args=[_ms(REMEMBER), message.to_json(), event_id, job, job_id, now],
            )
        except (RedisError, OSError) as exc:
            raise InboxUnavailable("Redis did not take the event") from exc
        return bool(fresh)


async def wake(
    redis: ArqRedis,
    channel: Channel,
    chat: str,
    job_id: str,
    *,
    defer: timedelta | None = None,
) -> None:
    """Queue a job that drains `chat`; `job_id` must be new."""
    job = await redis.enqueue_job(
        PROCESS_CHAT, channel, chat, _job_id=job_id, _defer_by=defer
    )
    if job is None:
        raise RuntimeError(f"arq job id {job_id} is taken")
