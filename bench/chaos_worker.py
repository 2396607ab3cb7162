"""`leadloop worker` with one arq setting changed: how many jobs run at once.

An experiment of bench/chaos.py (`--max-jobs`), not a way to run leadloop: the
worker is built exactly as `leadloop worker` builds it (app/cli.py), settings from
the environment, with arq's `max_jobs` (default 10) overridden. More jobs at once
give the Bitrix24 batcher more leads to put into each request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from app.config import load_rules
from app.logging import configure_logging
from app.settings import get_settings
from app.worker import build_worker


async def work(max_jobs: int) -> None:
    settings = get_settings()
    configure_logging(settings)
    rules = load_rules(settings.config)
    worker = build_worker(settings, rules, max_jobs=max_jobs)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    finally:
        await worker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-jobs", type=int, required=True)
    asyncio.run(work(parser.parse_args().max_jobs))


if __name__ == "__main__":
    main()
