"""Follow-ups the portal could not take yet, queued per chat for a retrying job.

A client's message after the hand-off goes on the chat's deal as a comment in the
chat's own job (qualification.followup). When Bitrix24 is down or refusing, that job
cannot wait hours for it, and after three tries it would set the event aside. So the
message is parked in Redis instead (under its event id, the text never in a job's
arguments), its event id joins the chat's pending queue, and the chat's job finishes.

Order is kept per chat: while a chat has anything pending, its later follow-ups join
the queue behind it without touching the portal, and one job at a time (the queue's
drainer, named in Redis) takes the queue from its head, retrying with growing delays
for about six hours. Each step of a follow-up is marked once done, so a job that
crashed mid-way repeats nothing that reached the portal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, cast

import structlog
from arq.connections import ArqRedis
from arq.worker import Function, Retry, func
from pydantic import BaseModel, ConfigDict

from qualification.dialog import FollowUp
from webhooks.inbound import Channel, InboundMessage
from webhooks.keys import chat_key

log = structlog.stdlib.get_logger(__name__)

JobContext = dict[str, Any]
Settle = Callable[[InboundMessage, FollowUp], Awaitable[object]]

FOLLOW_UP_JOB = "intake_follow_up"
# Where the worker keeps the intake's FollowUps (qualification.handler.open_intake).
CTX_KEY = "intake_followups"
# Parked follow-ups and their queues outlive any retry; events are deduplicated for
# seven days.
PENDING_MEMORY = timedelta(days=8)

# KEYS: item, queue, drainer. ARGV: item, event id, memory ms, job id, lease ms.
# Parks the follow-up once (a retried chat event adds nothing) and answers the job
# that drains the queue, naming this event's job when no drainer holds it.
_PARK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3]) then
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local holder = redis.call('GET', KEYS[3])
if holder then return holder end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
return ARGV[4]
"""
# KEYS: drainer. ARGV: job id, lease ms. The queue's drainer, or 0 for another job.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: queue, item. ARGV: event id.
_DONE = """
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS: queue, drainer. ARGV: job id, "all" to let go with follow-ups left.
# An empty queue and the release are one step: a follow-up parked in between would
# see the drainer and start no job of its own.
_RELEASE = """
if ARGV[2] ~= 'all' and redis.call('LLEN', KEYS[1]) > 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


@dataclass(frozen=True)
class PendingPolicy:
    """When the job tries a chat's pending follow-ups again, and for how long."""

    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(minutes=15)
    # 30 s doubling to 15 min, 30 tries: about six hours, as the hand-off's job.
    max_tries: int = 30

    def __post_init__(self) -> None:
        if self.max_tries < 1 or self.max_delay < self.first_delay:
            raise ValueError("at least one try, and max_delay not below first_delay")

    def delay(self, job_try: int) -> timedelta:
        """The wait before try number `job_try` + 1."""
        delay = self.first_delay * (1 << min(max(job_try - 1, 0), 16))
        return min(delay, self.max_delay)

    @property
    def lease(self) -> timedelta:
        """How long a drainer's claim outlives its last try: a job that vanished
        (arq gave up on it unseen) lets the chat's next follow-up start another."""
        return self.max_delay + timedelta(minutes=15)


class Parked(BaseModel):
    """A follow-up as it waits in Redis: the message and what the dialog said."""

    model_config = ConfigDict(frozen=True)

    message: str
    follow_up: FollowUp


class PendingFollowUps:
    """The per-chat queues of follow-ups waiting for the portal, and their job."""

    def __init__(
        self,
        redis: ArqRedis,
        *,
        prefix: str = "leadloop:intake",
        policy: PendingPolicy | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:followup:pending"
        self.policy = policy or PendingPolicy()
        self._park = redis.register_script(_PARK)
        self._take = redis.register_script(_TAKE)
        self._done = redis.register_script(_DONE)
        self._release = redis.register_script(_RELEASE)

    async def waiting(self, message: InboundMessage) -> bool:
        """True when the message is parked, or its chat has follow-ups pending."""
        chat = chat_key(message.channel, message.chat_id)
        keys = (self._item(message.channel, message.event_id), self._queue(chat))
        return bool(await self._redis.exists(*keys))

    async def park(self, message: InboundMessage, follow_up: FollowUp) -> None:
        """Queue the follow-up behind the chat's others; make sure a job drains them."""
        channel, chat = message.channel, chat_key(message.channel, message.chat_id)
        item = Parked(message=message.to_json(), follow_up=follow_up)
        own_job = self._job_id(channel, message.event_id)
        memory = _ms(PENDING_MEMORY)
        holder = await self._park(
            keys=[
                self._item(channel, message.event_id),
                self._queue(chat),
                self._lock(chat),
            ],
            args=[
                item.model_dump_json(),
                message.event_id,
                memory,
                own_job,
                _ms(self.policy.lease),
            ],
        )
        drainer = _text(holder)
        # Enqueued by its id whoever parks: arq keeps one job per id, and a chat event
        # retried after a crash between the park and the enqueue starts it here.
        await self._redis.enqueue_job(
            FOLLOW_UP_JOB,
            channel,
            chat,
            _job_id=drainer,
            _defer_by=self.policy.first_delay,
        )
        log.warning("followup.pending", behind=drainer != own_job)

    async def drain(
        self, channel: Channel, chat: str, job_id: str, job_try: int, settle: Settle
    ) -> None:
        """Settle the chat's pending follow-ups oldest first; Retry while one fails."""
        queue, lock = self._queue(chat), self._lock(chat)
        if not await self._take(keys=[lock], args=[job_id, _ms(self.policy.lease)]):
            log.info("followup.drain_busy")
            return

        settled = 0
        while True:
            head = await cast(Awaitable[bytes | None], self._redis.lindex(queue, 0))
            if head is None:
                if await self._release(keys=[queue, lock], args=[job_id, ""]):
                    log.info("followup.drained", settled=settled, job_try=job_try)
                    return
                continue
            event_id = head.decode()
            item = self._item(channel, event_id)
            raw = await self._redis.get(item)
            if raw is None:
                log.error("followup.pending_lost", event_id=event_id)
            else:
                await self._settle_one(
                    Parked.model_validate_json(raw), settle, job_id, job_try, chat
                )
                settled += 1
            await self._done(keys=[queue, item], args=[event_id])

    async def _settle_one(
        self, parked: Parked, settle: Settle, job_id: str, job_try: int, chat: str
    ) -> None:
        message = InboundMessage.from_json(parked.message)
        bound = structlog.contextvars.bound_contextvars(
            channel=message.channel, chat=chat, event_id=message.event_id
        )
        try:
            with bound:
                await settle(message, parked.follow_up)
        except Exception as error:
            log.warning(
                "followup.pending_retry",
                event_id=message.event_id,
                job_try=job_try,
                error=type(error).__name__,
            )
            if job_try >= self.policy.max_tries:
                # The follow-ups stay queued: the chat's next one starts a new job,
                # and a person can run this one again (`leadloop jobs`).
                await self._release(
                    keys=[self._queue(chat), self._lock(chat)], args=[job_id, "all"]
                )
                log.error("followup.pending_given_up", event_id=message.event_id)
                raise
            raise Retry(defer=self.policy.delay(job_try)) from error

    def _item(self, channel: Channel, event_id: str) -> str:
        return f"{self._prefix}:event:{channel}:{event_id}"

    def _queue(self, chat: str) -> str:
        return f"{self._prefix}:queue:{chat}"

    def _lock(self, chat: str) -> str:
        return f"{self._prefix}:drainer:{chat}"

    def _job_id(self, channel: Channel, event_id: str) -> str:
        return f"{self._prefix}:job:{channel}:{event_id}"


class Drains(Protocol):
    """What the job needs of the intake's follow-ups (qualification.followup)."""

    async def drain(
        self, channel: Channel, chat: str, job_id: str, job_try: int
    ) -> None: ...


async def follow_up_later(ctx: JobContext, channel: Channel, chat: str) -> None:
    """arq job: the pending follow-ups of one chat (`chat` is its pseudonym)."""
    followups = cast(Drains | None, ctx.get(CTX_KEY))
    if followups is None:
        log.error("followup.no_portal")
        raise Retry(defer=PendingPolicy().first_delay)
    await followups.drain(channel, chat, str(ctx["job_id"]), int(ctx.get("job_try", 1)))


def follow_up_job(policy: PendingPolicy | None = None) -> Function:
    """`follow_up_later` for arq: ids reusable at once (arq #432), bounded tries."""
    return func(
        follow_up_later,
        name=FOLLOW_UP_JOB,
        keep_result=0,
        max_tries=(policy or PendingPolicy()).max_tries,
        # One try settles the whole queue; the gateway's own retries take seconds.
        timeout=300,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
