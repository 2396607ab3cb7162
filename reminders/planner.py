"""Keeping a deal's queued reminder jobs equal to what its booking needs now.

Every job id names the deal, the visit stamp and the kind, so planning the same
booking twice (a repeated event, the reconcile job after an event) finds its jobs
already queued and changes nothing. A moved visit has other stamps: its jobs are new
and the old ones are taken out of the queue, unless one is running, which re-reads
the deal and stands down by itself.

Jobs are written the way arq's own `enqueue_job` writes them (the pickled job under
`arq:job:<id>`, the id in the queue scored by its due time), in one script, so that
an existing job can be moved to a new due time atomically. A result kept under a
reminder's id would make arq refuse the id (known fault Q-1); the job functions
keep no result, and the script clears any such key before writing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import structlog
from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from redis.asyncio.lock import Lock

from app.config import BusinessRules
from connectors.bitrix24.models import Deal
from reminders.booking import Booking, booking_of, reminders_off_because
from reminders.crm import Crm
from reminders.keys import ReminderKeys, px
from reminders.schedule import Plan, Slot, plan

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]

FIRE = "reminders.fire"
# arq keeps a job's key this long after it is due (its own default, one day).
JOB_KEY_EXTRA = timedelta(days=1)
# The plan of a deal is forgotten this long after its last change.
PLAN_LIFETIME = timedelta(days=60)
# One planner per deal at a time: an event and the reconcile job may read the same
# deal at different moments, and the later reading must win.
LOCK_TIMEOUT_S = 60.0
LOCK_WAIT_S = 30.0

# KEYS: job, in progress, result, queue, plan. ARGV: job bytes, job id, score ms,
# job key lifetime ms, plan lifetime ms. Returns 'running', 'queued', 'moved' or
# 'scheduled'.
_SCHEDULE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('PEXPIRE', KEYS[5], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local score = redis.call('ZSCORE', KEYS[4], ARGV[2])
  if score and tonumber(score) == tonumber(ARGV[3]) then return 'queued' end
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 'moved'
end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 'scheduled'
"""
# KEYS: job, in progress, queue, retry, plan. ARGV: job id. A running job is left
# alone: it re-reads the deal and stands down.
_CANCEL = """
redis.call('SREM', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[4])
return 1
"""


@dataclass(frozen=True)
class Planned:
    """What planning one deal did: job ids by what happened to them."""

    deal_id: int
    scheduled: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    reason: str = ""


class Planner:
    """Schedules and cancels the reminder jobs of deals, one deal at a time."""

    def __init__(
        self,
        redis: ArqRedis,
        crm: Crm,
        rules: BusinessRules,
        clock: Clock,
        *,
        keys: ReminderKeys | None = None,
    ) -> None:
        self._redis = redis
        self._crm = crm
        self._rules = rules
        self._clock = clock
        self._keys = keys or ReminderKeys()
        self._schedule = redis.register_script(_SCHEDULE)
        self._cancel = redis.register_script(_CANCEL)

    async def watch(self, deal_id: int) -> Planned:
        """Read the deal now and make its queued jobs match it."""
        async with self._lock(deal_id):
            deal = await self._crm.deal(deal_id)
            booking = None if deal is None else booking_of(deal, self._rules)
            return await self.apply(deal_id, booking, gone=deal is None)

    async def observe(self, deal: Deal) -> Planned:
        """Queue what a deal read by a list needs; cancel nothing.

        A list row may be older than what an event's job has just read, so it only
        adds: jobs it should not have added stand down when they read the deal.
        """
        async with self._lock(deal.id):
            booking = booking_of(deal, self._rules)
            return await self.apply(deal.id, booking, cancel_others=False)

    async def apply(
        self,
        deal_id: int,
        booking: Booking | None,
        *,
        gone: bool = False,
        cancel_others: bool = True,
    ) -> Planned:
        """Make the deal's queued jobs match `booking` (None: no visit to remind of)."""
        wanted, reason = self._wanted(booking)
        slots = {self._keys.job_id(deal_id, s.stamp, s.slot.kind): s for s in wanted}
        scheduled: list[str] = []
        kept: list[str] = []
        for job_id, stamped in slots.items():
            outcome = await self._put(job_id, deal_id, stamped)
            (scheduled if outcome in ("scheduled", "moved") else kept).append(job_id)
        cancelled = (
            await self._drop_others(deal_id, set(slots)) if cancel_others else []
        )
        reason = "deal_deleted" if gone else reason
        planned = Planned(
            deal_id, tuple(scheduled), tuple(kept), tuple(cancelled), reason
        )
        # The reconcile job plans every booked deal every few minutes: a plan that
        # changed nothing is not worth a line at info.
        changed = scheduled or cancelled or reason
        (log.info if changed else log.debug)(
            "reminders.planned",
            deal_id=deal_id,
            scheduled=len(scheduled),
            kept=len(kept),
            cancelled=len(cancelled),
            reason=reason or None,
        )
        return planned

    def _lock(self, deal_id: int) -> Lock:
        return self._redis.lock(
            self._keys.lock(deal_id),
            timeout=LOCK_TIMEOUT_S,
            blocking_timeout=LOCK_WAIT_S,
        )

    def _wanted(self, booking: Booking | None) -> tuple[list[_Stamped], str]:
        if booking is None:
            return [], "no_visit"
        if booking.role is None or not booking.active:
            return [], f"role_{booking.role or 'none'}"
        off = reminders_off_because(self._rules)
        if off is not None:
            return [], off
        now = self._clock()
        planned: Plan = plan(booking.visit, booking.role, self._rules, now)
        for dropped in planned.dropped:
            # A slot that has passed is routine; one with no allowed time is news.
            routine = dropped.reason != "no_allowed_time"
            (log.debug if routine else log.info)(
                "reminders.slot_dropped",
                deal_id=booking.deal_id,
                kind=dropped.kind,
                reason=dropped.reason,
            )
        return [_Stamped(booking.stamp, slot, now) for slot in planned.slots], ""

    async def _put(self, job_id: str, deal_id: int, stamped: _Stamped) -> str:
        if await self._redis.exists(self._done_key(deal_id, stamped)):
            return "done"
        score = max(_ms(stamped.slot.due), _ms(stamped.now))
        lifetime = max(stamped.slot.due - stamped.now, timedelta(0)) + JOB_KEY_EXTRA
        job = serialize_job(
            FIRE,
            (deal_id, stamped.stamp, stamped.slot.kind),
            {},
            None,
            _ms(stamped.now),
            serializer=self._redis.job_serializer,
        )
        outcome = await self._schedule(
            keys=[
                job_key_prefix + job_id,
                in_progress_key_prefix + job_id,
                result_key_prefix + job_id,
                self._redis.default_queue_name,
                self._keys.plan(deal_id),
            ],
            args=[job, job_id, score, px(lifetime), px(PLAN_LIFETIME)],
        )
        return bytes(outcome).decode() if isinstance(outcome, bytes) else str(outcome)

    async def _drop_others(self, deal_id: int, wanted: set[str]) -> list[str]:
        members = await cast(
            Awaitable[set[bytes]], self._redis.smembers(self._keys.plan(deal_id))
        )
        cancelled = []
        for job_id in sorted(member.decode() for member in members):
            if job_id in wanted:
                continue
            await self._cancel(
                keys=[
                    job_key_prefix + job_id,
                    in_progress_key_prefix + job_id,
                    self._redis.default_queue_name,
                    retry_key_prefix + job_id,
                    self._keys.plan(deal_id),
                ],
                args=[job_id],
            )
            cancelled.append(job_id)
        return cancelled

    def _done_key(self, deal_id: int, stamped: _Stamped) -> str:
        return self._keys.done(deal_id, stamped.stamp, stamped.slot.kind)


@dataclass(frozen=True)
class _Stamped:
    stamp: str
    slot: Slot
    now: datetime


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
