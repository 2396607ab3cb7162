"""The dashboard's pages over HTTP without a browser: sign-in, sessions, problems."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.settings import Settings
from kpi_engine.dashboard.auth import COOKIE, DashboardAuth, _signature
from tests.dashboard.conftest import MONTH, MSK, TOKEN, RunningApi, api_settings
from tests.sandbox.conftest import RunningSandbox
from tests.support import REDIS_URL

HTML = {"Accept": "text/html"}


@pytest.fixture
def production(portal: RunningSandbox, rules_file: Path) -> Settings:
    return api_settings(portal, rules_file, env="production")


def app_client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), base_url="https://testserver")


def session(token: str, expires: int) -> str:
    return f"{expires}.{_signature(token.encode(), expires)}"


class TestSignIn:
    def test_the_session_cookie_opens_the_dashboard(self, production: Settings) -> None:
        with app_client(production) as client:
            signed_in = client.post(
                "/dashboard/login",
                data={"token": TOKEN, "next": "/dashboard?month=2025-01"},
                follow_redirects=False,
            )
            page = client.get("/dashboard", params=MONTH, headers=HTML)

        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == "/dashboard?month=2025-01"
        cookie = signed_in.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Secure", "Path=/dashboard"):
            assert attribute in cookie
        assert TOKEN not in cookie
        assert page.status_code == 200

    @pytest.mark.parametrize(
        "value",
        [
            session(TOKEN, int(time.time()) - 1),  # expired
            session(TOKEN + "x", int(time.time()) + 600),  # another token's
            f"{int(time.time()) + 600}.{'0' * 64}",  # forged
            TOKEN,
            "",
        ],
        ids=["expired", "another-token", "forged", "the-token-itself", "empty"],
    )
    def test_a_bad_cookie_sends_the_browser_to_sign_in(
        self, production: Settings, value: str
    ) -> None:
        with app_client(production) as client:
            client.cookies.set(COOKIE, value, path="/dashboard")
            response = client.get(
                "/dashboard", params=MONTH, headers=HTML, follow_redirects=False
            )

        assert response.status_code == 303
        assert response.headers["location"].startswith("/dashboard/login?next=")

    def test_sign_in_never_sends_the_browser_off_the_dashboard(
        self, production: Settings
    ) -> None:
        with app_client(production) as client:
            response = client.post(
                "/dashboard/login",
                data={"token": TOKEN, "next": "//elsewhere.example/dashboard"},
                follow_redirects=False,
            )

        assert response.headers["location"] == "/dashboard"

    def test_without_an_admin_token_the_dashboard_is_off(
        self, production: Settings
    ) -> None:
        settings = production.model_copy(update={"admin_token": None})
        with app_client(settings) as client:
            response = client.get("/dashboard", headers=HTML)

        assert response.status_code == 503
        assert response.json()["error"] == "admin_disabled"

    def test_signing_out_clears_the_cookie(self, production: Settings) -> None:
        with app_client(production) as client:
            response = client.post("/dashboard/logout", follow_redirects=False)

        assert response.status_code == 303
        assert f'{COOKIE}=""' in response.headers["set-cookie"]

    def test_locally_there_is_nothing_to_sign_in_to(
        self, local_api: RunningApi
    ) -> None:
        response = httpx.get(
            f"{local_api.base_url}/dashboard/login", follow_redirects=False
        )

        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard"
        assert not DashboardAuth(local_api.settings).required


class TestPages:
    def test_the_default_period_is_this_month_in_the_business_zone(
        self, local_api: RunningApi
    ) -> None:
        response = httpx.get(f"{local_api.base_url}/dashboard", timeout=60)
        today = datetime.now(MSK).date()

        assert response.status_code == 200
        assert f'<p class="period-line" id="period-line">01.{today:%m.%Y} – ' in (
            response.text
        )
        assert f'name="month" value="{today:%Y-%m}"' in response.text

    def test_pages_forbid_scripts_and_framing(self, local_api: RunningApi) -> None:
        response = httpx.get(
            f"{local_api.base_url}/dashboard", params=MONTH, timeout=60
        )

        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "<script" not in response.text

    def test_a_metric_without_a_list_is_422(self, local_api: RunningApi) -> None:
        response = httpx.get(
            f"{local_api.base_url}/dashboard/deals",
            params={**MONTH, "metric": "leads_per_day"},
        )

        assert response.status_code == 422
        assert "За этим числом нет списка сделок." in response.text

    def test_a_period_longer_than_a_year_is_422(self, local_api: RunningApi) -> None:
        response = httpx.get(
            f"{local_api.base_url}/dashboard",
            params={"from": "2024-01-01", "to": "2025-02-01"},
        )

        assert response.status_code == 422
        assert "не больше 366 дней" in response.text

    def test_a_period_ending_before_it_starts_is_422(
        self, local_api: RunningApi
    ) -> None:
        response = httpx.get(
            f"{local_api.base_url}/dashboard",
            params={"from": "2025-02-01", "to": "2025-01-01"},
        )

        assert response.status_code == 422
        assert "конец должен быть позже начала" in response.text

    def test_a_manager_narrows_the_list(self, local_api: RunningApi) -> None:
        def count(**params: str) -> int:
            response = httpx.get(
                f"{local_api.base_url}/dashboard/deals",
                params={**MONTH, "metric": "leads", **params},
                timeout=60,
            )
            assert response.status_code == 200
            return response.text.count('data-column="id"')

        everyone, one = count(), count(manager="10")

        assert 0 < one < everyone

    def test_without_a_portal_the_page_says_what_to_set(self) -> None:
        settings = Settings(_env_file=None, redis_url=REDIS_URL)
        with app_client(settings) as client:
            response = client.get("/dashboard")

        assert response.status_code == 503
        assert "LEADLOOP_BITRIX24_WEBHOOK_URL" in response.text
