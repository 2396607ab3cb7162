from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from pydantic import SecretStr
from redis.asyncio import ConnectionPool

from app.api import create_app
from app.settings import Settings
from reminders.jobs import WATCH_DEAL
from reminders.keys import ReminderKeys
from sandbox.events import php_form_pairs
from tests.fixtures import load_fixture
from tests.support import in_process
from tests.webhooks.conftest import queued_jobs
from webhooks.bitrix24 import (
    DEBOUNCE,
    MAX_BODY_BYTES,
    EventQueue,
    get_event_queue,
    parse_form,
)
from webhooks.errors import MalformedBody
from webhooks.keys import InboxKeys

TOKEN = "fake_app_token_123"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
Logs = Callable[[], list[dict[str, Any]]]

# Known fault B24-7, byte for byte: the body Bitrix24 sends for a deal update.
B24_7_BODY = (
    "event=ONCRMDEALUPDATE&event_handler_id=7&data%5BFIELDS%5D%5BID%5D=4521"
    "&ts=1736755200&auth%5Bdomain%5D=example.bitrix24.ru"
    "&auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.ru%2Frest%2F"
    "&auth%5Bmember_id%5D=fakememberid0001&auth%5Bapplication_token%5D=fake_app_token_123"
)
B24_7_PARSED = {
    "event": "ONCRMDEALUPDATE",
    "event_handler_id": "7",
    "data": {"FIELDS": {"ID": "4521"}},
    "ts": "1736755200",
    "auth": {
        "domain": "example.bitrix24.ru",
        "client_endpoint": "https://example.bitrix24.ru/rest/",
        "member_id": "fakememberid0001",
        "application_token": TOKEN,
    },
}


def form(event: dict[str, Any]) -> str:
    """An event encoded the way the portal's queue server sends it."""
    pairs: list[tuple[str, str]] = []
    for key, value in event.items():
        pairs += php_form_pairs(key, value)
    return urlencode(pairs)


def deal_event(
    name: str = "ONCRMDEALADD", deal_id: str = "7405", token: str = TOKEN, **extra: Any
) -> dict[str, Any]:
    return {
        "event": name,
        "event_handler_id": "185",
        "data": {"FIELDS": {"ID": deal_id}},
        "ts": "1766047124",
        "auth": {"domain": "example.bitrix24.ru", "application_token": token},
        **extra,
    }


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"bitrix24_application_token": SecretStr(TOKEN)})


@pytest.fixture
def reminder_keys(keys: InboxKeys) -> ReminderKeys:
    # Under the test's inbox prefix, so the fixture's clean-up takes these too.
    return ReminderKeys(prefix=keys.prefix)


OpenEvents = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def open_events(
    settings: Settings, redis: ArqRedis, reminder_keys: ReminderKeys
) -> OpenEvents:
    """The whole app; its event queue is this test's arq queue."""

    @asynccontextmanager
    async def open_app(
        app_settings: Settings = settings, queue: EventQueue | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        chosen = queue or EventQueue(redis, reminder_keys)

        async def test_queue() -> EventQueue:
            return chosen

        app = create_app(app_settings)
        app.dependency_overrides[get_event_queue] = test_queue
        async with in_process(app) as client:
            yield client

    return open_app


async def post_form(client: httpx.AsyncClient, body: str) -> httpx.Response:
    return await client.post("/webhooks/bitrix24", content=body, headers=FORM)


class TestParseForm:
    def test_rebuilds_bracket_keys_into_nested_values(self) -> None:
        """B24-7: bracket keys of a form-encoded event become nested values."""
        # Known fault B24-7: a JSON model would answer 422 and lose the event.
        assert parse_form(B24_7_BODY) == B24_7_PARSED

    def test_empty_brackets_append_as_php_does(self) -> None:
        parsed = parse_form("select[]=ID&select[]=TITLE&a[b][]=1&a[b][]=2")

        assert parsed == {
            "select": {"0": "ID", "1": "TITLE"},
            "a": {"b": {"0": "1", "1": "2"}},
        }

    def test_plain_keys_and_blank_values_are_kept(self) -> None:
        assert parse_form("event=&odd]key=1") == {"event": "", "odd]key": "1"}

    def test_refuses_absurd_nesting(self) -> None:
        with pytest.raises(MalformedBody, match="nest"):
            parse_form("a" + "[x]" * 20 + "=1")

    def test_refuses_too_many_fields(self) -> None:
        with pytest.raises(MalformedBody, match="form fields"):
            parse_form("&".join(f"k{n}=v" for n in range(500)))


class TestDealEvents:
    async def test_the_recorded_form_body_queues_one_job_with_the_deal_id(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        """B24-7: the form-encoded event gets 200 and one job for deal 4521."""
        async with open_events() as client:
            response = await post_form(client, B24_7_BODY)

        assert (response.status_code, response.json()) == (200, {"ok": True})
        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (4521,))]

    async def test_a_json_body_of_the_same_shape_is_accepted_too(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        """B24-7: the same event as JSON is accepted too."""
        async with open_events() as client:
            response = await client.post("/webhooks/bitrix24", json=B24_7_PARSED)

        assert response.status_code == 200
        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (4521,))]

    @pytest.mark.parametrize(
        "fixture",
        [
            "bitrix24/event.ONCRMDEALADD.app.body.json",
            "bitrix24/event.ONCRMDEALADD.outgoing-webhook.body.json",
        ],
    )
    async def test_each_recorded_event_is_queued(
        self,
        open_events: OpenEvents,
        settings: Settings,
        redis: ArqRedis,
        queue: str,
        fixture: str,
    ) -> None:
        event = load_fixture(fixture)
        token = SecretStr(event["auth"]["application_token"])
        fitting = settings.model_copy(update={"bitrix24_application_token": token})

        async with open_events(fitting) as client:
            response = await post_form(client, form(event))

        assert response.status_code == 200
        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (7405,))]

    @pytest.mark.parametrize(
        "name", ["ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"]
    )
    async def test_every_deal_event_re_reads_the_deal(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str, name: str
    ) -> None:
        async with open_events() as client:
            await post_form(client, form(deal_event(name)))

        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (7405,))]

    async def test_the_same_event_twice_queues_one_job(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str, logs: Logs
    ) -> None:
        body = form(deal_event())

        async with open_events() as client:
            first = await post_form(client, body)
            second = await post_form(client, body)

        assert (first.status_code, second.status_code) == (200, 200)
        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (7405,))]
        events = [line["event"] for line in logs() if line.get("channel") == "bitrix24"]
        assert events == ["webhooks.accepted", "webhooks.duplicate"]

    async def test_the_job_waits_a_moment_for_repeats_to_fold_in(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        before = timestamp_ms()

        async with open_events() as client:
            await post_form(client, form(deal_event()))

        [(_, score)] = await redis.zrange(queue, 0, -1, withscores=True)
        assert score >= before + DEBOUNCE.total_seconds() * 1000

    async def test_answers_at_once_without_calling_bitrix24(
        self, open_events: OpenEvents
    ) -> None:
        async with open_events() as client:
            await post_form(client, form(deal_event(deal_id="1")))
            started = time.perf_counter()
            response = await post_form(client, form(deal_event(deal_id="2")))
            elapsed = time.perf_counter() - started

        assert response.status_code == 200
        assert elapsed < 0.5


class TestVerification:
    async def test_a_missing_token_is_refused(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        event = deal_event()
        del event["auth"]["application_token"]

        async with open_events() as client:
            response = await post_form(client, form(event))

        assert response.status_code == 401
        assert await queued_jobs(redis, queue) == []

    async def test_a_wrong_token_is_refused(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        async with open_events() as client:
            response = await post_form(client, form(deal_event(token="guessed")))

        assert response.status_code == 403
        assert response.json()["error"] == "bad_signature"
        assert await queued_jobs(redis, queue) == []

    async def test_without_a_configured_token_everything_is_refused(
        self, open_events: OpenEvents, settings: Settings
    ) -> None:
        unset = settings.model_copy(update={"bitrix24_application_token": None})

        async with open_events(unset) as client:
            response = await post_form(client, form(deal_event()))

        assert response.status_code == 401

    async def test_a_non_ascii_token_is_refused_not_crashed(
        self, open_events: OpenEvents
    ) -> None:
        async with open_events() as client:
            response = await post_form(client, form(deal_event(token="токен")))

        assert response.status_code == 403


class TestOtherEvents:
    async def test_an_event_leadloop_ignores_is_acknowledged_and_logged(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str, logs: Logs
    ) -> None:
        async with open_events() as client:
            response = await post_form(client, form(deal_event("ONCRMLEADADD")))

        assert response.status_code == 200
        assert await queued_jobs(redis, queue) == []
        [line] = [entry for entry in logs() if entry["event"] == "webhooks.unsupported"]
        assert line["logger"] == "leadloop.webhooks.unsupported"
        assert (line["kind"], line["reason"]) == (
            "ONCRMLEADADD",
            "leads have no visit; the intake creates them itself",
        )

    async def test_a_lower_case_event_name_is_routed_all_the_same(
        self, open_events: OpenEvents, redis: ArqRedis, queue: str
    ) -> None:
        async with open_events() as client:
            await post_form(client, form(deal_event("onCrmDealUpdate")))

        assert await queued_jobs(redis, queue) == [(WATCH_DEAL, (7405,))]


class TestBadRequests:
    @pytest.mark.parametrize("deal_id", ["", "0", "abc", "-4", "1e3"])
    async def test_a_deal_event_without_a_deal_id_is_refused(
        self, open_events: OpenEvents, deal_id: str
    ) -> None:
        async with open_events() as client:
            response = await post_form(client, form(deal_event(deal_id=deal_id)))

        assert response.status_code == 400

    async def test_another_content_type_is_refused(
        self, open_events: OpenEvents
    ) -> None:
        async with open_events() as client:
            response = await client.post(
                "/webhooks/bitrix24",
                content=form(deal_event()),
                headers={"Content-Type": "text/plain"},
            )

        assert response.status_code == 415

    async def test_broken_json_is_a_bad_request(self, open_events: OpenEvents) -> None:
        async with open_events() as client:
            response = await client.post(
                "/webhooks/bitrix24",
                content=b"{",
                headers={"Content-Type": "application/json"},
            )

        assert response.status_code == 400

    async def test_a_huge_body_is_refused_before_it_is_read(
        self, open_events: OpenEvents
    ) -> None:
        body = form(deal_event()) + "&pad=" + "x" * MAX_BODY_BYTES

        async with open_events() as client:
            response = await post_form(client, body)

        assert response.status_code == 413


@pytest.fixture
async def dead_queue() -> AsyncIterator[EventQueue]:
    # Port 1: nothing listens, so Redis is down without any mock.
    pool = ConnectionPool.from_url("redis://127.0.0.1:1/15", socket_connect_timeout=0.5)
    dead = ArqRedis(pool_or_conn=pool)
    dead.auto_close_connection_pool = True
    yield EventQueue(dead)
    await dead.aclose()


class TestRedisDown:
    async def test_an_event_redis_did_not_take_is_answered_503(
        self, open_events: OpenEvents, dead_queue: EventQueue
    ) -> None:
        async with open_events(queue=dead_queue) as client:
            response = await post_form(client, form(deal_event()))

        assert response.status_code == 503
        assert json.loads(response.text)["error"] == "not_accepted"
