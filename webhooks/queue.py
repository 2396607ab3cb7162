"""Accepting an event: dedupe on the provider's id, store it, queue it for its chat.

One Lua script, all or nothing: the dedupe mark, the stored event, its place at the
end of its chat's inbox and the arq job that drains the chat. There is no moment
where the mark exists without the job, so a failure never turns the provider's
retry into a skipped duplicate. The job carries the chat's pseudonym only; the event
stays in Redis until it is processed.

Accepts made in the same turn of the event loop (webhooks arriving together) share
one round trip: their scripts go to Redis as one pipeline, each still its own atomic
step with its own answer. The round trip costs the API process more than the rest
of the accept (syscalls, the event loop's wake-ups); shared, it took the route from
0.68–0.82 of the baseline's rate to 0.93–1.10 (docs/benchmarks.md, "Intake").
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

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
local inbox = redis.call('TYPE', KEYS[3])['ok']
if inbox ~= 'none' and inbox ~= 'list' then
  return redis.error_reply('WRONGTYPE inbox is not a list')
end
local queue = redis.call('TYPE', KEYS[5])['ok']
if queue ~= 'none' and queue ~= 'zset' then
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
redis.call('SET', KEYS[6], ARGV[5], 'PX', ARGV[1])
return 1
"""


class InboxUnavailable(Exception):
    """Redis did not confirm the event; the provider's retry of it is safe."""


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


# One caller: the keys and arguments of its script call, and where its answer goes.
Call = tuple[Sequence[EncodableT], asyncio.Future[Any]]


class SharedScript:
    """A Lua script whose calls from one turn of the event loop share a round trip.

    Each call is still its own EVALSHA, atomic on its own, answered on its own: one
    call's error (a wrong key type) is raised to its caller only. A lost connection
    fails every call of its round trip; the scripts that ran before it are done, and
    must be safe to run again (the accept is, by its dedupe mark).
    """

    def __init__(self, redis: ArqRedis, script: str, *, numkeys: int) -> None:
        self._redis = redis
        self._script = redis.register_script(script)
        self._numkeys = numkeys
        self._waiting: list[Call] = []
        # Strong references: the loop keeps only weak ones to running tasks.
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, *keys_and_args: EncodableT) -> Any:
        """The script's answer for these keys and arguments."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((keys_and_args, answer))
        if len(self._waiting) == 1:
            loop.call_soon(self._send_waiting)
        return await answer

    def _send_waiting(self) -> None:
        calls, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[Call]) -> None:
        try:
            results = await self._run([args for args, _ in calls])
        except asyncio.CancelledError:
            for _, answer in calls:
                answer.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(calls)
        for (_, answer), result in zip(calls, results, strict=True):
            # A caller that gave up (its request was cancelled) is not answered.
            if answer.done():
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def _run(self, calls: list[Sequence[EncodableT]]) -> list[Any]:
        results = await self._pipeline(calls)
        unknown = [
            n for n, result in enumerate(results) if isinstance(result, NoScriptError)
        ]
        if unknown:
            # Redis lost its scripts (a restart, SCRIPT FLUSH): load it, run those
            # calls again; NOSCRIPT means they did nothing.
            await self._redis.script_load(self._script.script)
            again = await self._pipeline([calls[n] for n in unknown])
            for n, result in zip(unknown, again, strict=True):
                results[n] = result
        return results

    async def _pipeline(self, calls: list[Sequence[EncodableT]]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.execute_command("EVALSHA", self._script.sha, self._numkeys, *args)
            return await pipe.execute(raise_on_error=False)


class Inbox:
    """The enqueue side: one call per event, safe to repeat for the same event."""

    def __init__(self, redis: ArqRedis, *, keys: InboxKeys | None = None) -> None:
        # Jobs go to the client's default queue, the one the worker reads.
        self._redis = redis
        self._keys = keys or InboxKeys()
        self._accept = SharedScript(redis, _ACCEPT, numkeys=6)

    @property
    def redis(self) -> ArqRedis:
        return self._redis

    async def accept(self, message: InboundMessage) -> bool:
        """True when the event is new and queued; False for a repeat delivery."""
        channel, event_id = message.channel, message.event_id
        chat = chat_key(channel, message.chat_id)
        keys = self._keys
        # A fresh id per job: arq refuses an id while a kept result holds it (arq
        # issue 432), so ids are never reused. 48 random bits, as uuid4().hex[:12]
        # gave, without building a UUID.
        job_id = keys.job_id(channel, event_id, secrets.token_hex(6))
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
            fresh = await self._accept(
                # KEYS
                keys.seen(channel, event_id),
                keys.event(channel, event_id),
                keys.inbox(channel, chat),
                job_key_prefix + job_id,
                self._redis.default_queue_name,
                keys.queued(channel, chat),
                # ARGV
                _ms(REMEMBER),
                message.to_json(),
                event_id,
                job,
                job_id,
                now,
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
