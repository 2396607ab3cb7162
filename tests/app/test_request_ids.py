from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import structlog
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from app.api import create_app
from app.logging import configure_logging
from tests.app.conftest import MakeSettings, kept_uvicorn_log_levels
from tests.sandbox.conftest import free_port
from tests.support import in_process, queue_redis
from webhooks.endpoints import get_inbox
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

TELEGRAM_SECRET = "tg-secret_0123456789"
GENERATED = re.compile(r"[0-9a-f]{16}")

log = structlog.stdlib.get_logger("tests.request_ids")


class Api:
    """The app in-process with production (JSON) logs captured in a buffer."""

    def __init__(self, client: httpx.AsyncClient, buffer: io.StringIO) -> None:
        self.client = client
        self._buffer = buffer

    async def lines_of(
        self, request: Any
    ) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """The response, and the log lines written while it was handled."""
        start = len(self._buffer.getvalue())
        response = await request
        written = self._buffer.getvalue()[start:]
        return response, [json.loads(line) for line in written.splitlines()]


@pytest.fixture
async def api(make_settings: MakeSettings) -> AsyncIterator[Api]:
    settings = make_settings(
        env="production", telegram_webhook_secret=SecretStr(TELEGRAM_SECRET)
    )
    buffer = io.StringIO()
    configure_logging(settings, stream=buffer)
    app = create_app(settings)
    _add_failing_route(app)
    prefix = f"leadloop-test:{uuid4().hex}"
    async with queue_redis(prefix, f"{prefix}:queue") as redis:
        inbox = Inbox(redis, keys=InboxKeys(prefix))

        async def test_inbox() -> Inbox:
            return inbox

        app.dependency_overrides[get_inbox] = test_inbox
        async with in_process(app) as client:
            yield Api(client, buffer)


def _add_failing_route(app: FastAPI) -> None:
    async def fail() -> None:
        log.info("tests.about_to_fail")
        raise RuntimeError("a bug")

    app.add_api_route("/fail", fail)


def telegram_update(update_id: int) -> dict[str, object]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": 100000001, "is_bot": False, "first_name": "Иван"},
            "chat": {"id": 100000001, "type": "private"},
            "date": 1736751600,
            "text": "Хочу записаться",
        },
    }


class TestRequestIds:
    async def test_a_valid_caller_id_is_echoed_and_on_every_line(
        self, api: Api
    ) -> None:
        response, lines = await api.lines_of(
            api.client.post(
                "/webhooks/telegram",
                json=telegram_update(1),
                headers={
                    "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET,
                    "X-Request-ID": "edge-7f3a.42",
                },
            )
        )

        assert response.status_code == 200
        assert response.headers["x-request-id"] == "edge-7f3a.42"
        assert [line["event"] for line in lines] == ["webhooks.accepted"]
        assert {line["request_id"] for line in lines} == {"edge-7f3a.42"}

    async def test_without_a_caller_id_one_is_made_and_echoed(self, api: Api) -> None:
        response, lines = await api.lines_of(
            api.client.post(
                "/webhooks/telegram",
                json=telegram_update(2),
                headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
            )
        )

        request_id = response.headers["x-request-id"]
        assert GENERATED.fullmatch(request_id)
        assert [line["event"] for line in lines] == ["webhooks.accepted"]
        assert {line["request_id"] for line in lines} == {request_id}

    @pytest.mark.parametrize(
        "given", ["has spaces", "x" * 65, "+7 999 000-00-01", "тест", "a;b"]
    )
    async def test_an_unfit_caller_id_is_replaced(self, api: Api, given: str) -> None:
        response, _ = await api.lines_of(
            api.client.get("/healthz", headers={"X-Request-ID": given.encode()})
        )

        assert GENERATED.fullmatch(response.headers["x-request-id"])

    async def test_a_crash_keeps_the_id_on_the_error_and_its_response(
        self, api: Api
    ) -> None:
        response, lines = await api.lines_of(
            api.client.get("/fail", headers={"X-Request-ID": "crash-1"})
        )

        assert response.status_code == 500
        assert response.headers["x-request-id"] == "crash-1"
        assert response.json()["error"] == "internal_error"
        assert [(line["event"], line["request_id"]) for line in lines] == [
            ("tests.about_to_fail", "crash-1")
        ]

    async def test_requests_do_not_share_ids(self, api: Api) -> None:
        first, _ = await api.lines_of(api.client.get("/healthz"))
        second, _ = await api.lines_of(api.client.get("/healthz"))

        assert first.headers["x-request-id"] != second.headers["x-request-id"]


class TestRequestIdsOnARealServer:
    def test_uvicorns_access_line_and_crash_traceback_carry_the_id(
        self, make_settings: MakeSettings
    ) -> None:
        settings = make_settings(env="production")
        buffer = io.StringIO()
        configure_logging(settings, stream=buffer)
        app = create_app(settings)
        _add_failing_route(app)

        with kept_uvicorn_log_levels(), serving(app) as base:
            start = len(buffer.getvalue())
            response = httpx.get(f"{base}/fail", headers={"X-Request-ID": "crash-42"})
            time.sleep(0.2)  # the access line is written after the answer
            written = buffer.getvalue()[start:]

        lines = [json.loads(line) for line in written.splitlines()]
        assert response.headers["x-request-id"] == "crash-42"
        # uvicorn.error writes the traceback; uvicorn.access, where its level lets
        # it, the request line.
        assert {line["logger"] for line in lines} >= {
            "tests.request_ids",
            "uvicorn.error",
        }
        assert {line["request_id"] for line in lines} == {"crash-42"}


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """uvicorn on a free port in a thread, the way `leadloop serve` runs it."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start in 10 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
