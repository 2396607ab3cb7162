"""The reminders' arq jobs and the reconcile cron line.

- `reminders.watch_deal(deal_id)`: queued by `POST /webhooks/bitrix24` for a deal
  event; reads the deal and re-plans its reminders.
- `reminders.fire(deal_id, stamp, kind)`: one reminder or check, queued by the
  planner under the id `<prefix>:job:<deal>:<stamp>:<kind>` for its due time.
- `reminders.reconcile()`: every few minutes, every booked or confirmed deal with a
  visit ahead (a portal never re-sends a lost event).

None keeps a result: arq refuses a job id while its result is kept (known fault
Q-1), and the planner reuses ids on purpose. Timeouts are short, so that arq's
in-progress key of a job whose worker died expires soon (known fault Q-2).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from arq import Retry
from arq.cron import CronJob, cron
from arq.worker import Function, func
from redis.exceptions import LockError, RedisError

from app.config import BusinessRules, load_rules
from app.portal import NotConfigured
from app.settings import Settings
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.models import Deal
from reminders.booking import reminders_off_because, watched_stages
from reminders.firing import Later, retry_delay
from reminders.planner import FIRE
from reminders.service import Reminders, reminders_from_ctx

log = structlog.stdlib.get_logger(__name__)

JobContext = dict[str, Any]

WATCH_DEAL = "reminders.watch_deal"
RECONCILE = "reminders.reconcile"
# Deals whose visit was up to a day ago are read too: their outcome check may be
# what a lost event left unplanned.
LOOKBACK = timedelta(days=1)
WATCH_TIMEOUT = timedelta(minutes=2)
FIRE_TIMEOUT = timedelta(minutes=2)
# A month of a busy salon's bookings pulls in seconds (50 deals a page, 50 pages a
# request); five minutes is the next run anyway.
RECONCILE_TIMEOUT = timedelta(minutes=5)
# Quiet hours, rate limits and a portal outage each defer a fire job once per try.
FIRE_TRIES = 12
WATCH_TRIES = 6
_PASSING_FAILURES = (Bitrix24Error, RedisError, LockError, OSError)


def _reminders(ctx: JobContext) -> Reminders | None:
    """The job's reminders; None (logged) without a portal to read deals from."""
    try:
        return reminders_from_ctx(ctx)
    except NotConfigured:
        log.warning("reminders.not_configured")
        return None


async def watch_deal(ctx: JobContext, deal_id: int) -> str:
    """Re-plan one deal's reminders from the deal as it is now."""
    with structlog.contextvars.bound_contextvars(deal_id=deal_id):
        reminders = _reminders(ctx)
        if reminders is None:
            return "not_configured"
        try:
            planned = await reminders.planner.watch(deal_id)
        except _PASSING_FAILURES as exc:
            raise _retry(ctx, exc) from exc
    return planned.reason or "planned"


async def fire(ctx: JobContext, deal_id: int, stamp: str, kind: str) -> str:
    """Run one reminder or check of one visit."""
    bound = structlog.contextvars.bound_contextvars(
        deal_id=deal_id, visit=stamp, kind=kind
    )
    with bound:
        reminders = _reminders(ctx)
        if reminders is None:
            return "not_configured"
        try:
            fired = await reminders.firing.fire(
                deal_id, stamp, kind, job_try=ctx.get("job_try", 1)
            )
        except Later as later:
            log.info(
                "reminders.deferred",
                reason=later.reason,
                delay_s=int(later.delay.total_seconds()),
            )
            raise Retry(defer=later.delay) from None
        except _PASSING_FAILURES as exc:
            raise _retry(ctx, exc) from exc
    return fired.outcome


async def reconcile(ctx: JobContext) -> int:
    """Plan every booked or confirmed deal with a visit in the horizon; the count."""
    settings: Settings = ctx["settings"]
    rules: BusinessRules = ctx.get("rules") or load_rules(settings.config)
    off = reminders_off_because(rules)
    if off is not None or settings.bitrix24_webhook_url is None:
        # Runs every few minutes in every worker: a line each time would drown the
        # log of a deployment that does not use reminders.
        log.debug("reminders.reconcile_off", reason=off or "not_configured")
        return 0

    reminders = reminders_from_ctx(ctx)
    field = rules.crm.visit_field or ""
    now = reminders.clock()
    horizon = timedelta(hours=rules.reminders.horizon_hours)
    count = 0
    deals = reminders.crm.deals_with_visits(
        watched_stages(rules), field, now - LOOKBACK, now + horizon
    )
    try:
        async for deal in deals:
            count += await _observe(reminders, deal)
    except _PASSING_FAILURES as exc:
        # The next run starts over; this one is not retried.
        log.warning("reminders.reconcile_failed", error=type(exc).__name__, deals=count)
        return count
    log.info("reminders.reconciled", deals=count)
    return count


async def _observe(reminders: Reminders, deal: Deal) -> int:
    """1 when the deal was planned; a deal another job holds is left to it."""
    try:
        await reminders.planner.observe(deal)
    except (LockError, RedisError) as exc:
        log.warning("reminders.deal_skipped", deal_id=deal.id, error=type(exc).__name__)
        return 0
    return 1


def _retry(ctx: JobContext, exc: Exception) -> Retry:
    delay = retry_delay(ctx.get("job_try", 1))
    log.warning(
        "reminders.retry", error=type(exc).__name__, delay_s=int(delay.total_seconds())
    )
    return Retry(defer=delay)


def functions() -> tuple[Function, ...]:
    """The job functions for the worker's table."""
    return (
        func(
            watch_deal,
            name=WATCH_DEAL,
            keep_result=0,
            timeout=WATCH_TIMEOUT.total_seconds(),
            max_tries=WATCH_TRIES,
        ),
        func(
            fire,
            name=FIRE,
            keep_result=0,
            timeout=FIRE_TIMEOUT.total_seconds(),
            max_tries=FIRE_TRIES,
        ),
    )


def reconcile_cron(rules: BusinessRules) -> CronJob:
    """Every `reconcile_minutes`, on the minute, in the worker's (business) zone."""
    every = rules.reminders.reconcile_minutes
    return cron(
        reconcile,
        name=RECONCILE,
        minute=set(range(0, 60, every)),
        second=0,
        microsecond=0,
        timeout=RECONCILE_TIMEOUT,
        max_tries=1,
        keep_result=0,
    )
