"""What setup and doctor share: the public addresses, the portal client they use,
and every failure put in plain words with its fix."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from app.config import BusinessRules
from app.portal import webhook_url
from app.settings import Settings
from connectors.bitrix24.admin import PortalAdmin
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InsufficientScope,
    InvalidCredentials,
    PortalBlocked,
    RateLimited,
    ReauthorizationRequired,
    Rejected,
    Unavailable,
    WriteOutcomeUnknown,
)
from connectors.messengers import base as messenger

# A person is waiting at the terminal: one retry at most, and no minute-long wait
# for a portal that refuses connections. Setup reads everything again before it
# writes, so a second run repairs what a failed one left.
INTERACTIVE_RETRY = RetryPolicy(attempts=2, unavailable_for_s=0.0)
WEBHOOK_HOWTO = (
    "in the portal open Developer resources → Other → Inbound webhook, tick the "
    "scopes crm, task, log, im and user, and put its URL in "
    "LEADLOOP_BITRIX24_WEBHOOK_URL"
)


@dataclass(frozen=True)
class Explained:
    """A failure in plain words and what to do about it."""

    summary: str
    fix: str


@dataclass(frozen=True)
class PublicUrls:
    """Where Telegram, Meta and Bitrix24 reach leadloop's webhook routes."""

    base: str

    @property
    def telegram(self) -> str:
        return f"{self.base}/webhooks/telegram"

    @property
    def whatsapp(self) -> str:
        return f"{self.base}/webhooks/whatsapp"

    @property
    def bitrix24(self) -> str:
        return f"{self.base}/webhooks/bitrix24"


def public_urls(settings: Settings) -> PublicUrls | None:
    """The configured public address (checked as a bare http(s) address with the
    other settings), or None when LEADLOOP_PUBLIC_URL is unset."""
    return PublicUrls(settings.public_url) if settings.public_url else None


def portal_admin(
    settings: Settings, rules: BusinessRules, http: httpx.AsyncClient
) -> PortalAdmin:
    """The configured inbound webhook, without the shared rate limiter.

    Setup and doctor send a few dozen requests, well inside the portal's burst,
    and must work while Redis is down: doctor is how one finds that out.
    """
    client = Bitrix24Client(
        http,
        WebhookCredentials(webhook_url(settings)),
        portal_zone=rules.zone,
        retry=INTERACTIVE_RETRY,
    )
    return PortalAdmin(client)


def explain_bitrix24(error: Bitrix24Error) -> Explained:
    """A gateway error as what happened and what to change."""
    code = f" ({error.code})" if error.code else ""
    method = error.method or "the call"
    if isinstance(error, InvalidCredentials):
        return Explained(
            f"the portal does not accept these credentials{code}: the webhook's "
            "code is wrong, the webhook was deleted, or its user was deactivated",
            "copy the URL again from the portal's inbound webhook page into "
            "LEADLOOP_BITRIX24_WEBHOOK_URL (or " + WEBHOOK_HOWTO + ")",
        )
    if isinstance(error, InsufficientScope):
        return Explained(
            f"the webhook may not call {method}{code}: a scope is missing or the "
            "webhook's user lacks the rights",
            "edit the inbound webhook in the portal and tick the scopes crm, task, "
            "log, im and user; its URL stays the same",
        )
    if isinstance(error, ExpiredToken | ReauthorizationRequired):
        return Explained(
            f"the app's access has run out{code}",
            "open the app in the portal again (or reinstall it) so that it gets "
            "new tokens",
        )
    if isinstance(error, PortalBlocked):
        return Explained(
            f"the portal refuses every REST call{code}: its plan has no REST, it "
            "is blocked for overload, or it was deleted",
            "check the portal's plan and state in Bitrix24 (Settings → "
            "Subscription); REST needs a commercial plan",
        )
    if error.code.upper() == "INVALID_REQUEST":
        return Explained(
            "the portal accepts webhooks over https only",
            "write the webhook URL with https:// in LEADLOOP_BITRIX24_WEBHOOK_URL",
        )
    if isinstance(error, RateLimited):
        return Explained(
            f"the portal's request limit is used up right now{code}",
            "wait a minute and run again; if it keeps happening, another "
            "integration spends the portal's budget",
        )
    if isinstance(error, Unavailable | WriteOutcomeUnknown):
        return _unavailable(error)
    if error.code.upper() == "ERROR_METHOD_NOT_FOUND":
        return Explained(
            f"the portal does not know {method}: its module is switched off or the "
            "plan does not include it",
            "switch the CRM (and tasks) on in the portal, or check the plan",
        )
    if isinstance(error, Rejected):
        said = error.description or error.code or "no reason given"
        return Explained(
            f"the portal refused {method}: {said}",
            "check the portal's settings named in that answer; an administrator's "
            "webhook is needed to create fields and stages",
        )
    return Explained(
        f"{method} failed: {error}",
        "run `leadloop doctor` to see which part of the portal fails",
    )


def _unavailable(error: Bitrix24Error) -> Explained:
    status = error.status
    if status is not None and 300 <= status < 400:
        return Explained(
            f"the portal answers with a redirect (HTTP {status}): it was renamed or "
            "moved",
            "open the portal in a browser and write its new address into "
            "LEADLOOP_BITRIX24_WEBHOOK_URL",
        )
    if status is None:
        return Explained(
            "no connection to the portal: the host does not answer, refuses the "
            "connection, or the answer timed out",
            "check the host in LEADLOOP_BITRIX24_WEBHOOK_URL and that this machine "
            "can reach it (DNS, firewall, proxy)",
        )
    return Explained(
        f"the portal answered HTTP {status} without a Bitrix24 answer (an outage, "
        "or a proxy's error page)",
        "try again in a few minutes; if it stays, check the address in "
        "LEADLOOP_BITRIX24_WEBHOOK_URL and any proxy in between",
    )


def explain_telegram(
    error: messenger.MessengerError, api_base: str = "api.telegram.org"
) -> Explained:
    """A Bot API error as what happened and what to change."""
    if isinstance(error, messenger.AuthFailed):
        return Explained(
            "Telegram does not accept the bot token",
            "copy the token from @BotFather into LEADLOOP_TELEGRAM_BOT_TOKEN",
        )
    if isinstance(error, messenger.Unavailable):
        return Explained(
            f"the Telegram Bot API at {api_base} did not answer ({error.method})",
            "check that this machine reaches it, or LEADLOOP_TELEGRAM_API_BASE",
        )
    if isinstance(error, messenger.SlowDown):
        return Explained(
            "Telegram asks to slow down",
            f"run again in {error.retry_after_s:.0f} s",
        )
    return Explained(
        f"Telegram refused {error.method}: {error.description or error}",
        "LEADLOOP_PUBLIC_URL must be https on port 443, 80, 88 or 8443 with a "
        "certificate for its host name",
    )
