"""WhatsApp Cloud API sender: text, reply buttons, lists, templates, read marks.

Errors are classified by the Graph `code`, never by the HTTP status: the Cloud API
answers 400 for nearly every send error, rate limits included (reference §2.7).
The recipient's wa_id is a phone number, so no log line here names it.
"""

from __future__ import annotations

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
    ErrorDetails,
    MessengerError,
    OutsideWindow,
    Rejected,
    SentMessage,
    SlowDown,
    Template,
    Unavailable,
    Unreachable,
    as_int,
    as_secret,
    decode_json,
    transport_error,
)

log = structlog.stdlib.get_logger(__name__)

CHANNEL = "whatsapp"
METHOD = "messages"
DEFAULT_API_BASE = "https://graph.facebook.com/v22.0"
LIST_BUTTON_TEXT = "Выбрать"
# Limits of the interactive objects (reference §2.6).
MAX_REPLY_BUTTONS = 3
MAX_LIST_ROWS = 10
BUTTON_TITLE_LIMIT = 20
ROW_TITLE_LIMIT = 24
ROW_DESCRIPTION_LIMIT = 72

ERROR_CLASSES: dict[int, type[MessengerError]] = {
    131047: OutsideWindow,  # more than 24 h since the client last wrote
    131026: Unreachable,  # not on WhatsApp, terms not accepted, app too old
    130472: Unreachable,  # the number is in a Meta experiment: treat as undelivered
    130429: SlowDown,  # the number's throughput (80 messages/s by default)
    131056: SlowDown,  # too many messages to one recipient
    4: SlowDown,  # the app's call rate
    80007: SlowDown,  # the business account's call rate
    131048: Rejected,  # spam rate limit: stop sending and alert, never retry
    0: AuthFailed,
    3: AuthFailed,  # the app lacks the capability
    10: AuthFailed,  # permission not granted or revoked
    190: AuthFailed,  # access token expired or invalid
    1: Unavailable,
    2: Unavailable,
    131000: Unavailable,  # "something went wrong"
    131016: Unavailable,  # service temporarily unavailable
}
# Codes 200-299 are missing API permissions.
PERMISSION_CODES = range(200, 300)
# How long to wait when a rate-limit answer carries no Retry-After. Throughput is
# counted per second; the pair limit allows about one message per 6 s to a user
# (dev.to/wapgrowai_org, "WhatsApp Cloud API Rate Limits in Practice"); app and
# account call limits are counted over an hour, so a minute is a polite minimum.
SLOW_DOWN_S: dict[int, float] = {130429: 1.0, 131056: 6.0, 4: 60.0, 80007: 60.0}


class WhatsAppSender:
    """Sends from one business phone number through the Cloud API."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        access_token: SecretStr | str,
        phone_number_id: str,
        api_base: str = DEFAULT_API_BASE,
        api_version: str | None = None,
        *,
        timeout: httpx.Timeout = MESSENGER_TIMEOUT,
        list_button_text: str = LIST_BUTTON_TEXT,
    ) -> None:
        """`api_base` carries the Graph version (`…/v22.0`) unless `api_version`
        names it (`v22.0`), as `LEADLOOP_WHATSAPP_API_BASE` does."""
        self._http = http
        self._token = as_secret(access_token)
        base = api_base.rstrip("/")
        if api_version:
            base = f"{base}/{api_version.strip('/')}"
        self._url = f"{base}/{phone_number_id}/messages"
        self._timeout = timeout
        self._list_button_text = list_button_text

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        request_phone: bool = False,
    ) -> SentMessage:
        """Send text; up to 3 buttons as reply buttons, up to 10 as a list.

        `request_phone` is ignored: a WhatsApp chat id is the client's number.
        """
        message = {"to": chat_id, **self._content(text, buttons)}
        return await self._send(message)

    async def send_template(self, chat_id: str, template: Template) -> SentMessage:
        """Send an approved template: the only message allowed outside the window."""
        content: dict[str, Any] = {
            "name": template.name,
            "language": {"code": template.language},
        }
        components = [
            *_body(template.parameters),
            *(_quick_reply(i, data) for i, data in enumerate(template.quick_replies)),
        ]
        if components:
            content["components"] = components
        return await self._send(
            {"to": chat_id, "type": "template", "template": content}
        )

    async def answer_callback(self, callback_id: str, text: str | None = None) -> bool:
        """Mark the client's button reply as read: WhatsApp has no callback answer.

        `callback_id` is the reply's wamid; `text` has nowhere to go and is dropped.
        """
        body = {"status": "read", "message_id": callback_id}
        await self._post({"messaging_product": "whatsapp", **body})
        log.info("whatsapp.marked_read", message_id=callback_id)
        return True

    def _content(self, text: str, buttons: Sequence[Button]) -> dict[str, Any]:
        if not buttons:
            return {"type": "text", "text": {"preview_url": False, "body": text}}
        if len(buttons) <= MAX_REPLY_BUTTONS:
            return _reply_buttons(text, buttons)
        if len(buttons) <= MAX_LIST_ROWS:
            return _list(text, buttons, self._list_button_text)
        raise ValueError(f"WhatsApp shows at most {MAX_LIST_ROWS} choices")

    async def _send(self, message: dict[str, Any]) -> SentMessage:
        body = {"messaging_product": "whatsapp", "recipient_type": "individual"}
        answer = await self._post(body | message)

        wamid = _wamid(answer)
        log.info("whatsapp.sent", message_id=wamid, type=message["type"])
        return SentMessage(wamid)

    async def _post(self, body: dict[str, Any]) -> object:
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        try:
            response = await self._http.post(
                self._url, json=body, headers=headers, timeout=self._timeout
            )
        except httpx.TransportError as failure:
            log.warning("whatsapp.unavailable", error=type(failure).__name__)
            raise transport_error(failure, channel=CHANNEL, method=METHOD) from None

        answer = decode_json(response)
        if response.is_success and isinstance(answer, Mapping):
            return answer
        error = map_whatsapp_error(
            response.status_code, answer, response.headers.get("retry-after")
        )
        log.info(
            "whatsapp.send_failed",
            status=response.status_code,
            code=error.code,
            error=type(error).__name__,
        )
        raise error


def _body(parameters: Sequence[str]) -> list[dict[str, Any]]:
    if not parameters:
        return []
    texts = [{"type": "text", "text": parameter} for parameter in parameters]
    return [{"type": "body", "parameters": texts}]


def _quick_reply(index: int, payload: str) -> dict[str, Any]:
    """The payload of the template's quick-reply button at `index`."""
    return {
        "type": "button",
        "sub_type": "quick_reply",
        "index": str(index),
        "parameters": [{"type": "payload", "payload": payload}],
    }


def _reply_buttons(text: str, buttons: Sequence[Button]) -> dict[str, Any]:
    replies = [
        {
            "type": "reply",
            "reply": {"id": b.data, "title": fit(b.text, BUTTON_TITLE_LIMIT)},
        }
        for b in buttons
    ]
    interactive = {
        "type": "button",
        "body": {"text": text},
        "action": {"buttons": replies},
    }
    return {"type": "interactive", "interactive": interactive}


def _list(text: str, buttons: Sequence[Button], label: str) -> dict[str, Any]:
    rows = []
    for button in buttons:
        row = {"id": button.data, "title": fit(button.text, ROW_TITLE_LIMIT)}
        if len(button.text) > ROW_TITLE_LIMIT:
            # The full label still shows, under the shortened title.
            row["description"] = fit(button.text, ROW_DESCRIPTION_LIMIT)
        rows.append(row)
    interactive = {
        "type": "list",
        "body": {"text": text},
        "action": {
            "button": fit(label, BUTTON_TITLE_LIMIT),
            "sections": [{"rows": rows}],
        },
    }
    return {"type": "interactive", "interactive": interactive}


def fit(text: str, limit: int) -> str:
    """The text cut to `limit` characters with an ellipsis, when it is longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def map_whatsapp_error(
    status: int | None, body: object, retry_after_header: str | None = None
) -> MessengerError:
    """The sender error for a Graph answer that is not a success.

    Also classifies the `errors[]` of a `failed` status webhook: pass the item as
    `{"error": item}` with `status` None.
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    code = as_int(error.get("code")) if isinstance(error, Mapping) else None
    if not isinstance(error, Mapping) or code is None:
        return Unavailable(
            f"whatsapp {METHOD}: HTTP {status}, not a Graph error answer",
            channel=CHANNEL,
            method=METHOD,
            status=status,
        )
    description = _description(error)
    details = ErrorDetails(
        channel=CHANNEL,
        method=METHOD,
        status=status,
        code=code,
        description=description,
    )
    message = f"whatsapp {METHOD}: {code} {description}"
    cls = error_class(code, status)
    if cls is SlowDown:
        delay = _retry_after(code, retry_after_header)
        return SlowDown(message, retry_after_s=delay, **details)
    return cls(message, **details)


def error_class(code: int, status: int | None = None) -> type[MessengerError]:
    """The class for a Graph error code; unknown codes go by the HTTP status."""
    if code in ERROR_CLASSES:
        return ERROR_CLASSES[code]
    if code in PERMISSION_CODES:
        return AuthFailed
    if status is not None and status >= 500:
        return Unavailable
    return Rejected


def _retry_after(code: int, header: str | None) -> float:
    """Retry-After when it is usable, else the pause the code implies."""
    delay = as_int(header)
    if delay is None or delay < 0:
        return SLOW_DOWN_S.get(code, 1.0)
    return float(delay)


def _description(error: Mapping[str, Any]) -> str:
    text = str(error.get("message") or error.get("title") or "")
    data = error.get("error_data")
    if isinstance(data, Mapping) and data.get("details"):
        text = f"{text}: {data['details']}"
    return text[:DESCRIPTION_LIMIT]


def _wamid(answer: object) -> str:
    messages = answer.get("messages") if isinstance(answer, Mapping) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], Mapping):
        wamid = messages[0].get("id")
        if isinstance(wamid, str) and wamid:
            return wamid
    raise Unavailable(
        "whatsapp messages: the answer has no message id",
        channel=CHANNEL,
        method=METHOD,
    )
