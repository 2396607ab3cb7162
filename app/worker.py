"""The arq worker: job functions, the cron table and the clients jobs share.

`WorkerSettings` holds what is the same in every deployment; `build_worker` adds what
comes from settings and the business rules (Redis, the cron time zone).
"""

from __future__ import annotations

from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.cron import CronJob, cron
from arq.worker import Worker, get_kwargs

from app.clients import open_clients
from app.config import BusinessRules
from app.failed_jobs import ObservedWorker
from app.metrics import serve_worker_metrics
from app.settings import Settings, get_settings
from kpi_engine.tasks import WEEKLY_REPORT
from qualification.handler import hand_off_job, open_intake
from qualification.pending import follow_up_job
from reminders import jobs as reminder_jobs
from webhooks.jobs import process_chat_job, sweep_inboxes

log = structlog.stdlib.get_logger(__name__)

JobContext = dict[str, Any]


async def ping(ctx: JobContext) -> str:
    """A job that proves the queue works end to end."""
    log.info("worker.ping")
    return "pong"


async def startup(ctx: JobContext) -> None:
    if "settings" not in ctx:
        ctx["settings"] = get_settings()
    settings: Settings = ctx["settings"]
    ctx["clients"] = open_clients(settings.redis_url)
    if "metrics_server" not in ctx:
        # `leadloop worker` serves its metrics once per process instead: a run started
        # again after Redis went away (whose shutdown never ran) needs the same port.
        ctx["metrics_server"] = serve_worker_metrics(settings)
        ctx["metrics_server_owned"] = True
    if "inbound_handler" not in ctx:
        # The intake chain; a test may bring a handler of its own instead.
        ctx["intake"] = open_intake(ctx)
    log.info("worker.started")


async def shutdown(ctx: JobContext) -> None:
    intake = ctx.pop("intake", None)
    if intake is not None:
        await intake.aclose()
    clients = ctx.pop("clients", None)
    if clients is not None:
        await clients.aclose()
    metrics_server = ctx.pop("metrics_server", None)
    if ctx.pop("metrics_server_owned", False) and metrics_server is not None:
        metrics_server.close()
    log.info("worker.stopped")


async def job_started(ctx: JobContext) -> None:
    # arq runs each job in its own task, so these ids stay with this job's lines.
    structlog.contextvars.bind_contextvars(job_id=ctx["job_id"], job_try=ctx["job_try"])


async def job_ended(ctx: JobContext) -> None:
    structlog.contextvars.unbind_contextvars("job_id", "job_try")


class WorkerSettings:
    """The functions, cron lines and hooks every worker has; `build_worker` completes
    them (Redis from LEADLOOP_REDIS_URL, LEADLOOP_WORKER_MAX_JOBS, the business time
    zone, the reminders' cron, failed-job records).

    Start workers with `leadloop worker`. arq's own command on this class
    (`arq app.worker.WorkerSettings`) would miss all of that: it would use
    localhost:6379/0, arq's 10 jobs and the server's time zone.
    """

    functions = (
        ping,
        process_chat_job(),
        sweep_inboxes,
        hand_off_job(),
        follow_up_job(),
        *reminder_jobs.functions(),
    )
    # The reminders' reconcile line follows the rules: build_worker adds it.
    # Inboxes nothing holds (a job arq gave up on) are picked up again every minute.
    cron_jobs: tuple[CronJob, ...] = (
        WEEKLY_REPORT,
        cron(sweep_inboxes, second=30),
    )
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    on_job_end = job_ended
    # Side effects carry their own idempotency keys; a job's result is kept only long
    # enough to read it back (arq issue 432: a kept result blocks reusing its job id).
    keep_result = 60


def build_worker(settings: Settings, rules: BusinessRules, **overrides: Any) -> Worker:
    """A worker on `settings.redis_url` whose cron runs in the business time zone,
    recording failed jobs (app/failed_jobs.py)."""
    options: dict[str, Any] = {
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        # Never the container's zone: cron lines are written in business time.
        "timezone": rules.zone,
        "ctx": {"settings": settings, "rules": rules},
        "max_jobs": settings.worker_max_jobs,
        # The reconcile cadence is a business rule, so its line is made here.
        "cron_jobs": (*WorkerSettings.cron_jobs, reminder_jobs.reconcile_cron(rules)),
        **overrides,
    }
    return ObservedWorker(**{**get_kwargs(dict(vars(WorkerSettings))), **options})
