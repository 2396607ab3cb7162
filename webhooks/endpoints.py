"""The webhook routes: verify, record, acknowledge. The work runs in `jobs.py`.

Unsupported events are acknowledged with 200 (a non-2xx makes the provider re-send
and, on Telegram, blocks the chat behind it: case TG-2) and logged on their own
logger, `leadloop.webhooks.unsupported`.

The two POST routes are plain Starlette routes, not FastAPI path operations: they
take no parameters FastAPI could validate (the body is read, verified and parsed by
hand, its signature over the raw bytes), and FastAPI's per-request dependency and
response machinery cost them about a fifth of their rate (docs/benchmarks.md,
"Intake"). They still pass through the app's middleware and exception handlers, so
errors keep the one `{"error", "detail"}` shape. The price: they are not listed in
the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.errors import ServiceError
from app.metrics import WebhookTally
from app.settings import Settings
from webhooks import telegram, whatsapp
from webhooks.body import decode_json, read_json_body
from webhooks.errors import MalformedBody, NotAccepted
from webhooks.inbound import InboundKind, MalformedPayload, Parsed
from webhooks.keys import chat_key
from webhooks.queue import Inbox, InboxUnavailable
from webhooks.security import (
    TelegramSecretToken,
    WhatsAppSignedBody,
    WhatsAppVerifyToken,
)

log = structlog.stdlib.get_logger(__name__)
unsupported_log = structlog.stdlib.get_logger("leadloop.webhooks.unsupported")

PREFIX = "/webhooks"
TELEGRAM_PATH = f"{PREFIX}/telegram"
WHATSAPP_PATH = f"{PREFIX}/whatsapp"
# The acknowledgement both providers get, rendered once.
OK = b'{"ok":true}'


async def get_inbox(request: Request) -> Inbox:
    """The enqueue side on the app's Redis, made once per start of the app."""
    state = request.app.state
    inbox: Inbox | None = getattr(state, "webhook_inbox", None)
    if inbox is None or inbox.redis is not state.clients.redis:
        inbox = state.webhook_inbox = Inbox(state.clients.redis)
    return inbox


async def _inbox(request: Request) -> Inbox:
    """`get_inbox`, or the provider `app.dependency_overrides` puts in its place.

    The routes are not path operations, so FastAPI does not apply the override
    itself; tests replace the inbox this way (with a provider that takes no
    arguments), and a lookup in a dict costs nothing.
    """
    override = request.app.dependency_overrides.get(get_inbox)
    if override is None:
        return await get_inbox(request)
    provider = cast(Callable[[], Awaitable[Inbox]], override)
    return await provider()


def telegram_router(settings: Settings) -> APIRouter:
    """`POST /webhooks/telegram`, guarded by the setWebhook secret token."""
    router = APIRouter(tags=["webhooks"])
    secret = TelegramSecretToken(settings.telegram_webhook_secret)
    tally = WebhookTally.of("telegram")

    async def telegram_update(request: Request) -> Response:
        try:
            secret.verify(request)
            update = decode_json(await read_json_body(request))
            parsed = telegram.parse(update, now=datetime.now(UTC))
        except MalformedPayload as exc:
            tally.rejected.inc()
            raise MalformedBody(str(exc)) from None
        except ServiceError:
            tally.rejected.inc()
            raise

        await _accept(await _inbox(request), parsed, tally)
        return _telegram_answer(parsed)

    router.add_route(TELEGRAM_PATH, telegram_update, methods=["POST"])
    return router


def whatsapp_router(settings: Settings) -> APIRouter:
    """`GET` (subscription handshake) and `POST /webhooks/whatsapp` (signed)."""
    router = APIRouter(tags=["webhooks"])
    handshake = Depends(WhatsAppVerifyToken(settings.whatsapp_verify_token))
    signed_body = WhatsAppSignedBody(settings.whatsapp_app_secret)
    tally = WebhookTally.of("whatsapp")

    # Meta calls this once per subscription: a path operation, documented.
    @router.get(WHATSAPP_PATH, dependencies=[handshake])
    async def whatsapp_handshake(request: Request) -> PlainTextResponse:
        challenge = request.query_params.get("hub.challenge")
        if challenge is None:
            raise MalformedBody("hub.challenge is missing")
        return PlainTextResponse(challenge)

    async def whatsapp_notification(request: Request) -> Response:
        try:
            raw = await signed_body.read(request)
            parsed = whatsapp.parse(decode_json(raw))
        except MalformedPayload as exc:
            tally.rejected.inc()
            raise MalformedBody(str(exc)) from None
        except ServiceError:
            tally.rejected.inc()
            raise

        await _accept(await _inbox(request), parsed, tally)
        return _ok()

    router.add_route(WHATSAPP_PATH, whatsapp_notification, methods=["POST"])
    return router


async def _accept(inbox: Inbox, parsed: Parsed, tally: WebhookTally) -> None:
    _log_unsupported(parsed, tally)
    # In arrival order: events of one chat enter its inbox in the order sent.
    for message in parsed.messages:
        # The ids as arguments, not bound context variables: binding and unbinding
        # them cost more than the line itself.
        ids = {
            "channel": message.channel,
            "event_id": message.event_id,
            "chat": chat_key(message.channel, message.chat_id),
            "kind": message.kind.value,
        }
        try:
            fresh = await inbox.accept(message)
        except InboxUnavailable:
            tally.unavailable.inc()
            log.exception("webhooks.not_accepted", **ids)
            raise NotAccepted("the event was not stored; send it again") from None
        if fresh:
            tally.accepted.inc()
            log.info("webhooks.accepted", **ids)
        else:
            tally.duplicate.inc()
            log.info("webhooks.duplicate", **ids)


def _log_unsupported(parsed: Parsed, tally: WebhookTally) -> None:
    for event in parsed.unsupported:
        tally.unsupported.inc()
        unsupported_log.info(
            "webhooks.unsupported",
            channel=event.channel,
            event_id=event.event_id,
            kind=event.kind,
            reason=event.reason,
        )


def _ok() -> Response:
    return Response(OK, media_type="application/json")


def _telegram_answer(parsed: Parsed) -> Response:
    """Stop the button's spinner in the acknowledgement itself (reference §1.4).

    Telegram never reports whether this call worked, which is acceptable for a
    spinner; it costs no request and is sent on repeats too, in case the first
    acknowledgement was lost.
    """
    for message in parsed.messages:
        if message.kind is InboundKind.CALLBACK and message.callback_id:
            answer: dict[str, Any] = {
                "method": "answerCallbackQuery",
                "callback_query_id": message.callback_id,
            }
            return JSONResponse(answer)
    return _ok()
