"""No secret and no phone or e-mail reaches a log line, whoever writes it.

The loggers are the production ones (`configure_logging`, JSON), with every level
opened to DEBUG, httpx and httpcore included: the worst an operator can set.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.api import create_app
from app.logging import PHONE_MASK, PersonalDataMasker, configure_logging
from app.settings import Settings
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import Bitrix24Error
from connectors.messengers.base import MessengerError
from connectors.messengers.telegram import TelegramSender
from tests.app.conftest import MakeSettings
from tests.support import in_process

BOT_TOKEN = "7012345678:AAFq9xLm3Kp8Zr2Wv5Ty7Ub1Nc4Xd6Es0q"
WEBHOOK_CODE = "k3q9x7w2m5t8v1b4"
WEBHOOK = f"https://salon.bitrix24.ru/rest/1/{WEBHOOK_CODE}/"
VERIFY_TOKEN = "vT9-wh4tsapp-Qm2Lx7Rk5Pz"
TELEGRAM_API = "https://api.telegram.org"
SEND = f"{TELEGRAM_API}/bot{BOT_TOKEN}/sendMessage"


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings(
        env="production",
        log_level="DEBUG",
        telegram_bot_token=SecretStr(BOT_TOKEN),
        bitrix24_webhook_url=SecretStr(WEBHOOK),
        whatsapp_verify_token=SecretStr(VERIFY_TOKEN),
    )


@pytest.fixture
def output(settings: Settings) -> Iterator[io.StringIO]:
    """Everything any logger writes, with httpx and httpcore at DEBUG too."""
    stream = io.StringIO()
    configure_logging(settings, stream=stream)
    quieted = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    for name in quieted:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    for name, level in quieted.items():
        logging.getLogger(name).setLevel(level)


def secrets_in(text: str) -> list[str]:
    return [
        secret for secret in (BOT_TOKEN, WEBHOOK_CODE, VERIFY_TOKEN) if secret in text
    ]


class TestQuietedLibraries:
    def test_httpx_and_httpcore_do_not_log_requests_by_default(
        self, settings: Settings
    ) -> None:
        configure_logging(settings, stream=io.StringIO())

        for name in ("httpx", "httpcore"):
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING


class TestTelegramSendLogs:
    @respx.mock
    async def test_a_send_logs_no_bot_token(self, output: io.StringIO) -> None:
        respx.post(SEND).respond(
            json={"ok": True, "result": {"message_id": 7, "chat": {"id": 1}}}
        )

        async with httpx.AsyncClient() as http:
            await TelegramSender(http, SecretStr(BOT_TOKEN)).send_text("1", "Привет")

        text = output.getvalue()
        assert (
            "HTTP Request: POST https://api.telegram.org/bot[secret]/sendMessage"
            in text
        )
        assert "telegram.sent" in text
        assert secrets_in(text) == []

    @respx.mock
    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(
                403,
                json={
                    "ok": False,
                    "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user",
                },
            ),
            httpx.Response(502, text="<html>Bad Gateway</html>"),
        ],
        ids=["blocked", "proxy-page"],
    )
    async def test_a_refused_send_logs_and_raises_no_bot_token(
        self, output: io.StringIO, answer: httpx.Response
    ) -> None:
        respx.post(SEND).mock(return_value=answer)

        async with httpx.AsyncClient() as http:
            with pytest.raises(MessengerError) as raised:
                await TelegramSender(http, SecretStr(BOT_TOKEN)).send_text("1", "x")
            logging.getLogger("leadloop.test").exception("job.failed")

        assert "telegram.call_failed" in output.getvalue()
        assert secrets_in(output.getvalue()) == []
        assert secrets_in(str(raised.value)) == []

    @respx.mock
    async def test_an_unreachable_api_logs_and_raises_no_bot_token(
        self, output: io.StringIO
    ) -> None:
        respx.post(SEND).mock(side_effect=httpx.ConnectError(f"cannot reach {SEND}"))

        async with httpx.AsyncClient() as http:
            with pytest.raises(MessengerError) as raised:
                await TelegramSender(http, SecretStr(BOT_TOKEN)).send_text("1", "x")
            logging.getLogger("leadloop.test").exception("job.failed")

        assert "telegram.unavailable" in output.getvalue()
        assert secrets_in(output.getvalue()) == []
        assert secrets_in(str(raised.value)) == []


def portal(http: httpx.AsyncClient) -> Bitrix24Client:
    async def no_wait(seconds: float) -> None:
        return None

    return Bitrix24Client(
        http,
        WebhookCredentials(SecretStr(WEBHOOK)),
        portal_zone=UTC,
        retry=RetryPolicy(attempts=2, unavailable_for_s=0),
        sleep=no_wait,
    )


class TestBitrix24CallLogs:
    @respx.mock
    async def test_a_call_logs_no_webhook_code(self, output: io.StringIO) -> None:
        respx.post(f"{WEBHOOK}server.time").respond(
            json={"result": "2026-12-04T13:00:00+03:00", "time": {}}
        )

        async with httpx.AsyncClient() as http:
            await portal(http).call("server.time")

        text = output.getvalue()
        # The whole URL is a configured secret, so all of it goes.
        assert "HTTP Request: POST [secret]server.time" in text
        assert secrets_in(text) == []

    @respx.mock
    @pytest.mark.parametrize(
        "answer",
        [
            httpx.Response(503, json={"error": "QUERY_LIMIT_EXCEEDED"}),
            httpx.Response(401, json={"error": "INVALID_CREDENTIALS"}),
            httpx.ConnectError(f"cannot reach {WEBHOOK}"),
        ],
        ids=["busy", "refused", "unreachable"],
    )
    async def test_a_failed_call_logs_and_raises_no_webhook_code(
        self, output: io.StringIO, answer: httpx.Response | Exception
    ) -> None:
        route = respx.post(f"{WEBHOOK}crm.deal.list")
        if isinstance(answer, Exception):
            route.mock(side_effect=answer)
        else:
            route.mock(return_value=answer)

        async with httpx.AsyncClient() as http:
            with pytest.raises(Bitrix24Error) as raised:
                await portal(http).call("crm.deal.list")
            logging.getLogger("leadloop.test").exception("job.failed")

        assert route.called
        assert secrets_in(output.getvalue()) == []
        assert secrets_in(str(raised.value)) == []
        assert secrets_in(repr(raised.value)) == []


class TestApiLogs:
    async def test_the_access_log_of_the_whatsapp_handshake_hides_the_verify_token(
        self, output: io.StringIO
    ) -> None:
        access = logging.getLogger("uvicorn.access")
        # As `leadloop serve` runs uvicorn (its log level INFO); an earlier test's
        # server may have left it at WARNING.
        level = access.level
        access.setLevel(logging.INFO)
        # uvicorn's own call, with the query string Meta sends.
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "173.252.0.1:41000",
            "GET",
            f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"
            "&hub.challenge=1158201444",
            "1.1",
            200,
        )
        access.setLevel(level)

        text = output.getvalue()
        assert "hub.verify_token=[secret]" in text
        assert secrets_in(text) == []

    @respx.mock
    async def test_readyz_names_no_webhook_code_when_bitrix24_fails(
        self, settings: Settings, output: io.StringIO
    ) -> None:
        respx.get(f"{WEBHOOK}server.time").mock(
            side_effect=httpx.ConnectError(f"cannot reach {WEBHOOK}")
        )

        async with in_process(create_app(settings)) as api:
            response = await api.get("/readyz")

        assert response.json()["checks"]["bitrix24"]["status"] == "failed"
        assert secrets_in(response.text) == []
        assert secrets_in(output.getvalue()) == []


class TestPersonalDataMasker:
    @pytest.mark.parametrize(
        "phone",
        [
            "+7 999 000-00-01",
            "+79990000001",
            "8 (999) 000-00-01",
            "89990000001",
            "79990000001",
            "(999) 000-00-01",
            "999 000 00 01",
            "+7\u00a0999\u00a0000\u00a000\u00a001",
            "+44 20 7946 0958",
            "+1 (415) 555-0132",
            "+380 44 123 4567",
        ],
    )
    def test_masks_a_phone_in_its_usual_shapes(self, phone: str) -> None:
        masked = PersonalDataMasker().mask_text(f"client wrote {phone}, call back")

        assert masked == f"client wrote {PHONE_MASK}, call back"

    @pytest.mark.parametrize(
        "email", ["anna@example.ru", "a.petrova+salon@mail.example.com", "ivan_1@ya.ru"]
    )
    def test_masks_an_email(self, email: str) -> None:
        assert PersonalDataMasker().mask_text(f"mail {email} now") == "mail [email] now"

    @pytest.mark.parametrize(
        "value", ["deal 1234567890", "id=5551234567", "2026-12-04T10:00:00+03:00"]
    )
    def test_leaves_ids_and_times_readable(self, value: str) -> None:
        assert PersonalDataMasker().mask_text(value) == value

    def test_masks_phones_in_every_field_of_a_production_line(
        self, output: io.StringIO
    ) -> None:
        logging.getLogger("leadloop.test").warning(
            "lead from %s", "+7 999 000-00-01", extra={"ignored": "x"}
        )

        text = output.getvalue()
        assert "lead from [phone]" in text
        assert "999 000" not in text
