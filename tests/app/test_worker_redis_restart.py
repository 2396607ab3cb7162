"""`leadloop worker` as a process on a Redis of its own that goes away and returns."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from tests.sandbox.conftest import free_port

LEADLOOP = Path(sys.executable).with_name("leadloop")
pytestmark = pytest.mark.slow


class RedisServer:
    """A redis-server on a free port, stopped and started again on that port."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary, self.port = binary, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.process = subprocess.Popen(  # noqa: S603  (redis-server, fixed arguments)
            [self.binary, *arguments, "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("this test starts and stops a Redis: install redis-server")
    server = RedisServer(binary, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def pool(port: int) -> ArqRedis:
    settings = RedisSettings(port=port, conn_retries=50, conn_retry_delay=0.1)
    return await create_pool(settings)


async def ping(port: int) -> object:
    redis = await pool(port)
    try:
        job = await redis.enqueue_job("ping")
        assert job is not None
        return await job.result(timeout=40, poll_delay=0.1)
    finally:
        await redis.aclose()


class TestWorkerAfterRedisRestarts:
    def test_it_starts_again_and_runs_the_next_job(
        self, redis_server: RedisServer, tmp_path: Path
    ) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("LEADLOOP_")
        }
        env["LEADLOOP_REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"
        # Metrics on a fixed port: a run started again must not bind it a second time.
        metrics_port = free_port()
        env["LEADLOOP_WORKER_METRICS_PORT"] = str(metrics_port)
        log_file = tmp_path / "worker.log"
        with (
            log_file.open("w") as log,
            subprocess.Popen(  # noqa: S603  (our own command, fixed arguments)
                [str(LEADLOOP), "worker"],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ) as worker,
        ):
            try:
                assert asyncio.run(ping(redis_server.port)) == "pong"

                redis_server.stop()
                time.sleep(2)
                redis_server.start()

                assert asyncio.run(ping(redis_server.port)) == "pong"
                assert worker.poll() is None
                metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
                assert metrics.status_code == 200
                assert "leadloop_jobs_total" in metrics.text
            finally:
                worker.terminate()
                worker.wait(timeout=30)

        output = log_file.read_text()
        assert "worker.redis_lost" in output, output[-3000:]
        assert "Traceback" not in output
