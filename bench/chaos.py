"""Load and faults: webhook traffic at a fixed rate while parts of the system fail.

Everything runs as it would be deployed, each part its own process: a Redis of the
benchmark's own (a free port, a temporary directory, AOF on with `appendfsync
everysec`), the Bitrix24 and messenger sandbox with the standard plan's leaky bucket
(burst 50, 2 requests a second), `leadloop serve` and two `leadloop worker`s, with
the rules of deploy/leadloop.example.toml. After `leadloop setup` has prepared the
sandbox portal, clients hold whole conversations (bench/chaos_traffic.py) at
`--rate` deliveries a second for `--seconds`, and during the load:

1. the portal answers every request with 503 for `--outage-for` seconds (as long
   as the load unless set);
2. a worker is killed with SIGKILL while it runs jobs, and a fresh one started;
3. Redis is killed with SIGKILL (`--redis-stop shutdown`: SHUTDOWN, which writes
   the AOF out first) and started again on the same directory and port.

A process that exits on its own is started again, as a supervisor would, and
counted. Once the load is over the benchmark waits until the backlog has drained
(no queued job, no inbox, no parked hand-off) and then reads the portal's own state:
every client must be exactly one contact (by phone) with exactly one deal (a lead
in classic mode) and one call-back task. Measured besides: acknowledgements and
their latency, answers other than 2xx and when they came, the resident memory of
the API and the workers every second, the CPU each process used, and the time the
backlog took to drain. `--no-faults` is the baseline.

    python -m bench.chaos --rate 20 --seconds 10    # a short run, about 3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bench.chaos_traffic import (
    Attempt,
    Client,
    Connections,
    Conversations,
    LoadResult,
    Sender,
    plan,
)
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import (
    SANDBOX_APP_SECRET,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/leadloop.example.toml"
LEADLOOP = Path(sys.executable).parent / "leadloop"
# Users of the sandbox portal: the rules' managers and the integration's own user.
STAFF = [
    {"ID": str(uid), "ACTIVE": True, "NAME": name, "USER_TYPE": "employee"}
    for uid, name in ((1, "Admin"), (17, "Анна"), (23, "Олег"), (31, "Ирина"))
]
CONNECTIONS = 64
SAMPLE_EVERY_S = 1.0
FAULTS = frozenset({"outage", "worker", "redis"})


# -- processes ---------------------------------------------------------------------


@dataclass
class Part:
    """One process of the system under test, started (and restarted) by the bench."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    # Exits the bench did not cause, with their codes.
    crashes: list[int] = field(default_factory=list)
    expected_exit: bool = False

    def start(self) -> None:
        with self.log.open("ab") as sink:
            # The argv is the bench's own: leadloop's CLI or redis-server.
            self.process = subprocess.Popen(  # noqa: S603
                self.argv,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.starts += 1
        self.expected_exit = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.expected_exit = True
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.expected_exit = True
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Stack:
    """Redis, the sandbox, the API and the workers, and where each listens."""

    workdir: Path
    redis_port: int
    sandbox_port: int
    api_port: int
    appendfsync: str
    parts: dict[str, Part] = field(default_factory=dict)
    worker_metrics: dict[str, int] = field(default_factory=dict)
    telegram_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The service's settings, as an operator would put them in `.env`."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("LEADLOOP_")
        }
        # Development: production rightly refuses the sandbox's published tokens.
        env |= {
            "LEADLOOP_ENV": "development",
            "LEADLOOP_LOG_LEVEL": "WARNING",
            "LEADLOOP_CONFIG": str(RULES),
            "LEADLOOP_REDIS_URL": self.redis_url,
            "LEADLOOP_BITRIX24_WEBHOOK_URL": f"{self.sandbox}/rest/1/sandbox/",
            "LEADLOOP_TELEGRAM_BOT_TOKEN": SANDBOX_BOT_TOKEN,
            "LEADLOOP_TELEGRAM_API_BASE": self.sandbox,
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET": self.telegram_secret,
            "LEADLOOP_WHATSAPP_ACCESS_TOKEN": SANDBOX_WHATSAPP_ACCESS_TOKEN,
            "LEADLOOP_WHATSAPP_PHONE_NUMBER_ID": SANDBOX_PHONE_NUMBER_ID,
            "LEADLOOP_WHATSAPP_APP_SECRET": SANDBOX_APP_SECRET,
            "LEADLOOP_WHATSAPP_VERIFY_TOKEN": secrets.token_urlsafe(24),
            "LEADLOOP_WHATSAPP_API_BASE": f"{self.sandbox}/v22.0",
            "LEADLOOP_PUBLIC_URL": self.api,
        }
        return env | extra

    def add(self, name: str, argv: list[str], **env: str) -> Part:
        part = Part(name, argv, self.env(**env), self.workdir / f"{name}.log")
        self.parts[name] = part
        return part

    def redis_argv(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--logfile",
            str(self.workdir / "redis-server.log"),
        ]

    def add_worker(self, name: str, max_jobs: int | None) -> Part:
        port = free_port()
        self.worker_metrics[name] = port
        env = {"LEADLOOP_WORKER_METRICS_PORT": str(port)}
        if max_jobs is not None:
            env["LEADLOOP_WORKER_MAX_JOBS"] = str(max_jobs)
        return self.add(name, [str(LEADLOOP), "worker"], **env)

    def stop(self) -> None:
        for name in reversed(list(self.parts)):
            self.parts[name].stop()


async def wait_until(check: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not come up within {timeout_s:.0f} s")


async def redis_answers(url: str) -> bool:
    redis = Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(await redis.ping())
    finally:
        await redis.aclose()


async def http_answers(url: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(url)).status_code == 200


async def start_stack(
    stack: Stack, clients: list[Client], crm_mode: str, max_jobs: int | None
) -> None:
    """Redis and the sandbox; the portal prepared; then the API and two workers."""
    stack.add("redis", stack.redis_argv()).start()
    await wait_until(lambda: redis_answers(stack.redis_url), "Redis")
    stack.add(
        "sandbox",
        [
            str(LEADLOOP),
            "sandbox",
            "--port",
            str(stack.sandbox_port),
            "--rate-limit",
            "standard",
        ],
    ).start()
    await wait_until(lambda: http_answers(f"{stack.sandbox}/"), "the sandbox")
    async with httpx.AsyncClient(base_url=stack.sandbox, timeout=60) as http:
        snapshot = {"users": STAFF, "settings": {"crm_mode": crm_mode}}
        (await http.post("/_sandbox/snapshot", json=snapshot)).raise_for_status()
        chats = [
            {"id": int(client.chat_id), "first_name": "Анна"}
            for client in clients
            if client.channel == "telegram"
        ]
        (await http.post("/_sandbox/telegram/chats", json=chats)).raise_for_status()
    setup = await asyncio.create_subprocess_exec(
        str(LEADLOOP),
        "setup",
        env=stack.env(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said = (await setup.communicate())[0].decode()
    (stack.workdir / "setup.log").write_text(said)
    if setup.returncode != 0:
        raise SystemExit(f"leadloop setup failed:\n{said}")

    stack.add("api", [str(LEADLOOP), "serve", "--port", str(stack.api_port)]).start()
    for name in ("worker-1", "worker-2"):
        stack.add_worker(name, max_jobs).start()
    await wait_until(lambda: http_answers(f"{stack.api}/healthz"), "the API")
    for name, port in stack.worker_metrics.items():
        await wait_until(
            lambda port=port: http_answers(f"http://127.0.0.1:{port}/"), name
        )


# -- watching ----------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_mib: dict[str, float]
    cpu_s: dict[str, float]  # CPU seconds used so far, by part


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Watch:
    """Samples memory and CPU every second and restarts a part that died."""

    stack: Stack
    clock: Any
    samples: list[Sample] = field(default_factory=list)
    # CPU seconds of processes that have exited, by part.
    cpu_before: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float)
    )
    last_cpu: dict[tuple[str, int], float] = field(default_factory=dict)
    restarts: list[tuple[float, str, int]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            self.sample()
            self.supervise()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def sample(self) -> None:
        rss: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name, part in self.stack.parts.items():
            pid = part.pid
            if pid is None:
                continue
            used = cpu_seconds(pid)
            if used is not None:
                self.last_cpu[(name, pid)] = used
            cpu[name] = self.cpu_before[name] + self.last_cpu.get((name, pid), 0.0)
            memory = rss_mib(pid)
            if memory is not None and part.exited() is None:
                rss[name] = memory
        cpu["bench"] = cpu_seconds(os.getpid()) or 0.0
        self.samples.append(Sample(self.clock(), rss, cpu))

    def retire(self, name: str) -> None:
        """Keep the CPU a process used before it is replaced."""
        part = self.stack.parts[name]
        if part.pid is not None:
            self.cpu_before[name] += self.last_cpu.get((name, part.pid), 0.0)

    def supervise(self) -> None:
        for name, part in self.stack.parts.items():
            if name == "redis" or part.expected_exit:
                continue
            code = part.exited()
            if code is None:
                continue
            part.crashes.append(code)
            self.restarts.append((self.clock(), name, code))
            print(f"  [{self.clock():6.1f} s] {name} exited ({code}); started again")
            self.retire(name)
            part.start()


# -- faults ------------------------------------------------------------------------


@dataclass
class FaultLog:
    """When each fault began and ended, in seconds since the load started."""

    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def portal_outage(
    stack: Stack, at: float, seconds: float, clock: Any, log: FaultLog
) -> None:
    """Every Bitrix24 request, `batch` included, answers 503 for `seconds`."""
    await asyncio.sleep(max(at - clock(), 0))
    fault = {
        "method": "*",
        "kind": "error",
        "status": 503,
        "code": "INTERNAL_SERVER_ERROR",
        "description": "Service temporarily unavailable",
        "times": 10**9,
    }
    async with httpx.AsyncClient(base_url=stack.sandbox, timeout=30) as http:
        (await http.post("/_sandbox/faults", json=fault)).raise_for_status()
        began = clock()
        print(f"  [{began:6.1f} s] portal answers 503 to everything")
        await asyncio.sleep(seconds)
        (await http.delete("/_sandbox/faults")).raise_for_status()
    log.windows["portal 503"] = (began, clock())
    print(f"  [{clock():6.1f} s] portal answers again")


async def kill_worker(
    stack: Stack, watch: Watch, at: float, clock: Any, log: FaultLog
) -> None:
    """SIGKILL the first worker while jobs run, then start a fresh one."""
    await asyncio.sleep(max(at - clock(), 0))
    redis = Redis.from_url(stack.redis_url)
    try:
        running = 0
        with contextlib.suppress(Exception):
            running = len([k async for k in redis.scan_iter("arq:in-progress:*")])
    finally:
        await redis.aclose()
    part = stack.parts["worker-1"]
    began = clock()
    part.kill(signal.SIGKILL)
    watch.retire("worker-1")
    part.start()
    log.windows["worker SIGKILL"] = (began, clock())
    log.notes.append(f"jobs in progress (both workers) at the kill: {running}")
    print(
        f"  [{began:6.1f} s] worker-1 killed with SIGKILL ({running} jobs in "
        "progress across both workers); a fresh one started"
    )


async def restart_redis(
    stack: Stack,
    watch: Watch,
    at: float,
    down_s: float,
    how: str,
    clock: Any,
    log: FaultLog,
) -> None:
    """Kill Redis (or SHUTDOWN it), keep it down `down_s`, start it on its AOF."""
    await asyncio.sleep(max(at - clock(), 0))
    part = stack.parts["redis"]
    began = clock()
    if how == "kill":
        part.kill(signal.SIGKILL)
    else:
        redis = Redis.from_url(stack.redis_url)
        with contextlib.suppress(Exception):
            await redis.shutdown()
        await redis.aclose()
        part.expected_exit = True
        await asyncio.to_thread(part.process.wait, 30)  # type: ignore[union-attr]
    print(f"  [{began:6.1f} s] Redis stopped ({how})")
    await asyncio.sleep(down_s)
    watch.retire("redis")
    part.start()
    await wait_until(lambda: redis_answers(stack.redis_url), "Redis again", 120)
    log.windows["Redis restart"] = (began, clock())
    print(f"  [{clock():6.1f} s] Redis answers again (AOF loaded)")


# -- the backlog -------------------------------------------------------------------


@dataclass
class Backlog:
    queued: int
    in_progress: int
    inboxes: int
    parked: int
    # Leads the hand-off has recorded as done (its replay memo, one per lead).
    handed_off: int

    @property
    def empty(self) -> bool:
        """No event waits and no hand-off is parked; no job waits for a worker.

        Jobs of a killed worker stay queued, marked in progress, until arq's
        in-progress timeout lets another worker run them again (a found empty inbox
        by then): they count as running, not as waiting.
        """
        waiting = self.queued - self.in_progress
        return not (self.inboxes or self.parked) and waiting <= 0


async def count_keys(redis: Redis, pattern: str) -> int:
    return len([key async for key in redis.scan_iter(match=pattern, count=1000)])


BACKLOG_PREFIXES = {
    b"arq:in-progress:": "in_progress",
    b"leadloop:inbound:inbox:": "inboxes",
    b"leadloop:intake:parked:": "parked",
    b"leadloop:intake:handoff:": "handed_off",
}


async def backlog(redis: Redis) -> Backlog:
    """One pass over the keys, counted by what they hold."""
    counts = dict.fromkeys(BACKLOG_PREFIXES.values(), 0)
    async for key in redis.scan_iter(count=5000):
        for prefix, name in BACKLOG_PREFIXES.items():
            if key.startswith(prefix):
                counts[name] += 1
    return Backlog(queued=int(await redis.zcard("arq:queue")), **counts)


@dataclass
class Progress:
    """The backlog every two seconds, from the load's start until it has drained."""

    stack: Stack
    clock: Any
    leads: int
    samples: list[tuple[float, Backlog]] = field(default_factory=list)
    all_handed_off_at: float | None = None

    async def watch(self) -> None:
        redis = Redis.from_url(self.stack.redis_url, socket_connect_timeout=1)
        try:
            while True:
                try:
                    now = await backlog(redis)
                except Exception:  # Redis is restarting
                    await asyncio.sleep(1)
                    continue
                self.samples.append((self.clock(), now))
                if self.all_handed_off_at is None and now.handed_off >= self.leads:
                    self.all_handed_off_at = self.clock()
                await asyncio.sleep(2)
        finally:
            await redis.aclose()

    async def drained(self, since: float, timeout_s: float) -> float | None:
        """When the backlog was first seen empty twice in a row after `since`."""
        deadline = time.monotonic() + timeout_s
        reported = len(self.samples)
        next_report = time.monotonic()
        while time.monotonic() < deadline:
            after = [(at, b) for at, b in self.samples if at >= since]
            for (_, one), (at, two) in itertools.pairwise(after):
                if one.empty and two.empty:
                    return at
            if time.monotonic() >= next_report and len(self.samples) > reported:
                at, last = self.samples[-1]
                print(
                    f"  [{at:6.1f} s] backlog: {last.queued} queued jobs "
                    f"({last.in_progress} running), {last.inboxes} inboxes, "
                    f"{last.parked} parked hand-offs; {last.handed_off} of "
                    f"{self.leads} leads handed off",
                    flush=True,
                )
                next_report = time.monotonic() + 30
            await asyncio.sleep(1)
        return None

    @property
    def last(self) -> Backlog | None:
        return self.samples[-1][1] if self.samples else None


# -- the portal's state ------------------------------------------------------------


@dataclass
class Tally:
    clients: int
    contacts: Counter[int]  # clients by how many contacts hold their phone
    records: Counter[int]  # clients by how many deals (or leads) their contact has
    tasks: Counter[int]  # records by how many call-back tasks name them
    strays: int  # contacts that belong to no client
    dead_events: int
    failed_jobs: int
    # Dedupe marks in Redis: one per event the API acknowledged, if none was lost.
    seen_marks: int

    @property
    def lost(self) -> int:
        return self.records[0]

    @property
    def duplicated(self) -> int:
        extra_records = sum(n for k, n in self.records.items() if k > 1)
        return extra_records + sum(n for k, n in self.contacts.items() if k > 1)


def _digits(value: object) -> str:
    return "".join(ch for ch in str(value) if ch.isdigit())


async def tally_portal(stack: Stack, clients: list[Client], kind: str) -> Tally:
    async with httpx.AsyncClient(base_url=stack.sandbox, timeout=120) as http:
        snapshot = (await http.get("/_sandbox/snapshot")).json()
    by_phone: dict[str, list[int]] = defaultdict(list)
    for contact in snapshot.get("contacts", []):
        for phone in contact.get("PHONE") or []:
            by_phone[_digits(phone.get("VALUE"))].append(int(contact["ID"]))
    records_of: dict[int, list[int]] = defaultdict(list)
    for record in snapshot.get(f"{kind}s", []):
        owner = record.get("CONTACT_ID")
        if owner:
            records_of[int(owner)].append(int(record["ID"]))
    tasks_of: Counter[str] = Counter()
    for task in snapshot.get("tasks", []):
        for binding in task.get("UF_CRM_TASK") or task.get("ufCrmTask") or []:
            tasks_of[str(binding)] += 1

    prefix = "D_" if kind == "deal" else "L_"
    contacts: Counter[int] = Counter()
    records: Counter[int] = Counter()
    tasks: Counter[int] = Counter()
    owned: set[int] = set()
    for client in clients:
        holders = sorted(set(by_phone.get(_digits(client.phone), [])))
        owned.update(holders)
        contacts[len(holders)] += 1
        theirs = [record for holder in holders for record in records_of[holder]]
        records[len(theirs)] += 1
        for record in theirs:
            tasks[tasks_of[f"{prefix}{record}"]] += 1
    strays = len({int(c["ID"]) for c in snapshot.get("contacts", [])} - owned)

    redis = Redis.from_url(stack.redis_url)
    try:
        dead = int(await redis.llen("leadloop:inbound:dead"))
        failed = int(await redis.llen("leadloop:jobs:failed"))
        seen = await count_keys(redis, "leadloop:inbound:seen:*")
    finally:
        await redis.aclose()
    return Tally(len(clients), contacts, records, tasks, strays, dead, failed, seen)


async def metrics_of(stack: Stack) -> dict[str, float]:
    """The leadloop_* counters of the API and the live workers, summed by series."""
    totals: dict[str, float] = defaultdict(float)
    urls = [f"{stack.api}/metrics"] + [
        f"http://127.0.0.1:{port}/" for port in stack.worker_metrics.values()
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for url in urls:
            with contextlib.suppress(httpx.HTTPError):
                text = (await http.get(url)).text
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if not sample.name.startswith("leadloop_") or not (
                            sample.name.endswith("_total")
                        ):
                            continue
                        labels = ",".join(
                            f"{k}={v}" for k, v in sorted(sample.labels.items())
                        )
                        totals[f"{sample.name}{{{labels}}}"] += sample.value
    return dict(totals)


# -- the run -----------------------------------------------------------------------


@dataclass
class Options:
    rate: float
    seconds: float
    repeat_share: float
    faults: frozenset[str]
    outage_at: float
    outage_for: float
    kill_worker_at: float
    redis_at: float
    redis_down_s: float
    redis_stop: str
    appendfsync: str
    crm_mode: str
    drain_timeout_s: float
    keep: bool
    max_jobs: int | None


@dataclass
class Run:
    options: Options
    clients: list[Client]
    load: LoadResult
    faults: FaultLog
    watch: Watch
    progress: Progress
    drained_at: float | None
    tally: Tally
    sandbox_stats: dict[str, Any]
    metrics: dict[str, float]
    started: datetime
    workdir: Path


async def run(options: Options) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="leadloop-chaos-"))
    stack = Stack(
        workdir,
        redis_port=free_port(),
        sandbox_port=free_port(),
        api_port=free_port(),
        appendfsync=options.appendfsync,
    )
    conversations = Conversations(stack.telegram_secret, SANDBOX_APP_SECRET)
    clients = plan(
        conversations,
        rate=options.rate,
        seconds=options.seconds,
        repeat_share=options.repeat_share,
    )
    started = datetime.now(UTC)
    kind = "lead" if options.crm_mode == "classic" else "deal"
    print(
        f"{len(clients)} clients, {sum(c.requests for c in clients)} deliveries "
        f"({options.rate:g}/s for {options.seconds:g} s), work dir {workdir}",
        flush=True,
    )
    try:
        await start_stack(stack, clients, options.crm_mode, options.max_jobs)
        sender = Sender(
            Connections("127.0.0.1", stack.api_port, CONNECTIONS),
            give_up_after_s=options.seconds + 300,
        )
        clock = sender.now
        watch = Watch(stack, clock)
        progress = Progress(stack, clock, len(clients))
        faults = FaultLog()
        background = [
            asyncio.create_task(watch.run()),
            asyncio.create_task(progress.watch()),
        ]
        if "outage" in options.faults:
            outage = portal_outage(
                stack, options.outage_at, options.outage_for, clock, faults
            )
            background.append(asyncio.create_task(outage))
        if "worker" in options.faults:
            kill = kill_worker(stack, watch, options.kill_worker_at, clock, faults)
            background.append(asyncio.create_task(kill))
        if "redis" in options.faults:
            restart = restart_redis(
                stack,
                watch,
                options.redis_at,
                options.redis_down_s,
                options.redis_stop,
                clock,
                faults,
            )
            background.append(asyncio.create_task(restart))
        load = await sender.play(clients, options.seconds)
        print(
            f"  [{clock():6.1f} s] load done: {load.acknowledged} acknowledged, "
            f"{load.unacknowledged} never acknowledged",
            flush=True,
        )
        for task in background[2:]:
            await task
        drained_at = await progress.drained(clock(), options.drain_timeout_s)
        for task in background[:2]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watch.sample()
        tally = await tally_portal(stack, clients, kind)
        async with httpx.AsyncClient(base_url=stack.sandbox, timeout=30) as http:
            stats = (await http.get("/_sandbox/stats")).json()
        metrics = await metrics_of(stack)
    finally:
        stack.stop()
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return Run(
        options,
        clients,
        load,
        faults,
        watch,
        progress,
        drained_at,
        tally,
        stats,
        metrics,
        started,
        workdir,
    )


# -- report ------------------------------------------------------------------------


def _quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _in_window(attempt: Attempt, windows: Iterator[tuple[float, float]]) -> bool:
    return any(start - 1 <= attempt.sent_at <= end + 1 for start, end in windows)


def report(result: Run) -> bool:
    """Print the figures; True when nothing was lost or duplicated."""
    options, load, tally = result.options, result.load, result.tally
    attempts = load.attempts
    events = sum(len(c.deliveries) for c in result.clients)
    span = max(load.last_acknowledged - load.first_sent, 1e-9)
    acked = [a for a in attempts if 200 <= a.status < 300]
    latencies = sorted(a.seconds * 1000 for a in acked)
    refused = [a for a in attempts if not 200 <= a.status < 300]
    redis_window = result.faults.windows.get("Redis restart")
    in_redis = [
        a
        for a in refused
        if redis_window is not None and _in_window(a, iter([redis_window]))
    ]
    statuses = Counter(a.status for a in refused)
    last = result.progress.last

    print(f"run of {result.started:%Y-%m-%d %H:%M} UTC, work dir {result.workdir}")
    print(
        f"  load: {len(result.clients)} clients, {events} events + "
        f"{sum(len(c.repeated) for c in result.clients)} provider repeats = "
        f"{len(attempts) - len(refused)} acknowledged requests in {span:.1f} s "
        f"({len(acked) / span:.0f}/s); latest client start "
        f"{load.worst_start_lag_s:.2f} s behind schedule"
    )
    print(
        f"  acknowledgements: p50 {_quantile(latencies, 50):.1f} ms, "
        f"p99 {_quantile(latencies, 99):.1f} ms, max {latencies[-1]:.0f} ms; "
        f"never acknowledged: {load.unacknowledged}"
    )
    shown = ", ".join(
        f"{'no answer' if s == 0 else s}: {n}" for s, n in sorted(statuses.items())
    )
    print(
        f"  non-2xx answers: {len(refused)} ({shown or 'none'}); inside the Redis "
        f"restart window ±1 s: {len(in_redis)}; outside: {len(refused) - len(in_redis)}"
    )
    for name, (start, end) in result.faults.windows.items():
        print(f"  fault {name}: {start:.1f}–{end:.1f} s")
    for note in result.faults.notes:
        print(f"  {note}")
    for at, name, code in result.watch.restarts:
        print(f"  {name} exited with {code} at {at:.1f} s and was started again")
    if result.drained_at is not None:
        print(
            f"  backlog drained at {result.drained_at:.1f} s "
            f"({result.drained_at - options.seconds:.1f} s after the load's end); "
            f"jobs then still marked in progress: {last.in_progress if last else 0}"
        )
    else:
        print(
            f"  backlog NOT drained within {options.drain_timeout_s:.0f} s: "
            f"{result.progress.last}"
        )
    handed = result.progress.all_handed_off_at
    if handed is not None:
        print(
            f"  every lead handed off (leadloop's own record) at {handed:.1f} s: "
            f"{len(result.clients) / handed:.1f} leads/s from the load's start"
        )
    acknowledged = events - load.unacknowledged
    print(
        f"  dedupe marks in Redis after the run: {tally.seen_marks} for "
        f"{acknowledged} acknowledged events "
        f"(missing: {acknowledged - tally.seen_marks})"
    )
    report_memory(result)
    report_cpu(result)
    kind = "lead" if options.crm_mode == "classic" else "deal"
    print(
        f"  portal: {tally.clients} clients; contacts per client "
        f"{dict(sorted(tally.contacts.items()))}; {kind}s per client "
        f"{dict(sorted(tally.records.items()))}; tasks per {kind} "
        f"{dict(sorted(tally.tasks.items()))}; contacts of no client {tally.strays}"
    )
    lost, duplicated = tally.lost, tally.duplicated
    print(
        f"  LOST {lost}, DUPLICATED {duplicated}; events set aside "
        f"{tally.dead_events}, failed jobs listed {tally.failed_jobs}"
    )
    failed_runs = sum(
        value
        for name, value in result.metrics.items()
        if name.startswith("leadloop_jobs_total") and "outcome=failed" in name
    )
    if failed_runs > tally.failed_jobs:
        print(
            f"  {failed_runs:g} job runs failed (leadloop_jobs_total below) but "
            f"{tally.failed_jobs} are listed: a run that fails while Redis is down "
            "cannot write its entry; its chat's events stay in the inbox and are "
            "handled later"
        )
    print(
        f"  portal requests {result.sandbox_stats.get('requests')}, refused by its "
        f"rate limit {result.sandbox_stats.get('rejected_rate_limit', 0)}"
    )
    for name, value in sorted(result.metrics.items()):
        if name.startswith(("leadloop_handoffs", "leadloop_jobs_total")):
            print(f"    {name} {value:g}")
    return lost == 0 and duplicated == 0 and load.unacknowledged == 0


def report_memory(result: Run) -> None:
    samples = result.watch.samples
    load_end = result.options.seconds
    for name in ("api", "worker-1", "worker-2"):
        series = [s.rss_mib[name] for s in samples if name in s.rss_mib]
        during = [
            s.rss_mib[name] for s in samples if name in s.rss_mib and s.at <= load_end
        ]
        if not series:
            continue
        print(
            f"  RSS {name}: start {series[0]:.0f} MiB, peak {max(series):.0f} MiB, "
            f"at the load's end {during[-1] if during else float('nan'):.0f} MiB, "
            f"at the end {series[-1]:.0f} MiB"
        )


def report_cpu(result: Run) -> None:
    samples = result.watch.samples
    if len(samples) < 2:
        return
    load_end = result.options.seconds
    during = [s for s in samples if s.at <= load_end]
    first, last = samples[0], during[-1] if len(during) > 1 else samples[-1]
    span = max(last.at - first.at, 1e-9)
    shares = {
        name: (last.cpu_s.get(name, 0.0) - first.cpu_s.get(name, 0.0)) / span
        for name in last.cpu_s
    }
    shown = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    print(f"  CPU during the load (share of one core): {shown}")
    with contextlib.suppress(OSError):
        averages = Path("/proc/loadavg").read_text().split()[:3]
        print(f"  load average at the end: {' '.join(averages)}")


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where there is one; None and False say it in the help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def options_from(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__.splitlines()[0],
        epilog=(
            "It starts its own Redis (a free port, a temporary directory), sandbox, "
            "API and two workers, and never touches the Redis at 6379. The default "
            "run takes about 11 minutes, most of it the backlog draining at the "
            "portal's rate limit; --rate 20 --seconds 10 takes about 3. Exit status "
            "1 if a lead was lost or duplicated or a delivery never acknowledged. "
            "Figures: docs/benchmarks.md."
        ),
        formatter_class=_Defaults,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="deliveries a second")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--repeat-share",
        type=float,
        default=0.05,
        help="share of deliveries the provider sends twice",
    )
    parser.add_argument(
        "--faults",
        default="outage,worker,redis",
        help="which faults, comma-separated (outage, worker, redis)",
    )
    parser.add_argument("--no-faults", action="store_true", help="the baseline")
    parser.add_argument("--outage-at", type=float, help="s; default: 1/6 of the load")
    parser.add_argument(
        "--outage-for", type=float, help="s of 503s; default: as long as the load"
    )
    parser.add_argument(
        "--kill-worker-at", type=float, help="s; default: 5/12 of the load"
    )
    parser.add_argument("--redis-at", type=float, help="s; default: 2/3 of the load")
    parser.add_argument(
        "--redis-down", type=float, default=2.0, help="seconds Redis stays down"
    )
    parser.add_argument(
        "--redis-stop",
        choices=("kill", "shutdown"),
        default="kill",
        help="how Redis is stopped",
    )
    parser.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default="everysec",
        help="Redis AOF fsync policy",
    )
    parser.add_argument(
        "--crm-mode",
        choices=("simple", "classic"),
        default="simple",
        help="the sandbox portal's CRM mode",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=1800.0, help="s to wait for the backlog"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary work directory (logs, AOF) afterwards",
    )
    parser.add_argument(
        "--max-jobs",
        type=int,
        help="LEADLOOP_WORKER_MAX_JOBS of the workers (default: the setting's, 50)",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds
    return Options(
        rate=args.rate,
        seconds=seconds,
        repeat_share=args.repeat_share,
        faults=frozenset() if args.no_faults else _faults(args.faults),
        outage_at=args.outage_at if args.outage_at is not None else seconds / 6,
        outage_for=args.outage_for if args.outage_for is not None else seconds,
        kill_worker_at=args.kill_worker_at
        if args.kill_worker_at is not None
        else seconds * 5 / 12,
        redis_at=args.redis_at if args.redis_at is not None else seconds * 2 / 3,
        redis_down_s=args.redis_down,
        redis_stop=args.redis_stop,
        appendfsync=args.appendfsync,
        crm_mode=args.crm_mode,
        drain_timeout_s=args.drain_timeout,
        keep=args.keep,
        max_jobs=args.max_jobs,
    )


def _faults(names: str) -> frozenset[str]:
    chosen = frozenset(name.strip() for name in names.split(",") if name.strip())
    unknown = chosen - FAULTS
    if unknown:
        raise SystemExit(f"unknown faults: {', '.join(sorted(unknown))}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    options = options_from(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("bench.chaos needs redis-server on PATH")
    result = asyncio.run(run(options))
    if not report(result):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
