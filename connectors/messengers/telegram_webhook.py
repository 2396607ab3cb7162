"""The bot's webhook registration: `setWebhook` and `getWebhookInfo` (reference §1.2).

`getWebhookInfo` never shows the secret token, so whether the registered secret is
ours cannot be read back. `setWebhook` with the same URL, secret and connection
limit answers "Webhook is already set" (telegram-bot-api `Client.cpp`), which is how
setup tells a no-op from a change. Errors are the sender's (`map_telegram_error`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import SecretStr

from connectors.messengers.base import (
    MESSENGER_TIMEOUT,
    Unavailable,
    as_int,
    as_secret,
    decode_json,
    transport_error,
)
from connectors.messengers.telegram import (
    ALLOWED_UPDATES,
    CHANNEL,
    DEFAULT_API_BASE,
    map_telegram_error,
    webhook_params,
)

ALREADY_SET = "Webhook is already set"


@dataclass(frozen=True)
class WebhookInfo:
    """Where the bot's updates go, and what Telegram last failed at."""

    url: str
    allowed_updates: tuple[str, ...] | None
    pending_update_count: int
    last_error_at: datetime | None = None
    last_error_message: str = ""


@dataclass(frozen=True)
class WebhookSet:
    """`setWebhook` went through; `changed` is False when nothing was different."""

    changed: bool
    description: str


class TelegramWebhook:
    """One bot's webhook settings, on an injected HTTP client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: SecretStr | str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: httpx.Timeout = MESSENGER_TIMEOUT,
    ) -> None:
        self._http = http
        self._token = as_secret(token)
        self._base = api_base.rstrip("/")
        self._timeout = timeout

    async def info(self) -> WebhookInfo:
        body = await self._call("getWebhookInfo", {})
        result = body.get("result")
        if not isinstance(result, Mapping):
            raise Unavailable(
                "telegram getWebhookInfo: the answer has no result",
                channel=CHANNEL,
                method="getWebhookInfo",
            )
        return _info(result)

    async def set(
        self,
        url: str,
        secret_token: SecretStr | str,
        *,
        allowed_updates: Sequence[str] = ALLOWED_UPDATES,
    ) -> WebhookSet:
        """Point updates at `url`, signed with the secret; pending ones are kept."""
        params = webhook_params(url, secret_token, allowed_updates)
        body = await self._call("setWebhook", params)
        description = str(body.get("description") or "")
        return WebhookSet(changed=description != ALREADY_SET, description=description)

    async def _call(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        # The token is in the URL: errors name the method, never the URL.
        url = f"{self._base}/bot{self._token.get_secret_value()}/{method}"
        try:
            response = await self._http.post(url, json=params, timeout=self._timeout)
        except httpx.TransportError as failure:
            raise transport_error(failure, channel=CHANNEL, method=method) from None
        body = decode_json(response)
        if response.is_success and isinstance(body, Mapping) and body.get("ok"):
            return body
        raise map_telegram_error(
            method, response.status_code, body, response.headers.get("retry-after")
        )


def _info(result: Mapping[str, Any]) -> WebhookInfo:
    allowed = result.get("allowed_updates")
    error_date = as_int(result.get("last_error_date"))
    return WebhookInfo(
        url=str(result.get("url") or ""),
        allowed_updates=(
            tuple(str(kind) for kind in allowed) if isinstance(allowed, list) else None
        ),
        pending_update_count=as_int(result.get("pending_update_count")) or 0,
        last_error_at=(datetime.fromtimestamp(error_date, UTC) if error_date else None),
        last_error_message=str(result.get("last_error_message") or ""),
    )
