from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis

from tests.webhooks.conftest import (
    REDIS_URL,
    REPO,
    Recorder,
    RunWorker,
    text_message,
)
from tests.webhooks.crash_worker import started_key
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import Inbox

Logs = Callable[[], list[dict[str, Any]]]
CHAT = "100000081"


async def wait_for_key(redis: ArqRedis, key: str, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await redis.get(key)
        if value is not None:
            return bytes(value)
        await asyncio.sleep(0.01)
    pytest.fail(f"{key} never appeared")


@pytest.mark.slow
class TestWorkerCrash:
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
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.webhooks.crash_worker",
            REDIS_URL,
            queue,
            keys.prefix,
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert await wait_for_key(redis, started_key(keys.prefix), 30) == b"k1"
        finally:
            worker.kill()
            await worker.wait()

        # SIGKILL: no finally, no arq bookkeeping; the event is still at the head.
        assert await redis.lrange(keys.inbox("telegram", chat), 0, -1) == [b"k1", b"k2"]
        recorder = Recorder()
        await run_worker(recorder)

        assert recorder.event_ids == ["k1", "k2"]
        handled = [
            (line["event_id"], line["attempt"], line["job_try"])
            for line in logs()
            if line["event"] == "webhooks.event_handled"
        ]
        # The same arq job, tried again (job_try 2), took its chat's lock back.
        assert handled == [("k1", 2, 2), ("k2", 1, 2)]
        assert await redis.llen(keys.inbox("telegram", chat)) == 0
        assert await redis.exists(keys.lock("telegram", chat)) == 0
