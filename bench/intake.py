"""Intake benchmark: webhook acknowledgements, and the time from message to deal.

1. Acknowledgements. The API (`POST /webhooks/telegram`: secret check, parse, the
   one-step Redis accept with its arq job) and a baseline, a minimal FastAPI
   endpoint that writes one Redis key, each in its own uvicorn process, take the
   same Telegram updates from the same client over real sockets, in alternating
   rounds. Measured: acknowledgements per second, p99 latency, and each server
   process's CPU time per acknowledgement (from /proc, steadier than the rate on
   a shared machine). Goal: the API keeps at least 0.8 of the baseline's rate.
   `--api-log-level INFO` runs the API with its production log line per event
   (JSON, masked, to /dev/null); the default, WARNING, drops it.
2. Time to deal. The sandbox runs in its own process with the standard plan's
   leaky bucket (2 requests/s, burst 50); the API and a worker run as in `leadloop
   run`, with the rule qualifier. Clients finish their conversations all at once,
   then one a second, alternating WhatsApp (all in one message) and Telegram (the
   shared contact after three answers); measured is the time from sending the
   last needed message to the deal appearing in the portal (read from the
   sandbox's own state, which is not rate-limited). Goal: p95 under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from fastapi import FastAPI, Request
from pydantic import SecretStr
from redis.asyncio import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import create_app
from app.config import BusinessRules, IntakeRules
from app.local import connect_sandbox_messengers
from app.logging import configure_logging
from app.settings import LogLevel, Settings
from app.worker import build_worker
from bench.gateway_pull import REDIS_URL, SandboxProcess, quiet_logs, sandbox_process
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import (
    SANDBOX_APP_SECRET,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)
from webhooks.inbound import Channel
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import Inbox

SECRET = "bench-telegram-secret"  # noqa: S105  (the benchmark's own local bot)
GOAL_ACK_RATIO = 0.8
GOAL_P95_S = 2.0
ROUNDS = 5
WARM_UP = 200
STAFF = [
    {"ID": str(uid), "ACTIVE": True, "NAME": name, "USER_TYPE": "employee"}
    for uid, name in ((1, "Admin"), (17, "Анна"), (23, "Олег"))
]


# -- 1. acknowledgements ---------------------------------------------------------------


def _serve_api(port: int, prefix: str, queue: str, log_level: LogLevel) -> None:
    """Child process: the leadloop API, its inbox on the benchmark's keys."""
    settings = Settings(
        _env_file=None,
        env="production",
        log_level=log_level,
        redis_url=REDIS_URL,
        telegram_webhook_secret=SecretStr(SECRET),
    )
    if log_level == "WARNING":
        quiet_logs()
    else:
        # As `leadloop api` logs in production, into a sink that costs no I/O.
        configure_logging(settings, stream=open(os.devnull, "w"))  # noqa: SIM115
    app = on_bench_keys(create_app(settings), prefix, queue)
    _serve(app, port)


def on_bench_keys(app: FastAPI, prefix: str, queue: str) -> ASGIApp:
    """The app with its inbox on the benchmark's keys and queue.

    The inbox is put where `get_inbox` keeps it, on the app's state, rather than
    through `dependency_overrides`: with any override set, FastAPI 0.115-0.165
    rebuilds every sub-dependency of every path operation on every request.
    """

    async def keyed(scope: Scope, receive: Receive, send: Send) -> None:
        state = app.state
        if scope["type"] == "http" and getattr(state, "webhook_inbox", None) is None:
            state.clients.redis.default_queue_name = queue
            state.webhook_inbox = Inbox(state.clients.redis, keys=InboxKeys(prefix))
        await app(scope, receive, send)

    return keyed


def _serve_baseline(port: int, prefix: str) -> None:
    """Child process: the least a webhook can do, one Redis write per request."""
    app = FastAPI()
    redis = Redis.from_url(REDIS_URL)

    @app.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        await redis.set(
            f"{prefix}:{uuid.uuid4().hex}", await request.body(), px=600_000
        )
        return {"ok": True}

    _serve(app, port)


def _serve(app: ASGIApp, port: int) -> None:
    """Both servers alike: uvloop and httptools named, not left to "auto"."""
    uvicorn.run(
        app,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


@dataclass
class Round:
    name: str
    latencies: list[float]
    elapsed_s: float
    failures: int
    # CPU time (user and system) the server process spent on the round.
    server_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed_s

    @property
    def cpu_us(self) -> float:
        return self.server_cpu_s / len(self.latencies) * 1e6

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


def _update(number: int) -> bytes:
    chat = 100_000_000 + number % 1000
    update = {
        "update_id": 900_000_000 + number,
        "message": {
            "message_id": number,
            "from": {"id": chat, "is_bot": False, "first_name": "Анна"},
            "chat": {"id": chat, "type": "private"},
            "date": 1736751600,
            "text": "Хочу записаться на маникюр завтра после 18",
        },
    }
    return json.dumps(update, ensure_ascii=False).encode()


async def _hammer(name: str, url: str, bodies: list[bytes], concurrency: int) -> Round:
    """`concurrency` keep-alive connections sending the bodies one after another.

    A bare HTTP/1.1 client on asyncio streams: httpx tops out near 300 requests a
    second on this machine, which would measure the client, not the servers.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Telegram-Bot-Api-Secret-Token: {SECRET}\r\n"
    ).encode()
    latencies: list[float] = []
    failures = 0
    pending = iter(bodies)

    async def one_connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for body in pending:
                request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                failures += status != 200
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return Round(name, latencies, time.perf_counter() - started, failures)


async def _read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure_acks(
    requests: int, concurrency: int, *, api_log_level: LogLevel = "WARNING"
) -> dict[str, list[Round]]:
    """Alternating rounds of the baseline and the API, each after a warm-up."""
    prefix = f"bench:intake:{uuid.uuid4().hex}"
    queue = f"{prefix}:queue"
    ports = {"baseline": _free_port(), "leadloop": _free_port()}
    context = multiprocessing.get_context("spawn")
    processes = {
        "baseline": context.Process(
            target=_serve_baseline, args=(ports["baseline"], prefix), daemon=True
        ),
        "leadloop": context.Process(
            target=_serve_api,
            args=(ports["leadloop"], prefix, queue, api_log_level),
            daemon=True,
        ),
    }
    for process in processes.values():
        process.start()
    urls = {
        "baseline": f"http://127.0.0.1:{ports['baseline']}/hook",
        "leadloop": f"http://127.0.0.1:{ports['leadloop']}/webhooks/telegram",
    }
    rounds: dict[str, list[Round]] = {"baseline": [], "leadloop": []}
    try:
        for url in urls.values():
            await _wait_for(url)
        offset = 0
        for _ in range(ROUNDS):
            for name, url in urls.items():
                bodies = [_update(offset + n) for n in range(WARM_UP + requests)]
                offset += len(bodies)
                await _hammer(name, url, bodies[:WARM_UP], concurrency)
                pid = processes[name].pid
                assert pid is not None
                cpu_before = _cpu_seconds(pid)
                measured = await _hammer(name, url, bodies[WARM_UP:], concurrency)
                measured.server_cpu_s = _cpu_seconds(pid) - cpu_before
                rounds[name].append(measured)
    finally:
        for process in processes.values():
            process.terminate()
            process.join(timeout=10)
        await _forget(prefix)
    return rounds


async def _wait_for(url: str) -> None:
    async with httpx.AsyncClient(timeout=1) as http:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                await http.get(url)
                return
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


# -- 2. time to deal -------------------------------------------------------------------


@dataclass
class Lead:
    channel: Channel
    chat: str
    sent_at: float = 0.0
    deal_at: float | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.deal_at is None else self.deal_at - self.sent_at


@dataclass
class DealRun:
    leads: list[Lead]
    requests: int
    refused: int
    timings: list[float] = field(default_factory=list)


def _rules() -> BusinessRules:
    # Always open: the figures must not depend on the hour the benchmark runs.
    calendar = {"working_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
    calendar |= {"hours": ["00:00", "23:59"]}
    return BusinessRules.model_validate(
        {
            "calendar": calendar,
            "intake": IntakeRules(managers=["17", "23"]).model_dump(),
        }
    )


def _settings(sandbox: str) -> Settings:
    return Settings(
        _env_file=None,
        env="production",
        log_level="WARNING",
        redis_url=REDIS_URL,
        bitrix24_webhook_url=SecretStr(f"{sandbox}/rest/1/sandbox/"),
        telegram_bot_token=SecretStr(SANDBOX_BOT_TOKEN),
        telegram_api_base=sandbox,
        telegram_webhook_secret=SecretStr(SECRET),
        whatsapp_access_token=SecretStr(SANDBOX_WHATSAPP_ACCESS_TOKEN),
        whatsapp_phone_number_id=SANDBOX_PHONE_NUMBER_ID,
        whatsapp_app_secret=SecretStr(SANDBOX_APP_SECRET),
        whatsapp_verify_token=SecretStr("bench-verify"),
        whatsapp_api_base=f"{sandbox}/v22.0",
    )


@contextlib.asynccontextmanager
async def _service(sandbox: str) -> AsyncIterator[str]:
    """API and worker in this process, as `leadloop run` holds them; keys cleaned."""
    root = f"bench:intake:{uuid.uuid4().hex}"
    queue, keys = f"{root}:queue", InboxKeys(f"{root}:inbound")
    settings, rules = _settings(sandbox), _rules()
    app = on_bench_keys(create_app(settings), keys.prefix, queue)
    port = _free_port()
    api = uvicorn.Server(
        uvicorn.Config(app, port=port, log_config=None, access_log=False)
    )
    api_task = asyncio.create_task(api.serve())
    worker = build_worker(
        settings,
        rules,
        queue_name=queue,
        handle_signals=False,
        poll_delay=0.005,
        cron_jobs=(),
        ctx={"settings": settings, "rules": rules, "key_prefix": root},
    )
    worker_task = asyncio.create_task(worker.async_run())
    try:
        while not api.started:
            if api_task.done():
                await api_task
            await asyncio.sleep(0.01)
        api_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=10) as http:
            await connect_sandbox_messengers(settings, sandbox, api_url, http)
        yield root
    finally:
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        api.should_exit = True
        await api_task
        await _forget(root)


async def measure_time_to_deal(
    sandbox: SandboxProcess, count: int, spacing_s: float
) -> DealRun:
    """`count` clients send their last needed message `spacing_s` apart."""
    await _rested_bucket(urlsplit(sandbox.base_url).netloc)
    sandbox.http.post("/_sandbox/reset").raise_for_status()
    snapshot = {"users": STAFF, "settings": {"crm_mode": "simple"}}
    sandbox.http.post("/_sandbox/snapshot", json=snapshot).raise_for_status()
    leads = [
        Lead("whatsapp", f"7999100{n:04d}")
        if n % 2 == 0
        else Lead("telegram", str(100_200_000 + n))
        for n in range(count)
    ]
    async with (
        _service(sandbox.base_url),
        httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as http,
    ):
        stats = (await http.get("/_sandbox/stats")).json()
        for lead in leads:
            if lead.channel == "telegram":
                await _telegram_until_the_phone(http, lead)
        await asyncio.sleep(1.0)  # the chats drain before the clock starts
        watcher = asyncio.create_task(_watch_deals(http, leads))
        if spacing_s > 0:
            for lead in leads:
                await _last_message(http, lead)
                await asyncio.sleep(spacing_s)
        else:
            await asyncio.gather(*(_last_message(http, lead) for lead in leads))
        await asyncio.wait_for(watcher, timeout=180)
        after = (await http.get("/_sandbox/stats")).json()
    return DealRun(
        leads,
        requests=_requests(after) - _requests(stats),
        refused=after.get("rejected_rate_limit", 0)
        - stats.get("rejected_rate_limit", 0),
        timings=[lead.seconds for lead in leads if lead.seconds is not None],
    )


async def _rested_bucket(portal: str) -> None:
    """Wait until the shared limiter's bucket of an earlier run has drained."""
    redis = Redis.from_url(REDIS_URL)
    try:
        # The key lives exactly until the bucket is empty (ratelimit.py).
        left_ms = await redis.pttl(f"leadloop:bitrix24:{portal}:bucket")
        await asyncio.sleep(max(left_ms, 0) / 1000)
    finally:
        await redis.aclose()


async def _telegram_until_the_phone(http: httpx.AsyncClient, lead: Lead) -> None:
    for text in ("Хочу на маникюр", "Анна", "завтра после 18"):
        body = {"chat_id": int(lead.chat), "first_name": "Анна", "text": text}
        (await http.post("/_sandbox/telegram/deliver", json=body)).raise_for_status()


async def _last_message(http: httpx.AsyncClient, lead: Lead) -> None:
    lead.sent_at = time.perf_counter()
    if lead.channel == "telegram":
        body: dict[str, Any] = {
            "chat_id": int(lead.chat),
            "contact_phone": _phone(lead),
        }
        answer = await http.post("/_sandbox/telegram/deliver", json=body)
    else:
        text = (
            "Здравствуйте! Меня зовут Ольга, хочу записаться на стрижку завтра "
            f"в 15:00, мой телефон {_phone(lead)}"
        )
        body = {"from": lead.chat, "name": "Ольга", "text": text}
        answer = await http.post("/_sandbox/whatsapp/deliver", json=body)
    answer.raise_for_status()


async def _watch_deals(http: httpx.AsyncClient, leads: list[Lead]) -> None:
    """Note when each lead's deal first shows in the portal's own state."""
    by_key = {chat_key(lead.channel, lead.chat): lead for lead in leads}
    while any(lead.deal_at is None for lead in leads):
        deals = (await http.get("/_sandbox/snapshot")).json().get("deals", [])
        now = time.perf_counter()
        for deal in deals:
            parts = str(deal.get("ORIGIN_ID") or "").split(":")
            lead = by_key.get(parts[1]) if len(parts) > 2 else None
            if lead is not None and lead.deal_at is None and lead.sent_at:
                lead.deal_at = now
        await asyncio.sleep(0.02)


def _phone(lead: Lead) -> str:
    digits = lead.chat if lead.channel == "whatsapp" else f"7999200{lead.chat[-4:]}"
    return f"+{digits}"


def _requests(stats: dict[str, Any]) -> int:
    return int(stats.get("requests", 0))


# -- helpers and report ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _forget(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        for pattern in (f"{prefix}:*", f"arq:*{prefix}:*"):
            doomed = [key async for key in redis.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(doomed), 1000):
                await redis.delete(*doomed[start : start + 1000])
    finally:
        await redis.aclose()


def report_acks(rounds: dict[str, list[Round]]) -> float:
    rates = {
        name: statistics.median(r.rate for r in runs) for name, runs in rounds.items()
    }
    cpu = {
        name: statistics.median(r.cpu_us for r in runs) for name, runs in rounds.items()
    }
    for name, runs in rounds.items():
        p99 = statistics.median(r.p99_ms for r in runs)
        failures = sum(r.failures for r in runs)
        print(
            f"  {name:9} {rates[name]:7.0f} acks/s  p99 {p99:6.1f} ms  "
            f"server CPU {cpu[name]:4.0f} µs/ack  "
            f"(medians of {len(runs)} rounds; non-200: {failures})"
        )
    ratio = rates["leadloop"] / rates["baseline"]
    verdict = "met" if ratio >= GOAL_ACK_RATIO else "MISSED"
    print(
        f"  leadloop / baseline = {ratio:.2f} (goal ≥ {GOAL_ACK_RATIO}: {verdict}); "
        f"CPU per ack, baseline / leadloop = {cpu['baseline'] / cpu['leadloop']:.2f}"
    )
    return ratio


def report_deals(run: DealRun) -> None:
    timings = sorted(run.timings)
    missing = len(run.leads) - len(timings)
    p95 = (
        statistics.quantiles(timings, n=20, method="inclusive")[18]
        if len(timings) > 1
        else timings[0]
    )
    verdict = "met" if p95 < GOAL_P95_S and not missing else "MISSED"
    print(
        f"  {len(timings)} of {len(run.leads)} leads reached the portal; "
        f"p50 {statistics.median(timings):.2f} s, p95 {p95:.2f} s, "
        f"max {timings[-1]:.2f} s (goal p95 < {GOAL_P95_S} s: {verdict})"
    )
    per_lead = run.requests / len(run.leads)
    print(
        f"  portal requests {run.requests} ({per_lead:.1f} a lead); "
        f"refused by the portal's rate limit: {run.refused}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--leads", type=int, default=24)
    parser.add_argument(
        "--api-log-level",
        choices=("WARNING", "INFO"),
        default="WARNING",
        help="INFO: the API writes its production log line per event (to /dev/null)",
    )
    parser.add_argument("--part", choices=("all", "acks", "deals"), default="all")
    args = parser.parse_args(argv)
    quiet_logs()

    if args.part in ("all", "acks"):
        print(
            "webhook acknowledgements (Telegram updates, real sockets; API log "
            f"level {args.api_log_level}):",
            flush=True,
        )
        rounds = asyncio.run(
            measure_acks(
                args.requests, args.concurrency, api_log_level=args.api_log_level
            )
        )
        report_acks(rounds)
    if args.part == "acks":
        return
    with sandbox_process("standard") as sandbox:
        # At once, then one every two seconds (within the portal's 2 requests a
        # second), each on a rested bucket.
        for spacing_s, how in ((0.0, "all at once"), (2.0, "one every 2 s")):
            print(
                f"time from the last needed message to the deal, {args.leads} leads "
                f"{how} (standard rate limit):",
                flush=True,
            )
            run = asyncio.run(measure_time_to_deal(sandbox, args.leads, spacing_s))
            report_deals(run)


if __name__ == "__main__":
    main()
