"""Webhook verification, each check holding its own secret.

A secret that is not configured refuses every request: the check fails closed.

The two POST checks are plain calls made by the route, not FastAPI dependencies: the
dependency machinery (header parameters validated through pydantic) cost the
Telegram route about 15 % of its rate (docs/benchmarks.md, "Intake"). The
handshake, a GET Meta sends once per subscription, stays a dependency.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Query, Request
from pydantic import SecretStr

from webhooks.body import read_json_body
from webhooks.errors import BadSignature, HandshakeRefused, NotAuthenticated
from webhooks.whatsapp import signature_matches

TELEGRAM_HEADER = "x-telegram-bot-api-secret-token"
WHATSAPP_SIGNATURE_HEADER = "x-hub-signature-256"


def _secret_bytes(secret: SecretStr | None) -> bytes | None:
    value = secret.get_secret_value() if secret is not None else ""
    return value.encode() if value else None


def _same(given: str, expected: bytes | None) -> bool:
    if expected is None:
        return False
    # Bytes, not str: compare_digest refuses non-ASCII text with a TypeError.
    return hmac.compare_digest(given.encode(), expected)


class TelegramSecretToken:
    """`X-Telegram-Bot-Api-Secret-Token` equals the secret given to setWebhook."""

    def __init__(self, secret: SecretStr | None) -> None:
        self._secret = _secret_bytes(secret)

    def verify(self, request: Request) -> None:
        """Raise NotAuthenticated unless the header holds the secret."""
        token = request.headers.get(TELEGRAM_HEADER)
        if token is None or not _same(token, self._secret):
            raise NotAuthenticated("the Telegram secret token is missing or wrong")


class WhatsAppSignedBody:
    """The raw body, once `X-Hub-Signature-256` proves Meta signed these bytes."""

    def __init__(self, app_secret: SecretStr | None) -> None:
        self._app_secret = _secret_bytes(app_secret)

    async def read(self, request: Request) -> bytes:
        """The body as received; NotAuthenticated or BadSignature otherwise."""
        signature = request.headers.get(WHATSAPP_SIGNATURE_HEADER)
        if signature is None:
            raise NotAuthenticated("the X-Hub-Signature-256 header is missing")
        raw = await read_json_body(request)
        secret = self._app_secret
        if secret is None or not signature_matches(secret, raw, signature):
            raise BadSignature("the body does not match X-Hub-Signature-256")
        return raw


class WhatsAppVerifyToken:
    """Meta's subscription handshake: `hub.verify_token` equals ours."""

    def __init__(self, verify_token: SecretStr | None) -> None:
        self._verify_token = _secret_bytes(verify_token)

    async def __call__(
        self,
        mode: Annotated[str | None, Query(alias="hub.mode")] = None,
        token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    ) -> None:
        if mode != "subscribe" or token is None:
            raise HandshakeRefused("not a subscription handshake")
        if not _same(token, self._verify_token):
            raise HandshakeRefused("the verify token is wrong")
