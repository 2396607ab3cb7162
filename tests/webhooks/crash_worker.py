"""Worker processes for the crash tests: each SIGKILLs itself inside the handler.

Run as `python -m tests.webhooks.crash_worker <mode> <redis_url> <queue> <prefix>
[<sandbox_url>]`.

The process kills itself at a fixed point (the handler has started; nothing after
it ran), so the crash never races with arq's own job timeout: a test that killed
the worker from outside, once it saw the handler start, lost that race whenever
its own process got no CPU for the timeout's length, and arq then finished the job
as failed before the kill.

Modes:

- `arq-retry`: a bare arq worker whose job timeout is short, so arq's in-progress
  mark (timeout + 10 s) lapses within seconds and arq itself runs the job again;
- `production`: the worker `build_worker` makes, with every production job and
  cron line, so its in-progress mark lasts as long as production's (the weekly
  report's timeout + 10 s); only the chat lock's lease is made short, through
  `DrainPolicy`, so the test can see the sweep recover the chat;
- `handoff`: the production worker with its real intake chain, on the sandbox
  portal at `sandbox_url`; it does not kill itself: the test kills it while the
  sandbox holds back the answer to a write it has made.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

from arq.connections import RedisSettings
from arq.worker import Worker, func
from pydantic import SecretStr
from redis.asyncio import Redis

from app.config import BusinessRules, IntakeRules
from app.settings import Settings
from app.worker import build_worker
from tests.qualification.conftest import SERVICES
from webhooks.inbound import InboundMessage
from webhooks.jobs import DrainPolicy, process_chat
from webhooks.keys import InboxKeys
from webhooks.queue import PROCESS_CHAT

# arq keeps a job's in-progress mark for its timeout plus 10 s; a short timeout
# lets the test see arq's own retry within seconds. It only has to cover the few
# Redis round trips from the job's start to the handler.
JOB_TIMEOUT_S = 3
# The production-mode worker's lock lease: handler timeout plus margin.
SHORT_LEASE = DrainPolicy(
    handler_timeout=timedelta(seconds=1), lease_margin=timedelta(seconds=1)
)


def started_key(prefix: str) -> str:
    """Where the dying handler writes the event id it was given."""
    return f"{prefix}:crash-test:started"


def handoff_settings(redis_url: str, sandbox_url: str) -> Settings:
    """Production settings on the sandbox portal (webhook mode)."""
    return Settings(
        _env_file=None,
        env="production",
        redis_url=redis_url,
        bitrix24_webhook_url=SecretStr(f"{sandbox_url}/rest/1/sandbox/"),
    )


def handoff_rules() -> BusinessRules:
    return BusinessRules(services=SERVICES, intake=IntakeRules(managers=["17", "23"]))


async def main(
    mode: str, redis_url: str, queue: str, prefix: str, sandbox_url: str = ""
) -> None:
    redis = Redis.from_url(redis_url)
    keys = InboxKeys(prefix)

    async def die(message: InboundMessage) -> None:
        await redis.set(started_key(prefix), message.event_id)
        # No finally, no arq bookkeeping: the event is still at its inbox's head.
        os.kill(os.getpid(), signal.SIGKILL)

    worker: Worker
    if mode == "arq-retry":
        worker = Worker(
            functions=[
                func(
                    process_chat,
                    name=PROCESS_CHAT,
                    keep_result=0,
                    timeout=JOB_TIMEOUT_S,
                )
            ],
            queue_name=queue,
            redis_settings=RedisSettings.from_dsn(redis_url),
            ctx={"inbound_handler": die, "inbound_keys": keys},
            handle_signals=False,
            poll_delay=0.01,
        )
    elif mode == "production":
        settings = Settings(_env_file=None, env="production", redis_url=redis_url)
        worker = build_worker(
            settings,
            BusinessRules(),
            queue_name=queue,
            handle_signals=False,
            poll_delay=0.01,
            ctx={
                "settings": settings,
                "inbound_handler": die,
                "inbound_keys": keys,
                "inbound_policy": SHORT_LEASE,
            },
        )
    elif mode == "handoff":
        settings = handoff_settings(redis_url, sandbox_url)
        worker = build_worker(
            settings,
            handoff_rules(),
            queue_name=queue,
            handle_signals=False,
            poll_delay=0.01,
            ctx={"settings": settings, "rules": handoff_rules(), "key_prefix": prefix},
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    await worker.main()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
