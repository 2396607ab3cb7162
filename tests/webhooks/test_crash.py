"""Case Q-2: a worker SIGKILLed mid-job; the work runs again, its effects once.

The intake workers (tests/webhooks/crash_worker.py) kill themselves inside the
handler, so the crash lands at the same point however loaded the machine is; the
hand-off worker is killed while the sandbox holds back the answer to its write.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.cron import cron

from app.config import BusinessRules
from app.settings import Settings
from app.worker import build_worker
from qualification.handoff import DeferredHandOffs, inquiry_key
from sandbox.server import SandboxOptions
from tests.qualification.test_handoff import STAFF
from tests.qualification.test_handoff import lead as qualified_lead
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.webhooks.conftest import (
    REDIS_URL,
    REPO,
    Recorder,
    RunWorker,
    text_message,
)
from tests.webhooks.crash_worker import (
    SHORT_LEASE,
    handoff_rules,
    handoff_settings,
    started_key,
)
from webhooks.jobs import sweep_inboxes
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import Inbox

Logs = Callable[[], list[dict[str, Any]]]
Process = asyncio.subprocess.Process
CHAT = "100000081"
# arq's in-progress mark of a production worker: the longest timeout (300 s) + 10 s.
PRODUCTION_IN_PROGRESS_S = 310


async def start(
    mode: str, queue: str, keys: InboxKeys, *extra: str, stderr: int | None = None
) -> Process:
    """A crash worker process; its stderr piped unless `stderr` says otherwise."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.webhooks.crash_worker",
        mode,
        REDIS_URL,
        queue,
        keys.prefix,
        *extra,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
    )


async def crash(mode: str, queue: str, keys: InboxKeys) -> None:
    """Run a crash worker until it has killed itself inside the handler."""
    worker = await start(mode, queue, keys)
    try:
        async with asyncio.timeout(60):
            _, err = await worker.communicate()
    except TimeoutError:
        worker.kill()
        await worker.wait()
        pytest.fail("the crash worker never reached the handler")
    assert worker.returncode == -signal.SIGKILL, err.decode()[-2000:]


async def until(
    done: Callable[[], Awaitable[bool]],
    what: str,
    seconds: float,
    *,
    log: Path | None = None,
) -> None:
    """Wait for `done()` to hold; fail saying `what` did not happen in time."""
    deadline = time.monotonic() + seconds
    while not await done():
        if time.monotonic() > deadline:
            said = "" if log is None else await asyncio.to_thread(log.read_text)
            pytest.fail(f"{what} within {seconds:g} s\n{said[-2000:]}")
        await asyncio.sleep(0.05)


def handled(logs: Logs) -> list[tuple[str, int, str, int]]:
    """(event id, attempt, job id, job try) of each event a handler finished."""
    return [
        (line["event_id"], line["attempt"], line["job_id"], line["job_try"])
        for line in logs()
        if line["event"] == "webhooks.event_handled"
    ]


@pytest.mark.slow
class TestWorkerCrash:
    """Q-2: a worker killed mid-event; the event runs again, exactly once."""

    async def test_q2_an_event_killed_mid_handler_runs_on_retry_exactly_once(
        self,
        inbox: Inbox,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
        run_worker: RunWorker,
        logs: Logs,
    ) -> None:
        await inbox.accept(text_message("k1", CHAT))
        await inbox.accept(text_message("k2", CHAT))
        chat = chat_key("telegram", CHAT)

        await crash("arq-retry", queue, keys)

        assert await redis.get(started_key(keys.prefix)) == b"k1"
        assert await redis.lrange(keys.inbox("telegram", chat), 0, -1) == [b"k1", b"k2"]
        killed = (await redis.get(keys.lock("telegram", chat))).decode()
        recorder = Recorder()
        await run_worker(recorder)

        assert recorder.event_ids == ["k1", "k2"]
        # The same arq job, tried again (job_try 2), took its chat's lock back.
        assert handled(logs) == [("k1", 2, killed, 2), ("k2", 1, killed, 2)]
        assert await redis.llen(keys.inbox("telegram", chat)) == 0
        assert await redis.exists(keys.lock("telegram", chat)) == 0

    async def test_q2_a_production_worker_killed_mid_event_frees_the_chat_at_its_lease(
        self,
        inbox: Inbox,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
        settings: Settings,
        logs: Logs,
    ) -> None:
        await inbox.accept(text_message("k1", CHAT))
        await inbox.accept(text_message("k2", CHAT))
        chat = chat_key("telegram", CHAT)

        await crash("production", queue, keys)
        crashed = time.monotonic()

        killed = (await redis.get(keys.lock("telegram", chat))).decode()
        # arq would run the killed job again only once its in-progress mark lapses.
        left_ms = await redis.pttl(in_progress_key_prefix + killed)
        assert left_ms > (PRODUCTION_IN_PROGRESS_S - 30) * 1000
        recorder = Recorder()
        worker = build_worker(
            settings,
            BusinessRules(),
            queue_name=queue,
            handle_signals=False,
            poll_delay=0.01,
            # Production sweeps every minute; here every second.
            cron_jobs=(cron(sweep_inboxes, second=set(range(60))),),
            ctx={
                "settings": settings,
                "inbound_handler": recorder,
                "inbound_keys": keys,
                "inbound_policy": SHORT_LEASE,
            },
        )
        running = asyncio.create_task(worker.async_run())
        try:

            async def both_handled() -> bool:
                return len(recorder.event_ids) >= 2

            await until(both_handled, "the chat was not recovered", 30)
            recovered_s = time.monotonic() - crashed
            await asyncio.sleep(1.5)  # room for a second run of either, were there one
        finally:
            await worker.close()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        assert recorder.event_ids == ["k1", "k2"]
        runs = handled(logs)
        # A fresh job of the sweep's, not arq's retry of the killed one (job_try 1).
        assert [(event, attempt, job_try) for event, attempt, _, job_try in runs] == [
            ("k1", 2, 1),
            ("k2", 1, 1),
        ]
        assert runs[0][2] == runs[1][2] != killed
        assert ":sweep-" in runs[0][2]
        # Within the lease (2 s here, 2.5 min in production) and a sweep or two.
        assert recovered_s < SHORT_LEASE.lease.total_seconds() + 10
        assert await redis.zscore(queue, killed) is not None
        assert await redis.llen(keys.inbox("telegram", chat)) == 0
        assert await redis.exists(keys.lock("telegram", chat)) == 0


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal in simple mode (contact and deal), managers 17 and 23."""
    portal_server.reset()
    portal_server.settings(rate_limit="off")
    portal_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    return portal_server


def deals(portal: RunningSandbox) -> list[dict[str, Any]]:
    return list(portal.result("crm.deal.list", {"select": ["ID", "ORIGIN_ID"]}))


def tasks(portal: RunningSandbox) -> list[dict[str, Any]]:
    answer = portal.result("tasks.task.list", {"select": ["ID"]})
    return list(answer["tasks"])


@pytest.mark.slow
class TestHandOffCrash:
    """Q-2: a worker killed after the portal made the deal; no second deal."""

    async def test_q2_a_worker_killed_after_the_portal_made_the_deal_makes_no_second(
        self,
        portal: RunningSandbox,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
        tmp_path: Path,
    ) -> None:
        lead = qualified_lead()
        # The portal makes the deal, then holds the answer back: the worker dies
        # before it learns the deal's id, let alone keeps it.
        fault = {"method": "crm.deal.add", "kind": "timeout_after_write", "seconds": 11}
        portal.http.post("/_sandbox/faults", json=fault).raise_for_status()
        root = keys.prefix
        await DeferredHandOffs(redis, prefix=f"{root}:intake").defer(lead, timedelta(0))
        job_id = f"{root}:intake:job:handoff:{lead.intake_id}"

        said = tmp_path / "worker.stderr"
        with said.open("wb") as sink:
            worker = await start(
                "handoff", queue, keys, portal.base_url, stderr=sink.fileno()
            )
            try:

                async def deal_made() -> bool:
                    return bool(await asyncio.to_thread(deals, portal))

                await until(deal_made, "the worker made no deal", 60, log=said)
            finally:
                worker.kill()
                await worker.wait()

        # One batch made the contact, deal, task and comment; the worker died
        # before it knew their ids or kept the outcome.
        assert len(deals(portal)) == 1
        assert len(tasks(portal)) == 1
        assert await redis.exists(f"{root}:intake:parked:{lead.intake_id}") == 1
        assert [key async for key in redis.scan_iter(f"{root}:intake:handoff:*")] == []
        # A production worker's in-progress mark: arq would retry in ~10 minutes.
        left_ms = await redis.pttl(in_progress_key_prefix + job_id)
        assert left_ms > (PRODUCTION_IN_PROGRESS_S - 30) * 1000
        # Those minutes pass: the mark and the contact locks the dead worker held
        # (30 s leases) lapse, and a restarted worker runs the job again.
        held = [key async for key in redis.scan_iter(f"{root}:*lock:*")]
        assert held
        for key in [in_progress_key_prefix + job_id, *held]:
            await redis.pexpire(key, 1)
        settings = handoff_settings(REDIS_URL, portal.base_url)
        restarted = build_worker(
            settings,
            handoff_rules(),
            queue_name=queue,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            cron_jobs=(),
            ctx={"settings": settings, "rules": handoff_rules(), "key_prefix": root},
        )
        try:
            await restarted.main()
        finally:
            await restarted.close()

        assert restarted.jobs_complete == 1
        assert [deal["ORIGIN_ID"] for deal in deals(portal)] == [
            f"{inquiry_key(lead)}:deal"
        ]
        stats = portal.http.get("/_sandbox/stats").json()
        assert stats["by_method"]["crm.deal.add"] == 1
        assert stats["by_method"]["tasks.task.add"] == 1
        assert stats["by_method"]["crm.contact.add"] == 1
        assert len(tasks(portal)) == 1
        assert await redis.exists(f"{root}:intake:parked:{lead.intake_id}") == 0
