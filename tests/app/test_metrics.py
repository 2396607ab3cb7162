from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from uuid import uuid4
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
from openai import AsyncOpenAI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from app.api import create_app
from app.clients import redis_client
from app.config import BusinessRules
from app.metrics import MetricsServer, error_label, method_group
from app.settings import Settings
from app.worker import WorkerSettings
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import Rejected
from qualification.llm import LlmLimits, LlmQualifier
from qualification.rules import RuleQualifier
from qualification.schema import ClientMessage
from tests.app.conftest import DEAD_URL_PORT, MakeSettings
from tests.support import in_process, queue_redis
from webhooks.endpoints import get_inbox
from webhooks.keys import InboxKeys
from webhooks.queue import Inbox

TELEGRAM_SECRET = "tg-secret_0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
PORTAL = "https://example.bitrix24.ru/rest/1/w3bh00kc0de/"
MODEL_URL = "http://model.test/v1"
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    """The metric's current value in this process (0 before its first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def telegram_update(update_id: int) -> dict[str, object]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": 100000001, "is_bot": False, "first_name": "Иван"},
            "chat": {"id": 100000001, "type": "private"},
            "date": 1736751600,
            "text": "Хочу на стрижку, мой номер +7 999 000-00-01",
        },
    }


OpenApi = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    """An inbox on the test Redis under a prefix and queue of this test's own."""
    prefix = f"leadloop-test:{uuid4().hex}"
    async with queue_redis(prefix, f"{prefix}:queue") as redis:
        yield Inbox(redis, keys=InboxKeys(prefix))


@pytest.fixture
def open_api(make_settings: MakeSettings, inbox: Inbox) -> OpenApi:
    @asynccontextmanager
    async def open_app(
        webhook_inbox: Inbox | None = None, **values: object
    ) -> AsyncIterator[httpx.AsyncClient]:
        values.setdefault("telegram_webhook_secret", SecretStr(TELEGRAM_SECRET))
        app = create_app(make_settings(**values))
        chosen = webhook_inbox or inbox

        async def test_inbox() -> Inbox:
            return chosen

        app.dependency_overrides[get_inbox] = test_inbox
        async with in_process(app) as client:
            yield client

    return open_app


async def post_update(
    api: httpx.AsyncClient, update_id: int, secret: str = TELEGRAM_SECRET
) -> httpx.Response:
    return await api.post(
        "/webhooks/telegram",
        json=telegram_update(update_id),
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )


class TestMetricsEndpoint:
    async def test_serves_the_text_exposition_prometheus_parses(
        self, open_api: OpenApi
    ) -> None:
        async with open_api() as api:
            await post_update(api, 1)
            response = await api.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = {
            family.name: family
            for family in text_string_to_metric_families(response.text)
        }
        assert {
            "leadloop_webhooks",
            "leadloop_jobs",
            "leadloop_bitrix24_calls",
            "leadloop_bitrix24_call_seconds",
            "leadloop_bitrix24_rate_limit_wait_seconds",
            "leadloop_lead_to_crm_seconds",
            "leadloop_llm_calls",
            "leadloop_llm_call_seconds",
            "leadloop_llm_fallbacks",
            "leadloop_reminders",
            "leadloop_reminder_answers",
        } <= set(families)
        assert families["leadloop_webhooks"].type == "counter"
        assert families["leadloop_lead_to_crm_seconds"].type == "histogram"
        accepted = [
            sample.value
            for sample in families["leadloop_webhooks"].samples
            if sample.labels == {"channel": "telegram", "outcome": "accepted"}
            and sample.name == "leadloop_webhooks_total"
        ]
        assert len(accepted) == 1
        assert accepted[0] >= 1

    async def test_is_open_in_development_without_an_admin_token(
        self, open_api: OpenApi
    ) -> None:
        async with open_api(env="development") as api:
            response = await api.get("/metrics")

        assert response.status_code == 200

    async def test_is_off_in_production_without_an_admin_token(
        self, open_api: OpenApi
    ) -> None:
        async with open_api(env="production") as api:
            response = await api.get("/metrics")

        assert response.status_code == 503
        assert response.json()["error"] == "metrics_disabled"

    async def test_asks_for_the_admin_token_as_a_bearer_token(
        self, open_api: OpenApi
    ) -> None:
        async with open_api(
            env="production", admin_token=SecretStr(ADMIN_TOKEN)
        ) as api:
            missing = await api.get("/metrics")
            wrong = await api.get(
                "/metrics", headers={"Authorization": "Bearer not-the-token"}
            )
            right = await api.get(
                "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )

        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200
        assert "leadloop_webhooks_total" in right.text


class TestWebhookCounters:
    async def test_an_accepted_event_counts_once(self, open_api: OpenApi) -> None:
        before = sample(
            "leadloop_webhooks_total", channel="telegram", outcome="accepted"
        )

        async with open_api() as api:
            response = await post_update(api, 10)

        assert response.status_code == 200
        after = sample(
            "leadloop_webhooks_total", channel="telegram", outcome="accepted"
        )
        assert after - before == 1

    async def test_a_repeated_delivery_counts_as_duplicate(
        self, open_api: OpenApi
    ) -> None:
        labels = {"channel": "telegram"}
        accepted = sample("leadloop_webhooks_total", outcome="accepted", **labels)
        duplicate = sample("leadloop_webhooks_total", outcome="duplicate", **labels)

        async with open_api() as api:
            await post_update(api, 11)
            await post_update(api, 11)

        assert sample("leadloop_webhooks_total", outcome="accepted", **labels) == (
            accepted + 1
        )
        assert sample("leadloop_webhooks_total", outcome="duplicate", **labels) == (
            duplicate + 1
        )

    async def test_a_wrong_secret_counts_as_rejected(self, open_api: OpenApi) -> None:
        before = sample(
            "leadloop_webhooks_total", channel="telegram", outcome="rejected"
        )

        async with open_api() as api:
            response = await post_update(api, 12, secret="wrong-secret-000000")

        assert response.status_code in (401, 403)
        after = sample(
            "leadloop_webhooks_total", channel="telegram", outcome="rejected"
        )
        assert after - before == 1

    async def test_redis_not_taking_the_event_counts_as_unavailable(
        self, open_api: OpenApi
    ) -> None:
        labels = {"channel": "telegram", "outcome": "unavailable"}
        before = sample("leadloop_webhooks_total", **labels)
        down = redis_client(f"redis://127.0.0.1:{DEAD_URL_PORT}/0")

        try:
            async with open_api(webhook_inbox=Inbox(down)) as api:
                response = await post_update(api, 13)
        finally:
            await down.aclose()

        assert response.status_code == 503
        assert sample("leadloop_webhooks_total", **labels) - before == 1


class TestBitrix24Counters:
    @respx.mock
    async def test_an_answered_call_counts_as_ok_with_its_time_and_wait(
        self,
    ) -> None:
        respx.post(PORTAL + "crm.deal.list").respond(
            200, json={"result": [], "total": 0, "time": {}}
        )
        ok = sample(
            "leadloop_bitrix24_calls_total", method_group="crm.deal", outcome="ok"
        )
        timed = sample("leadloop_bitrix24_call_seconds_count", method_group="crm.deal")
        waits = sample("leadloop_bitrix24_rate_limit_wait_seconds_count")

        async with httpx.AsyncClient() as http:
            await portal_client(http).call("crm.deal.list")

        assert (
            sample(
                "leadloop_bitrix24_calls_total", method_group="crm.deal", outcome="ok"
            )
            == ok + 1
        )
        assert (
            sample("leadloop_bitrix24_call_seconds_count", method_group="crm.deal")
            == timed + 1
        )
        assert sample("leadloop_bitrix24_rate_limit_wait_seconds_count") == waits + 1

    @respx.mock
    async def test_a_refused_call_counts_under_its_error_class(self) -> None:
        respx.post(PORTAL + "crm.contact.add").respond(
            400, json={"error": "ERROR_CORE", "error_description": "no"}
        )
        labels = {"method_group": "crm.contact", "outcome": "rejected"}
        before = sample("leadloop_bitrix24_calls_total", **labels)

        async with httpx.AsyncClient() as http:
            with pytest.raises(Rejected):
                await portal_client(http).call("crm.contact.add", {"fields": {}})

        assert sample("leadloop_bitrix24_calls_total", **labels) == before + 1

    @respx.mock
    async def test_each_attempt_of_a_retried_read_counts(self) -> None:
        respx.post(PORTAL + "crm.deal.get").mock(
            side_effect=[
                httpx.Response(503, json={"error": "QUERY_LIMIT_EXCEEDED"}),
                httpx.Response(200, json={"result": {"ID": "1"}, "time": {}}),
            ]
        )
        limited = {"method_group": "crm.deal", "outcome": "rate_limited"}
        before = sample("leadloop_bitrix24_calls_total", **limited)

        async with httpx.AsyncClient() as http:
            await portal_client(http).call("crm.deal.get", {"id": 1})

        assert sample("leadloop_bitrix24_calls_total", **limited) == before + 1


def portal_client(http: httpx.AsyncClient) -> Bitrix24Client:
    async def no_sleep(seconds: float) -> None:
        return None

    return Bitrix24Client(
        http,
        WebhookCredentials(PORTAL),
        portal_zone=ZoneInfo("Europe/Moscow"),
        retry=RetryPolicy(attempts=2),
        sleep=no_sleep,
    )


class TestModelCounters:
    @respx.mock
    async def test_a_failing_model_counts_its_calls_and_the_fallback(self) -> None:
        respx.post(f"{MODEL_URL}/chat/completions").respond(
            500, json={"error": {"message": "overloaded"}}
        )
        errors = sample("leadloop_llm_calls_total", outcome="server_error")
        fallbacks = sample("leadloop_llm_fallbacks_total", reason="server_error")
        timed = sample("leadloop_llm_call_seconds_count")

        async with httpx.AsyncClient() as http:
            qualification = await model_qualifier(http).qualify(
                [ClientMessage(text="Хочу на маникюр завтра", at=NOW)]
            )

        assert qualification.source == "rules"
        assert sample("leadloop_llm_calls_total", outcome="server_error") == errors + 2
        assert sample("leadloop_llm_call_seconds_count") == timed + 2
        assert (
            sample("leadloop_llm_fallbacks_total", reason="server_error")
            == fallbacks + 1
        )


def model_qualifier(http: httpx.AsyncClient) -> LlmQualifier:
    async def no_sleep(seconds: float) -> None:
        return None

    rules = BusinessRules()
    client = AsyncOpenAI(
        api_key="not-needed", base_url=MODEL_URL, http_client=http, max_retries=0
    )
    return LlmQualifier(
        client,
        "test-model",
        RuleQualifier(rules.services, rules.zone),
        limits=LlmLimits(max_calls=2),
        sleep=no_sleep,
    )


# Channels, outcomes, method groups, function names, reminder kinds: short
# lowercase words. A phone, a chat id or a name would fail this.
LABEL_VALUE = re.compile(r"[a-z0-9][a-z0-9_.:]*")
LONG_NUMBER = re.compile(r"\d{5,}")


class TestLabels:
    async def test_no_label_carries_personal_data_or_ids(
        self, open_api: OpenApi
    ) -> None:
        async with open_api() as api:
            await post_update(api, 20)
            await post_update(api, 20)
            await post_update(api, 21, secret="wrong-secret-000000")
            exposition = (await api.get("/metrics")).text

        values = {
            value
            for family in text_string_to_metric_families(exposition)
            if family.name.startswith("leadloop_")
            for metric_sample in family.samples
            for key, value in metric_sample.labels.items()
            if key != "le"
        }
        assert values
        assert all(LABEL_VALUE.fullmatch(value) for value in values), values
        assert not [value for value in values if LONG_NUMBER.search(value)]

    def test_method_groups_are_the_first_two_name_parts(self) -> None:
        assert method_group("crm.deal.add") == "crm.deal"
        assert method_group("CRM.Timeline.Comment.Add") == "crm.timeline"
        assert method_group("batch") == "batch"

    def test_error_labels_are_the_class_in_snake_case(self) -> None:
        assert error_label(Rejected("no")) == "rejected"
        assert error_label(TimeoutError()) == "timeout_error"


class TestWorkerMetricsServer:
    async def test_a_worker_serves_its_metrics_when_a_port_is_set(
        self, make_settings: MakeSettings
    ) -> None:
        settings: Settings = make_settings(worker_metrics_port=0)
        ctx: dict[str, object] = {"settings": settings, "inbound_handler": None}

        await WorkerSettings.on_startup(ctx)
        try:
            server = ctx["metrics_server"]
            assert isinstance(server, MetricsServer)
            port = server.port
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
        finally:
            await WorkerSettings.on_shutdown(ctx)

        assert response.status_code == 200
        assert "leadloop_jobs_total" in response.text
        assert "metrics_server" not in ctx

    async def test_no_port_means_no_server(self, make_settings: MakeSettings) -> None:
        ctx: dict[str, object] = {
            "settings": make_settings(),
            "inbound_handler": None,
        }

        await WorkerSettings.on_startup(ctx)
        await WorkerSettings.on_shutdown(ctx)

        assert ctx.get("metrics_server") is None
