"""The `leadloop` command: serve, worker, sandbox, and run for everything at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import structlog
import uvicorn
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.api import create_app
from app.clients import open_clients
from app.config import BusinessRules, ConfigError, load_rules
from app.demo import (
    DEFAULT_SEED,
    DEFAULT_TIMEOUT_S,
    Headline,
    Summary,
    demo_rules,
    player,
    quiet_hours_text,
    summary_rows,
)
from app.jobs_cli import jobs
from app.local import (
    Listening,
    LocalRunError,
    listen,
    local_settings,
    rules_file,
    run_local,
    shown_path,
)
from app.logging import configure_logging
from app.metrics import MetricsServer, serve_worker_metrics
from app.portal import NotConfigured
from app.provision.commands import doctor_command, setup_command
from app.security import UnsafeSettings
from app.settings import InvalidSettings, Settings, get_settings
from app.worker import build_worker
from connectors.bitrix24.errors import Bitrix24Error
from kpi_engine import report
from kpi_engine.closing import MonthAlreadyClosed, MonthNotOver
from kpi_engine.data import ClosedMonth, InvalidPeriod, KpiQuery, UnknownManager
from kpi_engine.period import iso_week_period, midnight, month_period, week_just_ended
from kpi_engine.result import KpiResult
from kpi_engine.service import KpiService, utc_now
from kpi_engine.weekly import (
    FeedPost,
    Posted,
    PostInProgress,
    render,
    week_label,
)

log = structlog.stdlib.get_logger(__name__)

PORT = click.IntRange(1, 65535)
T = TypeVar("T")


class _Leadloop(click.Group):
    """The command group; settings that do not parse, or that production refuses,
    become a plain error, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UnsafeSettings, InvalidSettings) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(
    name="leadloop",
    cls=_Leadloop,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """leadloop: messengers, AI and Bitrix24 for small service businesses.

    Settings come from LEADLOOP_* environment variables (or .env), business rules
    from the TOML file named by LEADLOOP_CONFIG.
    """


main.add_command(setup_command)
main.add_command(doctor_command)


main.add_command(jobs)


@main.command()
@click.option("--host", help="Interface to listen on.  [default: LEADLOOP_API_HOST]")
@click.option("--port", type=PORT, help="Port.  [default: LEADLOOP_API_PORT]")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API (webhooks, health, KPIs)."""
    settings = get_settings()
    _prepare(settings)
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
    )


# A worker that lost Redis starts again after this pause, doubled up to the cap while
# Redis stays away; a worker that ran this long first starts with the shortest pause.
REDIS_RETRY_FIRST_S = 1.0
REDIS_RETRY_CAP_S = 30.0
REDIS_RETRY_RESET_S = 60.0


@main.command()
def worker() -> None:
    """Run the arq worker: jobs and the cron table.

    It takes jobs from the Redis at LEADLOOP_REDIS_URL with the rules of
    LEADLOOP_CONFIG, runs LEADLOOP_WORKER_MAX_JOBS jobs at once (default 50) and
    serves its Prometheus metrics on LEADLOOP_WORKER_METRICS_PORT when that is set.
    When Redis goes away it starts again by itself, after 1 s doubling up to 30 s;
    SIGTERM or Ctrl-C stops it.
    """
    settings = get_settings()
    rules = _prepare(settings)
    pause = REDIS_RETRY_FIRST_S
    # One metrics server for the process, whichever run of the worker is current.
    metrics = serve_worker_metrics(settings)
    try:
        while True:
            started = time.monotonic()
            try:
                asyncio.run(_work(settings, rules, metrics))
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                # arq lets a lost connection end the worker; its running jobs come
                # back as a crashed worker's do (the chat lock's lease, the sweep).
                if time.monotonic() - started > REDIS_RETRY_RESET_S:
                    pause = REDIS_RETRY_FIRST_S
                log.warning(
                    "worker.redis_lost", error=type(exc).__name__, restart_in_s=pause
                )
            time.sleep(pause)
            pause = min(pause * 2, REDIS_RETRY_CAP_S)
    finally:
        if metrics is not None:
            metrics.close()


async def _work(
    settings: Settings, rules: BusinessRules, metrics: MetricsServer | None
) -> None:
    ctx = {"settings": settings, "rules": rules, "metrics_server": metrics}
    arq_worker = build_worker(settings, rules, ctx=ctx)
    try:
        # The worker cancels its own main task on SIGINT/SIGTERM: that is the stop.
        with contextlib.suppress(asyncio.CancelledError):
            await arq_worker.async_run()
    finally:
        await arq_worker.close()


def _check_zone(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"{value!r} is not an IANA time zone") from None
    return value


@main.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on."
)
@click.option("--port", type=PORT, default=8801, show_default=True, help="Port.")
@click.option(
    "--snapshot",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="JSON history to load: deals, stage history, calls…",
)
@click.option(
    "--rate-limit",
    type=click.Choice(["standard", "enterprise", "off"]),
    default="standard",
    show_default=True,
    help="Leaky bucket of the portal plan, or none.",
)
@click.option(
    "--application-token",
    metavar="TOKEN",
    help="Signs outbound events.  [default: LEADLOOP_BITRIX24_APPLICATION_TOKEN]",
)
@click.option(
    "--timezone",
    default="Europe/Moscow",
    show_default=True,
    callback=_check_zone,
    help="The portal's time zone.",
)
def sandbox(
    host: str,
    port: int,
    snapshot: Path | None,
    rate_limit: str,
    application_token: str | None,
    timezone: str,
) -> None:
    """Serve the Bitrix24 sandbox: REST at /rest/1/sandbox/, controls at /_sandbox/."""
    from sandbox.server import SandboxOptions, serve

    if application_token is None:
        token = get_settings().bitrix24_application_token
        application_token = token.get_secret_value() if token else None
    serve(
        SandboxOptions(
            host=host,
            port=port,
            snapshot=snapshot,
            rate_limit=rate_limit,
            application_token=application_token,
            timezone=timezone,
        )
    )


@main.command()
@click.option(
    "--once",
    is_flag=True,
    help="Seed, play the demo, print a summary and exit: 0 when everything "
    "happened. Listens on free ports unless LEADLOOP_API_PORT or "
    "LEADLOOP_SANDBOX_PORT is set.",
)
@click.option(
    "--seed",
    type=int,
    metavar="N",
    default=DEFAULT_SEED,
    show_default=True,
    help="The month of history: the same seed, the same month.",
)
@click.option(
    "--no-conversations",
    is_flag=True,
    help="Seed the month, play no conversations; quiet hours as in the rules.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long the conversations, reminder and tap may take.",
)
def run(once: bool, seed: int, no_conversations: bool, timeout: float) -> None:
    """Everything local: the sandbox, the API and a worker, wired together, with a
    month of salon history and a few live conversations. Stop with Ctrl-C.

    Without LEADLOOP_BITRIX24_WEBHOOK_URL the sandbox is the Bitrix24 portal; without
    LEADLOOP_CONFIG the rules are deploy/leadloop.example.toml. While the demo plays,
    quiet hours are off, so that its reminder goes out at any hour. Needs Redis
    (LEADLOOP_REDIS_URL).
    """
    from sandbox.server import SandboxOptions
    from sandbox.server import create_app as create_sandbox_app

    began = time.monotonic()
    settings, rules_source = rules_file(get_settings())
    rules = _prepare(settings)
    if not no_conversations:
        rules_source += (
            f"; quiet hours off for the demo (the rules say {quiet_hours_text(rules)})"
        )
        rules = demo_rules(rules)
    sockets = None
    if once:
        # Bound before anything names the ports: whichever ones are free.
        try:
            settings, sockets = listen(settings, any_free=True)
        except LocalRunError as exc:
            raise click.ClickException(str(exc)) from None
    settings, application_token = local_settings(settings)
    sandbox_app = create_sandbox_app(
        SandboxOptions(
            host=settings.sandbox_host,
            port=settings.sandbox_port,
            application_token=application_token,
            timezone=rules.timezone,
        )
    )
    stop = asyncio.Event()
    play = player(
        settings,
        rules,
        seed=seed,
        conversations=not no_conversations,
        timeout_s=timeout,
        clock=utc_now,
        stop=stop if once else None,
    )
    shown: list[Summary] = []

    def announce(listening: Listening) -> None:
        _announce(listening, rules_source, shown, settings.config)

    async def run_and_show(listening: Listening) -> Summary:
        summary = await play(listening)
        shown.append(summary)
        return summary

    try:
        summary = asyncio.run(
            run_local(
                settings,
                rules,
                sandbox_app,
                on_ready=announce,
                stop=stop,
                sockets=sockets,
                play=run_and_show,
            )
        )
    except LocalRunError as exc:
        raise click.ClickException(str(exc)) from None
    if once:
        _conclude(summary, rules_source, time.monotonic() - began)


def _announce(
    listening: Listening,
    rules_source: str,
    shown: list[Summary],
    config: Path | None,
) -> None:
    rows = [row for summary in shown for row in summary_rows(summary)]
    rows += [
        ("KPIs per manager", _kpi_command(summary.kpi, listening, config))
        for summary in shown
        if summary.kpi is not None
    ]
    # The dashboard opens on the calendar month; the link shows the seeded period.
    dashboards = [
        f"{listening.dashboard}?from={summary.kpi.start}&to={summary.kpi.end}"
        for summary in shown
        if summary.kpi is not None
    ]
    rows += [
        ("rules", rules_source),
        ("Bitrix24 sandbox", f"{listening.sandbox}/"),
        ("Bitrix24 webhook", listening.webhook),
        ("portal's events", listening.events),
        ("API", f"{listening.api}/healthz"),
        ("API docs", listening.docs),
        ("dashboard", dashboards[0] if dashboards else listening.dashboard),
        ("worker's Redis", listening.redis),
    ]
    chats = (
        ("Telegram chat", listening.telegram),
        ("WhatsApp chat", listening.whatsapp),
    )
    rows += [(name, f"POST {where}") for name, where in chats if where]
    click.echo(
        "\n".join(["\nleadloop is running:", *_rows(rows), "Press Ctrl-C to stop.\n"])
    )


def _conclude(summary: Summary | None, rules_source: str, seconds: float) -> None:
    """`run --once`: the summary, and an error exit unless everything happened."""
    if summary is None:
        raise click.ClickException("leadloop run --once was interrupted")
    rows = [("rules", rules_source), *summary_rows(summary)]
    click.echo("\n".join([f"leadloop run --once: {seconds:.1f} s", *_rows(rows)]))
    if summary.failure:
        raise click.ClickException(summary.failure)
    if not summary.complete:
        raise click.ClickException("the demo did not complete")


def _kpi_command(kpi: Headline, listening: Listening, config: Path | None) -> str:
    """The `leadloop kpi` call, in another terminal, behind the KPI line."""
    rules = f"LEADLOOP_CONFIG={shown_path(config)} " if config is not None else ""
    command = shown_path(Path(sys.argv[0]).resolve())
    return (
        f"{rules}LEADLOOP_BITRIX24_WEBHOOK_URL={listening.webhook} {command} kpi "
        f"--from {kpi.start} --to {kpi.end} --format md"
    )


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    return [f"  {label:<18} {text}" for label, text in rows]


# --- KPIs -----------------------------------------------------------------------------

DAY = click.DateTime(formats=["%Y-%m-%d"])
FORMATS = {"json": report.to_json, "csv": report.to_csv, "md": report.to_markdown}


def _as_of(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give the offset, e.g. 2025-01-13T09:00:00+03:00")
    return moment


def _month(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        month_period(value)
    except InvalidPeriod as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _week(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    if value is None:
        return None
    try:
        return iso_week_period(value)[0]
    except InvalidPeriod as exc:
        raise click.BadParameter(str(exc)) from None


@main.group(invoke_without_command=True)
@click.option("--from", "start", type=DAY, metavar="YYYY-MM-DD", help="First day.")
@click.option("--to", "end", type=DAY, metavar="YYYY-MM-DD", help="Day after the last.")
@click.option(
    "--as-of", callback=_as_of, metavar="ISO", help="Seen as of.  [default: now]"
)
@click.option(
    "--manager", type=click.IntRange(min=1), metavar="ID", help="One manager."
)
@click.option(
    "--format",
    "output",
    type=click.Choice(sorted(FORMATS)),
    default="json",
    show_default=True,
)
@click.pass_context
def kpi(
    ctx: click.Context,
    start: datetime | None,
    end: datetime | None,
    as_of: datetime | None,
    manager: int | None,
    output: str,
) -> None:
    """KPIs and bonus of a period: `kpi --from 2025-01-01 --to 2025-02-01`.

    Dates are in the business time zone; --to is exclusive. `kpi close YYYY-MM`
    keeps a month's figures so that later changes are reported.
    """
    if ctx.invoked_subcommand is not None:
        options = {"--from": start, "--to": end, "--as-of": as_of, "--manager": manager}
        _refuse_narrowing(options)
        return
    if start is None or end is None:
        raise click.UsageError("--from and --to are required")
    if end <= start:
        raise click.BadParameter("must be after --from", param_hint="'--to'")
    settings = get_settings()
    rules = _prepare(settings)
    query = KpiQuery(start.date(), end.date(), as_of or utc_now(), manager)

    async def figures(service: KpiService) -> KpiResult:
        return await service.figures(query)

    try:
        result = _run_kpi(settings, rules, figures)
    except UnknownManager as exc:
        raise click.BadParameter(str(exc), param_hint="'--manager'") from None
    shown = FORMATS[output](result)
    click.echo(shown if isinstance(shown, str) else _json(shown), nl=output == "json")
    if output != "json" and result.warnings:
        # The table has no room for them, and nobody should be paid on data known
        # to be incomplete without seeing why.
        codes = sorted({warning.code for warning in result.warnings})
        click.echo(
            f"{len(result.warnings)} warning(s): {', '.join(codes)}; "
            "--format json names the deals",
            err=True,
        )


def _refuse_narrowing(options: Mapping[str, object]) -> None:
    """`kpi close` keeps the whole month of every manager, as of now: options that
    narrow the figures would be ignored, so they are refused."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise click.UsageError(
            f"{', '.join(given)}: `kpi close` closes the whole month for every "
            "manager; give only YYYY-MM"
        )


@kpi.command(name="close")
@click.argument("month", callback=_month, metavar="YYYY-MM")
@click.option("--replace", is_flag=True, help="Close a closed month again.")
def kpi_close(month: str, replace: bool) -> None:
    """Keep a month's figures and the deal values behind them."""
    settings = get_settings()
    rules = _prepare(settings)

    async def close(service: KpiService) -> tuple[ClosedMonth, list[str]]:
        return await service.close(month, replace=replace)

    try:
        record, problems = _run_kpi(settings, rules, close)
    except MonthNotOver as exc:
        raise click.BadParameter(str(exc), param_hint="'MONTH'") from None
    except MonthAlreadyClosed as exc:
        raise click.ClickException(f"{exc}; --replace closes it again") from None
    for problem in problems:
        click.echo(f"Warning: {problem}", err=True)
    click.echo(f"{month} closed: {len(record.deals)} deals kept.")


@main.command(name="report")
@click.option("--week", callback=_week, metavar="YYYY-Www", help="[default: last week]")
@click.option(
    "--as-of", callback=_as_of, metavar="ISO", help="Seen as of.  [default: now]"
)
@click.option("--post", is_flag=True, help="Post it to the Bitrix24 feed (once).")
def report_command(week: date | None, as_of: datetime | None, post: bool) -> None:
    """The weekly report as posted to the Bitrix24 feed (BB codes)."""
    settings = get_settings()
    rules = _prepare(settings)
    now = utc_now()
    start = week or week_just_ended(now, rules.zone)[0]
    ended = midnight(start + timedelta(days=7), rules.zone)
    if post and (as_of is not None or now < ended):
        raise click.UsageError("--post takes a week that has ended, seen now")

    async def weekly(service: KpiService) -> FeedPost | Posted:
        if post:
            return await service.post_weekly(start)
        return render(await service.weekly(start, as_of), rules)

    done = _run_kpi(settings, rules, weekly)
    if isinstance(done, FeedPost):
        click.echo(f"{done.title}\n\n{done.message}")
    elif done.created:
        click.echo(f"Posted {week_label(start)} to the feed: post {done.post_id}.")
    else:
        click.echo(f"{week_label(start)} was posted before: post {done.post_id}.")


def _run_kpi(
    settings: Settings,
    rules: BusinessRules,
    work: Callable[[KpiService], Awaitable[T]],
) -> T:
    async def run() -> T:
        clients = open_clients(settings.redis_url)
        try:
            return await work(KpiService.on_portal(settings, rules, clients))
        finally:
            await clients.aclose()

    try:
        return asyncio.run(run())
    except (NotConfigured, Bitrix24Error, PostInProgress) as exc:
        raise click.ClickException(str(exc)) from None


def _json(figures: object) -> str:
    return json.dumps(figures, ensure_ascii=False, indent=2)


def _prepare(settings: Settings) -> BusinessRules:
    """Logging first, then the rules: a bad rules file stops the command at once."""
    configure_logging(settings)
    try:
        return load_rules(settings.config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
