from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.settings import InvalidSettings, Settings, get_settings
from tests.app.conftest import REPO


class TestSettings:
    def test_defaults_need_no_environment(self) -> None:
        settings = Settings(_env_file=None)

        assert settings.env == "development"
        assert settings.redis_url == "redis://localhost:6379/0"
        assert settings.config is None
        assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
        assert (settings.sandbox_host, settings.sandbox_port) == ("127.0.0.1", 8801)
        assert settings.bitrix24_webhook_url is None

    def test_reads_leadloop_variables_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_ENV", "production")
        monkeypatch.setenv("LEADLOOP_REDIS_URL", "redis://redis:6379/2")
        monkeypatch.setenv("LEADLOOP_CONFIG", "/etc/leadloop.toml")
        monkeypatch.setenv("LEADLOOP_API_PORT", "9000")
        monkeypatch.setenv("LEADLOOP_TELEGRAM_BOT_TOKEN", "123456:tg-token")
        monkeypatch.setenv("LEADLOOP_WHATSAPP_PHONE_NUMBER_ID", "106540352242922")

        settings = Settings(_env_file=None)

        assert settings.is_production
        assert settings.redis_url == "redis://redis:6379/2"
        assert settings.config == Path("/etc/leadloop.toml")
        assert settings.api_port == 9000
        assert settings.telegram_bot_token == SecretStr("123456:tg-token")
        assert settings.whatsapp_phone_number_id == "106540352242922"

    def test_reads_a_dotenv_file(self, tmp_path: Path) -> None:
        env_file = tmp_path / ".env"
        env_file.write_text(
            "LEADLOOP_LOG_LEVEL=DEBUG\n"
            "LEADLOOP_BITRIX24_WEBHOOK_URL=https://example.bitrix24.ru/rest/1/code5/\n"
            "SOMETHING_ELSE=ignored\n"
        )

        settings = Settings(_env_file=env_file)

        assert settings.log_level == "DEBUG"
        assert settings.bitrix24_webhook_url is not None
        assert settings.bitrix24_webhook_url.get_secret_value() == (
            "https://example.bitrix24.ru/rest/1/code5/"
        )

    def test_reads_dotenv_from_the_working_directory(self, tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("LEADLOOP_ADMIN_TOKEN=admin-token-1\n")

        assert Settings().admin_token == SecretStr("admin-token-1")

    def test_environment_wins_over_dotenv(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / ".env").write_text("LEADLOOP_API_PORT=9001\n")
        monkeypatch.setenv("LEADLOOP_API_PORT", "9002")

        assert Settings().api_port == 9002

    def test_an_empty_variable_counts_as_unset(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_LLM_API_KEY", "")
        monkeypatch.setenv("LEADLOOP_CONFIG", "")

        settings = Settings(_env_file=None)

        assert settings.llm_api_key is None
        assert settings.config is None

    def test_secrets_stay_out_of_repr_str_and_json(self) -> None:
        settings = Settings(
            _env_file=None,
            bitrix24_webhook_url=SecretStr("https://example.bitrix24.ru/rest/1/k3y9/"),
            whatsapp_app_secret=SecretStr("test_app_secret"),
            llm_api_key=SecretStr("sk-local-0001"),
        )

        for shown in (repr(settings), str(settings), settings.model_dump_json()):
            assert "k3y9" not in shown
            assert "test_app_secret" not in shown
            assert "sk-local-0001" not in shown

    def test_webhook_url_gains_a_trailing_slash(self) -> None:
        settings = Settings(
            _env_file=None,
            bitrix24_webhook_url=SecretStr("https://example.bitrix24.ru/rest/1/code5"),
        )

        assert settings.bitrix24_webhook_url is not None
        assert settings.bitrix24_webhook_url.get_secret_value().endswith("/code5/")

    def test_webhook_url_must_be_http(self) -> None:
        with pytest.raises(ValidationError, match="must be an http"):
            Settings(_env_file=None, bitrix24_webhook_url=SecretStr("example.ru/rest"))

    def test_an_unknown_environment_is_rejected(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_ENV", "staging")

        with pytest.raises(ValidationError, match="env"):
            Settings(_env_file=None)

    def test_secret_values_lists_only_secrets_that_are_set(self) -> None:
        settings = Settings(
            _env_file=None,
            admin_token=SecretStr("admin-token-1"),
            whatsapp_phone_number_id="106540352242922",
        )

        assert settings.secret_values() == ["admin-token-1"]


class TestGetSettings:
    def test_is_read_once_until_the_cache_is_cleared(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_API_PORT", "9100")
        first = get_settings()
        monkeypatch.setenv("LEADLOOP_API_PORT", "9200")

        assert get_settings() is first
        get_settings.cache_clear()
        assert get_settings().api_port == 9200


class TestEnvExample:
    def test_lists_every_setting_and_nothing_else(self) -> None:
        text = (REPO / "deploy" / "env.example").read_text()
        listed = set(re.findall(r"^LEADLOOP_([A-Z0-9_]+)=", text, re.MULTILINE))

        assert listed == {name.upper() for name in Settings.model_fields}

    def test_its_values_are_valid_settings(self, tmp_path: Path) -> None:
        env_file = tmp_path / "example.env"
        env_file.write_text((REPO / "deploy" / "env.example").read_text())

        assert Settings(_env_file=env_file) == Settings(_env_file=None)


class TestInvalidSettings:
    SECRET_URL = "htps://salon.bitrix24.ru/rest/1/k3y5ecretc0de/"

    def test_names_every_bad_variable_without_its_value(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LEADLOOP_BITRIX24_WEBHOOK_URL", self.SECRET_URL)
        monkeypatch.setenv("LEADLOOP_LLM_TIMEOUT_S", "-1")
        get_settings.cache_clear()
        try:
            with pytest.raises(InvalidSettings) as raised:
                get_settings()
        finally:
            get_settings.cache_clear()

        assert raised.value.problems == [
            "LEADLOOP_BITRIX24_WEBHOOK_URL: must be an http(s) URL like "
            "https://portal/rest/1/code/",
            "LEADLOOP_LLM_TIMEOUT_S: input should be greater than 0",
        ]
        # The pydantic error, which quotes the input, is not chained for a traceback.
        assert raised.value.__suppress_context__
        assert raised.value.__cause__ is None
        assert "k3y5ecretc0de" not in str(raised.value)

    @pytest.mark.parametrize(
        "url",
        [
            "redis://127.0.0.1:6379/0",
            "redis://:password@redis:6379",
            "rediss://user:password@redis.example.ru:6380/2",
            "unix:///run/redis/redis.sock",
        ],
    )
    def test_redis_urls_of_every_kind_arq_takes_are_accepted(self, url: str) -> None:
        assert Settings(_env_file=None, redis_url=url).redis_url == url

    def test_the_public_address_loses_a_trailing_slash(self) -> None:
        settings = Settings(_env_file=None, public_url="https://leadloop.salon.ru/")

        assert settings.public_url == "https://leadloop.salon.ru"
