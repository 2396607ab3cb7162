"""Prometheus metrics: what leadloop counts, and `GET /metrics` to read them.

Every metric lives in prometheus_client's default registry of the process that
counts it: the API counts webhooks, the worker jobs, Bitrix24 calls, the model and
reminders. The API serves its registry at `/metrics`; a worker serves its own on
`LEADLOOP_WORKER_METRICS_PORT` when that is set (`serve_worker_metrics`). Prometheus
scrapes both and sums across processes, which is how counters are meant to be read.

Labels take values from small fixed sets (channels, outcomes, job function names,
Bitrix24 method groups, reminder kinds from the rules): never an id, a phone or
anything a client wrote. docs/observability.md lists every metric.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.exceptions import HTTPException

from app.errors import ServiceError
from app.security import bearer_matches
from app.settings import Settings

log = structlog.stdlib.get_logger(__name__)

METRICS_PATH = "/metrics"

# Buckets in seconds. A Bitrix24 call answers in 0.1-1 s and a retried one in up
# to 8 s; the rate limiter waits up to the bucket's drain time (25 s for 50 slots
# at 2 a second); a model call times out at 20 s; a lead reaches the CRM in about
# a second inline, or hours later when the portal was down.
_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_WAIT_BUCKETS = (0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MODEL_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
_LEAD_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# -- intake ---------------------------------------------------------------------------

WEBHOOKS = Counter(
    "leadloop_webhooks",
    "Inbound webhook events by channel and outcome: accepted, duplicate, "
    "unsupported (acknowledged, not processed), rejected (auth or body refused, "
    "per request), unavailable (Redis did not take it, per request).",
    ["channel", "outcome"],
)
WEBHOOK_OUTCOMES = ("accepted", "duplicate", "unsupported", "rejected", "unavailable")

# -- jobs -----------------------------------------------------------------------------

JOBS = Counter(
    "leadloop_jobs",
    "arq job runs by function and outcome: succeeded, retried (Retry or a "
    "cancellation that arq runs again), failed (recorded in the failed-jobs list).",
    ["function", "outcome"],
)
JOB_SECONDS = Histogram(
    "leadloop_job_seconds",
    "Time one job run took, by function.",
    ["function"],
    buckets=_JOB_BUCKETS,
)

# -- Bitrix24 -------------------------------------------------------------------------

BITRIX24_CALLS = Counter(
    "leadloop_bitrix24_calls",
    "HTTP requests to the portal by method group (crm.deal, tasks.task, batch…) "
    "and outcome: ok, or the gateway's error class (rate_limited, unavailable…).",
    ["method_group", "outcome"],
)
BITRIX24_CALL_SECONDS = Histogram(
    "leadloop_bitrix24_call_seconds",
    "Time from sending one request to the portal to its answer, by method group.",
    ["method_group"],
    buckets=_CALL_BUCKETS,
)
BITRIX24_RATE_LIMIT_WAIT_SECONDS = Histogram(
    "leadloop_bitrix24_rate_limit_wait_seconds",
    "Time a request waited for the portal's shared leaky bucket before it was sent.",
    buckets=_WAIT_BUCKETS,
)

# -- qualification and hand-off -------------------------------------------------------

LLM_CALLS = Counter(
    "leadloop_llm_calls",
    "Calls to the model by outcome: ok, rate_limited, server_error, unreachable, "
    "rejected.",
    ["outcome"],
)
LLM_CALL_SECONDS = Histogram(
    "leadloop_llm_call_seconds",
    "Time one call to the model took, failed ones included.",
    buckets=_MODEL_BUCKETS,
)
LLM_FALLBACKS = Counter(
    "leadloop_llm_fallbacks",
    "Qualifications where the rules answered instead of the model, by reason.",
    ["reason"],
)
LEAD_TO_CRM_SECONDS = Histogram(
    "leadloop_lead_to_crm_seconds",
    "Time from the dialog completing a lead to its record in Bitrix24.",
    buckets=_LEAD_BUCKETS,
)
HANDOFFS = Counter(
    "leadloop_handoffs",
    "Lead hand-offs to Bitrix24 by outcome: handed_off, replayed (done before), "
    "deferred (parked for the retrying job), given_up (the job's tries ran out).",
    ["outcome"],
)

# -- reminders ------------------------------------------------------------------------

REMINDERS = Counter(
    "leadloop_reminders",
    "Reminder sends by kind (day_before, 2h…) and outcome: sent, uncertain, "
    "unreachable, rejected, no_sender, deferred.",
    ["kind", "outcome"],
)
REMINDER_ANSWERS = Counter(
    "leadloop_reminder_answers",
    "Clients' answers to reminders: confirm, cancel, or stale (a visit that "
    "changed since).",
    ["answer"],
)


def method_group(method: str) -> str:
    """A Bitrix24 method's label: its first two name parts (`crm.deal.add` →
    `crm.deal`), so that the label set stays small."""
    return ".".join(method.lower().split(".")[:2])


def error_label(error: BaseException) -> str:
    """An error's class as a label: `RateLimited` → `rate_limited`."""
    return _CAMEL_HUMP.sub("_", type(error).__name__).lower()


_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True)
class WebhookTally:
    """One channel's webhook counters, resolved once so that a request only adds."""

    accepted: Counter
    duplicate: Counter
    unsupported: Counter
    rejected: Counter
    unavailable: Counter

    @classmethod
    def of(cls, channel: str) -> WebhookTally:
        return cls(*(WEBHOOKS.labels(channel, outcome) for outcome in WEBHOOK_OUTCOMES))


# -- exposition -----------------------------------------------------------------------


class MetricsDisabled(ServiceError):
    status_code = 503
    code = "metrics_disabled"


def metrics_router(settings: Settings) -> APIRouter:
    """`GET /metrics` in Prometheus' text format.

    With `LEADLOOP_ADMIN_TOKEN` set it asks for `Authorization: Bearer <token>`, as
    Prometheus' `authorization` scrape setting sends it. Without a token it is open
    in development and off (503) in production: counts of leads and errors are the
    business's own figures.
    """
    router = APIRouter(tags=["operations"])

    @router.get(
        METRICS_PATH,
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}},
            401: {"description": "missing or wrong bearer token"},
            503: {"description": "production without LEADLOOP_ADMIN_TOKEN"},
        },
    )
    async def metrics(request: Request) -> Response:
        _check_scraper(settings, request)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def _check_scraper(settings: Settings, request: Request) -> None:
    token = settings.admin_token
    if token is None or not token.get_secret_value():
        if settings.is_production:
            raise MetricsDisabled("set LEADLOOP_ADMIN_TOKEN to scrape /metrics")
        return
    if not bearer_matches(request.headers, token):
        log.warning("api.metrics_unauthorized")
        raise HTTPException(
            401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
        )


@dataclass
class MetricsServer:
    """The worker's metrics endpoint, a thread of its own; `close` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_worker_metrics(settings: Settings) -> MetricsServer | None:
    """Serve this process's metrics on `LEADLOOP_WORKER_METRICS_PORT`, if set.

    prometheus_client's own server: plain HTTP, no token, so it listens on
    `LEADLOOP_WORKER_METRICS_HOST` (default 127.0.0.1; a pod's IP in Kubernetes,
    reachable only inside the cluster). Port 0 takes a free port (tests).
    """
    port = settings.worker_metrics_port
    if port is None:
        return None
    server, thread = start_http_server(port, addr=settings.worker_metrics_host)
    served = MetricsServer(server, thread)
    log.info("worker.metrics_serving", port=served.port)
    return served
