"""A worker process for the crash test: it starts an event and hangs until killed.

Run as `python -m tests.webhooks.crash_worker <redis_url> <queue> <key_prefix>`.
"""

from __future__ import annotations

import asyncio
import sys

from arq.connections import RedisSettings
from arq.worker import Worker, func
from redis.asyncio import Redis

from webhooks.inbound import InboundMessage
from webhooks.jobs import process_chat
from webhooks.keys import InboxKeys
from webhooks.queue import PROCESS_CHAT

# arq keeps a job's in-progress mark for its timeout plus 10 s; a short timeout
# lets the test see arq's own retry within seconds.
JOB_TIMEOUT_S = 3


def started_key(prefix: str) -> str:
    return f"{prefix}:crash-test:started"


async def main(redis_url: str, queue: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)

    async def hang(message: InboundMessage) -> None:
        await redis.set(started_key(prefix), message.event_id)
        await asyncio.sleep(3600)

    worker = Worker(
        functions=[
            func(process_chat, name=PROCESS_CHAT, keep_result=0, timeout=JOB_TIMEOUT_S)
        ],
        queue_name=queue,
        redis_settings=RedisSettings.from_dsn(redis_url),
        ctx={"inbound_handler": hang, "inbound_keys": InboxKeys(prefix)},
        handle_signals=False,
        poll_delay=0.01,
    )
    await worker.main()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
