"""The weekly-report job and its cron line: Monday 09:00 in the business time zone.

The worker's `timezone` is the business zone (app/worker.py, known fault Q-3), so
`hour=9` means 09:00 there whatever the container's zone. Every worker runs the cron;
arq enqueues one job per run time (`unique`), and `WeeklyPoster`'s lease and feed
look-up keep the post single even when that job runs twice or is retried.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from arq import Retry
from arq.cron import CronJob, cron
from redis.exceptions import RedisError

from app.config import BusinessRules, load_rules
from app.portal import NotConfigured
from app.settings import Settings
from connectors.bitrix24.errors import Bitrix24Error
from kpi_engine.period import week_just_ended
from kpi_engine.service import KpiService, utc_now
from kpi_engine.weekly import PostInProgress, week_label

log = structlog.stdlib.get_logger(__name__)

# A month of a 100-manager, 50,000-deal portal reads in 34 requests and computes in
# about a second (docs/benchmarks.md, "KPI"; 29 s against the sandbox); the report
# reads a week and two months at most. The job shares the queue, and arq keeps every
# job's in-progress mark for the longest timeout of any function + 10 s, so a job
# killed with its worker waits that long before it runs again (known fault Q-2):
# five minutes, the same as the reminders' reconcile and the follow-ups' drain.
TIMEOUT = timedelta(minutes=5)
MAX_TRIES = 8  # with the delays below: retried for about an hour and a half
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(minutes=30)


def retry_delay(job_try: int) -> timedelta:
    """1, 2, 4 … minutes after try `job_try` failed, at most 30."""
    return min(LONGEST_RETRY, FIRST_RETRY * (1 << max(job_try - 1, 0)))


async def weekly_report(ctx: dict[str, Any]) -> int | None:
    """Post the report of the week just ended; the post id, or None when off."""
    settings: Settings = ctx["settings"]
    rules: BusinessRules = ctx.get("rules") or load_rules(settings.config)
    if not rules.report.post:
        log.info("kpi.weekly_post_off")
        return None
    scheduled: datetime = ctx.get("enqueue_time") or utc_now()
    start, _ = week_just_ended(scheduled, rules.zone)
    structlog.contextvars.bind_contextvars(week=week_label(start))
    clients = ctx["clients"]
    try:
        service = KpiService.on_portal(settings, rules, clients)
        posted = await service.post_weekly(start)
    except NotConfigured:
        log.error("kpi.weekly_not_configured")
        return None
    except PostInProgress:
        # The holder may die: look again once its lease could have run out.
        raise Retry(defer=TIMEOUT) from None
    except (Bitrix24Error, RedisError, OSError) as exc:
        delay = retry_delay(ctx["job_try"])
        log.warning("kpi.weekly_retry", error=type(exc).__name__, delay_s=delay.seconds)
        raise Retry(defer=delay) from exc
    return posted.post_id


WEEKLY_REPORT: CronJob = cron(
    weekly_report,
    name="kpi.weekly_report",
    weekday="mon",
    hour=9,
    minute=0,
    second=0,
    microsecond=0,
    timeout=TIMEOUT,
    max_tries=MAX_TRIES,
)
