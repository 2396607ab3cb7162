"""Request bodies over LEADLOOP_MAX_REQUEST_BODY_BYTES are refused with 413."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from pydantic import BaseModel, SecretStr

from app.api import create_app
from app.security import BodySizeLimit
from tests.app.conftest import MakeSettings, kept_uvicorn_log_levels
from tests.support import in_process, serving

LIMIT = 4096
SECRET = "tg-secret_0123456789"
TOO_LARGE = {
    "error": "body_too_large",
    "detail": f"the body must be at most {LIMIT} bytes",
}


class Note(BaseModel):
    text: str


def app_with_echo(make_settings: MakeSettings) -> FastAPI:
    """The real app, plus a JSON path operation that reads its body."""
    app = create_app(
        make_settings(
            max_request_body_bytes=LIMIT,
            telegram_webhook_secret=SecretStr(SECRET),
        )
    )

    @app.post("/echo")
    async def echo(note: Note) -> dict[str, int]:
        return {"length": len(note.text)}

    return app


def note(size: int) -> bytes:
    """A JSON body of exactly `size` bytes."""
    body = json.dumps({"text": ""}).encode()
    return json.dumps({"text": "x" * (size - len(body))}).encode()


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    """The body streamed: httpx sends it chunked, without Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.fixture
async def api(
    make_settings: MakeSettings, redis: ArqRedis
) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(app_with_echo(make_settings)) as client:
        yield client


class TestBodySizeLimitInProcess:
    async def test_a_body_at_the_limit_passes(self, api: httpx.AsyncClient) -> None:
        response = await api.post(
            "/echo", content=note(LIMIT), headers={"content-type": "application/json"}
        )

        assert response.status_code == 200
        assert response.json() == {"length": LIMIT - len(b'{"text": ""}')}

    async def test_a_declared_length_over_the_limit_is_refused_unread(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.post(
            "/echo",
            content=note(LIMIT + 1),
            headers={"content-type": "application/json"},
        )

        assert response.status_code == 413
        assert response.json() == TOO_LARGE

    async def test_a_streamed_body_at_the_limit_passes(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.post(
            "/echo",
            content=chunks(note(LIMIT)),
            headers={"content-type": "application/json"},
        )

        assert response.status_code == 200

    async def test_a_streamed_body_over_the_limit_is_refused(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.post(
            "/echo",
            content=chunks(note(LIMIT + 1)),
            headers={"content-type": "application/json"},
        )

        assert response.status_code == 413
        assert response.json() == TOO_LARGE

    async def test_a_streamed_webhook_over_the_limit_is_refused(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.post(
            "/webhooks/telegram",
            content=chunks(note(LIMIT * 2)),
            headers={
                "content-type": "application/json",
                "x-telegram-bot-api-secret-token": SECRET,
            },
        )

        assert response.status_code == 413
        assert response.json() == TOO_LARGE

    async def test_requests_without_a_body_pass(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/healthz")

        assert response.status_code == 200


class TestBodySizeLimitAsgi:
    """The middleware alone, fed ASGI messages as a server sends them."""

    async def test_after_the_413_the_app_reads_a_disconnect_and_its_answer_is_dropped(
        self,
    ) -> None:
        seen: list[dict[str, object]] = []

        async def app(scope: object, receive: object, send: object) -> None:
            while True:
                message = await receive()  # type: ignore[operator]
                seen.append(message)
                if message["type"] == "http.disconnect":
                    break
            await send({"type": "http.response.start", "status": 200})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b"late"})  # type: ignore[operator]

        incoming = [
            {"type": "http.request", "body": b"a" * 60, "more_body": True},
            {"type": "http.request", "body": b"a" * 60, "more_body": True},
            {"type": "http.request", "body": b"a" * 60, "more_body": False},
        ]
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return incoming.pop(0)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
        await BodySizeLimit(app, max_bytes=100)(scope, receive, send)  # type: ignore[arg-type]

        assert [message["type"] for message in seen] == [
            "http.request",
            "http.disconnect",
        ]
        assert [message.get("status") for message in sent] == [413, None]
        assert json.loads(sent[1]["body"]) == {  # type: ignore[arg-type]
            "error": "body_too_large",
            "detail": "the body must be at most 100 bytes",
        }

    async def test_lifespan_and_websocket_scopes_pass_untouched(self) -> None:
        calls: list[str] = []

        async def app(scope: dict[str, str], receive: object, send: object) -> None:
            calls.append(scope["type"])

        limit = BodySizeLimit(app, max_bytes=1)  # type: ignore[arg-type]
        await limit({"type": "lifespan"}, None, None)  # type: ignore[arg-type]

        assert calls == ["lifespan"]


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind uvicorn on a real socket, and a client of it."""
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


class TestBodySizeLimitOverTheWire:
    @pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
    async def test_uvicorn_answers_413_in_the_error_shape(
        self, make_settings: MakeSettings, redis: ArqRedis, streamed: bool
    ) -> None:
        body = note(LIMIT * 2)

        with kept_uvicorn_log_levels():
            async with served(app_with_echo(make_settings)) as client:
                response = await client.post(
                    "/echo",
                    content=chunks(body) if streamed else body,
                    headers={"content-type": "application/json"},
                )
                after = await client.get("/healthz")

        assert response.status_code == 413
        assert response.json() == TOO_LARGE
        assert after.status_code == 200
