"""The `leadloop setup` and `leadloop doctor` commands, registered in `app.cli`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import click
import httpx

from app.clients import UPSTREAM_TIMEOUT, redis_client
from app.config import BusinessRules, ConfigError, load_rules
from app.logging import configure_logging
from app.portal import NotConfigured
from app.provision import doctor, setup
from app.provision.common import (
    WEBHOOK_HOWTO,
    PublicUrls,
    explain_bitrix24,
    portal_admin,
    public_urls,
)
from app.settings import Settings, get_settings
from connectors.bitrix24.admin import PortalAdmin
from connectors.bitrix24.errors import Bitrix24Error
from connectors.messengers.base import messenger_client
from connectors.messengers.telegram_webhook import TelegramWebhook


@click.command(name="setup")
@click.option(
    "--pipeline",
    "pipelines",
    is_flag=True,
    help="Also create the pipelines and stages that [crm] names.",
)
@click.option(
    "--dry-run", is_flag=True, help="Show what would be done; change nothing."
)
def setup_command(pipelines: bool, dry_run: bool) -> None:
    """Create what leadloop needs on the portal and the bots; safe to run again.

    User fields (visit time, qualification), deal sources, event bindings (apps
    only) and the Telegram webhook; pipelines and stages with --pipeline. Prints
    what was done, what was already there and what was left alone, and why.
    """
    settings, rules, public = _load()

    async def run() -> setup.SetupReport:
        async with _upstreams(settings, rules) as upstreams:
            if upstreams.admin is None:
                raise NotConfigured("LEADLOOP_BITRIX24_WEBHOOK_URL is not set")
            target = setup.SetupTarget(
                settings,
                rules,
                upstreams.admin,
                upstreams.telegram,
                public,
                pipelines=pipelines,
            )
            return await setup.run_setup(target, dry_run=dry_run)

    try:
        report = asyncio.run(run())
    except NotConfigured:
        raise click.ClickException(
            f"LEADLOOP_BITRIX24_WEBHOOK_URL is not set: {WEBHOOK_HOWTO}"
        ) from None
    except Bitrix24Error as error:
        explained = explain_bitrix24(error)
        raise click.ClickException(
            f"{explained.summary}\n  fix: {explained.fix}"
        ) from None
    click.echo(setup.render(report, dry_run=dry_run))
    if report.failed:
        raise SystemExit(1)


@click.command(name="doctor")
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
def doctor_command(output: str) -> None:
    """Check the portal, its scopes and stages, the webhooks, Redis and the model.

    Explains each failure in plain words with the fix; exits 1 when any check
    finds a problem.
    """
    settings, rules, public = _load()

    async def run() -> doctor.Diagnosis:
        redis = redis_client(settings.redis_url)
        try:
            async with _upstreams(settings, rules) as upstreams:
                target = doctor.DoctorTarget(
                    settings,
                    rules,
                    redis,
                    upstreams.http,
                    upstreams.admin,
                    upstreams.telegram,
                    public,
                )
                return await doctor.diagnose(target)
        finally:
            await redis.aclose()

    diagnosis = asyncio.run(run())
    if output == "json":
        click.echo(json.dumps(diagnosis.as_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(doctor.render(diagnosis))
    if not diagnosis.healthy:
        raise SystemExit(1)


@dataclass(frozen=True)
class _Upstreams:
    http: httpx.AsyncClient
    admin: PortalAdmin | None
    telegram: TelegramWebhook | None


@asynccontextmanager
async def _upstreams(
    settings: Settings, rules: BusinessRules
) -> AsyncIterator[_Upstreams]:
    """The portal (None when not configured) and the bot, on clients made once."""
    http = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)
    telegram_http = messenger_client()
    try:
        try:
            admin: PortalAdmin | None = portal_admin(settings, rules, http)
        except NotConfigured:
            admin = None
        token = settings.telegram_bot_token
        telegram = (
            TelegramWebhook(telegram_http, token, settings.telegram_api_base)
            if token is not None
            else None
        )
        yield _Upstreams(http, admin, telegram)
    finally:
        await telegram_http.aclose()
        await http.aclose()


def _load() -> tuple[Settings, BusinessRules, PublicUrls | None]:
    """Settings, logging, the rules and the public address, or a plain refusal."""
    settings = get_settings()
    configure_logging(settings)
    try:
        rules = load_rules(settings.config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return settings, rules, public_urls(settings)
