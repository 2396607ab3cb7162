"""Production's refusals: weak or example secrets at start-up, oversized request bodies.

`production_problems` is what `get_settings` checks before a production process
starts; a development process (tests, `leadloop run`) keeps its convenient values.
`BodySizeLimit` is the app-wide guard on request bodies; the webhook routes read
their bodies with their own, tighter limits as well (webhooks/body.py).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from app.settings import Settings

# 16 characters of `secrets.token_urlsafe` carry 96 bits; Bitrix24's application
# token and Meta's app secret are 32 hex characters, so real ones always pass.
MIN_SECRET_LENGTH = 16
# "aaaaaaaaaaaaaaaa" and "1212121212121212" are long enough and still guessable.
MIN_DISTINCT_CHARACTERS = 6
# Telegram accepts only these in setWebhook's secret_token (Bot API, setWebhook).
_TELEGRAM_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")
GENERATE_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# Values that are public: what examples and tutorials put in a secret's place.
# Compared lower case, without separators.
_PUBLIC_VALUES = {
    "admin",
    "changeit",
    "changeme",
    "default",
    "password",
    "secret",
    "test",
    "token",
    "verifyme",
}
# A value containing one of these is a placeholder someone forgot to replace.
_PLACEHOLDER_MARKERS = (
    "changeme",
    "changethis",
    "replaceme",
    "replacewith",
    "example",
    "placeholder",
    "yoursecret",
    "yourtoken",
    # Every credential of the sandbox has it (a test holds them to it).
    "sandbox",
)


def _folded(value: str) -> str:
    return re.sub(r"[^a-z0-9]", "", value.lower())


_FOLDED_PUBLIC = frozenset(_folded(value) for value in _PUBLIC_VALUES)


def is_public_value(value: str) -> bool:
    """True for a sandbox credential, a well-known default or a placeholder."""
    folded = _folded(value)
    return folded in _FOLDED_PUBLIC or any(
        marker in folded for marker in _PLACEHOLDER_MARKERS
    )


@dataclass(frozen=True)
class Guarded:
    """A secret the service verifies others with, and when production needs it."""

    field: str
    guards: str
    required: Callable[[Settings], bool]


def _always(settings: Settings) -> bool:
    return True


def _never(settings: Settings) -> bool:
    return False


def _telegram(settings: Settings) -> bool:
    return settings.telegram_bot_token is not None


def _whatsapp(settings: Settings) -> bool:
    return (
        settings.whatsapp_access_token is not None
        or settings.whatsapp_phone_number_id is not None
    )


GUARDED = (
    Guarded("admin_token", "the admin API and the dashboard", _always),
    Guarded(
        "telegram_webhook_secret",
        "the Telegram webhook (a bot token is set)",
        _telegram,
    ),
    Guarded(
        "whatsapp_app_secret", "the WhatsApp webhook (WhatsApp is set up)", _whatsapp
    ),
    Guarded(
        "whatsapp_verify_token", "Meta's handshake (WhatsApp is set up)", _whatsapp
    ),
    # Events can be off (the reconcile job still finds bookings); when the token
    # is set, it has to be the portal's, not an example.
    Guarded("bitrix24_application_token", "Bitrix24 events", _never),
)


def bearer_matches(headers: Headers, token: SecretStr) -> bool:
    """`Authorization: Bearer <token>` carries `token` (compared in constant time)."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    )


class UnsafeSettings(ValueError):
    """Production settings that would let anyone in; the message lists each one."""

    def __init__(self, problems: list[str]) -> None:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"refusing to start in production (LEADLOOP_ENV=production):\n{lines}\n"
            f"Generate a secret with: {GENERATE_HINT}"
        )
        self.problems = problems


def env_name(field: str) -> str:
    return f"LEADLOOP_{field.upper()}"


def production_problems(settings: Settings) -> list[str]:
    """What makes these settings unsafe to run in production; names, never values."""
    problems: list[str] = []
    for guarded in GUARDED:
        secret = getattr(settings, guarded.field)
        value = secret.get_secret_value() if secret is not None else ""
        name = env_name(guarded.field)
        if not value:
            if guarded.required(settings):
                problems.append(f"{name} is not set; it guards {guarded.guards}")
            continue
        problems += _weaknesses(name, value)
    if settings.telegram_webhook_secret is not None:
        value = settings.telegram_webhook_secret.get_secret_value()
        if value and not _TELEGRAM_SECRET.fullmatch(value):
            problems.append(
                f"{env_name('telegram_webhook_secret')} may hold only A-Z, a-z, 0-9, "
                "_ and - (Telegram refuses other characters)"
            )
    problems += _public_credentials(settings)
    return problems


def ensure_production_ready(settings: Settings) -> None:
    """Raise UnsafeSettings when production runs on missing or weak secrets."""
    if not settings.is_production:
        return
    problems = production_problems(settings)
    if problems:
        raise UnsafeSettings(problems)


def _weaknesses(name: str, value: str) -> list[str]:
    if is_public_value(value):
        return [f"{name} is an example or default value; set a secret of your own"]
    if len(value) < MIN_SECRET_LENGTH:
        return [f"{name} is shorter than {MIN_SECRET_LENGTH} characters"]
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return [f"{name} repeats too few characters to be a secret"]
    return []


def _public_credentials(settings: Settings) -> list[str]:
    """Credentials issued by someone else (bot tokens, access keys) are not ours to
    judge by length, but the sandbox's and the examples' are known to everyone."""
    guarded = {entry.field for entry in GUARDED}
    problems = []
    for field in type(settings).model_fields:
        secret = getattr(settings, field)
        if field in guarded or not isinstance(secret, SecretStr):
            continue
        value = secret.get_secret_value()
        if field == "bitrix24_webhook_url":
            value = _webhook_code(value)
        if value and is_public_value(value):
            problems.append(
                f"{env_name(field)} is the sandbox's or an example's; "
                "production needs the real one"
            )
    return problems


def _webhook_code(url: str) -> str:
    """The secret part of https://portal/rest/<user>/<code>/."""
    parts = [part for part in url.split("/") if part]
    return parts[-1] if parts else ""


# -- request bodies ----------------------------------------------------------------


class BodySizeLimit:
    """Answer 413 in the app's error shape to a body over `max_bytes`.

    A declared Content-Length is checked before the app runs; the server holds the
    body to it, so such a request passes through untouched, which keeps the webhook
    routes' fast path at one header lookup. A body without one (chunked) is counted
    as it arrives: past the limit the 413 goes out and the app reads a disconnect,
    and what it tries to answer after that is dropped. The server discards the
    rest of the body and keeps the connection: closing it on unread bytes would
    reset it, and the sender might never read the 413.

    Not FastAPI's own `max_body_size` (recent releases): its 413 is not the app's error
    shape, and the project supports FastAPI from 0.115.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self._refusal = json.dumps(
            {
                "error": "body_too_large",
                "detail": f"the body must be at most {max_bytes} bytes",
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _CountedRequest(self, scope, receive, send).run()
        elif declared > self.max_bytes:
            await self.refuse(send)
        else:
            await self.app(scope, receive, send)

    async def refuse(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(self._refusal)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._refusal})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _CountedRequest:
    """One request whose body is counted as the app receives it."""

    def __init__(
        self, limit: BodySizeLimit, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.limit, self.scope = limit, scope
        self._receive, self._send = receive, send
        self.received = 0
        self.started = False
        self.refused = False

    async def run(self) -> None:
        try:
            await self.limit.app(self.scope, self.receive, self.send)
        except Exception:
            # After the 413, the app's failure to read the rest is expected.
            if not self.refused:
                raise

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if self.received <= self.limit.max_bytes or self.started:
            return message
        self.refused = True
        await self.limit.refuse(self._send)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
