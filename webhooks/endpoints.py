"""The webhook routes: verify, record, acknowledge. The work runs in `jobs.py`.

Unsupported events are acknowledged with 200 (a non-2xx makes the provider re-send
and, on Telegram, blocks the chat behind it: case TG-2) and logged on their own
logger, `leadloop.webhooks.unsupported`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

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


async def get_inbox(request: Request) -> Inbox:
    """The enqueue side on the app's Redis, made once per start of the app."""
    state = request.app.state
    inbox: Inbox | None = getattr(state, "webhook_inbox", None)
    if inbox is None or inbox.redis is not state.clients.redis:
        inbox = state.webhook_inbox = Inbox(state.clients.redis)
    return inbox


InboxDependency = Annotated[Inbox, Depends(get_inbox)]


def telegram_router(settings: Settings) -> APIRouter:
    """`POST /webhooks/telegram`, guarded by the setWebhook secret token."""
    router = APIRouter(prefix=PREFIX, tags=["webhooks"])
    verified = Depends(TelegramSecretToken(settings.telegram_webhook_secret))

    @router.post("/telegram", dependencies=[verified])
    async def telegram_update(request: Request, inbox: InboxDependency) -> JSONResponse:
        update = decode_json(await read_json_body(request))
        try:
            parsed = telegram.parse(update, now=datetime.now(UTC))
        except MalformedPayload as exc:
            raise MalformedBody(str(exc)) from None

        await _accept(inbox, parsed)
        return JSONResponse(_telegram_answer(parsed))

    return router


def whatsapp_router(settings: Settings) -> APIRouter:
    """`GET` (subscription handshake) and `POST /webhooks/whatsapp` (signed)."""
    router = APIRouter(prefix=PREFIX, tags=["webhooks"])
    handshake = Depends(WhatsAppVerifyToken(settings.whatsapp_verify_token))
    # A default, not an Annotated alias: the alias would name a local variable, which
    # postponed annotations cannot resolve.
    signed_body = WhatsAppSignedBody(settings.whatsapp_app_secret)

    @router.get("/whatsapp", dependencies=[handshake])
    async def whatsapp_handshake(request: Request) -> PlainTextResponse:
        challenge = request.query_params.get("hub.challenge")
        if challenge is None:
            raise MalformedBody("hub.challenge is missing")
        return PlainTextResponse(challenge)

    @router.post("/whatsapp")
    async def whatsapp_notification(
        inbox: InboxDependency, raw: bytes = Depends(signed_body)
    ) -> dict[str, bool]:
        try:
            parsed = whatsapp.parse(decode_json(raw))
        except MalformedPayload as exc:
            raise MalformedBody(str(exc)) from None

        await _accept(inbox, parsed)
        return {"ok": True}

    return router


async def _accept(inbox: Inbox, parsed: Parsed) -> None:
    _log_unsupported(parsed)
    # In arrival order: events of one chat enter its inbox in the order sent.
    for message in parsed.messages:
        bound = structlog.contextvars.bound_contextvars(
            channel=message.channel,
            event_id=message.event_id,
            chat=chat_key(message.channel, message.chat_id),
            kind=message.kind.value,
        )
        with bound:
            try:
                fresh = await inbox.accept(message)
            except InboxUnavailable:
                log.exception("webhooks.not_accepted")
                raise NotAccepted("the event was not stored; send it again") from None
            log.info("webhooks.accepted" if fresh else "webhooks.duplicate")


def _log_unsupported(parsed: Parsed) -> None:
    for event in parsed.unsupported:
        unsupported_log.info(
            "webhooks.unsupported",
            channel=event.channel,
            event_id=event.event_id,
            kind=event.kind,
            reason=event.reason,
        )


def _telegram_answer(parsed: Parsed) -> dict[str, Any]:
    """Stop the button's spinner in the acknowledgement itself (reference §1.4).

    Telegram never reports whether this call worked, which is acceptable for a
    spinner; it costs no request and is sent on repeats too, in case the first
    acknowledgement was lost.
    """
    for message in parsed.messages:
        if message.kind is InboundKind.CALLBACK and message.callback_id:
            return {
                "method": "answerCallbackQuery",
                "callback_query_id": message.callback_id,
            }
    return {"ok": True}
