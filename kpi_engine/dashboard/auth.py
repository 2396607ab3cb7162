"""Who may see the dashboard: anyone locally, the admin token's holder in production.

A browser cannot attach a bearer header to a link, so the login form trades the token
for a cookie: `<expiry>.<HMAC-SHA256(token, expiry)>`, HttpOnly, SameSite=Strict,
Secure in production, scoped to `/dashboard`. The token itself never travels in a URL
or a cookie; changing `LEADLOOP_ADMIN_TOKEN` ends every session. `Authorization:
Bearer` works too, as on `/api/kpi`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response
from pydantic import SecretStr

from app.security import bearer_matches
from app.settings import Settings
from kpi_engine.endpoints import AdminDisabled

COOKIE = "leadloop_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 12 * 3600  # a working day; then the token is asked for again


class SignInRequired(Exception):
    """No valid cookie or bearer token came with a production request."""


@dataclass(frozen=True)
class DashboardAuth:
    """The dashboard's admin check on the process settings."""

    settings: Settings

    @property
    def required(self) -> bool:
        return self.settings.is_production

    def check(self, request: Request) -> None:
        """Pass, or raise `AdminDisabled` (no token set) or `SignInRequired`."""
        if not self.required:
            return
        if bearer_matches(request.headers, self._secret()):
            return
        if self._valid_cookie(request.cookies.get(COOKIE, ""), self._token()):
            return
        raise SignInRequired

    def token_matches(self, given: str) -> bool:
        """The login form's token equals the admin token (constant time)."""
        return secrets.compare_digest(given.strip().encode(), self._token())

    def sign_in(self, response: Response) -> None:
        """Set the session cookie on `response`."""
        expires = int(time.time()) + SESSION_SECONDS
        response.set_cookie(
            COOKIE,
            f"{expires}.{_signature(self._token(), expires)}",
            max_age=SESSION_SECONDS,
            path=COOKIE_PATH,
            secure=self.settings.is_production,
            httponly=True,
            samesite="strict",
        )

    def sign_out(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE,
            path=COOKIE_PATH,
            secure=self.settings.is_production,
            httponly=True,
            samesite="strict",
        )

    def _secret(self) -> SecretStr:
        token = self.settings.admin_token
        if token is None or not token.get_secret_value():
            raise AdminDisabled("LEADLOOP_ADMIN_TOKEN is not set: the dashboard is off")
        return token

    def _token(self) -> bytes:
        return self._secret().get_secret_value().encode()

    @staticmethod
    def _valid_cookie(value: str, token: bytes) -> bool:
        expires_text, _, signature = value.partition(".")
        if not expires_text.isdigit() or int(expires_text) < time.time():
            return False
        expected = _signature(token, int(expires_text))
        return secrets.compare_digest(signature.encode(), expected.encode())


def _signature(token: bytes, expires: int) -> str:
    message = f"leadloop-dashboard:{expires}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()
