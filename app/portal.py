"""The configured Bitrix24 portal as a gateway client, for the API, the CLI and jobs.

Every client of one portal shares its request budget (`PortalRateLimiter` in Redis)
and the process's upstream HTTP client (`Clients.http`, made once with explicit
timeouts), so building one per job or request opens nothing.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import SecretStr

from app.clients import Clients
from app.config import BusinessRules
from app.settings import Settings
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.ratelimit import (
    PortalRateLimiter,
    RequestLimiter,
    RequestMeter,
)


class NotConfigured(Exception):
    """No Bitrix24 portal to talk to: `LEADLOOP_BITRIX24_WEBHOOK_URL` is not set."""


def portal_client(
    settings: Settings,
    rules: BusinessRules,
    clients: Clients,
    *,
    metered: bool = False,
) -> Bitrix24Client:
    """A gateway client on the configured inbound webhook, rate-limited.

    The portal's zone is taken to be the business zone. `metered` counts the HTTP
    requests (`RequestMeter` as the client's limiter), for the cost of a KPI load.
    """
    url = webhook_url(settings)
    limiter: RequestLimiter = PortalRateLimiter(clients.redis, _portal(url))
    return Bitrix24Client(
        clients.http,
        WebhookCredentials(url),
        portal_zone=rules.zone,
        limiter=RequestMeter(limiter) if metered else limiter,
    )


def webhook_url(settings: Settings) -> SecretStr:
    """The portal's inbound webhook URL; NotConfigured when there is none."""
    url = settings.bitrix24_webhook_url
    if url is None:
        raise NotConfigured("LEADLOOP_BITRIX24_WEBHOOK_URL is not set")
    return url


def _portal(url: SecretStr) -> str:
    """The portal's host, which names its request budget (never the webhook code)."""
    return urlsplit(url.get_secret_value()).netloc
