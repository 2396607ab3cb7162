"""The reminders' parts wired together from what an arq job's context holds.

arq hands every job a copy of the worker's context, so `reminders_from_ctx` builds
the parts for the job that asks (plain objects on the worker's shared clients: no
connection is opened and nothing is read) and keeps them in that job's context.
Tests may put their own under `"reminders"` first, or only a clock
(`"reminder_clock"`) and key prefix (`"reminder_keys"`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis

from app.clients import Clients
from app.config import BusinessRules, load_rules

# NotConfigured and portal_client are re-exported: qualification.handler takes them
# from here.
from app.portal import NotConfigured as NotConfigured
from app.portal import portal_client as portal_client
from app.portal import webhook_url
from app.settings import Settings
from connectors.bitrix24.client import Bitrix24Client
from connectors.messengers.base import Sender
from connectors.messengers.telegram import TelegramSender
from connectors.messengers.whatsapp import WhatsAppSender
from reminders.answers import ReminderAnswers
from reminders.crm import Crm
from reminders.delivery import Courier
from reminders.firing import Firing
from reminders.keys import ReminderKeys
from reminders.links import Links
from reminders.planner import Planner
from webhooks.keys import InboxKeys

Clock = Callable[[], datetime]
CTX_KEY = "reminders"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Reminders:
    """Everything the reminder jobs and the inbound chain call."""

    rules: BusinessRules
    planner: Planner
    firing: Firing
    answers: ReminderAnswers
    links: Links
    crm: Crm
    clock: Clock
    keys: ReminderKeys


def build_reminders(
    redis: ArqRedis,
    client: Bitrix24Client,
    senders: Mapping[str, Sender],
    rules: BusinessRules,
    *,
    clock: Clock = utc_now,
    keys: ReminderKeys | None = None,
    inbox_keys: InboxKeys | None = None,
) -> Reminders:
    """Wire the parts on one Redis (whose default queue the jobs go to)."""
    keys = keys or ReminderKeys()
    crm = Crm(client)
    courier = Courier(senders, redis, rules, keys=keys, inbox_keys=inbox_keys)
    firing = Firing(redis, crm, courier, rules, clock, keys=keys)
    answers = ReminderAnswers(
        redis, crm, senders, courier, firing, rules, clock, keys=keys
    )
    return Reminders(
        rules=rules,
        planner=Planner(redis, crm, rules, clock, keys=keys),
        firing=firing,
        answers=answers,
        links=Links(redis, keys=keys),
        crm=crm,
        clock=clock,
        keys=keys,
    )


def reminders_from_ctx(ctx: dict[str, Any]) -> Reminders:
    """The job's reminders, built on first use; NotConfigured without a portal."""
    built = ctx.get(CTX_KEY)
    if isinstance(built, Reminders):
        return built
    settings: Settings = ctx["settings"]
    webhook_url(settings)  # NotConfigured before the rules are read
    rules: BusinessRules = ctx.get("rules") or load_rules(settings.config)
    clients: Clients = ctx["clients"]
    reminders = build_reminders(
        ctx["redis"],
        portal_client(settings, rules, clients),
        senders_from(settings, clients),
        rules,
        clock=ctx.get("reminder_clock") or utc_now,
        keys=ctx.get("reminder_keys"),
        inbox_keys=ctx.get("inbound_keys"),
    )
    ctx[CTX_KEY] = reminders
    return reminders


def senders_from(settings: Settings, clients: Clients) -> dict[str, Sender]:
    """A sender for every channel whose credentials are set, on its own client."""
    senders: dict[str, Sender] = {}
    if settings.telegram_bot_token is not None:
        senders["telegram"] = TelegramSender(
            clients.telegram, settings.telegram_bot_token, settings.telegram_api_base
        )
    token, number = settings.whatsapp_access_token, settings.whatsapp_phone_number_id
    if token is not None and number:
        senders["whatsapp"] = WhatsAppSender(
            clients.whatsapp, token, number, settings.whatsapp_api_base
        )
    return senders
