"""What every messenger sender offers, and every way a send can fail.

Callers catch these classes, never httpx's or a platform's codes::

    MessengerError
    ├── Unreachable     the client cannot be messaged: blocked the bot, left the
    │                   platform (Telegram 403; WhatsApp 131026, 130472). Mark the
    │                   channel, stop reminders, never retry.
    ├── SlowDown        a rate limit (Telegram 429; WhatsApp 130429, 131056):
    │                   send once more after `retry_after_s`.
    ├── OutsideWindow   WhatsApp 131047: more than 24 h since the client last wrote;
    │                   only a template may be sent (one fallback).
    ├── AuthFailed      the bot token or access token is wrong or expired (Telegram
    │                   401; WhatsApp 190 and the other permission codes): alert.
    ├── Unavailable     no usable answer: transport failure, timeout, 5xx, a page
    │                   that is not the API's JSON. `sent` is False only when the
    │                   request surely never left, so that resending cannot double.
    └── Rejected        the platform refused this request as it stands: text too
        │               long, a bad button, an unknown template, spam limits.
        └── ChatMigrated  Telegram: the group became a supergroup; use
                          `new_chat_id`.

Senders never retry: a send that timed out may have been delivered, and only the
caller (an arq job with its own retry budget) knows whether a duplicate is worse
than a gap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NotRequired, Protocol, TypedDict, Unpack

import httpx
from pydantic import SecretStr

# Both APIs answer in well under a second; a connection that has not opened in 5 s
# or an answer that has not come in 10 s is better reported than waited for.
MESSENGER_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# A platform's error text is kept to this many characters in an error and its logs.
DESCRIPTION_LIMIT = 300
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Button:
    """A button under a message: what the client sees and what comes back on a tap."""

    text: str
    data: str


@dataclass(frozen=True)
class SentMessage:
    """The platform's id of a message it accepted (Telegram message_id, wamid)."""

    provider_message_id: str


@dataclass(frozen=True)
class Template:
    """An approved WhatsApp template with its body parameters, in order."""

    name: str
    language: str = "ru"
    parameters: Sequence[str] = ()
    # What the template's quick-reply buttons send back when tapped, by button
    # position; a button given nothing sends its own text.
    quick_replies: Sequence[str] = ()


class Sender(Protocol):
    """One messenger channel's outbound side."""

    async def send_text(
        self,
        chat_id: str,
        text: str,
        *,
        buttons: Sequence[Button] = (),
        request_phone: bool = False,
    ) -> SentMessage:
        """Send `text`, with buttons or a request for the client's phone."""
        ...

    async def answer_callback(self, callback_id: str, text: str | None = None) -> bool:
        """Acknowledge a button press; False when it was too old to acknowledge."""
        ...


def messenger_client() -> httpx.AsyncClient:
    """The HTTP client for one messenger API, made once per process at start-up."""
    return httpx.AsyncClient(timeout=MESSENGER_TIMEOUT, follow_redirects=False)


class ErrorDetails(TypedDict):
    """What every sender error records beside its message."""

    channel: str
    method: str
    status: NotRequired[int | None]
    code: NotRequired[int | None]
    description: NotRequired[str]


class MessengerError(Exception):
    """Base of every sender error: the channel, the API method and what it said."""

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        method: str,
        status: int | None = None,
        code: int | None = None,
        description: str = "",
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.method = method
        self.status = status
        self.code = code
        self.description = description


class Unreachable(MessengerError):
    """The client cannot receive messages on this channel any more."""


class SlowDown(MessengerError):
    """A rate limit: the same send may go once more after `retry_after_s`."""

    def __init__(
        self, message: str, *, retry_after_s: float, **details: Unpack[ErrorDetails]
    ) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class OutsideWindow(MessengerError):
    """WhatsApp: the 24-hour window is closed; only a template may open it again."""


class AuthFailed(MessengerError):
    """The channel's credentials are not accepted."""


class Unavailable(MessengerError):
    """No usable answer; `sent` is False when the request never left this process."""

    def __init__(
        self, message: str, *, sent: bool = True, **details: Unpack[ErrorDetails]
    ) -> None:
        super().__init__(message, **details)
        self.sent = sent


class Rejected(MessengerError):
    """The platform refused this request; sending it unchanged cannot help."""


class ChatMigrated(Rejected):
    """Telegram: the group chat moved to a supergroup with `new_chat_id`."""

    def __init__(
        self, message: str, *, new_chat_id: int, **details: Unpack[ErrorDetails]
    ) -> None:
        super().__init__(message, **details)
        self.new_chat_id = new_chat_id


# Transport failures after which the request surely never reached the platform.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def transport_error(
    error: httpx.TransportError, *, channel: str, method: str
) -> Unavailable:
    """An httpx failure as `Unavailable`; its text names the class, never the URL."""
    return Unavailable(
        f"{channel} {method}: {type(error).__name__}",
        channel=channel,
        method=method,
        sent=not isinstance(error, NOT_SENT),
    )


def as_secret(value: SecretStr | str) -> SecretStr:
    """A token as `SecretStr`, however it was given."""
    return value if isinstance(value, SecretStr) else SecretStr(value)


def decode_json(response: httpx.Response) -> object:
    """The answer's JSON, or None when it is none (a proxy's page, an empty body)."""
    try:
        return response.json()
    except ValueError:
        return None


def as_int(value: object) -> int | None:
    """An integer from JSON or a header: an int or a string of signed digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None
