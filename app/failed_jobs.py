"""Failed jobs: what arq gave up on, kept for a person to look at and queue again.

arq itself keeps no trace of a failed job once its result expires (leadloop keeps
results for a minute at most, arq issue 432), so the worker records each failure
in a Redis list of its own, newest first, at most `FAILED_JOBS_KEPT` entries:

- a job that raised anything but `Retry` (arq does not run it again), or ran past
  its timeout;
- a job whose tries ran out (`Retry` on its last try, or a worker killed during
  it): arq notices on the next pickup, and the entry names the error of the last
  try that raised one.

An entry holds the job id, function, time, error class, a short message with
personal data masked, the tries, and the job's arguments, which are ids only by
design. `leadloop jobs retry` queues the same function with the same arguments
under a fresh job id and takes the entry off the list; the jobs are safe to run
again (their CRM writes carry keys, events their done marks).

`ObservedWorker` is arq's worker with that recording, per-job metrics and the job's
id bound to every log line its run writes, arq's own included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.jobs import deserialize_result
from arq.worker import Function, Retry, Worker
from pydantic import AwareDatetime, BaseModel, ConfigDict, JsonValue, TypeAdapter

from app.logging import PersonalDataMasker
from app.metrics import JOB_SECONDS, JOBS

log = structlog.stdlib.get_logger(__name__)

FAILED_JOBS_KEPT = 1000
MESSAGE_LENGTH = 200
# The error of a try that asked to be retried, kept until arq gives up on the job
# (arq's own retry counter lives as long).
LAST_ERROR_FOR = timedelta(seconds=88400)
RETRY_MARK = ":retry-"
UNKNOWN_FUNCTION = "unknown"

JobContext = dict[str, Any]
JobFunction = Function | CronJob


class FailedJob(BaseModel):
    """One job arq gave up on."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    function: str
    failed_at: AwareDatetime
    error: str
    message: str
    tries: int
    args: tuple[JsonValue, ...] = ()
    kwargs: dict[str, JsonValue] = {}
    queue: str


_FAILED_JOB = TypeAdapter(FailedJob)


class NotFailed(Exception):
    """No failed job has this id (never failed, or queued again already)."""


class FailedJobs:
    """The failed-jobs list of one key prefix, in Redis."""

    def __init__(
        self, redis: ArqRedis, *, prefix: str = "leadloop", kept: int = FAILED_JOBS_KEPT
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._kept = kept
        self.key = f"{prefix}:jobs:failed"

    async def record(self, job: FailedJob) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.key, _FAILED_JOB.dump_json(job))
            pipe.ltrim(self.key, 0, self._kept - 1)
            await pipe.execute()

    async def latest(self, limit: int | None = None) -> list[FailedJob]:
        """Newest first; all of them without a limit."""
        end = -1 if limit is None else limit - 1
        raw = await cast(Awaitable[list[bytes]], self._redis.lrange(self.key, 0, end))
        return [_FAILED_JOB.validate_json(entry) for entry in raw]

    async def retry(self, job_id: str) -> str:
        """Queue the failed job again; answer the new job id."""
        raw = await cast(Awaitable[list[bytes]], self._redis.lrange(self.key, 0, -1))
        for entry in raw:
            job = _FAILED_JOB.validate_json(entry)
            if job.job_id == job_id:
                return await self._requeue(entry, job)
        raise NotFailed(job_id)

    async def retry_all(self) -> list[tuple[str, str]]:
        """Queue every failed job again, oldest first: (old id, new id) pairs."""
        raw = await cast(Awaitable[list[bytes]], self._redis.lrange(self.key, 0, -1))
        queued = []
        for entry in reversed(raw):
            job = _FAILED_JOB.validate_json(entry)
            try:
                queued.append((job.job_id, await self._requeue(entry, job)))
            except NotFailed:
                continue  # another `retry` took it meanwhile
        return queued

    async def _requeue(self, entry: bytes, job: FailedJob) -> str:
        # Taken off first: of two people retrying at once, one queues it.
        removed = self._redis.lrem(self.key, 1, cast(str, entry))
        if not await cast(Awaitable[int], removed):
            raise NotFailed(job.job_id)
        new_id = retry_job_id(job.job_id)
        try:
            kwargs: dict[str, Any] = dict(job.kwargs)
            queued = await self._redis.enqueue_job(
                job.function, *job.args, _job_id=new_id, _queue_name=job.queue, **kwargs
            )
        except BaseException:
            await cast(Awaitable[int], self._redis.rpush(self.key, entry))
            raise
        if queued is None:  # a job of that id exists: nothing was queued
            await cast(Awaitable[int], self._redis.rpush(self.key, entry))
            raise NotFailed(job.job_id)
        return new_id

    # -- the last error of a retried job ---------------------------------------------

    def last_error_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobs:last_error:{job_id}"

    async def note_last_error(self, job_id: str, error: str, message: str) -> None:
        await self._redis.set(
            self.last_error_key(job_id),
            f"{error}\n{message}",
            px=int(LAST_ERROR_FOR.total_seconds() * 1000),
        )

    async def take_last_error(self, job_id: str) -> tuple[str, str] | None:
        key = self.last_error_key(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        error, _, message = bytes(raw).decode().partition("\n")
        return error, message


def retry_job_id(job_id: str) -> str:
    """A fresh id for a job queued again: arq refuses an id it still knows, and a
    job retried twice gets one suffix, not two."""
    base = job_id.split(RETRY_MARK, 1)[0]
    return f"{base}{RETRY_MARK}{secrets.token_hex(4)}"


# -- the worker -----------------------------------------------------------------------


@dataclass
class _Run:
    """What one run of a job did, noted by its wrapper for `finish_job`."""

    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job_try: int
    started: float
    timeout_s: float | None = None
    outcome: str = "running"
    error: BaseException | None = None


class ObservedWorker(Worker):
    """arq's worker that records failed jobs, counts outcomes and binds job ids."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runs: dict[str, _Run] = {}
        self.functions = {
            name: self._observed(function) for name, function in self.functions.items()
        }
        settings = self.ctx.get("settings")
        self._masker = PersonalDataMasker(
            settings.secret_values() if settings is not None else ()
        )

    @property
    def failed_jobs(self) -> FailedJobs:
        return FailedJobs(self.pool, prefix=self.ctx.get("key_prefix", "leadloop"))

    async def run_job(self, job_id: str, score: int) -> None:
        # Each job runs in a task of its own: arq's lines about it carry its id too.
        with structlog.contextvars.bound_contextvars(job_id=job_id):
            await super().run_job(job_id, score)

    def _observed(self, function: JobFunction) -> JobFunction:
        coroutine, name = function.coroutine, function.name
        timeout_s = function.timeout_s or self.job_timeout_s

        async def observed(ctx: JobContext, *args: Any, **kwargs: Any) -> Any:
            run = _Run(
                name, args, kwargs, ctx["job_try"], time.perf_counter(), timeout_s
            )
            self._runs[ctx["job_id"]] = run
            with structlog.contextvars.bound_contextvars(job_function=name):
                try:
                    result = await coroutine(ctx, *args, **kwargs)
                except Retry as retry:
                    run.outcome, run.error = "retried", retry.__cause__
                    raise
                except asyncio.CancelledError:
                    run.outcome = "cancelled"
                    raise
                except Exception as exc:
                    run.outcome, run.error = "failed", exc
                    raise
            run.outcome = "succeeded"
            return result

        return dataclasses.replace(function, coroutine=observed)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        run = self._runs.pop(job_id, None)
        if run is not None:
            try:
                await self._account(job_id, run, finish)
            except Exception:
                # Bookkeeping never keeps arq from finishing the job.
                log.exception("jobs.accounting_failed", job_id=job_id)
        await super().finish_job(
            job_id,
            finish,
            result_data,
            result_timeout_s,
            keep_result_forever,
            incr_score,
            keep_in_progress,
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq gave up before running the job: tries spent, job gone or unknown."""
        try:
            await self._account_given_up(job_id, result_data)
        except Exception:
            log.exception("jobs.accounting_failed", job_id=job_id)
        await super().finish_failed_job(job_id, result_data)

    async def _account(self, job_id: str, run: _Run, finish: bool) -> None:
        JOB_SECONDS.labels(run.function).observe(time.perf_counter() - run.started)
        if not finish:
            JOBS.labels(run.function, "retried").inc()
            if run.error is not None:
                error, message = self._described(run.error)
                await self.failed_jobs.note_last_error(job_id, error, message)
            return
        if run.outcome == "succeeded":
            JOBS.labels(run.function, "succeeded").inc()
            return
        if run.outcome == "cancelled":
            # Cancelled, yet finished: arq's timeout (asyncio.wait_for) ended it.
            error, message = "TimeoutError", f"ran past its {run.timeout_s:g} s timeout"
        elif run.error is not None:
            error, message = self._described(run.error)
        else:
            error, message = "Retry", "asked to be retried; this worker retries no jobs"
        await self._record(job_id, run, error, message, run.job_try)

    async def _account_given_up(self, job_id: str, result_data: bytes | None) -> None:
        if result_data is None:
            return
        result = deserialize_result(result_data, deserializer=self.job_deserializer)
        if result.function not in self.functions:
            # Expired or never ours: nothing could run it again.
            JOBS.labels(UNKNOWN_FUNCTION, "failed").inc()
            log.warning("jobs.failed_unknown", job_id=job_id)
            return
        given_up = self._described(result.result)
        last = await self.failed_jobs.take_last_error(job_id)
        error, message = last if last is not None else given_up
        run = _Run(result.function, result.args, result.kwargs, result.job_try, 0.0)
        tries = max(result.job_try - 1, 1)
        message = f"{given_up[1]}; last try: {message}" if last else message
        await self._record(job_id, run, error, message, tries)

    async def _record(
        self, job_id: str, run: _Run, error: str, message: str, tries: int
    ) -> None:
        JOBS.labels(run.function, "failed").inc()
        job = FailedJob(
            job_id=job_id,
            function=run.function,
            failed_at=datetime.now(UTC),
            error=error,
            message=message[:MESSAGE_LENGTH],
            tries=tries,
            args=tuple(_plain(arg) for arg in run.args),
            kwargs={key: _plain(value) for key, value in run.kwargs.items()},
            queue=self.queue_name,
        )
        await self.failed_jobs.record(job)
        log.error("jobs.failed", job_id=job_id, error=error, tries=tries)

    def _described(self, error: BaseException) -> tuple[str, str]:
        """The error's class, and its message with personal data masked."""
        return type(error).__name__, str(self._masker.mask_text(str(error)))


def _plain(value: Any) -> JsonValue:
    """A job argument as JSON; leadloop's are ids (str, int), never objects."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def failed_jobs_table(jobs: list[FailedJob]) -> Iterator[str]:
    """Lines of a plain table for a terminal: id, function, when, tries, error."""
    header = ("JOB ID", "FUNCTION", "FAILED AT (UTC)", "TRIES", "ERROR")
    rows = [
        (
            job.job_id,
            job.function,
            job.failed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(job.tries),
            f"{job.error}: {job.message}" if job.message else job.error,
        )
        for job in jobs
    ]
    widths = [max(len(row[n]) for row in (header, *rows)) for n in range(4)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        yield "  ".join([*cells, row[4]])
