"""New-leads benchmark: 200 leads arriving at once, each opened with `open_inquiry`.

Every lead finds or creates its contact by phone and opens a deal, a call-back task
and a timeline comment, each under an idempotency key. The sandbox runs in its own
process with the standard plan's leaky bucket on; the gateway uses one `Batcher` and
the shared Redis rate limiter, as one worker process does. Measured: HTTP requests
per lead (goal at most 1.2), the time until every lead is in the CRM, and that each
record exists exactly once. Baseline in the same run: one lead opened alone.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from redis.asyncio import Redis

from bench.gateway_pull import (
    REDIS_URL,
    ZONE,
    SandboxProcess,
    quiet_logs,
    sandbox_process,
)
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.inquiry import (
    NewInquiry,
    OpenedInquiry,
    TaskSpec,
    open_inquiry,
)
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.ratelimit import STANDARD, PortalRateLimiter
from connectors.bitrix24.writes import Writer

LEADS = 200
GOAL_REQUESTS_PER_LEAD = 1.2


def inquiry(number: int, run: str) -> NewInquiry:
    """Lead `number` of this run: a new person, a deal, a task and a comment."""
    deadline = datetime.now(ZONE).replace(microsecond=0) + timedelta(hours=1)
    return NewInquiry(
        key=f"bench.{run}.{number}",
        kind="deal",
        phone=f"+7999{number:07d}",
        contact={"NAME": f"Клиент {number}"},
        fields={"TITLE": f"Заявка {number}", "OPPORTUNITY": "2500.00"},
        task=TaskSpec(title="Перезвонить клиенту", responsible_id=1, deadline=deadline),
        comment="Квалификация: горячий, хочет записаться на этой неделе",
    )


@dataclass
class Opening:
    """One measured run: how many leads, requests, seconds, and what was made."""

    leads: int
    requests: int
    rejected: int
    seconds: float
    opened: list[OpenedInquiry]

    @property
    def per_lead(self) -> float:
        return self.requests / self.leads


@asynccontextmanager
async def gateway(sandbox: SandboxProcess, redis: Redis, prefix: str) -> Any:
    """A writer with one shared batcher, and the per-person locks, as a worker has."""
    limiter = PortalRateLimiter(redis, "sandbox", STANDARD, key_prefix=prefix)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
        client = Bitrix24Client(
            http, WebhookCredentials(sandbox.webhook), portal_zone=ZONE, limiter=limiter
        )
        async with Batcher(client) as batcher:
            locks = ContactLocks(redis, prefix=f"{prefix}:lock")
            yield Writer(client, batcher), locks
    await redis.delete(limiter.key)


async def open_all(
    sandbox: SandboxProcess, inquiries: list[NewInquiry], redis: Redis
) -> Opening:
    """Open every inquiry at once through one gateway; count what crossed the wire."""
    prefix = f"bench:{uuid.uuid4().hex}"
    sandbox.empty_bucket()
    before = sandbox.stats()
    began = time.perf_counter()
    async with gateway(sandbox, redis, prefix) as (writer, locks):
        opened = await asyncio.gather(
            *(open_inquiry(writer, locks, inquiry) for inquiry in inquiries)
        )
    seconds = time.perf_counter() - began
    after = sandbox.stats()
    return Opening(
        leads=len(inquiries),
        requests=after["requests"] - before["requests"],
        rejected=after["rejected_rate_limit"] - before["rejected_rate_limit"],
        seconds=seconds,
        opened=list(opened),
    )


def records_per_key(sandbox: SandboxProcess, run: str) -> Counter[str]:
    """How many records of each kind carry this run's keys, read from a snapshot."""
    snapshot: dict[str, Any] = sandbox.http.get("/_sandbox/snapshot").json()
    marker = f"bench.{run}."
    counts: Counter[str] = Counter()
    for kind, rows, field in _keyed_sections(snapshot):
        for row in rows:
            if marker in str(row.get(field) or ""):
                counts[kind] += 1
    deal_ids = {
        str(row["ID"])
        for row in snapshot.get("deals", [])
        if marker in str(row.get("ORIGIN_ID") or "")
    }
    counts["comment"] = sum(
        1
        for row in snapshot.get("comments", [])
        if str(row.get("ENTITY_ID")) in deal_ids
    )
    return counts


def _keyed_sections(
    snapshot: dict[str, Any],
) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
    yield "contact", snapshot.get("contacts", []), "ORIGIN_ID"
    yield "deal", snapshot.get("deals", []), "ORIGIN_ID"
    tasks = snapshot.get("tasks", [])
    field = "XML_ID" if tasks and "XML_ID" in tasks[0] else "xmlId"
    yield "task", tasks, field


def report(alone: Opening, crowd: Opening, made: Counter[str]) -> None:
    print(
        f"\n{'run':22} {'leads':>6} {'requests':>9} {'per lead':>9} {'503s':>5} "
        f"{'seconds':>8} {'s per lead':>11}"
    )
    for name, run in (("one lead alone", alone), (f"{LEADS} leads at once", crowd)):
        print(
            f"{name:22} {run.leads:6} {run.requests:9} {run.per_lead:9.3f} "
            f"{run.rejected:5} {run.seconds:8.2f} {run.seconds / run.leads:11.4f}"
        )
    print(
        f"\nrequests per lead: {crowd.per_lead / alone.per_lead:.3f} x the lone lead; "
        f"time for {LEADS}: {crowd.seconds / alone.seconds:.1f} x one lead's"
    )
    expected = dict.fromkeys(("contact", "deal", "task", "comment"), LEADS + 1)
    print(f"records in the CRM: {dict(made)} (expected {expected})")
    exact = all(made[kind] == count for kind, count in expected.items())
    per_lead_ok = crowd.per_lead <= GOAL_REQUESTS_PER_LEAD
    print(
        f"goals: requests per lead <= {GOAL_REQUESTS_PER_LEAD}: "
        f"{'ok' if per_lead_ok else 'MISSED'}; every record once: "
        f"{'ok' if exact else 'MISSED'}"
    )


async def run(sandbox: SandboxProcess) -> None:
    run_id = uuid.uuid4().hex[:8]
    redis = Redis.from_url(REDIS_URL)
    try:
        alone = await open_all(sandbox, [inquiry(0, run_id)], redis)
        crowd = await open_all(
            sandbox, [inquiry(n, run_id) for n in range(1, LEADS + 1)], redis
        )
    finally:
        await redis.aclose()
    report(alone, crowd, records_per_key(sandbox, run_id))


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    quiet_logs()
    with sandbox_process("standard") as sandbox:
        asyncio.run(run(sandbox))


if __name__ == "__main__":
    main()
