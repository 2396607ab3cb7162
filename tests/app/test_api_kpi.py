"""`GET /api/kpi`: the admin bearer token, the parameters and the three formats."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr

from app.api import create_app
from tests.app.conftest import MakeSettings, kpi_portal
from tests.sandbox.conftest import RunningSandbox
from tests.support import in_process

TOKEN = "adm1n-t0ken-for-tests"
WEEK = {
    "from": "2025-01-06",
    "to": "2025-01-13",
    "as_of": "2025-01-13T09:00:00+03:00",
}

OpenApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="module")
def portal() -> Iterator[RunningSandbox]:
    with kpi_portal(deals=200, activities=800) as sandbox:
        yield sandbox


@pytest.fixture
def open_api(
    make_settings: MakeSettings, redis: ArqRedis, portal: RunningSandbox
) -> OpenApi:
    """An app on the sandbox portal (lifespan included), called in-process."""

    @asynccontextmanager
    async def open_app(**values: object) -> AsyncIterator[httpx.AsyncClient]:
        values.setdefault("bitrix24_webhook_url", SecretStr(portal.webhook))
        values.setdefault("admin_token", SecretStr(TOKEN))
        app = create_app(make_settings(**values))
        async with in_process(app) as client:
            yield client
        bucket = f"leadloop:bitrix24:{portal.base_url.removeprefix('http://')}:bucket"
        await redis.delete(bucket)

    return open_app


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestAdminToken:
    async def test_without_a_token_the_answer_is_401(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get("/api/kpi", params=WEEK)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "error": "unauthorized",
            "detail": "a valid bearer token is required",
        }

    @pytest.mark.parametrize(
        "authorization",
        [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, ""],
    )
    async def test_a_wrong_token_or_scheme_is_401(
        self, open_api: OpenApi, authorization: str
    ) -> None:
        async with open_api() as api:
            response = await api.get(
                "/api/kpi", params=WEEK, headers={"Authorization": authorization}
            )

        assert response.status_code == 401

    async def test_no_configured_token_turns_the_endpoint_off(
        self, open_api: OpenApi
    ) -> None:
        async with open_api(admin_token=None) as api:
            response = await api.get("/api/kpi", params=WEEK, headers=bearer(""))

        assert response.status_code == 503
        assert response.json()["error"] == "admin_disabled"

    async def test_the_scheme_is_case_insensitive(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get(
                "/api/kpi", params=WEEK, headers={"Authorization": f"bearer {TOKEN}"}
            )

        assert response.status_code == 200


class TestParameters:
    async def test_json_is_the_report_of_kpi_md(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get("/api/kpi", params=WEEK, headers=bearer())

        assert response.status_code == 200
        figures = response.json()
        assert list(figures) == ["period", "managers", "total", "warnings"]
        assert figures["period"]["start"] == "2025-01-06T00:00:00+03:00"
        assert figures["period"]["as_of"] == "2025-01-13T09:00:00+03:00"

    async def test_asking_twice_gives_the_same_figures(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            first = await api.get("/api/kpi", params=WEEK, headers=bearer())
            second = await api.get("/api/kpi", params=WEEK, headers=bearer())

        assert first.json() == second.json()

    @pytest.mark.parametrize(
        ("output", "media_type", "first_cell"),
        [("csv", "text/csv", "id,name,leads"), ("md", "text/markdown", "| id |")],
    )
    async def test_csv_and_markdown_tables(
        self, open_api: OpenApi, output: str, media_type: str, first_cell: str
    ) -> None:
        async with open_api() as api:
            response = await api.get(
                "/api/kpi", params={**WEEK, "format": output}, headers=bearer()
            )

        assert response.status_code == 200
        assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
        assert response.text.startswith(first_cell)

    async def test_one_manager(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get(
                "/api/kpi", params={**WEEK, "manager": "12"}, headers=bearer()
            )

        assert [row["id"] for row in response.json()["managers"]] == ["12"]

    @pytest.mark.parametrize(
        ("params", "detail"),
        [
            ({**WEEK, "to": "2025-01-06"}, "the period must end after it starts"),
            ({**WEEK, "as_of": "2025-01-13T09:00:00"}, "as_of must carry"),
            ({**WEEK, "manager": "999"}, "user 999 is not an employee"),
        ],
    )
    async def test_a_bad_query_is_422_with_the_reason(
        self, open_api: OpenApi, params: dict[str, str], detail: str
    ) -> None:
        async with open_api() as api:
            response = await api.get("/api/kpi", params=params, headers=bearer())

        assert response.status_code == 422
        assert response.json()["error"] == "invalid_query"
        assert detail in response.json()["detail"]

    async def test_unparsable_parameters_are_422(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get(
                "/api/kpi",
                params={"from": "06.01.2025", "to": "2025-01-13", "format": "xml"},
                headers=bearer(),
            )

        assert response.status_code == 422
        assert "query.from" in response.json()["detail"]
        assert "query.format" in response.json()["detail"]

    async def test_without_a_portal_the_answer_is_503(self, open_api: OpenApi) -> None:
        async with open_api(bitrix24_webhook_url=None) as api:
            response = await api.get("/api/kpi", params=WEEK, headers=bearer())

        assert response.status_code == 503
        assert response.json()["error"] == "bitrix24_not_configured"
