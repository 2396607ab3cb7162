"""`leadloop jobs`: the failed-jobs list, to look at and to queue again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from app.clients import redis_client
from app.failed_jobs import FailedJobs, NotFailed, failed_jobs_table
from app.settings import get_settings
from webhooks.inbound import CHANNELS
from webhooks.keys import InboxKeys
from webhooks.setaside import EventGone, NotSetAside, SetAside, set_aside_table

T = TypeVar("T")

# Hidden: tests and a second deployment on one Redis database use another prefix.
_PREFIX = click.option("--key-prefix", default="leadloop", hidden=True)


@click.group()
def jobs() -> None:
    """Jobs arq gave up on and messenger events set aside: list them, replay them.

    A job lands in the list when it raised an error arq does not retry, ran past
    its timeout, or used up its tries. A client's message is set aside when its
    chat's job failed on it every try, or it could not be read; the chat moves on
    past it. Replaying either is safe: every CRM write carries an idempotency key.
    """


@jobs.command(name="failed")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How many of each (jobs, events) to list.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help='json: {"jobs": [...], "set_aside_events": [...]} for scripts.',
)
@_PREFIX
def failed(limit: int, form: str, key_prefix: str) -> None:
    """List failed jobs and set-aside events, newest first."""
    found = _run(lambda store: store.latest(limit), key_prefix)
    aside = _run_aside(lambda store: store.latest(limit), key_prefix)
    if form == "json":
        listed = {
            "jobs": [job.model_dump(mode="json") for job in found],
            "set_aside_events": [event.model_dump(mode="json") for event in aside],
        }
        click.echo(json.dumps(listed, indent=2))
        return
    if not found:
        click.echo("No failed jobs.")
    else:
        for line in failed_jobs_table(found):
            click.echo(line)
    click.echo("")
    if not aside:
        click.echo("No set-aside messenger events.")
        return
    click.echo("Set-aside messenger events (retry with --event CHANNEL:EVENT_ID):")
    for line in set_aside_table(aside):
        click.echo(line)


@jobs.command(name="retry")
@click.argument("job_id", required=False)
@click.option(
    "--event",
    "event_ref",
    metavar="CHANNEL:EVENT_ID",
    help="Put a set-aside messenger event back at the end of its chat's queue.",
)
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Queue every failed job and put back every set-aside event.",
)
@_PREFIX
def retry(
    job_id: str | None, event_ref: str | None, every: bool, key_prefix: str
) -> None:
    """Queue a failed job (JOB_ID), a set-aside event (--event) or all (--all) again."""
    if sum((job_id is not None, event_ref is not None, every)) != 1:
        raise click.UsageError("give one of JOB_ID, --event or --all")
    if event_ref is not None:
        _put_back(event_ref, key_prefix)
        return
    if every:
        queued = _run(lambda store: store.retry_all(), key_prefix)
        queued += _run_aside(lambda store: store.put_back_all(), key_prefix)
    elif job_id is not None:
        try:
            queued = [(job_id, _run(lambda store: store.retry(job_id), key_prefix))]
        except NotFailed:
            raise click.ClickException(
                f"no failed job {job_id} (see `leadloop jobs failed`)"
            ) from None
    for old, new in queued:
        click.echo(f"queued {old} again as {new}")
    if every:
        click.echo(f"{len(queued)} job(s) and event(s) queued again.")


def _put_back(ref: str, key_prefix: str) -> None:
    channel, colon, event_id = ref.partition(":")
    if not colon or not event_id:
        raise click.BadParameter(
            f"{ref!r}: give it as CHANNEL:EVENT_ID (e.g. telegram:700000001), as the "
            "EVENT column of `leadloop jobs failed` shows it",
            param_hint="--event",
        )
    if channel not in CHANNELS:
        raise click.BadParameter(
            f"unknown channel {channel!r}: one of {', '.join(CHANNELS)}",
            param_hint="--event",
        )
    try:
        job_id = _run_aside(lambda store: store.put_back(ref), key_prefix)
    except NotSetAside:
        raise click.ClickException(
            f"no set-aside event {ref} (`leadloop jobs failed` lists them)"
        ) from None
    except EventGone as gone:
        raise click.ClickException(f"cannot put back {gone}") from None
    click.echo(f"put {ref} back in its chat's queue ({job_id})")


def _run(action: Callable[[FailedJobs], Awaitable[T]], key_prefix: str) -> T:
    return _on_redis(lambda redis: action(FailedJobs(redis, prefix=key_prefix)))


def _run_aside(action: Callable[[SetAside], Awaitable[T]], key_prefix: str) -> T:
    keys = InboxKeys(f"{key_prefix}:inbound")
    return _on_redis(lambda redis: action(SetAside(redis, keys)))


def _on_redis(action: Callable[[ArqRedis], Awaitable[T]]) -> T:
    async def run() -> T:
        url = get_settings().redis_url
        redis = redis_client(url)
        try:
            return await action(redis)
        except (RedisError, OSError) as error:
            raise click.ClickException(
                f"Redis at LEADLOOP_REDIS_URL did not answer ({type(error).__name__})"
            ) from None
        finally:
            await redis.aclose()

    return asyncio.run(run())
