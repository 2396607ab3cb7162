"""The worker side: drain one chat's inbox in order, one event at a time.

Every accepted event queues a `process_chat` job for its chat. The first job takes the
chat's lock (its value is the job id) and handles the inbox head by head; the others
find the lock taken and leave, since the holder will reach their events. An event
leaves the inbox only after its handler returned, so a worker killed mid-event leaves
it at the head, and arq's retry of the same job id takes the lock back (case Q-2);
sooner, once the lock's lease lapses, the sweep queues a fresh job for the chat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from uuid import uuid4

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import Function, Retry, func

from webhooks.inbound import CHANNELS, Channel, InboundKind, InboundMessage
from webhooks.keys import REMEMBER, InboxKeys
from webhooks.queue import PROCESS_CHAT, wake
from webhooks.reachability import Reachability
from webhooks.setaside import Reason, SetAside
from webhooks.statuses import SentMessages, StatusChange

log = structlog.stdlib.get_logger(__name__)

Handler = Callable[[InboundMessage], Awaitable[None]]
JobContext = dict[str, Any]

# The mark of a sweep's drain outlives any wait in the queue worth skipping for.
QUEUED_MARK_LIFETIME = timedelta(hours=1)
# WhatsApp 131026: the number cannot receive messages (not on WhatsApp, old app).
UNDELIVERABLE = 131026

# KEYS: lock. ARGV: job id, lease ms. Taken when free or already ours (a retry of
# the same job after a crash).
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: lock, inbox. ARGV: job id, lease ms. The head event id, '' when the inbox
# is empty, or false once the lock is someone else's.
_HEAD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('LINDEX', KEYS[2], 0) or ''
"""
# KEYS: lock, inbox. ARGV: job id. Released only when the inbox is empty, in the
# same step, so an event pushed a moment later finds the lock free.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 1 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: inbox, done, event, attempts. ARGV: event id, remember ms, done value.
_COMPLETE = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('DEL', KEYS[4])
if ARGV[3] == 'done' then redis.call('DEL', KEYS[3]) end
return 1
"""
# KEYS: lock. ARGV: from job id, to job id, lease ms.
_TRANSFER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class DrainPolicy:
    """How long one event and one job may take, and how often an event is retried."""

    # The dialog's LLM calls time out at 20-30 s, at most two per turn, plus the
    # Bitrix24 hand-off: two minutes covers a slow turn.
    handler_timeout: timedelta = timedelta(minutes=2)
    # A busy chat hands over to a fresh job after this, so no run nears arq's timeout.
    run_budget: timedelta = timedelta(minutes=1)
    # Tries of one event (a crash mid-event counts) before it is set aside.
    max_attempts: int = 3
    retry_delays: tuple[timedelta, ...] = (timedelta(seconds=5), timedelta(seconds=30))
    # How long the chat lock outlives a handler call; after a crash the chat waits
    # this long past the handler's timeout for the sweep (case Q-2).
    lease_margin: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        if not self.retry_delays or self.max_attempts < 1:
            raise ValueError("at least one attempt and one retry delay")

    @property
    def lease(self) -> timedelta:
        """The chat lock outlives one handler call, renewed before each event."""
        return self.handler_timeout + self.lease_margin

    @property
    def job_timeout(self) -> timedelta:
        return self.run_budget + self.lease

    def retry_delay(self, attempt: int) -> timedelta:
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]


@dataclass(frozen=True)
class Chat:
    channel: Channel
    key: str


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)


class ChatDrainer:
    """Handles the inbox of one chat at a time, head first, each event once."""

    def __init__(
        self,
        redis: ArqRedis,
        handler: Handler,
        *,
        keys: InboxKeys | None = None,
        policy: DrainPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._handler = handler
        self._keys = keys or InboxKeys()
        self._policy = policy or DrainPolicy()
        self._clock = clock
        self._reachability = Reachability(redis, keys=self._keys)
        self._sent = SentMessages(redis, keys=self._keys)
        self._set_aside_list = SetAside(redis, self._keys)
        self._acquire = redis.register_script(_ACQUIRE)
        self._head = redis.register_script(_HEAD)
        self._release = redis.register_script(_RELEASE)
        self._complete = redis.register_script(_COMPLETE)
        self._transfer = redis.register_script(_TRANSFER)

    async def drain(self, chat: Chat, job_id: str) -> None:
        """Handle the chat's events in order until its inbox is empty."""
        lock = self._keys.lock(chat.channel, chat.key)
        lease = _ms(self._policy.lease)
        if not await self._acquire(keys=[lock], args=[job_id, lease]):
            log.info("webhooks.chat_busy")
            return

        started = self._clock()
        while True:
            head = await self._head(
                keys=[lock, self._inbox(chat)], args=[job_id, lease]
            )
            if head is None:
                log.warning("webhooks.chat_lock_lost")
                return
            if head == b"":
                if await self._release(keys=[lock, self._inbox(chat)], args=[job_id]):
                    log.info("webhooks.chat_drained")
                    return
                continue

            retry_after = await self._process(chat, bytes(head).decode())
            if retry_after is not None:
                await self._hand_off(chat, job_id, retry_after)
                return
            if self._clock() - started > self._policy.run_budget.total_seconds():
                await self._hand_off(chat, job_id, timedelta(0))
                return

    async def _process(self, chat: Chat, event_id: str) -> timedelta | None:
        """None when the chat moves on; otherwise how long until the event's retry."""
        keys, channel = self._keys, chat.channel
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(keys.done(channel, event_id))
            pipe.get(keys.event(channel, event_id))
            pipe.incr(keys.attempts(channel, event_id))
            pipe.pexpire(keys.attempts(channel, event_id), _ms(REMEMBER))
            done, raw, attempt, _ = await pipe.execute()
        bound = structlog.contextvars.bound_contextvars(event_id=event_id)

        with bound:
            if done or raw is None:
                # Processed already (a repeat that slipped past the route) or expired.
                log.info("webhooks.event_skipped", reason="done" if done else "expired")
                await self._finish(chat, event_id, "done")
                return None
            if attempt > self._policy.max_attempts:
                log.error("webhooks.event_set_aside", attempts=attempt - 1)
                await self._set_aside(chat, event_id, "tries")
                return None
            return await self._run(chat, event_id, raw, attempt)

    async def _run(
        self, chat: Chat, event_id: str, raw: bytes, attempt: int
    ) -> timedelta | None:
        try:
            message = InboundMessage.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.error("webhooks.event_unreadable")
            await self._set_aside(chat, event_id, "unreadable")
            return None

        policy_delay = self._policy.retry_delay(attempt)
        try:
            async with asyncio.timeout(self._policy.handler_timeout.total_seconds()):
                await self._dispatch(message)
        except Retry as retry:
            # The handler knows when trying again can work (a messenger's
            # retry_after): sooner would spend an attempt on the same refusal.
            asked = timedelta(milliseconds=retry.defer_score or 0)
            delay = max(asked, policy_delay)
            log.warning(
                "webhooks.handler_deferred",
                kind=message.kind.value,
                attempt=attempt,
                delay_s=delay.total_seconds(),
            )
            return delay
        except Exception as exc:
            log.warning(
                "webhooks.handler_failed",
                kind=message.kind.value,
                attempt=attempt,
                error=type(exc).__name__,
                exc_info=True,
            )
            return policy_delay

        await self._finish(chat, event_id, "done")
        log.info("webhooks.event_handled", kind=message.kind.value, attempt=attempt)
        return None

    async def _dispatch(self, message: InboundMessage) -> None:
        channel, chat_id = message.channel, message.chat_id
        if message.kind is InboundKind.STATUS:
            await self._record_status(message)
            return
        if message.kind is InboundKind.BLOCKED:
            await self._reachability.mark_unreachable(channel, chat_id)
        else:
            await self._reachability.mark_reachable(channel, chat_id)
        await self._handler(message)

    async def _record_status(self, message: InboundMessage) -> None:
        # A status is about a message leadloop sent, never a client's message.
        wamid, status = message.provider_message_id or "", message.status or ""
        change = await self._sent.record(message.channel, wamid, status)
        log.info("webhooks.status_recorded", status=status, change=change.value)
        # Repeats and late arrivals (a "sent" after "read") tell the dialog nothing.
        if change is not StatusChange.ADVANCED:
            return
        if message.error_code == UNDELIVERABLE:
            await self._reachability.mark_unreachable(message.channel, message.chat_id)
        await self._handler(message)

    async def _finish(self, chat: Chat, event_id: str, state: str) -> None:
        keys, channel = self._keys, chat.channel
        await self._complete(
            keys=[
                self._inbox(chat),
                keys.done(channel, event_id),
                keys.event(channel, event_id),
                keys.attempts(channel, event_id),
            ],
            args=[event_id, _ms(REMEMBER), state],
        )

    async def _set_aside(self, chat: Chat, event_id: str, reason: Reason) -> None:
        # Kept for a person to look at (`leadloop jobs failed`); the chat moves on.
        await self._set_aside_list.add(chat.channel, chat.key, event_id, reason)
        await self._finish(chat, event_id, "set_aside")

    async def _hand_off(self, chat: Chat, job_id: str, delay: timedelta) -> None:
        """Pass the lock to a fresh job, so a retry never spends arq's max_tries."""
        successor = self._keys.job_id(chat.channel, chat.key, uuid4().hex[:12])
        lock = self._keys.lock(chat.channel, chat.key)
        lease = _ms(self._policy.lease + delay)
        if not await self._transfer(keys=[lock], args=[job_id, successor, lease]):
            log.warning("webhooks.chat_lock_lost")
            return
        await wake(self._redis, chat.channel, chat.key, successor, defer=delay)
        log.info(
            "webhooks.chat_handed_off",
            successor=successor,
            delay_s=delay.total_seconds(),
        )

    def _inbox(self, chat: Chat) -> str:
        return self._keys.inbox(chat.channel, chat.key)


async def process_chat(ctx: JobContext, channel: Channel, chat_key: str) -> None:
    """arq job: drain one chat; `chat_key` is the chat's pseudonym (see keys.py)."""
    handler = cast(Handler | None, ctx.get("inbound_handler"))
    if handler is None:
        # The events stay in the inbox until a worker with a handler drains it.
        log.error("webhooks.no_inbound_handler", channel=channel)
        return
    drainer = ChatDrainer(
        ctx["redis"],
        handler,
        keys=ctx.get("inbound_keys"),
        policy=ctx.get("inbound_policy"),
    )
    with structlog.contextvars.bound_contextvars(channel=channel, chat=chat_key):
        await drainer.drain(Chat(channel, chat_key), ctx["job_id"])


async def sweep_inboxes(ctx: JobContext) -> int:
    """Queue a drain for every inbox no job holds; returns how many were woken.

    Closes the one gap the lock leaves: a job that arq gave up on (max tries, its
    timeout) holds no lock once the lease lapses, and its chat waits for the next
    message. It also recovers a chat whose worker died: arq runs that job again
    only once its in-progress mark lapses (the worker's longest job timeout plus
    10 s, about five minutes), the lease lapses sooner. A chat whose last queued
    drain (an event's or a sweep's) still waits in the queue, as in a long backlog,
    is not queued again.
    Meant to run from cron every minute.
    """
    redis: ArqRedis = ctx["redis"]
    keys: InboxKeys = ctx.get("inbound_keys") or InboxKeys()
    woken = 0
    async for raw_key in redis.scan_iter(match=keys.inbox_pattern(), count=500):
        channel, chat = bytes(raw_key).decode().rsplit(":", 2)[-2:]
        if channel not in CHANNELS:
            continue
        if await redis.exists(keys.lock(channel, chat)):
            continue
        queued = keys.queued(channel, chat)
        if await _still_queued(redis, await redis.get(queued)):
            continue
        job_id = keys.job_id(channel, chat, f"sweep-{uuid4().hex[:12]}")
        await wake(redis, channel, chat, job_id)
        await redis.set(queued, job_id, ex=QUEUED_MARK_LIFETIME)
        woken += 1
    if woken:
        log.warning("webhooks.inboxes_swept", woken=woken)
    return woken


async def _still_queued(redis: ArqRedis, job_id: bytes | None) -> bool:
    """Whether the job waits in the queue, not yet started.

    arq keeps a running job in the queue too, marked in progress; a chat whose job
    died with its worker (marked for arq's in-progress timeout) is woken again.
    """
    if job_id is None:
        return False
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(redis.default_queue_name, job_id)
        pipe.exists(in_progress_key_prefix + job_id.decode())
        score, running = await pipe.execute()
    return score is not None and not running


def process_chat_job(policy: DrainPolicy | None = None) -> Function:
    """`process_chat` for arq: no kept result (arq issue 432), timeout from policy."""
    policy = policy or DrainPolicy()
    return func(
        process_chat,
        name=PROCESS_CHAT,
        keep_result=0,
        timeout=policy.job_timeout.total_seconds(),
    )
