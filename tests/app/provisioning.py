"""What the setup and doctor tests share: a sandbox portal and bot over real HTTP,
settings pointing at it, and the portal as an inbound webhook or as an OAuth app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from app.config import BusinessRules, parse_rules
from app.provision.common import INTERACTIVE_RETRY, portal_admin, public_urls
from app.provision.doctor import DoctorTarget
from app.provision.setup import SetupReport, SetupTarget, Status, run_setup
from app.settings import Settings
from connectors.bitrix24.admin import PortalAdmin
from connectors.bitrix24.auth import OAuthCredentials, OAuthTokens, OAuthTokenStore
from connectors.bitrix24.client import Bitrix24Client
from connectors.messengers.telegram_webhook import TelegramWebhook
from sandbox.server import SandboxOptions
from sandbox.telegram import SANDBOX_BOT_TOKEN
from tests.app.conftest import kept_uvicorn_log_levels
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.support import REDIS_URL

PUBLIC_URL = "https://leadloop.salon.test"  # a reserved TLD: never resolves
TELEGRAM_SECRET = "s3cret_Token-1"
APPLICATION_TOKEN = "app-token-1"
# A salon's rules: the default pipeline with two custom stages, the visit field and
# two qualification fields.
SALON_RULES = """
[crm]
mode = "classic"
pipelines = [0]
visit_field = "UF_CRM_LL_VISIT_AT"

[crm.stages]
new = ["NEW"]
booked = ["PREPARATION"]
confirmed = ["PREPAYMENT_INVOICE"]
visited = ["WON"]
lost = ["LOSE"]

[intake.fields]
readiness = "UF_CRM_LL_READINESS"
summary = "UF_CRM_LL_SUMMARY"
"""


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with (
        kept_uvicorn_log_levels(),
        running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as running,
    ):
        yield running


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    """The module's sandbox as a fresh portal with a bot that has no webhook."""
    portal_server.reset()
    portal_server.http.post(f"/bot{SANDBOX_BOT_TOKEN}/deleteWebhook").raise_for_status()
    return portal_server


def salon_rules(extra: str = "", *, base: str = SALON_RULES) -> BusinessRules:
    return parse_rules(base + extra)


def portal_settings(portal: RunningSandbox, **values: Any) -> Settings:
    """Settings for the sandbox portal and its bot, with a public address."""
    defaults: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "bitrix24_webhook_url": portal.webhook,
        "bitrix24_application_token": APPLICATION_TOKEN,
        "telegram_bot_token": SANDBOX_BOT_TOKEN,
        "telegram_api_base": portal.base_url,
        "telegram_webhook_secret": TELEGRAM_SECRET,
        "public_url": PUBLIC_URL,
    }
    return Settings(_env_file=None, **{**defaults, **values})


@dataclass
class Upstreams:
    """One test's HTTP client to the sandbox."""

    http: httpx.AsyncClient

    def admin(self, settings: Settings, rules: BusinessRules) -> PortalAdmin:
        return portal_admin(settings, rules, self.http)

    def telegram(self, settings: Settings) -> TelegramWebhook | None:
        token = settings.telegram_bot_token
        if token is None:
            return None
        return TelegramWebhook(self.http, token, settings.telegram_api_base)

    def setup_target(
        self,
        settings: Settings,
        rules: BusinessRules,
        *,
        admin: PortalAdmin | None = None,
        pipelines: bool = False,
    ) -> SetupTarget:
        return SetupTarget(
            settings,
            rules,
            admin or self.admin(settings, rules),
            self.telegram(settings),
            public_urls(settings),
            pipelines=pipelines,
        )

    def doctor_target(
        self,
        settings: Settings,
        rules: BusinessRules,
        redis: Redis,
        *,
        admin: PortalAdmin | None = None,
    ) -> DoctorTarget:
        return DoctorTarget(
            settings,
            rules,
            redis,
            self.http,
            admin or self.admin(settings, rules),
            self.telegram(settings),
            public_urls(settings),
        )


@pytest.fixture
async def upstreams() -> AsyncIterator[Upstreams]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield Upstreams(http)


async def set_up(
    upstreams: Upstreams, settings: Settings, rules: BusinessRules
) -> None:
    """`leadloop setup` as an integrator runs it first; every step must succeed."""
    report = await run_setup(upstreams.setup_target(settings, rules))
    assert not report.failed, report.steps


@dataclass
class App:
    """The sandbox portal as an OAuth app: tokens in Redis, the raw token for
    checking what the app sees."""

    admin: PortalAdmin
    access_token: str


@pytest.fixture
async def oauth_app(
    portal: RunningSandbox, upstreams: Upstreams, redis: Redis
) -> AsyncIterator[App]:
    minted = portal.http.post("/_sandbox/oauth/tokens", json={"user_id": 1})
    minted.raise_for_status()
    pair = minted.json()
    prefix = f"leadloop-test:{uuid4().hex}"
    store = OAuthTokenStore(redis, "sandbox", key_prefix=prefix)
    await store.save(OAuthTokens.from_answer(pair))
    credentials = OAuthCredentials(
        store,
        upstreams.http,
        client_id=pair["client_id"],
        client_secret=SecretStr(pair["client_secret"]),
    )
    client = Bitrix24Client(
        upstreams.http,
        credentials,
        portal_zone=salon_rules().zone,
        retry=INTERACTIVE_RETRY,
    )
    yield App(PortalAdmin(client), pair["access_token"])
    await redis.delete(store.key)


def statuses(report: SetupReport) -> dict[str, Status]:
    """Each step's subject and what became of it."""
    return {step.subject: step.status for step in report.steps}


def snapshot(portal: RunningSandbox) -> dict[str, Any]:
    """The portal's whole state, for proving a run changed nothing."""
    response = portal.http.get("/_sandbox/snapshot")
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state
