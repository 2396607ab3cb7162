from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from app.logging import PersonalDataMasker, configure_logging
from tests.app.conftest import MakeSettings

LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def json_lines(make_settings: MakeSettings) -> LogLines:
    """Production logging into a buffer; returns a reader of the JSON lines so far."""
    buffer = io.StringIO()
    settings = make_settings(
        env="production",
        log_level="DEBUG",
        bitrix24_webhook_url=SecretStr(
            "https://example.bitrix24.ru/rest/1/w3bh00kc0de/"
        ),
        telegram_bot_token=SecretStr("123456:AAH-fake-token"),
    )
    configure_logging(settings, stream=buffer)
    return lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]


class TestPersonalDataMasker:
    @pytest.mark.parametrize(
        "phone",
        [
            "+7 999 000-00-01",
            "+79990000001",
            "89990000001",
            "79990000001",
            "9990000001",
            "(999) 000-00-01",
            "8 (999) 000-00-01",
            "+7 (999) 000 00 01",
            "8-999-000-00-01",
            "999 000 00 01",
            "+7 (812) 000-00-01",
            "8-812-000-00-01",
            "8 800 000-00-01",
            "+44 20 7946 0958",
            "+1 (555) 123-4567",
            "+49 30 1234567",
            "+380 44 123 45 67",
        ],
    )
    def test_masks_a_phone_in_any_usual_shape(self, phone: str) -> None:
        masked = PersonalDataMasker().mask_text(f"клиент {phone}, перезвонить")

        assert masked == "клиент [phone], перезвонить"

    @pytest.mark.parametrize(
        "email",
        ["ivan@example.com", "ivan.petrov+salon@mail.example.ru", "анна@пример.рф"],
    )
    def test_masks_an_email(self, email: str) -> None:
        assert PersonalDataMasker().mask_text(f"<{email}>") == "<[email]>"

    @pytest.mark.parametrize(
        "text",
        [
            "deal 12345",
            "update_id=100000001",
            "chat 100000042",
            "user 1000000001",
            "2026-05-11T21:06:22+03:00",
            "2026-11-05 12:00:00",
            "c0ffee00-0000-4000-8000-000000000001",
            "check 30000.00 RUB",
            "ping(lead_id=77)",
            "reminder:77:2025-01-13T12:00+03:00",
        ],
    )
    def test_leaves_ids_dates_and_amounts_readable(self, text: str) -> None:
        assert PersonalDataMasker().mask_text(text) == text

    def test_keeps_the_extension_after_a_masked_phone(self) -> None:
        masked = PersonalDataMasker().mask_text("+7 999 000-00-01 доб. 123")

        assert masked == "[phone] доб. 123"

    def test_walks_nested_dicts_lists_and_tuples(self) -> None:
        event = {
            "event": "lead.received",
            "deal_id": 12345,
            "update_id": 100000001,
            "amount": Decimal("1500.00"),
            "contact": {"phones": ["+79990000001", {"work": "8 (999) 000-00-02"}]},
            "recipients": ("ivan@example.com", 42),
        }

        masked = PersonalDataMasker()(None, "info", event)

        assert masked == {
            "event": "lead.received",
            "deal_id": 12345,
            "update_id": 100000001,
            "amount": Decimal("1500.00"),
            "contact": {"phones": ["[phone]", {"work": "[phone]"}]},
            "recipients": ["[email]", 42],
        }

    def test_masks_other_objects_through_their_repr(self) -> None:
        error = ValueError("no contact for +7 999 000-00-01")

        assert (
            PersonalDataMasker().mask(error) == "ValueError('no contact for [phone]')"
        )

    def test_masks_credentials_inside_urls(self) -> None:
        masker = PersonalDataMasker()

        assert masker.mask_text(
            "GET https://example.bitrix24.ru/rest/1/c0de/crm.deal.add"
        ) == ("GET https://example.bitrix24.ru/rest/1/[secret]/crm.deal.add")
        assert masker.mask_text("POST /bot123456:AAH-x_y/sendMessage") == (
            "POST /bot[secret]/sendMessage"
        )
        assert masker.mask_text(
            "/webhooks/whatsapp?hub.verify_token=verify_me&x=1"
        ) == ("/webhooks/whatsapp?hub.verify_token=[secret]&x=1")

    def test_masks_configured_secrets_wherever_they_appear(self) -> None:
        masker = PersonalDataMasker(["test_app_secret", "short"])

        assert masker.mask_text("sig over test_app_secret, short") == (
            "sig over [secret], short"
        )


class TestConfigureLogging:
    def test_production_writes_one_json_object_per_line(
        self, json_lines: LogLines
    ) -> None:
        structlog.stdlib.get_logger("leadloop.test").info(
            "lead.received", deal_id=12345, phone="+7 999 000-00-01"
        )

        [line] = json_lines()
        assert line["event"] == "lead.received"
        assert line["level"] == "info"
        assert line["logger"] == "leadloop.test"
        assert line["deal_id"] == 12345
        assert line["phone"] == "[phone]"
        assert line["timestamp"].endswith("Z")

    def test_ids_bound_in_context_appear_on_every_line(
        self, json_lines: LogLines
    ) -> None:
        log = structlog.stdlib.get_logger("leadloop.test")
        structlog.contextvars.bind_contextvars(update_id=100000001, chat_id=100000042)
        log.info("dialog.step")
        # Not a uvicorn logger: a server started by an earlier test sets their levels.
        logging.getLogger("leadloop.test.stdlib").info("from the standard library")

        lines = json_lines()
        assert [line["update_id"] for line in lines] == [100000001, 100000001]
        assert [line["chat_id"] for line in lines] == [100000042, 100000042]

    def test_stdlib_records_are_masked_with_their_arguments(
        self, json_lines: LogLines
    ) -> None:
        logging.getLogger("uvicorn.error").warning(
            "client %s wrote from %s", "ivan@example.com", "89990000001"
        )
        logging.getLogger("arq.worker").info("job for %s", {"phone": "+79990000001"})

        assert [line["event"] for line in json_lines()] == [
            "client [email] wrote from [phone]",
            "job for {'phone': '[phone]'}",
        ]

    def test_secrets_from_settings_never_reach_the_log(
        self, json_lines: LogLines
    ) -> None:
        log = structlog.stdlib.get_logger("leadloop.test")
        log.info("bitrix24.call", url="https://example.bitrix24.ru/rest/1/w3bh00kc0de/")
        logging.getLogger("uvicorn.error").info("token 123456:AAH-fake-token in use")

        text = json.dumps(json_lines())
        assert "w3bh00kc0de" not in text
        assert "AAH-fake-token" not in text

    def test_tracebacks_are_masked_too(self, json_lines: LogLines) -> None:
        log = structlog.stdlib.get_logger("leadloop.test")
        try:
            raise LookupError("no deal for +7 999 000-00-01")
        except LookupError:
            log.exception("lead.lookup_failed")

        [line] = json_lines()
        assert "LookupError: no deal for [phone]" in line["exception"]
        assert "000-00-01" not in line["exception"]

    def test_chatty_libraries_are_held_at_warning(self, json_lines: LogLines) -> None:
        logging.getLogger("fast_bitrix24").debug("response body {'PHONE': ...}")
        logging.getLogger("httpx").info("HTTP Request: GET https://example.ru/x")
        logging.getLogger("fast_bitrix24").warning("rate limited")

        assert [line["event"] for line in json_lines()] == ["rate limited"]

    def test_the_level_comes_from_settings(self, make_settings: MakeSettings) -> None:
        buffer = io.StringIO()
        configure_logging(make_settings(env="production"), stream=buffer)
        log = structlog.stdlib.get_logger("leadloop.test")

        log.debug("hidden.debug")
        log.info("shown.info")

        assert "hidden.debug" not in buffer.getvalue()
        assert "shown.info" in buffer.getvalue()

    def test_development_renders_readable_lines(
        self, make_settings: MakeSettings
    ) -> None:
        buffer = io.StringIO()
        configure_logging(make_settings(env="development"), stream=buffer)

        structlog.stdlib.get_logger("leadloop.test").info(
            "lead.received", deal_id=12345, phone="89990000001"
        )

        output = buffer.getvalue()
        assert "lead.received" in output
        assert "deal_id=12345" in output
        assert "phone=[phone]" in output
        assert not output.lstrip().startswith("{")

    def test_configuring_twice_keeps_one_handler(
        self, make_settings: MakeSettings
    ) -> None:
        first, second = io.StringIO(), io.StringIO()
        configure_logging(make_settings(env="production"), stream=first)
        configure_logging(make_settings(env="production"), stream=second)

        structlog.stdlib.get_logger("leadloop.test").info("once")

        assert first.getvalue() == ""
        assert second.getvalue().count('"once"') == 1
