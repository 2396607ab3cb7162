"""Webhook verification as FastAPI dependencies, each holding its own secret.

A secret that is not configured refuses every request: the check fails closed.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header, Query, Request
from pydantic import SecretStr

from webhooks.body import read_json_body
from webhooks.errors import BadSignature, HandshakeRefused, NotAuthenticated
from webhooks.whatsapp import signature_matches


def _same(given: str, expected: SecretStr | None) -> bool:
    if expected is None or not expected.get_secret_value():
        return False
    # Bytes, not str: compare_digest refuses non-ASCII text with a TypeError.
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


class TelegramSecretToken:
    """`X-Telegram-Bot-Api-Secret-Token` equals the secret given to setWebhook."""

    def __init__(self, secret: SecretStr | None) -> None:
        self._secret = secret

    async def __call__(
        self,
        token: Annotated[
            str | None, Header(alias="X-Telegram-Bot-Api-Secret-Token")
        ] = None,
    ) -> None:
        if token is None or not _same(token, self._secret):
            raise NotAuthenticated("the Telegram secret token is missing or wrong")


class WhatsAppSignedBody:
    """The raw body, once `X-Hub-Signature-256` proves Meta signed these bytes."""

    def __init__(self, app_secret: SecretStr | None) -> None:
        self._app_secret = app_secret

    async def __call__(
        self,
        request: Request,
        signature: Annotated[str | None, Header(alias="X-Hub-Signature-256")] = None,
    ) -> bytes:
        if signature is None:
            raise NotAuthenticated("the X-Hub-Signature-256 header is missing")
        raw = await read_json_body(request)
        secret = self._app_secret.get_secret_value() if self._app_secret else ""
        if not secret or not signature_matches(secret.encode(), raw, signature):
            raise BadSignature("the body does not match X-Hub-Signature-256")
        return raw


class WhatsAppVerifyToken:
    """Meta's subscription handshake: `hub.verify_token` equals ours."""

    def __init__(self, verify_token: SecretStr | None) -> None:
        self._verify_token = verify_token

    async def __call__(
        self,
        mode: Annotated[str | None, Query(alias="hub.mode")] = None,
        token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    ) -> None:
        if mode != "subscribe" or token is None:
            raise HandshakeRefused("not a subscription handshake")
        if not _same(token, self._verify_token):
            raise HandshakeRefused("the verify token is wrong")
