"""`leadloop run` without messenger credentials: a person can chat with the bot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from app.clients import redis_client
from app.config import BusinessRules, load_rules
from app.demo import (
    Headline,
    Seeded,
    Summary,
    demo_rules,
    quiet_hours_text,
    summary_rows,
)
from app.local import (
    EXAMPLE_RULES,
    Listening,
    listen,
    local_settings,
    rules_file,
    run_local,
)
from app.settings import Settings
from reminders.schedule import quiet_hours
from sandbox.server import SandboxOptions
from sandbox.server import create_app as create_sandbox_app
from tests.e2e.conftest import REDIS_URL
from tests.sandbox.conftest import free_port
from webhooks.keys import chat_key

# Where `leadloop run` processes keep their state when no redis-server can be
# started: a database of their own, since their workers read the default queue.
RUNS_REDIS_URL = "redis://127.0.0.1:6379/13"

pytestmark = pytest.mark.slow
T = TypeVar("T")
GREETING = "Здравствуйте! Я помогу записаться. Как к вам обращаться?"


@dataclass
class Person:
    """A client on both channels, and what names the keys a run leaves for them."""

    chat: int = field(
        default_factory=lambda: random.randrange(100_000_100, 100_999_999)
    )
    wa_id: str = field(default_factory=lambda: f"7999{random.randrange(10**6, 10**7)}")
    marks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.marks |= {
            str(self.chat),
            self.wa_id,
            chat_key("telegram", str(self.chat)),
            chat_key("whatsapp", self.wa_id),
        }


@pytest.fixture
async def person() -> AsyncIterator[Person]:
    """A fresh client; the keys every run left for them are deleted afterwards."""
    client = redis_client(REDIS_URL)
    before = {key async for key in client.scan_iter(match="*leadloop:*")}
    someone = Person()
    yield someone
    doomed = [
        key
        async for key in client.scan_iter(match="*leadloop:*")
        if key not in before and any(mark in key.decode() for mark in someone.marks)
    ]
    if doomed:
        await client.delete(*doomed)
    await client.aclose()


@dataclass
class Run:
    listening: Listening
    update_id: int
    telegram: list[dict[str, Any]]
    whatsapp: list[dict[str, Any]]


async def run_once(person: Person, text: str, replies: int) -> Run:
    """Start `leadloop run`, write `text` on both channels, wait for the replies."""

    async def chat(where: Listening, http: httpx.AsyncClient) -> Run:
        return Run(where, *await _both_channels(http, person, text, replies))

    return await while_running(person, chat)


async def while_running(
    person: Person,
    work: Callable[[Listening, httpx.AsyncClient], Awaitable[T]],
) -> T:
    """`work` against a running `run_local` on free ports, then a clean stop."""
    settings, token = local_settings(
        Settings(
            _env_file=None,
            redis_url=REDIS_URL,
            sandbox_port=free_port(),
            api_port=free_port(),
        )
    )
    person.marks.add(f"127.0.0.1:{settings.sandbox_port}:")  # the portal's limit
    sandbox = create_sandbox_app(
        SandboxOptions(port=settings.sandbox_port, application_token=token)
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    where: list[Listening] = []

    def on_ready(listening: Listening) -> None:
        where.append(listening)
        ready.set()

    running = asyncio.create_task(
        run_local(settings, BusinessRules(), sandbox, on_ready=on_ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=15)
        async with httpx.AsyncClient(base_url=where[0].sandbox, timeout=10) as http:
            return await work(where[0], http)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=20)


async def _both_channels(
    http: httpx.AsyncClient, person: Person, text: str, replies: int
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    told = await http.post(
        "/_sandbox/telegram/deliver", json={"chat_id": person.chat, "text": text}
    )
    assert told.json()["deliveries"][0]["status"] == 200
    update_id: int = told.json()["update_id"]
    person.marks.add(str(update_id))
    wrote = await http.post(
        "/_sandbox/whatsapp/deliver", json={"from": person.wa_id, "text": text}
    )
    person.marks.add(_wamid(wrote.json()["body"]))
    telegram = await _replies(
        http, "/_sandbox/telegram/messages", replies, chat_id=str(person.chat)
    )
    whatsapp = await _replies(
        http, "/_sandbox/whatsapp/messages", replies, to=person.wa_id
    )
    person.marks |= {message["id"] for message in whatsapp}
    return update_id, telegram, whatsapp


async def _replies(
    http: httpx.AsyncClient, path: str, count: int, **query: str
) -> list[dict[str, Any]]:
    async with asyncio.timeout(15):
        while True:
            messages: list[dict[str, Any]] = (
                await http.get(path, params=query)
            ).json()["messages"]
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.05)


def _wamid(body: str) -> str:
    notification = json.loads(body)
    return str(notification["entry"][0]["changes"][0]["value"]["messages"][0]["id"])


class TestLeadloopRun:
    async def test_the_sandbox_bots_answer_on_both_channels(
        self, person: Person
    ) -> None:
        run = await run_once(person, "Привет", replies=1)

        assert run.telegram[0]["text"] == run.whatsapp[0]["text"] == GREETING
        base = run.listening.sandbox
        assert run.listening.telegram == (
            f"{base}/_sandbox/telegram/deliver, replies at "
            f"{base}/_sandbox/telegram/messages"
        )
        assert run.listening.whatsapp.startswith(f"{base}/_sandbox/whatsapp/deliver")

    async def test_the_sandbox_portal_sends_deal_events_to_the_api(
        self, person: Person
    ) -> None:
        async def bound(where: Listening, http: httpx.AsyncClient) -> Any:
            rows = (await http.post(f"{where.webhook}event.get")).json()["result"]
            return where.api, sorted((row["event"], row["handler"]) for row in rows)

        api, handlers = await while_running(person, bound)

        assert handlers == [
            (event, f"{api}/webhooks/bitrix24")
            for event in ("ONCRMDEALADD", "ONCRMDEALDELETE", "ONCRMDEALUPDATE")
        ]

    async def test_after_a_restart_the_first_message_is_not_taken_for_a_repeat(
        self, person: Person
    ) -> None:
        first = await run_once(person, "Привет", replies=1)

        # A new sandbox, the same Redis: the service remembers every update id and
        # wamid it saw for a week, so the new ones must not repeat them.
        again = await run_once(person, "Анна", replies=1)

        assert again.update_id > first.update_id
        assert [m["text"] for m in again.telegram] == [
            "На какую услугу хотите записаться?"
        ]
        assert [m["text"] for m in again.whatsapp] == [
            "На какую услугу хотите записаться?"
        ]


# -- `leadloop run --once`, a real process -------------------------------------------

LEADLOOP = Path(sys.executable).with_name("leadloop")
# The addresses `leadloop run` takes by default; `--once` must not need them.
DEFAULT_PORTS = (8000, 8801)
DEMO_NAMES = ("Анна", "Ольга", "Марина")


@dataclass(frozen=True)
class Finished:
    """A `leadloop` process that has exited."""

    code: int
    out: str
    err: str
    pid: int

    def logged(self, event: str) -> int:
        """How many log lines name `event`."""
        return sum(f"] {event} " in line for line in self.err.splitlines())


def environment(redis_url: str, env: dict[str, str] | None) -> dict[str, str]:
    """The machine's environment without LEADLOOP_*, on the given Redis."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("LEADLOOP_")
    }
    return kept | {"LEADLOOP_REDIS_URL": redis_url, **(env or {})}


def leadloop(
    *args: str,
    cwd: Path,
    redis_url: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 150,
) -> Finished:
    """Run the `leadloop` command as a user would, to its end."""
    # A group of its own: whatever the command starts is found by the group id.
    with subprocess.Popen(  # noqa: S603  (our own command, fixed arguments)
        [str(LEADLOOP), *args],
        cwd=cwd,
        env=environment(redis_url, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    return Finished(process.returncode, out, err, process.pid)


def wait_for_text(path: Path, text: str, *, timeout_s: float) -> bool:
    """True once the file holds `text`; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(encoding="utf-8"):
            return True
        time.sleep(0.2)
    return False


def group_is_gone(leader: int) -> bool:
    try:
        os.killpg(leader, 0)
    except ProcessLookupError:
        return True
    return False


@contextlib.contextmanager
def ports_held(ports: tuple[int, ...]) -> Iterator[None]:
    """Listen on each of `ports` that is free: then none of them is."""
    held = []
    for port in ports:
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            sock.close()
            continue
        held.append(sock)
    try:
        yield
    finally:
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    """A real Redis of this module's own, where redis-server is installed.

    Every worker on one database takes jobs from the same queue: a `leadloop run`
    of a test process running beside this one would take this one's jobs. Without
    redis-server, a database no other test uses serves, emptied before and after
    (never the tests' shared database: deleting what appeared there while a run
    lasted took other test processes' arq jobs with it).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        with emptied(RUNS_REDIS_URL):
            yield RUNS_REDIS_URL
        return
    port = free_port()
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    with subprocess.Popen(  # noqa: S603  (redis-server, fixed arguments)
        [binary, *arguments, "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_for_redis(url)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


def wait_for_redis(url: str, timeout_s: float = 10) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@contextlib.contextmanager
def emptied(url: str) -> Iterator[None]:
    """The database at `url` is emptied before and after: it belongs to these runs."""
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="class")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory, own_redis: str
) -> Iterator[Finished]:
    """`leadloop run --once` while the default ports are taken, as on a CI machine
    where something else listens there."""
    with ports_held(DEFAULT_PORTS):
        yield leadloop(
            "run", "--once", cwd=tmp_path_factory.mktemp("once"), redis_url=own_redis
        )


class TestLeadloopRunOnce:
    def test_it_exits_0_leaving_no_process_behind(self, demo_run: Finished) -> None:
        assert demo_run.code == 0, demo_run.out + demo_run.err[-3000:]
        assert group_is_gone(demo_run.pid)

    def test_its_summary_reports_the_seeded_month_the_live_part_and_the_kpis(
        self, demo_run: Finished
    ) -> None:
        summary = dict(
            line.strip().split(maxsplit=1) for line in demo_run.out.splitlines()[1:]
        )

        assert summary["rules"] == (
            f"{EXAMPLE_RULES} (LEADLOOP_CONFIG unset); quiet hours off for the demo "
            "(the rules say 21:00–09:00)"
        )
        seeded = re.fullmatch(
            r"seed 2026: (\d+) deals, (\d+) contacts, (\d+) calls", summary["seeded"]
        )
        assert seeded is not None, summary["seeded"]
        deals, contacts, calls = map(int, seeded.groups())
        assert 300 <= deals <= 500
        assert 0 < contacts <= deals
        assert calls > 0
        assert summary["live"] == (
            "conversations 3, deals created 3, reminders sent 1, confirmed 1"
        )
        assert re.match(r"\d\d\.\d\d–\d\d\.\d\d\.\d{4}: \d+ leads", summary["KPIs"])
        assert "note" not in summary

    def test_its_log_tells_the_story_with_ids_and_no_personal_data(
        self, demo_run: Finished
    ) -> None:
        assert demo_run.logged("demo.seeded") == 1
        assert demo_run.logged("demo.lead_arriving") == 3
        assert demo_run.logged("demo.deal_appeared") == 3
        assert demo_run.logged("demo.booked") == 1
        assert demo_run.logged("reminders.sent") == 1
        assert demo_run.logged("reminders.answered") == 1
        assert demo_run.logged("demo.confirmed") == 1
        assert "stage=PREPAYMENT_INVOICE" in demo_run.err
        assert not any(name in demo_run.err for name in DEMO_NAMES)
        assert re.search(r"\+?7[ -]?900[ -]?\d", demo_run.err) is None


class TestLeadloopRunOnceFallingShort:
    def test_without_reminders_it_exits_1_and_says_what_did_not_happen(
        self, tmp_path: Path, own_redis: str
    ) -> None:
        rules = tmp_path / "rules.toml"
        rules.write_text("[reminders]\nenabled = false\n", encoding="utf-8")

        run = leadloop(
            "run",
            "--once",
            "--seed",
            "5",
            cwd=tmp_path,
            redis_url=own_redis,
            env={"LEADLOOP_CONFIG": str(rules)},
        )

        assert run.code == 1
        assert "seed 5:" in run.out
        assert "conversations 3, deals created 3, reminders sent 0" in run.out
        assert "no reminder: the rules allow none (disabled)" in run.out
        assert run.err.rstrip().endswith("Error: the demo did not complete")
        assert group_is_gone(run.pid)


class TestLeadloopRunUntilCtrlC:
    def test_it_announces_where_everything_is_and_stops_cleanly_on_ctrl_c(
        self, tmp_path: Path, own_redis: str
    ) -> None:
        sandbox, api = free_port(), free_port()
        env = {"LEADLOOP_SANDBOX_PORT": str(sandbox), "LEADLOOP_API_PORT": str(api)}
        out, err = tmp_path / "out.txt", tmp_path / "err.txt"
        with (
            out.open("w") as stdout,
            err.open("w") as stderr,
            subprocess.Popen(  # noqa: S603  (our own command, fixed arguments)
                [str(LEADLOOP), "run"],
                cwd=tmp_path,
                env=environment(own_redis, env),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            ) as process,
        ):
            announced = wait_for_text(out, "Press Ctrl-C to stop.", timeout_s=120)
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            code = process.wait(timeout=30)

        assert announced, err.read_text()[-3000:]
        assert code == 0
        banner = out.read_text()
        # The link opens the dashboard on the period the KPI line summed up.
        assert re.search(
            rf"dashboard +http://127\.0\.0\.1:{api}/dashboard"
            r"\?from=\d{4}-\d\d-\d\d&to=\d{4}-\d\d-\d\d\n",
            banner,
        ), banner
        assert f"API                http://127.0.0.1:{api}/healthz" in banner
        assert (
            f"Bitrix24 webhook   http://127.0.0.1:{sandbox}/rest/1/sandbox/" in banner
        )
        assert (
            "live               conversations 3, deals created 3, reminders sent 1"
            in banner
        )
        assert group_is_gone(process.pid)
        for port in (sandbox, api):
            with socket.socket() as again:
                # Past connections wait out TIME_WAIT; only a listener refuses this.
                again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                again.bind(("127.0.0.1", port))


class TestLeadloopRunPorts:
    def test_a_taken_port_stops_it_at_once_saying_how_to_fix(
        self, tmp_path: Path
    ) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = {"LEADLOOP_API_PORT": str(port)}
            run = leadloop(
                "run", cwd=tmp_path, redis_url=REDIS_URL, env=env, timeout_s=30
            )

        assert run.code == 1
        assert f"The API cannot listen on 127.0.0.1:{port}" in run.err
        assert "LEADLOOP_API_PORT" in run.err

    def test_with_once_free_ports_are_taken_unless_the_environment_names_them(
        self,
    ) -> None:
        port = free_port()
        settings = Settings(_env_file=None, api_port=port)

        bound, sockets = listen(settings, any_free=True)
        sockets.close()

        assert bound.api_port == port
        assert bound.sandbox_port not in (0, Settings().sandbox_port)


class TestRulesFile:
    def test_leadloop_config_wins(self, tmp_path: Path) -> None:
        mine = tmp_path / "salon.toml"

        settings, shown = rules_file(Settings(_env_file=None, config=mine))

        assert (settings.config, shown) == (mine, f"{mine} (LEADLOOP_CONFIG)")

    def test_without_it_the_example_salon_of_the_repository(self) -> None:
        settings, shown = rules_file(Settings(_env_file=None))

        assert settings.config == EXAMPLE_RULES
        assert shown.endswith("leadloop.example.toml (LEADLOOP_CONFIG unset)")


class TestDemoRules:
    def test_no_minute_of_the_day_is_quiet(self) -> None:
        rules = demo_rules(load_rules(EXAMPLE_RULES))
        quiet = quiet_hours(rules)
        midnight = datetime(2026, 12, 4, tzinfo=rules.zone)

        minutes = [midnight + timedelta(minutes=n) for n in range(24 * 60)]

        assert [moment for moment in minutes if quiet.contains(moment)] == []

    def test_everything_else_is_the_rules_file(self) -> None:
        rules = load_rules(EXAMPLE_RULES)

        changed = demo_rules(rules)

        assert quiet_hours_text(rules) == "21:00–09:00"
        assert changed.reminders.model_dump(exclude={"quiet_hours"}) == (
            rules.reminders.model_dump(exclude={"quiet_hours"})
        )
        assert changed.model_dump(exclude={"reminders"}) == rules.model_dump(
            exclude={"reminders"}
        )


def finished_summary(**changes: Any) -> Summary:
    """A demo in which everything happened, with `changes` made."""
    headline = Headline(
        start=date(2026, 11, 4),
        end=date(2026, 12, 5),
        leads=379,
        bookings=257,
        conversion=Decimal("0.6781"),
        visits=192,
        no_show_rate=Decimal("0.0769"),
        revenue=Decimal("570500.00"),
        currency="RUB",
        first_response_median_min=Decimal("3.3"),
    )
    summary = Summary(
        seed=2026,
        planned=3,
        seeded=Seeded(deals=376, contacts=288, calls=309),
        conversations=3,
        deals_created=3,
        reminders_sent=1,
        confirmations=1,
        kpi=headline,
    )
    return replace(summary, **changes)


class TestSummary:
    def test_everything_that_happened_is_complete(self) -> None:
        assert finished_summary().complete

    def test_a_month_without_conversations_is_complete_once_seeded_and_measured(
        self,
    ) -> None:
        assert finished_summary(
            planned=0, conversations=0, deals_created=0, reminders_sent=0
        ).complete

    @pytest.mark.parametrize(
        "missing",
        [
            {"deals_created": 2},
            {"reminders_sent": 0},
            {"confirmations": 0},
            {"kpi": None},
            {"seeded": None},
            {"failure": "the demo stopped after 60 s waiting for the reminder"},
        ],
    )
    def test_anything_missing_makes_it_incomplete(
        self, missing: dict[str, Any]
    ) -> None:
        assert not finished_summary(**missing).complete

    def test_its_rows_read_as_the_summary_prints_them(self) -> None:
        rows = dict(summary_rows(finished_summary()))

        assert rows == {
            "seeded": "seed 2026: 376 deals, 288 contacts, 309 calls",
            "live": "conversations 3, deals created 3, reminders sent 1, confirmed 1",
            "KPIs": "04.11–04.12.2026: 379 leads, 257 booked (67.8 %), 192 visits, "
            "no-shows 7.7 %, revenue 570 500.00 RUB, first response median 3.3 min",
        }
