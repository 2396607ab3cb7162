from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
import respx
from arq.connections import ArqRedis
from fastapi import FastAPI
from pydantic import BaseModel, SecretStr

from app.api import create_app
from app.errors import ServiceError
from app.settings import Settings
from tests.app.conftest import DEAD_URL_PORT, MakeSettings
from tests.support import in_process

WEBHOOK = "https://example.bitrix24.ru/rest/1/w3bh00kc0de/"
SERVER_TIME = WEBHOOK + "server.time"


class Lead(BaseModel):
    phone: int


OpenApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_api(make_settings: MakeSettings, redis: ArqRedis) -> OpenApi:
    """Start an app (lifespan included) and give a client that calls it in-process."""

    @asynccontextmanager
    async def open_app(
        app: FastAPI | None = None, **values: object
    ) -> AsyncIterator[httpx.AsyncClient]:
        values.setdefault("bitrix24_webhook_url", SecretStr(WEBHOOK))
        app = app or create_app(make_settings(**values))
        async with in_process(app) as client:
            yield client

    return open_app


class TestHealthz:
    async def test_answers_ok(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get("/healthz")

        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestReadyz:
    @respx.mock
    async def test_ready_when_redis_and_bitrix24_answer(
        self, open_api: OpenApi
    ) -> None:
        portal = respx.get(SERVER_TIME).respond(
            json={"result": "2026-05-11T21:06:22+03:00", "time": {"start": 1}}
        )

        async with open_api() as api:
            response = await api.get("/readyz")

        assert response.status_code == 200
        assert response.json() == {
            "status": "ready",
            "checks": {
                "redis": {"status": "ok", "detail": "PING answered"},
                "bitrix24": {"status": "ok", "detail": "ok"},
            },
            "failed": [],
        }
        assert portal.call_count == 1
        assert portal.calls.last.request.method == "GET"

    @respx.mock
    async def test_not_ready_when_bitrix24_refuses_the_webhook(
        self, open_api: OpenApi
    ) -> None:
        respx.get(SERVER_TIME).respond(
            401,
            json={
                "error": "INVALID_CREDENTIALS",
                "error_description": f"Invalid request credentials for {WEBHOOK}",
            },
        )

        async with open_api() as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["failed"] == ["bitrix24"]
        assert response.json()["checks"]["bitrix24"] == {
            "status": "failed",
            "detail": "HTTP 401, error INVALID_CREDENTIALS",
        }
        assert response.json()["checks"]["redis"]["status"] == "ok"
        assert "w3bh00kc0de" not in response.text

    @respx.mock
    async def test_not_ready_when_bitrix24_cannot_be_reached(
        self, open_api: OpenApi
    ) -> None:
        respx.get(SERVER_TIME).mock(side_effect=httpx.ConnectError(f"no {WEBHOOK}"))

        async with open_api() as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["checks"]["bitrix24"] == {
            "status": "failed",
            "detail": "unreachable (ConnectError)",
        }
        assert "w3bh00kc0de" not in response.text

    @respx.mock
    async def test_not_ready_when_bitrix24_times_out(self, open_api: OpenApi) -> None:
        respx.get(SERVER_TIME).mock(side_effect=httpx.ReadTimeout("slow"))

        async with open_api() as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["checks"]["bitrix24"]["detail"] == "timed out"

    @pytest.mark.parametrize(
        ("answer", "detail"),
        [
            (
                httpx.Response(200, text="<html>login</html>"),
                "HTTP 200, not a JSON answer",
            ),
            (
                httpx.Response(200, json={"time": {}}),
                "HTTP 200, no result in the answer",
            ),
            (httpx.Response(503, json={"error": "Service unavailable!"}), "HTTP 503, "),
        ],
    )
    @respx.mock
    async def test_not_ready_without_a_result(
        self, open_api: OpenApi, answer: httpx.Response, detail: str
    ) -> None:
        respx.get(SERVER_TIME).mock(return_value=answer)

        async with open_api() as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["checks"]["bitrix24"]["detail"].startswith(detail)

    @respx.mock
    async def test_not_ready_names_redis_when_it_does_not_answer(
        self, open_api: OpenApi
    ) -> None:
        respx.get(SERVER_TIME).respond(json={"result": "2026-05-11T21:06:22+03:00"})

        async with open_api(redis_url=f"redis://127.0.0.1:{DEAD_URL_PORT}/0") as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["failed"] == ["redis"]
        assert response.json()["checks"]["redis"] == {
            "status": "failed",
            "detail": "unreachable (ConnectionError)",
        }

    async def test_not_ready_without_a_webhook_url(self, open_api: OpenApi) -> None:
        async with open_api(bitrix24_webhook_url=None) as api:
            response = await api.get("/readyz")

        assert response.status_code == 503
        assert response.json()["checks"]["bitrix24"] == {
            "status": "failed",
            "detail": "LEADLOOP_BITRIX24_WEBHOOK_URL is not set",
        }


class TestErrorShape:
    async def test_an_unknown_path_is_a_json_404(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.get("/nowhere")

        assert response.status_code == 404
        assert response.json() == {"error": "not_found", "detail": "Not Found"}

    async def test_a_wrong_method_is_a_json_405(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.post("/healthz")

        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"

    async def test_a_service_error_keeps_its_status_and_code(
        self, open_api: OpenApi, make_settings: MakeSettings
    ) -> None:
        class Gone(ServiceError):
            status_code = 410
            code = "booking_gone"

        app = create_app(make_settings())

        @app.get("/bookings/{booking_id}")
        async def booking(booking_id: int) -> None:
            raise Gone(f"booking {booking_id} was cancelled")

        async with open_api(app) as api:
            response = await api.get("/bookings/77")

        assert response.status_code == 410
        assert response.json() == {
            "error": "booking_gone",
            "detail": "booking 77 was cancelled",
        }

    async def test_invalid_input_is_described_without_echoing_it(
        self, open_api: OpenApi, make_settings: MakeSettings
    ) -> None:
        app = create_app(make_settings())

        @app.post("/leads")
        async def lead(body: Lead) -> None:
            return None

        async with open_api(app) as api:
            response = await api.post("/leads", json={"phone": "+7 999 000-00-01"})

        assert response.status_code == 422
        assert response.json()["error"] == "invalid_request"
        assert response.json()["detail"].startswith("body.phone: ")
        assert "999" not in response.text

    async def test_an_unexpected_exception_is_a_json_500(
        self, open_api: OpenApi, make_settings: MakeSettings
    ) -> None:
        app = create_app(make_settings())

        @app.get("/broken")
        async def broken() -> None:
            raise RuntimeError("secret internals")

        async with open_api(app) as api:
            response = await api.get("/broken")

        assert response.status_code == 500
        assert response.json() == {
            "error": "internal_error",
            "detail": "internal error",
        }


class TestLifespan:
    async def test_opens_the_clients_once_and_closes_them(
        self, make_settings: MakeSettings
    ) -> None:
        settings: Settings = make_settings()
        app = create_app(settings)

        async with app.router.lifespan_context(app):
            clients = app.state.clients
            assert await clients.redis.ping() is True
            assert not clients.http.is_closed

        assert clients.http.is_closed

    def test_serves_openapi_docs(self, make_settings: MakeSettings) -> None:
        app = create_app(make_settings())

        assert app.docs_url == "/docs"
        assert {"/healthz", "/readyz"} <= set(app.openapi()["paths"])
