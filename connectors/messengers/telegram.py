"""Telegram Bot API sender: messages, buttons, contact requests, callback answers.

The bot token is part of every request URL (`/bot<token>/<method>`), so nothing
here logs or raises a URL: log lines carry the method name and ids, and transport
errors are reported by class name only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from connectors.messengers.base import (
    DESCRIPTION_LIMIT,
    MESSENGER_TIMEOUT,
    AuthFailed,
    Button,
    ChatMigrated,
    ErrorDetails,
    MessengerError,
    Rejected,
    SentMessage,
    SlowDown,
    Unavailable,
    Unreachable,
    as_int,
    as_secret,
    decode_json,
    transport_error,
)

log = structlog.stdlib.get_logger(__name__)

CHANNEL = "telegram"
DEFAULT_API_BASE = "https://api.telegram.org"
PHONE_BUTTON_TEXT = "📱 Отправить номер"
# The update kinds leadloop handles (reference §1.2); anything else is not sent.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")
# Error texts are "subject to change" along with the codes, so a description is
# matched only where the code alone cannot tell the cases apart.
QUERY_TOO_OLD = "query is too old"
NOT_MODIFIED = "message is not modified"
# When a 429 carries no `retry_after`, wait as long as one chat's limit implies.
DEFAULT_RETRY_AFTER_S = 1.0
_RETRY_AFTER_TEXT = re.compile(r"retry after (\d+)")
_NUMERIC_CHAT = re.compile(r"-?\d+")


class TelegramSender:
    """Sends through one bot's Bot API, on an injected HTTP client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        token: SecretStr | str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: httpx.Timeout = MESSENGER_TIMEOUT,
        phone_button_text: str = PHONE_BUTTON_TEXT,
    ) -> None:
        self._http = http
        self._token = as_secret(token)
        self._base = api_base.rstrip("/")
        self._timeout = timeout
        self._phone_button_text = phone_button_text

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        request_phone: bool = False,
    ) -> SentMessage:
        """Send a message; buttons come back as callback queries with their data."""
        params: dict[str, Any] = {"chat_id": _chat_id(chat_id), "text": text}
        markup = reply_markup(buttons, request_phone, self._phone_button_text)
        if markup is not None:
            params["reply_markup"] = markup

        message = await self.call("sendMessage", params)

        message_id = _message_id(message)
        log.info("telegram.sent", message_id=message_id)
        return SentMessage(str(message_id))

    async def answer_callback(self, callback_id: str, text: str | None = None) -> bool:
        """Stop the button's spinner; False when the query was too old to answer."""
        params: dict[str, Any] = {"callback_query_id": callback_id}
        if text:
            params["text"] = text
        try:
            await self.call("answerCallbackQuery", params)
        except Rejected as error:
            if QUERY_TOO_OLD not in error.description:
                raise
            # The client gave up waiting (or tapped again); nothing is lost.
            log.warning("telegram.callback_expired", callback_id=callback_id)
            return False
        return True

    async def remove_buttons(self, chat_id: str, message_id: str) -> None:
        """Take the inline buttons off a message, so that a second tap has none."""
        params = {"chat_id": _chat_id(chat_id), "message_id": int(message_id)}
        try:
            await self.call("editMessageReplyMarkup", params)
        except Rejected as error:
            if NOT_MODIFIED not in error.description:
                raise
        log.info("telegram.buttons_removed", message_id=message_id)

    async def set_webhook(
        self,
        url: str,
        secret_token: SecretStr | str,
        *,
        allowed_updates: Sequence[str] = ALLOWED_UPDATES,
    ) -> None:
        """Point the bot's updates at `url`, signed with `secret_token`."""
        await self.call(
            "setWebhook", webhook_params(url, secret_token, allowed_updates)
        )
        log.info("telegram.webhook_set", allowed_updates=list(allowed_updates))

    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """One Bot API call; its `result`, or the mapped error."""
        url = f"{self._base}/bot{self._token.get_secret_value()}/{method}"
        try:
            response = await self._http.post(url, json=params, timeout=self._timeout)
        except httpx.TransportError as failure:
            log.warning(
                "telegram.unavailable", method=method, error=type(failure).__name__
            )
            raise transport_error(failure, channel=CHANNEL, method=method) from None

        body = decode_json(response)
        if response.is_success and isinstance(body, Mapping) and body.get("ok"):
            return body.get("result")
        error = map_telegram_error(
            method, response.status_code, body, response.headers.get("retry-after")
        )
        log.info(
            "telegram.call_failed",
            method=method,
            status=response.status_code,
            error=type(error).__name__,
        )
        raise error


def reply_markup(
    buttons: Sequence[Button], request_phone: bool, phone_button_text: str
) -> dict[str, Any] | None:
    """Inline buttons, or a one-tap contact request: a message carries one of them."""
    if buttons and request_phone:
        raise ValueError(
            "a Telegram message carries inline buttons or a contact request, not both"
        )
    if request_phone:
        # request_contact works in private chats only and answers with a
        # message.contact whose user_id is the sender's (reference §1.5).
        button = {"text": phone_button_text, "request_contact": True}
        return {
            "keyboard": [[button]],
            "resize_keyboard": True,
            "one_time_keyboard": True,
        }
    if buttons:
        # One button per row: Russian labels are long, and a row of two truncates.
        rows = [[{"text": b.text, "callback_data": b.data}] for b in buttons]
        return {"inline_keyboard": rows}
    return None


def map_telegram_error(
    method: str, status: int, body: object, retry_after_header: str | None = None
) -> MessengerError:
    """The sender error for a Bot API answer that is not `ok`.

    `body` is the decoded JSON, or None when the answer was not JSON (a proxy's
    page, an empty body).
    """
    if not isinstance(body, Mapping) or body.get("ok") is not False:
        return Unavailable(
            f"telegram {method}: HTTP {status}, not a Bot API answer",
            channel=CHANNEL,
            method=method,
            status=status,
        )
    code = as_int(body.get("error_code")) or status
    description = str(body.get("description") or "")[:DESCRIPTION_LIMIT]
    parameters = body.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    details = ErrorDetails(
        channel=CHANNEL,
        method=method,
        status=status,
        code=code,
        description=description,
    )
    message = f"telegram {method}: {code} {description}"

    new_chat_id = as_int(parameters.get("migrate_to_chat_id"))
    if new_chat_id:
        return ChatMigrated(message, new_chat_id=new_chat_id, **details)
    if code == 429:
        delay = _retry_after(parameters, retry_after_header, description)
        return SlowDown(message, retry_after_s=delay, **details)
    return _class_for(code, description)(message, **details)


def _class_for(code: int, description: str) -> type[MessengerError]:
    if code == 403:
        # Blocked, deactivated, kicked, never started: nothing more can be sent.
        return Unreachable
    if code == 401 or (code == 404 and description == "Not Found"):
        # A token the server cannot parse is answered with a bare 404 Not Found;
        # an unknown method says "Not Found: method not found" and is our bug.
        return AuthFailed
    if code >= 500:
        return Unavailable
    return Rejected


def _retry_after(
    parameters: Mapping[str, Any], header: str | None, description: str
) -> float:
    for candidate in (parameters.get("retry_after"), header):
        number = as_int(candidate)
        if number is not None:
            return float(number)
    match = _RETRY_AFTER_TEXT.search(description)
    return float(match[1]) if match else DEFAULT_RETRY_AFTER_S


def _chat_id(chat_id: str) -> int | str:
    """Numeric ids go as numbers (up to 52 bits); `@channel` names as they are."""
    return int(chat_id) if _NUMERIC_CHAT.fullmatch(chat_id) else chat_id


def _message_id(message: object) -> int:
    if isinstance(message, Mapping):
        message_id = as_int(message.get("message_id"))
        if message_id is not None:
            return message_id
    raise Unavailable(
        "telegram sendMessage: the answer has no message_id",
        channel=CHANNEL,
        method="sendMessage",
    )


def webhook_params(
    url: str, secret_token: SecretStr | str, allowed_updates: Sequence[str]
) -> dict[str, Any]:
    """`setWebhook`'s parameters: the URL, the secret header's value, update kinds."""
    return {
        "url": url,
        "secret_token": as_secret(secret_token).get_secret_value(),
        "allowed_updates": list(allowed_updates),
    }
