"""Production refuses to start on missing, weak or example secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from app.security import (
    MIN_SECRET_LENGTH,
    UnsafeSettings,
    bearer_matches,
    ensure_production_ready,
    is_public_value,
    production_problems,
)
from app.settings import Settings, get_settings
from sandbox.oauth import DEFAULT_CLIENT_SECRET
from sandbox.server import DEFAULT_WEBHOOK_TOKEN
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import SANDBOX_APP_SECRET, SANDBOX_WHATSAPP_ACCESS_TOKEN

REPO = Path(__file__).resolve().parents[2]
STRONG = {
    "admin_token": "Zq7-admin-4mT0kXb9Lr2vW8s",
    "telegram_webhook_secret": "t3LeGr4m_s3cr3t-9fK2mQ8vXw",
    "whatsapp_app_secret": "8c1f0e6d2b7a94e3c5d0f1a2b3c4d5e6",
    "whatsapp_verify_token": "vT9-wh4tsapp-Qm2Lx7Rk5Pz",
    "bitrix24_application_token": "4f9a2c7e1b8d6035e2f7a9c4b1d8e063",
}
REAL_CHANNELS: dict[str, Any] = {
    "bitrix24_webhook_url": SecretStr("https://salon.bitrix24.ru/rest/1/k3q9x7w2m5t8/"),
    "telegram_bot_token": SecretStr("7012345678:AAFq9x-Lm3Kp8Zr2Wv5Ty7Ub1Nc4Xd6Es0"),
    "whatsapp_access_token": SecretStr("EAAGm0PX4ZCpsBAKq9x7w2m5t8r1"),
    "whatsapp_phone_number_id": "106540352242922",
}


def production(**values: Any) -> Settings:
    """Production settings with every channel set up and strong secrets, changed by
    `values` (None unsets one)."""
    fields: dict[str, Any] = {
        **REAL_CHANNELS,
        **{name: SecretStr(value) for name, value in STRONG.items()},
    }
    for name, value in values.items():
        fields[name] = SecretStr(value) if isinstance(value, str) else value
    return Settings(_env_file=None, env="production", **fields)


class TestProductionProblems:
    def test_strong_secrets_on_real_channels_pass(self) -> None:
        assert production_problems(production()) == []

    @pytest.mark.parametrize(
        ("field", "variable"),
        [
            ("admin_token", "LEADLOOP_ADMIN_TOKEN"),
            ("telegram_webhook_secret", "LEADLOOP_TELEGRAM_WEBHOOK_SECRET"),
            ("whatsapp_app_secret", "LEADLOOP_WHATSAPP_APP_SECRET"),
            ("whatsapp_verify_token", "LEADLOOP_WHATSAPP_VERIFY_TOKEN"),
        ],
    )
    def test_a_missing_secret_is_named(self, field: str, variable: str) -> None:
        problems = production_problems(production(**{field: None}))

        assert len(problems) == 1
        assert problems[0].startswith(f"{variable} is not set")

    @pytest.mark.parametrize("field", sorted(STRONG))
    def test_an_empty_secret_counts_as_missing_or_is_refused(self, field: str) -> None:
        problems = production_problems(production(**{field: ""}))

        if field == "bitrix24_application_token":
            assert problems == []  # events off: the reconcile job finds bookings
        else:
            assert problems == [problems[0]]
            assert "is not set" in problems[0]

    @pytest.mark.parametrize("field", sorted(STRONG))
    def test_a_short_secret_is_refused(self, field: str) -> None:
        short = STRONG[field][: MIN_SECRET_LENGTH - 1]

        problems = production_problems(production(**{field: short}))

        assert problems == [
            f"LEADLOOP_{field.upper()} is shorter than {MIN_SECRET_LENGTH} characters"
        ]

    @pytest.mark.parametrize(
        "value",
        [
            "changeme",
            "CHANGE-ME",
            "change_me_to_a_long_random_value",
            "replace-with-a-random-secret",
            "your-secret-here-0123456789",
            "example-admin-token-0123",
            "sandbox_app_secret",
            "password",
        ],
    )
    @pytest.mark.parametrize("field", sorted(STRONG))
    def test_an_example_value_is_refused(self, field: str, value: str) -> None:
        problems = production_problems(production(**{field: value}))

        assert problems == [
            f"LEADLOOP_{field.upper()} is an example or default value; "
            "set a secret of your own"
        ]

    def test_a_long_secret_of_few_characters_is_refused(self) -> None:
        problems = production_problems(production(admin_token="ab" * 16))

        assert problems == [
            "LEADLOOP_ADMIN_TOKEN repeats too few characters to be a secret"
        ]

    def test_a_telegram_secret_telegram_would_refuse_is_named(self) -> None:
        problems = production_problems(
            production(telegram_webhook_secret="a strong secret with spaces 9!")
        )

        assert problems == [
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET may hold only A-Z, a-z, 0-9, _ and - "
            "(Telegram refuses other characters)"
        ]

    def test_channels_not_set_up_need_no_secret(self) -> None:
        settings = Settings(
            _env_file=None,
            env="production",
            admin_token=SecretStr(STRONG["admin_token"]),
        )

        assert production_problems(settings) == []

    def test_the_admin_token_is_always_needed(self) -> None:
        settings = Settings(_env_file=None, env="production")

        assert production_problems(settings) == [
            "LEADLOOP_ADMIN_TOKEN is not set; it guards the admin API and the dashboard"
        ]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("telegram_bot_token", SANDBOX_BOT_TOKEN),
            ("whatsapp_access_token", SANDBOX_WHATSAPP_ACCESS_TOKEN),
            ("bitrix24_webhook_url", "http://127.0.0.1:8801/rest/1/sandbox/"),
        ],
    )
    def test_the_sandbox_credentials_are_refused(self, field: str, value: str) -> None:
        problems = production_problems(production(**{field: value}))

        assert problems == [
            f"LEADLOOP_{field.upper()} is the sandbox's or an example's; "
            "production needs the real one"
        ]

    def test_no_problem_quotes_a_secret(self) -> None:
        weak = {name: value[:10] for name, value in STRONG.items()}

        problems = production_problems(production(**weak))

        assert len(problems) == len(weak)
        for value in weak.values():
            assert all(value not in problem for problem in problems)


class TestPublicValues:
    @pytest.mark.parametrize(
        "credential",
        [
            SANDBOX_BOT_TOKEN,
            SANDBOX_WHATSAPP_ACCESS_TOKEN,
            SANDBOX_APP_SECRET,
            DEFAULT_WEBHOOK_TOKEN,
            DEFAULT_CLIENT_SECRET,
        ],
    )
    def test_every_sandbox_credential_is_public(self, credential: str) -> None:
        assert is_public_value(credential)

    def test_the_placeholders_in_deploy_are_public(self) -> None:
        placeholders = deploy_secret_placeholders()

        assert placeholders, "deploy/ shows no placeholder secrets any more"
        assert [value for value in placeholders if not is_public_value(value)] == []

    def test_a_random_token_is_not(self) -> None:
        assert not is_public_value(STRONG["telegram_webhook_secret"])


def deploy_secret_placeholders() -> list[str]:
    """The values deploy/ shows for secrets: the Kubernetes example Secret's."""
    text = (REPO / "deploy" / "k8s" / "secret.example.yaml").read_text()
    return re.findall(r"^\s+LEADLOOP_\w+:\s*\"([^\"]+)\"", text, re.MULTILINE)


class TestEnsureProductionReady:
    def test_development_keeps_its_convenient_values(self) -> None:
        settings = Settings(
            _env_file=None,
            telegram_bot_token=SecretStr(SANDBOX_BOT_TOKEN),
            telegram_webhook_secret=SecretStr("short"),
        )

        ensure_production_ready(settings)

    def test_production_raises_with_every_problem_on_its_own_line(self) -> None:
        settings = production(admin_token=None, telegram_webhook_secret="changeme")

        with pytest.raises(UnsafeSettings) as raised:
            ensure_production_ready(settings)

        message = str(raised.value)
        assert message.startswith(
            "refusing to start in production (LEADLOOP_ENV=production):\n"
        )
        assert "\n  - LEADLOOP_ADMIN_TOKEN is not set;" in message
        assert "\n  - LEADLOOP_TELEGRAM_WEBHOOK_SECRET is an example" in message
        assert "secrets.token_urlsafe(32)" in message
        assert len(raised.value.problems) == 2


class TestGetSettingsInProduction:
    def test_refuses_the_example_environment_switched_to_production(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        env_file = tmp_path / ".env"
        env_file.write_text((REPO / "deploy" / "env.example").read_text())
        monkeypatch.setenv("LEADLOOP_ENV", "production")

        with pytest.raises(UnsafeSettings, match="LEADLOOP_ADMIN_TOKEN is not set"):
            get_settings()

    def test_starts_with_strong_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEADLOOP_ENV", "production")
        monkeypatch.setenv("LEADLOOP_ADMIN_TOKEN", STRONG["admin_token"])

        assert get_settings().is_production


class TestBearerMatches:
    TOKEN = SecretStr("k3y-for-the-admin-api-0001")

    @pytest.mark.parametrize(
        ("header", "matches"),
        [
            ("Bearer k3y-for-the-admin-api-0001", True),
            ("bearer  k3y-for-the-admin-api-0001 ", True),
            ("Bearer k3y-for-the-admin-api-0002", False),
            ("Basic k3y-for-the-admin-api-0001", False),
            ("k3y-for-the-admin-api-0001", False),
            ("", False),
        ],
    )
    def test_only_the_bearer_scheme_with_the_token_matches(
        self, header: str, matches: bool
    ) -> None:
        headers = Headers({"authorization": header} if header else {})

        assert bearer_matches(headers, self.TOKEN) is matches
