"""`leadloop jobs`: the failed-jobs list, to look at and to queue again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from redis.exceptions import RedisError

from app.clients import redis_client
from app.failed_jobs import FailedJobs, NotFailed, failed_jobs_table
from app.settings import get_settings

T = TypeVar("T")

# Hidden: tests and a second deployment on one Redis database use another prefix.
_PREFIX = click.option("--key-prefix", default="leadloop", hidden=True)


@click.group()
def jobs() -> None:
    """Jobs arq gave up on: list them, queue them again.

    A job lands in the list when it raised an error arq does not retry, ran past
    its timeout, or used up its tries. Queuing it again is safe: every job's CRM
    writes carry idempotency keys.
    """


@jobs.command(name="failed")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--format", "form", type=click.Choice(["table", "json"]), default="table")
@_PREFIX
def failed(limit: int, form: str, key_prefix: str) -> None:
    """List failed jobs, newest first."""
    found = _run(lambda store: store.latest(limit), key_prefix)
    if form == "json":
        click.echo(json.dumps([job.model_dump(mode="json") for job in found], indent=2))
        return
    if not found:
        click.echo("No failed jobs.")
        return
    for line in failed_jobs_table(found):
        click.echo(line)


@jobs.command(name="retry")
@click.argument("job_id", required=False)
@click.option("--all", "every", is_flag=True, help="Queue every failed job again.")
@_PREFIX
def retry(job_id: str | None, every: bool, key_prefix: str) -> None:
    """Queue a failed job (JOB_ID) or all of them (--all) again."""
    if every and job_id is None:
        queued = _run(lambda store: store.retry_all(), key_prefix)
    elif job_id is not None and not every:
        try:
            queued = [(job_id, _run(lambda store: store.retry(job_id), key_prefix))]
        except NotFailed:
            raise click.ClickException(
                f"no failed job {job_id} (see `leadloop jobs failed`)"
            ) from None
    else:
        raise click.UsageError("give either a JOB_ID or --all")
    for old, new in queued:
        click.echo(f"queued {old} again as {new}")
    if every:
        click.echo(f"{len(queued)} job(s) queued again.")


def _run(action: Callable[[FailedJobs], Awaitable[T]], key_prefix: str) -> T:
    async def run() -> T:
        url = get_settings().redis_url
        redis = redis_client(url)
        try:
            return await action(FailedJobs(redis, prefix=key_prefix))
        except (RedisError, OSError) as error:
            raise click.ClickException(
                f"Redis at LEADLOOP_REDIS_URL did not answer ({type(error).__name__})"
            ) from None
        finally:
            await redis.aclose()

    return asyncio.run(run())
