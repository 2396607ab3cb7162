"""Process settings: `LEADLOOP_*` environment variables and an optional `.env` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.security import ensure_production_ready, env_name

Environment = Literal["development", "production"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything a process needs to start; business rules live in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="LEADLOOP_",
        env_file=".env",
        env_file_encoding="utf-8",
        # `LEADLOOP_X=` copied from env.example means "not set", not "empty secret".
        env_ignore_empty=True,
        extra="ignore",
    )

    # Process
    env: Environment = "development"
    log_level: LogLevel = "INFO"
    config: Path | None = Field(default=None, description="business rules (TOML)")

    # Redis: the arq queue, dialog state, dedupe keys
    redis_url: str = "redis://localhost:6379/0"

    # Where the HTTP servers listen
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    sandbox_host: str = "127.0.0.1"
    sandbox_port: int = Field(default=8801, ge=1, le=65535)
    # Larger request bodies are refused with 413; Telegram updates and WhatsApp
    # batches are a few KiB.
    max_request_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Jobs one worker process runs at once. Most of a job's time is spent waiting on
    # the portal's rate limit or a messenger, not the CPU; docs/benchmarks.md shows
    # how the backlog of a burst drains with it.
    worker_max_jobs: int = Field(default=50, ge=1, le=1000)
    # The worker's Prometheus endpoint (no token): off unless a port is set.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)

    # Bitrix24: the inbound webhook URL embeds its token, so it is a secret
    bitrix24_webhook_url: SecretStr | None = None
    bitrix24_application_token: SecretStr | None = None

    # Telegram
    telegram_bot_token: SecretStr | None = None
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"

    # WhatsApp Cloud API; the base carries the Graph API version
    whatsapp_access_token: SecretStr | None = None
    whatsapp_app_secret: SecretStr | None = None
    whatsapp_verify_token: SecretStr | None = None
    whatsapp_phone_number_id: str | None = None
    whatsapp_api_base: str = "https://graph.facebook.com/v22.0"

    # LLM: any OpenAI-compatible endpoint; unset means the rule-based qualifier
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    # "json_schema" (structured output), "json_object" (JSON mode) or "text" for
    # endpoints that support neither; the answer is validated the same way.
    llm_response_format: Literal["json_schema", "json_object", "text"] = "json_schema"
    # One call, then the whole turn with retries: well under the arq job timeout, so
    # the rule-based qualifier still answers the client in time.
    llm_timeout_s: float = Field(default=20.0, gt=0, le=120)
    llm_deadline_s: float = Field(default=30.0, gt=0, le=300)

    # Admin API
    admin_token: SecretStr | None = None

    # Where the internet reaches the API (https://leadloop.example.ru): `leadloop
    # setup` registers the Telegram webhook and Bitrix24 event handlers under it.
    public_url: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_a_scheme_and_host(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme == "unix" and parts.path:
            return url.strip()
        database = parts.path.strip("/")
        if (
            parts.scheme not in ("redis", "rediss")
            or not parts.hostname
            or (database and not database.isdigit())
        ):
            raise ValueError(
                "must be a URL like redis://host:6379/0 (redis://, rediss:// with "
                "TLS, or unix:///path/redis.sock)"
            )
        return url.strip()

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_bare_address(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        base = url.strip().rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an address like https://leadloop.example.ru")
        if parts.path or parts.query or parts.fragment:
            raise ValueError(
                "must be the bare address (no path): the webhook routes /webhooks/… "
                "are added to it"
            )
        return base

    @field_validator("bitrix24_webhook_url")
    @classmethod
    def _webhook_url_ends_with_slash(cls, url: SecretStr | None) -> SecretStr | None:
        if url is None:
            return None
        value = url.get_secret_value()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL like https://portal/rest/1/code/")
        return url if value.endswith("/") else SecretStr(value + "/")

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def secret_values(self) -> list[str]:
        """The plain values of every secret that is set, for the log masker."""
        values = (getattr(self, name) for name in type(self).model_fields)
        return [
            value.get_secret_value()
            for value in values
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]


class InvalidSettings(ValueError):
    """Settings that do not parse; the message names each variable and what it needs.

    Never the value given: a mistyped webhook URL or token is still a secret.
    """

    def __init__(self, error: ValidationError) -> None:
        self.problems = [_problem(detail) for detail in error.errors()]
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"invalid settings (environment or .env):\n{lines}\n"
            "deploy/env.example documents every variable."
        )


def _problem(detail: Any) -> str:
    location = detail.get("loc") or ()
    name = env_name(str(location[0])) if location else "settings"
    message = str(detail.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return f"{name}: {message[:1].lower()}{message[1:]}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once; tests build `Settings(...)` directly.

    A value that does not parse raises InvalidSettings; production refuses to start
    here on missing, weak or example secrets.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        raise InvalidSettings(exc) from None
    ensure_production_ready(settings)
    return settings
