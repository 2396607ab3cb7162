"""Pull benchmark: 50,000 deals and 200,000 activities under the portal's real limit.

The sandbox runs in its own process with the standard plan's leaky bucket on (burst
50, drained at 2 requests a second: reference §6.1), so it refuses whatever a real
portal's front end would. Three clients pull the same rows, each starting with an
empty bucket and pulling deals and activities at the same time, as a KPI job does:

- the gateway: `Puller` on `Bitrix24Client` with the shared Redis rate limiter;
- fast-bitrix24's `get_all` set up as reference/fast-bitrix24.md §5 advises;
- fast-bitrix24's `get_all` inside its `slow(1)`: one request at a time; and the
  same once more with the entities pulled one after the other.

For each: HTTP requests (the sandbox's own count) against the minimum of rows / 2,500,
requests refused with 503, wall time against the least time the bucket allows for
that many requests, peak memory traced while pulling (tracemalloc; the sandbox is
another process), and rows missing, repeated or out of order. The figures are
written up in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import random
import socket
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import structlog
import uvicorn
from redis.asyncio import Redis

from bench.sandbox_scale import make_deals
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.fast_adapter import FastBitrixPuller, fast_bitrix_puller
from connectors.bitrix24.pull import Puller
from connectors.bitrix24.ratelimit import STANDARD, PortalRateLimiter, RatePlan
from sandbox.server import SandboxOptions, create_app

DEALS = 50_000
ACTIVITIES = 200_000
ROWS_PER_REQUEST = 2_500  # 50 pages of 50 rows in one batch
ZONE = ZoneInfo("Europe/Moscow")
DEAL_SELECT = [
    "ID",
    "TITLE",
    "STAGE_ID",
    "CATEGORY_ID",
    "OPPORTUNITY",
    "CURRENCY_ID",
    "ASSIGNED_BY_ID",
    "DATE_CREATE",
    "CLOSEDATE",
    "CLOSED",
]
ACTIVITY_SELECT = [
    "ID",
    "OWNER_ID",
    "OWNER_TYPE_ID",
    "TYPE_ID",
    "DIRECTION",
    "RESPONSIBLE_ID",
    "CREATED",
    "COMPLETED",
]
# A database of its own (the tests use 15), so a bench never meets a local run's keys;
# every bench writes under a prefix of its own and removes it afterwards.
REDIS_URL = os.environ.get("LEADLOOP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def quiet_logs() -> None:
    """Warnings and errors only: one info line per request would bury the figures."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )


# -- the sandbox in its own process ---------------------------------------------------


def _serve(options: SandboxOptions) -> None:
    """The sandbox process: no banner, warnings only."""
    uvicorn.run(
        create_app(options), host=options.host, port=options.port, log_level="warning"
    )


@dataclass
class SandboxProcess:
    """A sandbox served by a child process, and a client for its controls."""

    base_url: str
    http: httpx.Client

    @property
    def webhook(self) -> str:
        return f"{self.base_url}/rest/1/sandbox/"

    def load(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(snapshot, ensure_ascii=False).encode()
        response = self.http.post(
            "/_sandbox/snapshot",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=600,
        )
        response.raise_for_status()
        loaded: dict[str, Any] = response.json()["loaded"]
        return loaded

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get("/_sandbox/stats").json()
        return answer

    def empty_bucket(self, plan: str = "standard") -> None:
        """Setting the plan again starts every source with an empty bucket."""
        self.http.post("/_sandbox/settings", json={"rate_limit": plan})


@contextlib.contextmanager
def sandbox_process(rate_limit: str = "standard") -> Iterator[SandboxProcess]:
    """Start a sandbox in a child process on a free port; stop it afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    options = SandboxOptions(port=port, rate_limit=rate_limit)
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(options,), daemon=True
    )
    process.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            _wait_until_up(http, process)
            yield SandboxProcess(base_url, http)
    finally:
        process.terminate()
        process.join(timeout=10)


def _wait_until_up(
    http: httpx.Client, process: multiprocessing.process.BaseProcess
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise SystemExit("the sandbox process died on start")
        with contextlib.suppress(httpx.TransportError):
            if http.get("/").status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("the sandbox did not start within 60 s")


# -- data -----------------------------------------------------------------------------


def make_activities(count: int, deals: int, seed: int = 11) -> list[dict[str, Any]]:
    """Calls and meetings on the deals, as `crm.activity.list` returns them."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, 9, tzinfo=ZONE)
    rows = []
    for activity_id in range(1, count + 1):
        created = start + timedelta(minutes=activity_id * 2 + rng.randint(0, 1))
        type_id = rng.choice(("2", "2", "2", "1"))  # mostly calls
        rows.append(
            {
                "ID": str(activity_id),
                "OWNER_ID": str(rng.randint(1, deals)),
                "OWNER_TYPE_ID": "2",
                "TYPE_ID": type_id,
                "PROVIDER_ID": "VOXIMPLANT_CALL" if type_id == "2" else "CRM_MEETING",
                "PROVIDER_TYPE_ID": "CALL" if type_id == "2" else "MEETING",
                "SUBJECT": f"Activity {activity_id}",
                "CREATED": created.isoformat(),
                "LAST_UPDATED": created.isoformat(),
                "START_TIME": created.isoformat(),
                "END_TIME": (created + timedelta(minutes=5)).isoformat(),
                "DEADLINE": created.isoformat(),
                "COMPLETED": "Y",
                "STATUS": "2",
                "RESPONSIBLE_ID": str(rng.randint(1, 5)),
                "PRIORITY": "2",
                "DIRECTION": rng.choice(("1", "2")),
                "DESCRIPTION": "",
                "DESCRIPTION_TYPE": "1",
                "AUTHOR_ID": "1",
                "EDITOR_ID": "1",
            }
        )
    return rows


# -- measuring ------------------------------------------------------------------------


class Tally:
    """Counts the rows of one pull against the ids 1..expected, in constant memory."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self._seen = bytearray(expected + 1)
        self.rows = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.unexpected = 0
        self._last = 0

    def add(self, row_id: int) -> None:
        self.rows += 1
        if row_id <= self._last:
            self.out_of_order += 1
        self._last = row_id
        if not 1 <= row_id <= self.expected:
            self.unexpected += 1
        elif self._seen[row_id]:
            self.duplicates += 1
        else:
            self._seen[row_id] = 1

    @property
    def missing(self) -> int:
        return self.expected - (self.rows - self.duplicates - self.unexpected)


@dataclass
class EntityRun:
    """One entity's pull within a client's run."""

    entity: str
    tally: Tally
    pages: int = 0  # list commands the portal ran for it, direct or batched
    seconds: float = 0.0
    error: str = ""

    @property
    def list_method(self) -> str:
        return f"crm.{self.entity}.list"


@dataclass
class ClientRun:
    """A client's pull of every entity: what the portal saw, and what came back."""

    client: str
    entities: list[EntityRun]
    requests: int = 0  # HTTP requests the sandbox received
    rejected: int = 0  # of them, refused with 503 QUERY_LIMIT_EXCEEDED
    seconds: float = 0.0
    peak_bytes: int = 0
    orphaned_tasks: int = 0

    @property
    def complete(self) -> bool:
        return all(
            not run.error and run.tally.missing == 0 and run.tally.duplicates == 0
            for run in self.entities
        )


def bucket_bound_s(requests: int, plan: RatePlan = STANDARD) -> float:
    """The least time a bucket that starts empty needs to admit `requests`.

    The portal admits a request while its level stays within the burst, and the
    level drains at `per_second`: request k > burst can arrive at (k - burst) / rate.
    """
    return max(0.0, (requests - plan.burst) / plan.per_second)


def minimum_requests(rows: int) -> int:
    return -(-rows // ROWS_PER_REQUEST)


Pull = Callable[[str, list[str]], AsyncIterator[dict[str, Any]]]

Entities = tuple[tuple[str, int, list[str]], ...]
ENTITIES: Entities = (
    ("deal", DEALS, DEAL_SELECT),
    ("activity", ACTIVITIES, ACTIVITY_SELECT),
)


async def measure(
    name: str,
    sandbox: SandboxProcess,
    pull: Pull,
    *,
    at_once: bool = True,
    entities: Entities = ENTITIES,
) -> ClientRun:
    """Pull every entity, at once as a KPI job does or one after the other; trace
    the peak memory."""
    runs = [EntityRun(entity, Tally(rows)) for entity, rows, _ in entities]
    pulls = [
        _pull_entity(pull, run, select)
        for run, (_, _, select) in zip(runs, entities, strict=True)
    ]
    before = sandbox.stats()
    tracemalloc.start()
    began = time.perf_counter()
    if at_once:
        await asyncio.gather(*pulls)
    else:
        for entity_pull in pulls:
            await entity_pull
    seconds = time.perf_counter() - began
    peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    after = sandbox.stats()
    for run in runs:
        method = run.list_method
        run.pages = after["by_method"].get(method, 0) - before["by_method"].get(
            method, 0
        )
    return ClientRun(
        name,
        runs,
        requests=after["requests"] - before["requests"],
        rejected=after["rejected_rate_limit"] - before["rejected_rate_limit"],
        seconds=seconds,
        peak_bytes=peak_bytes,
    )


async def _pull_entity(pull: Pull, run: EntityRun, select: list[str]) -> None:
    began = time.perf_counter()
    try:
        async for row in pull(run.entity, select):
            run.tally.add(int(row["ID"]))
    except Exception as error:  # recorded in the table: the client failed the pull
        run.error = f"{type(error).__name__}: {error}"[:120]
    run.seconds = time.perf_counter() - began


class OrphanCounter:
    """Counts tasks that failed with nobody awaiting them (fast-bitrix24 leaves its
    batch tasks running when get_all raises), instead of a traceback for each."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(self._handle)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "never retrieved" in str(context.get("message", "")):
            self.count += 1
            return
        loop.default_exception_handler(context)

    async def settle(self) -> int:
        """Let abandoned tasks run into their closed session, collect them, and
        answer how many have failed unobserved so far."""
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        if pending:
            await asyncio.wait(pending, timeout=60)
        del pending
        gc.collect()
        return self.count


# -- the clients ----------------------------------------------------------------------


async def run_gateway(sandbox: SandboxProcess) -> ClientRun:
    redis = Redis.from_url(REDIS_URL)
    prefix = f"bench:{uuid.uuid4().hex}"
    limiter = PortalRateLimiter(redis, "sandbox", STANDARD, key_prefix=prefix)
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
            client = Bitrix24Client(
                http,
                WebhookCredentials(sandbox.webhook),
                portal_zone=ZONE,
                limiter=limiter,
            )
            puller = Puller(client)
            return await measure(
                "gateway",
                sandbox,
                lambda entity, select: puller.pull(entity, None, select),
            )
    finally:
        await redis.delete(limiter.key)
        await redis.aclose()


async def run_fast_bitrix24(
    sandbox: SandboxProcess, *, one_at_a_time: bool, at_once: bool = True
) -> ClientRun:
    name = "fast-bitrix24" + (" slow(1)" if one_at_a_time else "")
    name += "" if at_once else ", in turn"
    async with fast_bitrix_puller(sandbox.webhook) as puller:
        with _slowed(puller, one_at_a_time):
            run = await measure(
                name,
                sandbox,
                lambda entity, select: puller.pull(entity, None, select),
                at_once=at_once,
            )
    return run


@contextlib.contextmanager
def _slowed(puller: FastBitrixPuller, one_at_a_time: bool) -> Iterator[None]:
    if not one_at_a_time:
        yield
        return
    with puller.bitrix.slow(1):
        yield


# -- report ---------------------------------------------------------------------------


def report(runs: list[ClientRun], minimum: int) -> None:
    print(
        f"\nminimum requests: {minimum} (rows / {ROWS_PER_REQUEST:,}); bucket: burst "
        f"{STANDARD.burst}, {STANDARD.per_second:g} a second; entities pulled at once\n"
    )
    print(
        f"{'client':30} {'entity':9} {'rows':>8} {'missing':>8} {'dup':>5} "
        f"{'order':>6} {'pages':>6} {'seconds':>8}"
    )
    for run in runs:
        for entity in run.entities:
            tally = entity.tally
            print(
                f"{run.client:30} {entity.entity:9} {tally.rows:8,} "
                f"{tally.missing:8,} {tally.duplicates:5,} {tally.out_of_order:6,} "
                f"{entity.pages:6,} {entity.seconds:8.1f}"
            )
            if entity.error:
                print(f"{'':30} failed: {entity.error}")
    print(
        f"\n{'client':30} {'requests':>9} {'x min':>6} {'503s':>5} {'seconds':>8} "
        f"{'bound s':>8} {'x bound':>8} {'peak MiB':>9} {'orphans':>8}  goals"
    )
    for run in runs:
        bound = bucket_bound_s(run.requests)
        ratio = run.seconds / bound if bound else float("inf")
        print(
            f"{run.client:30} {run.requests:9} {run.requests / minimum:6.3f} "
            f"{run.rejected:5} {run.seconds:8.1f} {bound:8.1f} {ratio:8.2f} "
            f"{run.peak_bytes / 2**20:9.1f} {run.orphaned_tasks:8}  "
            f"{_goals(run, minimum, ratio)}"
        )


def _goals(run: ClientRun, minimum: int, time_ratio: float) -> str:
    if not run.complete:
        return "complete:MISSED (requests and time of a partial pull prove nothing)"
    checks = {
        "requests<=1.05x": run.requests <= 1.05 * minimum,
        "complete": True,
        "time<=1.2x": time_ratio <= 1.2,
    }
    return " ".join(
        f"{name}:{'ok' if good else 'MISSED'}" for name, good in checks.items()
    )


async def _in_turn(
    sandbox: SandboxProcess, clients: list[Callable[[], Awaitable[ClientRun]]]
) -> list[ClientRun]:
    orphans = OrphanCounter()
    orphans.install()
    runs = []
    for client in clients:
        sandbox.empty_bucket()
        before = await orphans.settle()
        run = await client()
        run.orphaned_tasks = await orphans.settle() - before
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    quiet_logs()
    with sandbox_process("standard") as sandbox:
        began = time.perf_counter()
        loaded = sandbox.load(
            {
                "deals": make_deals(DEALS),
                "activities": make_activities(ACTIVITIES, DEALS),
            }
        )
        print(
            f"loaded {loaded.get('deals', 0):,} deals and "
            f"{loaded.get('activities', 0):,} activities in "
            f"{time.perf_counter() - began:.1f} s"
        )
        runs = asyncio.run(
            _in_turn(
                sandbox,
                [
                    lambda: run_gateway(sandbox),
                    lambda: run_fast_bitrix24(sandbox, one_at_a_time=False),
                    lambda: run_fast_bitrix24(sandbox, one_at_a_time=True),
                    lambda: run_fast_bitrix24(
                        sandbox, one_at_a_time=True, at_once=False
                    ),
                ],
            )
        )
    report(runs, minimum_requests(DEALS) + minimum_requests(ACTIVITIES))


if __name__ == "__main__":
    main()
