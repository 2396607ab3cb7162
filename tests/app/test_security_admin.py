"""In production, everything but health, webhooks and the login form wants the token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr

from app.api import create_app
from tests.app.conftest import MakeSettings
from tests.support import in_process

ADMIN_TOKEN = "Zq7-admin-4mT0kXb9Lr2vW8s"
PERIOD = "from=2026-11-01&to=2026-12-01"
ADMIN_ROUTES = [
    f"/api/kpi?{PERIOD}",
    "/metrics",
    "/dashboard",
    f"/dashboard/deals?metric=leads&{PERIOD}",
]
# Open on purpose: probes, the API's description, the login form and its style.
# The webhooks check their senders' secrets themselves (tests/webhooks).
PUBLIC_PATHS = {"/healthz", "/readyz", "/webhooks/bitrix24", "/webhooks/whatsapp"}


@pytest.fixture
async def api(
    make_settings: MakeSettings, redis: ArqRedis
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(env="production", admin_token=SecretStr(ADMIN_TOKEN))
    async with in_process(create_app(settings)) as client:
        yield client


class TestAdminSurface:
    @pytest.mark.parametrize("path", ADMIN_ROUTES)
    @pytest.mark.parametrize(
        "authorization",
        [None, "Bearer wrong-token-0123456789", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN],
        ids=["none", "wrong", "other-scheme", "no-scheme"],
    )
    async def test_refuses_without_the_bearer_token(
        self, api: httpx.AsyncClient, path: str, authorization: str | None
    ) -> None:
        headers = {"authorization": authorization} if authorization else {}

        response = await api.get(path, headers=headers)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert ADMIN_TOKEN not in response.text

    @pytest.mark.parametrize("path", ADMIN_ROUTES)
    async def test_lets_the_token_through(
        self, api: httpx.AsyncClient, path: str
    ) -> None:
        response = await api.get(
            path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )

        # 503 where no portal is configured: past the check, not stopped by it.
        assert response.status_code in {200, 503}
        assert "bearer token is required" not in response.text

    async def test_every_documented_route_is_public_on_purpose_or_guarded(
        self, api: httpx.AsyncClient
    ) -> None:
        paths = (await api.get("/openapi.json")).json()["paths"]
        guarded = set(paths) - PUBLIC_PATHS

        assert guarded == {"/api/kpi", "/metrics"}
        for path in guarded:
            response = await api.get(f"{path}?{PERIOD}")
            assert response.status_code == 401, path
