"""The `leadloop` command: serve, worker, sandbox, and run for everything at once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import uvicorn

from app.api import create_app
from app.config import BusinessRules, ConfigError, load_rules
from app.local import Listening, LocalRunError, local_settings, run_local
from app.logging import configure_logging
from app.settings import Settings, get_settings
from app.worker import build_worker

PORT = click.IntRange(1, 65535)


@click.group(name="leadloop", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """leadloop: messengers, AI and Bitrix24 for small service businesses.

    Settings come from LEADLOOP_* environment variables (or .env), business rules
    from the TOML file named by LEADLOOP_CONFIG.
    """


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


@main.command()
def worker() -> None:
    """Run the arq worker: jobs and the cron table."""
    settings = get_settings()
    rules = _prepare(settings)
    asyncio.run(_work(settings, rules))


async def _work(settings: Settings, rules: BusinessRules) -> None:
    arq_worker = build_worker(settings, rules)
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
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8801, show_default=True)
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
def run() -> None:
    """Run the sandbox, the API and a worker in one process, wired together.

    Without LEADLOOP_BITRIX24_WEBHOOK_URL the API and worker talk to the sandbox.
    Needs a Redis server (LEADLOOP_REDIS_URL). Stop with Ctrl-C.
    """
    from sandbox.server import SandboxOptions
    from sandbox.server import create_app as create_sandbox_app

    settings, application_token = local_settings(get_settings())
    rules = _prepare(settings)
    sandbox_app = create_sandbox_app(
        SandboxOptions(
            host=settings.sandbox_host,
            port=settings.sandbox_port,
            application_token=application_token,
            timezone=rules.timezone,
        )
    )
    try:
        asyncio.run(run_local(settings, rules, sandbox_app, on_ready=_announce))
    except LocalRunError as exc:
        raise click.ClickException(str(exc)) from None


def _announce(listening: Listening) -> None:
    click.echo(
        "\nleadloop is running:\n"
        f"  Bitrix24 sandbox   {listening.sandbox}/\n"
        f"  Bitrix24 webhook   {listening.webhook}\n"
        f"  API                {listening.api}/\n"
        f"  API docs           {listening.docs}\n"
        f"  worker's Redis     {listening.redis}\n"
        "Press Ctrl-C to stop.\n"
    )


def _prepare(settings: Settings) -> BusinessRules:
    """Logging first, then the rules: a bad rules file stops the command at once."""
    configure_logging(settings)
    try:
        return load_rules(settings.config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
