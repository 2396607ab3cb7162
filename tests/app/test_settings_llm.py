"""The LLM settings: endpoint, model, key, output format and time limits."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from app.settings import Settings


class TestLlmSettings:
    def test_unset_means_the_rule_based_qualifier(self) -> None:
        """LLM-3: by default a call times out at 20 s and a turn at 30 s."""
        settings = Settings(_env_file=None)

        assert settings.llm_base_url is None
        assert settings.llm_model is None
        assert settings.llm_api_key is None
        assert settings.llm_response_format == "json_schema"
        assert (settings.llm_timeout_s, settings.llm_deadline_s) == (20.0, 30.0)

    def test_reads_every_llm_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LEADLOOP_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
        monkeypatch.setenv("LEADLOOP_LLM_MODEL", "qwen2.5:7b")
        monkeypatch.setenv("LEADLOOP_LLM_API_KEY", "sk-local-key")
        monkeypatch.setenv("LEADLOOP_LLM_RESPONSE_FORMAT", "json_object")
        monkeypatch.setenv("LEADLOOP_LLM_TIMEOUT_S", "12.5")
        monkeypatch.setenv("LEADLOOP_LLM_DEADLINE_S", "25")

        settings = Settings(_env_file=None)

        assert settings.llm_base_url == "http://127.0.0.1:11434/v1"
        assert settings.llm_model == "qwen2.5:7b"
        assert settings.llm_api_key == SecretStr("sk-local-key")
        assert settings.llm_response_format == "json_object"
        assert (settings.llm_timeout_s, settings.llm_deadline_s) == (12.5, 25.0)

    def test_the_key_is_a_secret_masked_in_logs(self) -> None:
        settings = Settings(_env_file=None, llm_api_key=SecretStr("sk-local-key"))

        assert "sk-local-key" not in repr(settings)
        assert "sk-local-key" in settings.secret_values()

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("llm_response_format", "xml"),
            ("llm_timeout_s", "0"),
            ("llm_timeout_s", "600"),
            ("llm_deadline_s", "-1"),
        ],
    )
    def test_rejects_values_outside_their_range(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        monkeypatch.setenv(f"LEADLOOP_{name.upper()}", value)

        with pytest.raises(ValidationError, match=name):
            Settings(_env_file=None)
