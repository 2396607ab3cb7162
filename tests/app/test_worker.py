from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix, job_key_prefix, result_key_prefix

from app.clients import Clients
from app.config import BusinessRules, parse_rules
from app.logging import configure_logging
from app.worker import WorkerSettings, build_worker
from tests.app.conftest import MakeSettings


@pytest.fixture
async def queue(redis: ArqRedis) -> AsyncIterator[str]:
    """A queue of this test's own; its keys are deleted afterwards."""
    name = f"leadloop-test:{uuid4().hex}"
    yield name
    await redis.delete(name, name + health_check_key_suffix)


class TestPingJob:
    async def test_a_burst_worker_runs_it_against_real_redis(
        self, redis: ArqRedis, queue: str, make_settings: MakeSettings
    ) -> None:
        job = await redis.enqueue_job("ping", _queue_name=queue)
        assert job is not None
        worker = build_worker(
            make_settings(),
            BusinessRules(),
            queue_name=queue,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            # A burst run at a minute boundary would also run the sweep crons.
            cron_jobs=(),
        )

        try:
            await worker.main()
        finally:
            await worker.close()

        assert await job.result(timeout=5, poll_delay=0.01) == "pong"
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        await redis.delete(job_key_prefix + job.job_id, result_key_prefix + job.job_id)

    async def test_its_log_lines_carry_the_job_id(
        self, redis: ArqRedis, queue: str, make_settings: MakeSettings
    ) -> None:
        buffer = io.StringIO()
        settings = make_settings(env="production")
        configure_logging(settings, stream=buffer)
        job = await redis.enqueue_job("ping", _queue_name=queue, _job_id=uuid4().hex)
        assert job is not None
        worker = build_worker(
            settings,
            BusinessRules(),
            queue_name=queue,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
            # A burst run at a minute boundary would also run the sweep crons.
            cron_jobs=(),
        )

        try:
            await worker.main()
        finally:
            await worker.close()

        lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
        [ping] = [line for line in lines if line["event"] == "worker.ping"]
        assert ping["job_id"] == job.job_id
        assert ping["job_try"] == 1
        await redis.delete(job_key_prefix + job.job_id, result_key_prefix + job.job_id)


class TestWorkerSettings:
    async def test_cron_runs_in_the_business_time_zone(
        self, make_settings: MakeSettings
    ) -> None:
        """Q-3: the worker's time zone comes from the business rules."""
        rules = parse_rules('timezone = "Asia/Yekaterinburg"')

        worker = build_worker(make_settings(), rules, handle_signals=False)

        assert worker.timezone == ZoneInfo("Asia/Yekaterinburg")

    async def test_runs_jobs_at_once_as_configured(
        self, make_settings: MakeSettings
    ) -> None:
        """Q-2: a killed worker's jobs run again after about five minutes."""
        default = build_worker(make_settings(), BusinessRules(), handle_signals=False)
        wide = build_worker(
            make_settings(worker_max_jobs=120), BusinessRules(), handle_signals=False
        )

        assert (default.max_jobs, wide.max_jobs) == (50, 120)
        # A job killed with its worker runs again after the longest timeout + 10 s.
        assert default.in_progress_timeout_s == 310

    async def test_uses_the_configured_redis(self, make_settings: MakeSettings) -> None:
        settings = make_settings(redis_url="redis://redis.internal:6380/3")

        worker = build_worker(settings, BusinessRules(), handle_signals=False)

        assert worker.redis_settings is not None
        assert (worker.redis_settings.host, worker.redis_settings.port) == (
            "redis.internal",
            6380,
        )
        assert worker.redis_settings.database == 3

    async def test_startup_opens_shared_clients_and_shutdown_closes_them(
        self, make_settings: MakeSettings
    ) -> None:
        settings = make_settings()
        ctx: dict[str, object] = {"settings": settings}

        await WorkerSettings.on_startup(ctx)
        clients = ctx["clients"]
        assert isinstance(clients, Clients)
        assert await clients.redis.ping() is True
        await WorkerSettings.on_shutdown(ctx)

        assert clients.http.is_closed
        assert "clients" not in ctx

    def test_registers_every_job_and_the_cron_table(self) -> None:
        names = [
            getattr(function, "name", getattr(function, "__name__", None))
            for function in WorkerSettings.functions
        ]
        assert names[:4] == ["ping", "process_chat", "sweep_inboxes", "intake_hand_off"]
        assert [job.name for job in WorkerSettings.cron_jobs] == [
            "kpi.weekly_report",
            "cron:sweep_inboxes",
        ]
