"""Failed jobs: recorded by the worker, listed and queued again by `leadloop jobs`.

The CLI runs its own event loop (asyncio.run), so the tests that call it are plain
functions that run the worker the same way.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
import structlog
from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Worker, func
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY

from app import cli
from app.clients import redis_client
from app.config import BusinessRules
from app.failed_jobs import FailedJob, FailedJobs, retry_job_id
from app.logging import configure_logging
from app.settings import Settings
from app.worker import build_worker
from tests.support import REDIS_URL, queue_redis
from webhooks.inbound import InboundKind, InboundMessage
from webhooks.keys import InboxKeys, chat_key
from webhooks.setaside import SetAside

log = structlog.stdlib.get_logger("tests.jobs")

DELIVER = "tests.deliver_lead"
ALWAYS_LATER = "tests.always_later"
SLOW = "tests.slow"


class PortalDown(Exception):
    pass


async def deliver_lead(ctx: dict[str, Any], intake_id: str) -> str:
    """Hands a lead over, unless the test marked the portal down."""
    redis: ArqRedis = ctx["redis"]
    prefix = ctx["key_prefix"]
    log.info("tests.delivering", intake_id=intake_id)
    if await redis.exists(f"{prefix}:portal_down"):
        raise PortalDown("portal refused the lead of +7 999 000-00-01")
    await redis.rpush(f"{prefix}:delivered", intake_id)  # type: ignore[misc]
    return "delivered"


async def always_later(ctx: dict[str, Any], deal_id: int) -> None:
    try:
        raise ConnectionError("portal unreachable")
    except ConnectionError as error:
        raise Retry(defer=0) from error


async def slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(5)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix (and an arq queue under it) of this test's own, then deleted."""
    name = f"leadloop-test:{uuid4().hex}"
    yield name

    async def delete() -> None:
        async with queue_redis(name, queue_of(name)):
            pass

    asyncio.run(delete())


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, redis_url=REDIS_URL, env="production")


def queue_of(prefix: str) -> str:
    return f"{prefix}:queue"


async def enqueue(prefix: str, function: str, *args: Any, job: str = "1") -> str:
    redis = redis_client(REDIS_URL)
    job_id = f"{prefix}:job:{job}"
    try:
        await redis.enqueue_job(
            function, *args, _job_id=job_id, _queue_name=queue_of(prefix)
        )
    finally:
        await redis.aclose()
    return job_id


async def run_worker(settings: Settings, prefix: str) -> Worker:
    """A burst worker with the test jobs, until the queue is empty."""
    worker = build_worker(
        settings,
        BusinessRules(),
        functions=[
            func(deliver_lead, name=DELIVER, keep_result=0),
            func(always_later, name=ALWAYS_LATER, keep_result=0, max_tries=2),
            func(slow, name=SLOW, keep_result=0, timeout=0.2),
        ],
        cron_jobs=[],
        queue_name=queue_of(prefix),
        burst=True,
        handle_signals=False,
        poll_delay=0.01,
        ctx={"settings": settings, "key_prefix": prefix, "inbound_handler": None},
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def failed_jobs(prefix: str) -> list[FailedJob]:
    redis = redis_client(REDIS_URL)
    try:
        return await FailedJobs(redis, prefix=prefix).latest()
    finally:
        await redis.aclose()


async def redis_call(method: str, *args: Any) -> Any:
    redis = redis_client(REDIS_URL)
    try:
        return await getattr(redis, method)(*args)
    finally:
        await redis.aclose()


def jobs_count(function: str, outcome: str) -> float:
    labels = {"function": function, "outcome": outcome}
    return REGISTRY.get_sample_value("leadloop_jobs_total", labels) or 0.0


class TestFailedJobRecording:
    def test_a_job_that_raises_is_recorded_with_ids_and_a_masked_message(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(redis_call("set", f"{prefix}:portal_down", "1"))
        job_id = asyncio.run(enqueue(prefix, DELIVER, "intake-7"))
        before = jobs_count(DELIVER, "failed")

        worker = asyncio.run(run_worker(settings, prefix))

        [failed] = asyncio.run(failed_jobs(prefix))
        assert (failed.job_id, failed.function, failed.error) == (
            job_id,
            DELIVER,
            "PortalDown",
        )
        assert failed.message == "portal refused the lead of [phone]"
        assert (failed.tries, failed.args, failed.queue) == (
            1,
            ("intake-7",),
            queue_of(prefix),
        )
        assert (datetime.now(UTC) - failed.failed_at).total_seconds() < 60
        assert worker.jobs_failed == 1
        assert jobs_count(DELIVER, "failed") == before + 1

    def test_a_job_that_uses_up_its_tries_names_the_last_error(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(enqueue(prefix, ALWAYS_LATER, 42))
        retried = jobs_count(ALWAYS_LATER, "retried")

        asyncio.run(run_worker(settings, prefix))

        [failed] = asyncio.run(failed_jobs(prefix))
        assert (failed.function, failed.error, failed.tries) == (
            ALWAYS_LATER,
            "ConnectionError",
            2,
        )
        assert failed.message == (
            "max 2 retries exceeded; last try: portal unreachable"
        )
        assert failed.args == (42,)
        assert jobs_count(ALWAYS_LATER, "retried") == retried + 2
        last_error = f"{prefix}:jobs:last_error:{failed.job_id}"
        assert asyncio.run(redis_call("exists", last_error)) == 0

    def test_a_job_past_its_timeout_is_recorded_as_a_timeout(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(enqueue(prefix, SLOW))

        asyncio.run(run_worker(settings, prefix))

        [failed] = asyncio.run(failed_jobs(prefix))
        assert (failed.function, failed.error) == (SLOW, "TimeoutError")
        assert failed.message == "ran past its 0.2 s timeout"

    def test_a_job_that_succeeds_is_counted_not_recorded(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(enqueue(prefix, DELIVER, "intake-8"))
        before = jobs_count(DELIVER, "succeeded")

        asyncio.run(run_worker(settings, prefix))

        assert asyncio.run(failed_jobs(prefix)) == []
        assert jobs_count(DELIVER, "succeeded") == before + 1

    def test_every_line_a_job_writes_carries_its_id_and_function(
        self, settings: Settings, prefix: str
    ) -> None:
        buffer = io.StringIO()
        configure_logging(settings, stream=buffer)
        asyncio.run(redis_call("set", f"{prefix}:portal_down", "1"))
        job_id = asyncio.run(enqueue(prefix, DELIVER, "intake-9"))

        asyncio.run(run_worker(settings, prefix))

        lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
        about_the_job = [
            line
            for line in lines
            if job_id in line["event"] or line["event"].startswith(("tests.", "jobs."))
        ]
        events = [line["event"] for line in about_the_job]
        assert "tests.delivering" in events
        assert "jobs.failed" in events
        assert len(about_the_job) >= 4  # arq's start and failure lines too
        assert {line["job_id"] for line in about_the_job} == {job_id}
        [own] = [line for line in about_the_job if line["event"] == "tests.delivering"]
        assert (own["job_function"], own["job_try"]) == (DELIVER, 1)


class TestFailedJobsList:
    async def test_keeps_only_the_newest_entries(self, prefix: str) -> None:
        redis = redis_client(REDIS_URL)
        store = FailedJobs(redis, prefix=prefix, kept=3)
        try:
            for n in range(5):
                await store.record(failed_job(f"{prefix}:job:{n}"))
            kept = await store.latest()
        finally:
            await redis.aclose()

        assert [job.job_id for job in kept] == [f"{prefix}:job:{n}" for n in (4, 3, 2)]

    def test_a_retried_job_gets_one_fresh_suffix(self) -> None:
        first = retry_job_id("leadloop:job:1")
        second = retry_job_id(first)

        assert first.startswith("leadloop:job:1:retry-")
        assert second.startswith("leadloop:job:1:retry-")
        assert second.count(":retry-") == 1
        assert first != second


def failed_job(job_id: str) -> FailedJob:
    return FailedJob(
        job_id=job_id,
        function=DELIVER,
        failed_at=datetime.now(UTC),
        error="PortalDown",
        message="",
        tries=1,
        args=("intake-1",),
        queue="arq:queue",
    )


def leadloop(*arguments: str) -> Result:
    return CliRunner().invoke(cli.main, ["jobs", *arguments])


@pytest.fixture
def on_test_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADLOOP_REDIS_URL", REDIS_URL)


@pytest.mark.usefixtures("on_test_redis")
class TestJobsCommand:
    def test_failed_lists_jobs_newest_first_as_a_table_or_json(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(redis_call("set", f"{prefix}:portal_down", "1"))
        first = asyncio.run(enqueue(prefix, DELIVER, "intake-1", job="1"))
        asyncio.run(run_worker(settings, prefix))
        second = asyncio.run(enqueue(prefix, DELIVER, "intake-2", job="2"))
        asyncio.run(run_worker(settings, prefix))

        table = leadloop("failed", "--key-prefix", prefix)
        listed = leadloop("failed", "--format", "json", "--key-prefix", prefix)
        limited = leadloop("failed", "--limit", "1", "--key-prefix", prefix)

        assert table.exit_code == 0, table.output
        jobs_part, events_part = table.output.split("\n\n")
        header, *rows = jobs_part.splitlines()
        assert header.startswith("JOB ID")
        assert header.split()[-2:] == ["TRIES", "ERROR"]
        assert [row.split()[0] for row in rows] == [second, first]
        assert rows[0].endswith("PortalDown: portal refused the lead of [phone]")
        assert events_part == "No set-aside messenger events.\n"
        entries = json.loads(listed.output)["jobs"]
        assert [entry["job_id"] for entry in entries] == [second, first]
        assert entries[0]["args"] == ["intake-2"]
        assert "+7 999" not in listed.output
        assert len(limited.output.split("\n\n")[0].splitlines()) == 2

    def test_retry_queues_the_job_again_and_it_succeeds_once_fixed(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(redis_call("set", f"{prefix}:portal_down", "1"))
        job_id = asyncio.run(enqueue(prefix, DELIVER, "intake-3"))
        asyncio.run(run_worker(settings, prefix))
        asyncio.run(redis_call("delete", f"{prefix}:portal_down"))
        succeeded = jobs_count(DELIVER, "succeeded")

        result = leadloop("retry", job_id, "--key-prefix", prefix)
        remaining = asyncio.run(failed_jobs(prefix))
        asyncio.run(run_worker(settings, prefix))

        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"queued {job_id} again as {job_id}:retry-")
        assert remaining == []
        delivered = asyncio.run(redis_call("lrange", f"{prefix}:delivered", 0, -1))
        assert delivered == [b"intake-3"]
        assert jobs_count(DELIVER, "succeeded") == succeeded + 1
        assert asyncio.run(failed_jobs(prefix)) == []

    def test_retry_all_queues_every_failed_job(
        self, settings: Settings, prefix: str
    ) -> None:
        asyncio.run(redis_call("set", f"{prefix}:portal_down", "1"))
        asyncio.run(enqueue(prefix, DELIVER, "intake-4", job="4"))
        asyncio.run(enqueue(prefix, DELIVER, "intake-5", job="5"))
        asyncio.run(run_worker(settings, prefix))
        asyncio.run(redis_call("delete", f"{prefix}:portal_down"))

        result = leadloop("retry", "--all", "--key-prefix", prefix)
        asyncio.run(run_worker(settings, prefix))

        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1] == "2 job(s) and event(s) queued again."
        delivered = asyncio.run(redis_call("lrange", f"{prefix}:delivered", 0, -1))
        assert sorted(delivered) == [b"intake-4", b"intake-5"]
        assert asyncio.run(failed_jobs(prefix)) == []

    def test_retry_of_an_unknown_job_fails_saying_so(self, prefix: str) -> None:
        result = leadloop("retry", "no-such-job", "--key-prefix", prefix)

        assert result.exit_code == 1
        assert "no failed job no-such-job" in result.output

    @pytest.mark.parametrize(
        "arguments",
        [(), ("some-job", "--all"), ("some-job", "--event", "telegram:1")],
    )
    def test_retry_needs_one_of_a_job_id_an_event_or_all(
        self, prefix: str, arguments: tuple[str, ...]
    ) -> None:
        result = leadloop("retry", *arguments, "--key-prefix", prefix)

        assert result.exit_code == 2
        assert "give one of JOB_ID, --event or --all" in result.output

    @pytest.mark.parametrize(
        ("reference", "says"),
        [
            ("bogus", "give it as CHANNEL:EVENT_ID (e.g. telegram:700000001)"),
            ("telegram:", "give it as CHANNEL:EVENT_ID"),
            ("foo:1", "unknown channel 'foo': one of telegram, whatsapp"),
        ],
    )
    def test_a_malformed_event_reference_is_a_usage_error(
        self, prefix: str, reference: str, says: str
    ) -> None:
        result = leadloop("retry", "--event", reference, "--key-prefix", prefix)

        assert result.exit_code == 2
        assert says in result.output

    def test_a_well_formed_reference_not_set_aside_is_said_plainly(
        self, prefix: str
    ) -> None:
        result = leadloop("retry", "--event", "telegram:1", "--key-prefix", prefix)

        assert result.exit_code == 1
        assert "no set-aside event telegram:1 (`leadloop jobs failed` lists them)" in (
            result.output
        )

    def test_failed_says_so_when_the_list_is_empty(self, prefix: str) -> None:
        result = leadloop("failed", "--key-prefix", prefix)

        assert (result.exit_code, result.output) == (
            0,
            "No failed jobs.\n\nNo set-aside messenger events.\n",
        )

    def test_set_aside_events_are_listed_and_put_back_by_reference(
        self, prefix: str
    ) -> None:
        keys = InboxKeys(f"{prefix}:inbound")
        message = InboundMessage(
            channel="telegram",
            event_id="e1",
            chat_id="100000001",
            sender_id="100000001",
            kind=InboundKind.TEXT,
            text="хочу записаться",
            received_at=datetime(2026, 12, 4, 9, tzinfo=UTC),
        )
        chat = chat_key("telegram", "100000001")

        async def set_aside() -> None:
            redis = redis_client(REDIS_URL)
            try:
                await redis.set(keys.event("telegram", "e1"), message.to_json())
                await SetAside(redis, keys).add("telegram", chat, "e1", "tries")
            finally:
                await redis.aclose()

        asyncio.run(set_aside())

        table = leadloop("failed", "--key-prefix", prefix)
        listed = leadloop("failed", "--format", "json", "--key-prefix", prefix)
        put = leadloop("retry", "--event", "telegram:e1", "--key-prefix", prefix)
        again = leadloop("retry", "--event", "telegram:e1", "--key-prefix", prefix)
        inbox = asyncio.run(redis_call("lrange", keys.inbox("telegram", chat), 0, -1))
        # The drain went to the default queue, which this test's Redis shares.
        job_id = put.output.rstrip().rsplit("(", 1)[-1].rstrip(")")
        removed = asyncio.run(redis_call("zrem", "arq:queue", job_id))

        assert table.exit_code == 0, table.output
        events = table.output.split("\n\n")[1].splitlines()
        assert events[0].startswith("Set-aside messenger events")
        assert events[2].split()[:2] == ["telegram:e1", chat]
        assert events[2].endswith("tries")
        [entry] = json.loads(listed.output)["set_aside_events"]
        assert (entry["event_id"], entry["reason"]) == ("e1", "tries")
        assert "хочу" not in table.output + listed.output
        assert put.exit_code == 0, put.output
        assert put.output.startswith("put telegram:e1 back in its chat's queue")
        assert inbox == [b"e1"]
        assert removed == 1
        assert again.exit_code == 1
        assert "no set-aside event telegram:e1" in again.output
