"""OAuth 2.0 as the Bitrix24 auth server answers it: rotating refresh tokens.

The sandbox plays both the portal and the auth server (`oauth.bitrix.info`):
`/oauth/token/` exchanges an authorization code or a refresh token for a new pair,
and `/_sandbox/oauth/...` lets tests mint pairs and codes, expire tokens and set the
access-token lifetime. Each refresh returns a new refresh token and retires the one
used, so replaying it answers `invalid_grant` (reference/bitrix24.md §12).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.phpform import intval, parse_str
from sandbox.state import ALL_SCOPES, OAuthToken, Portal

DEFAULT_CLIENT_ID = "local.sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"  # noqa: S105  (a public, local-only credential)
ACCESS_TOKEN_LIFETIME_S = 3600  # one hour, as the docs state
CODE_LIFETIME_S = 30  # an authorization code lives 30 s (§12)
# `L` local app; the auth server also answers F free, D demo, T trial, P paid.
APP_STATUS = "L"


class OAuthError(Exception):
    """An auth-server refusal: `{"error": code, "error_description": text}`."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status

    def response(self) -> Response:
        body = {"error": self.code, "error_description": self.description}
        return JSONResponse(body, self.status)


@dataclass
class PendingCode:
    """An authorization code waiting for its one exchange."""

    user_id: int
    scopes: frozenset[str]
    client_id: str
    issued_at: float


@dataclass
class OAuthSettings:
    """The auth server's state beside the tokens: clients, codes and lifetimes."""

    access_lifetime_s: int = ACCESS_TOKEN_LIFETIME_S
    clients: dict[str, str] = field(
        default_factory=lambda: {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET}
    )
    codes: dict[str, PendingCode] = field(default_factory=dict)


def oauth_settings(portal: Portal) -> OAuthSettings:
    """The portal's OAuth settings; a reset portal starts from the defaults."""
    current = portal.extras.get("oauth")
    if not isinstance(current, OAuthSettings):
        current = OAuthSettings()
        portal.extras["oauth"] = current
    return current


def mint_pair(
    portal: Portal,
    *,
    user_id: int,
    scopes: frozenset[str],
    client_id: str = DEFAULT_CLIENT_ID,
    expires_in: int | None = None,
) -> OAuthToken:
    """Issue a new access and refresh token for a user of an app."""
    lifetime = (
        oauth_settings(portal).access_lifetime_s if expires_in is None else expires_in
    )
    token = OAuthToken(
        access_token=secrets.token_hex(16),
        refresh_token=secrets.token_hex(16),
        user_id=user_id,
        expires_at=time.time() + lifetime,
        scopes=scopes,
        client_id=client_id,
    )
    portal.oauth_tokens[token.access_token] = token
    portal.refresh_tokens[token.refresh_token] = token
    return token


def refresh_pair(
    portal: Portal, client_id: str, client_secret: str, refresh_token: str
) -> OAuthToken:
    """Rotate a refresh token: the used one stops working, a new pair is returned."""
    check_client(portal, client_id, client_secret)
    used = portal.refresh_tokens.get(refresh_token)
    if used is None or used.client_id != client_id:
        raise OAuthError("invalid_grant", "Invalid refresh token")
    del portal.refresh_tokens[refresh_token]
    return mint_pair(
        portal, user_id=used.user_id, scopes=used.scopes, client_id=client_id
    )


def issue_code(
    portal: Portal, *, user_id: int, scopes: frozenset[str], client_id: str
) -> str:
    code = secrets.token_hex(16)
    oauth_settings(portal).codes[code] = PendingCode(
        user_id, scopes, client_id, time.time()
    )
    return code


def exchange_code(
    portal: Portal, client_id: str, client_secret: str, code: str
) -> OAuthToken:
    """Trade an authorization code (once, within 30 s) for the first pair."""
    check_client(portal, client_id, client_secret)
    pending = oauth_settings(portal).codes.pop(code, None)
    if pending is None or pending.client_id != client_id:
        raise OAuthError("invalid_grant", "Invalid authorization code")
    if time.time() - pending.issued_at > CODE_LIFETIME_S:
        raise OAuthError("invalid_grant", "Authorization code has expired")
    return mint_pair(
        portal, user_id=pending.user_id, scopes=pending.scopes, client_id=client_id
    )


def check_client(portal: Portal, client_id: str, client_secret: str) -> None:
    if not client_id:
        raise OAuthError("invalid_request", "client_id is required")
    known = oauth_settings(portal).clients.get(client_id)
    if known is None or not secrets.compare_digest(known, client_secret):
        raise OAuthError("invalid_client", "Invalid client credentials")


def token_body(portal: Portal, token: OAuthToken, base_url: str) -> dict[str, Any]:
    """The auth server's answer, shaped as fixture oauth.token.refresh.response.json.

    `domain` is the auth server's host (here the sandbox itself), `client_endpoint`
    the portal's REST base and `server_endpoint` the auth server's.
    """
    base = base_url.rstrip("/")
    return {
        "access_token": token.access_token,
        "client_endpoint": f"{base}/rest/",
        "domain": urlsplit(base).netloc,
        "expires": int(token.expires_at),
        "expires_in": max(0, round(token.expires_at - time.time())),
        "member_id": portal.member_id,
        "refresh_token": token.refresh_token,
        "scope": ",".join(sorted(token.scopes)),
        "server_endpoint": f"{base}/rest/",
        "status": APP_STATUS,
        "user_id": token.user_id,
    }


def parse_scopes(raw: Any) -> frozenset[str]:
    """Scopes from a list or a comma-separated string; none given means all."""
    if raw is None:
        return ALL_SCOPES
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ValueError("scopes must be a list or a comma-separated string")
    return frozenset(str(item).strip() for item in items if str(item).strip())


# -- HTTP ---------------------------------------------------------------------------


async def _request_params(request: Request) -> dict[str, Any]:
    """Query first, then a form or JSON body over it, as the auth server reads them."""
    params = parse_str(request.url.query)
    body = await request.body()
    if not body:
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    parsed: Any = None
    if content_type == "application/json":
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
    else:
        parsed = parse_str(body.decode("utf-8", errors="replace"))
    if isinstance(parsed, dict):
        params.update(parsed)
    return params


async def _control_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    return value if isinstance(value, str) else ""


class OAuthEndpoints:
    """The token endpoint and the test controls of one portal."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal

    async def token(self, request: Request) -> Response:
        params = await _request_params(request)
        grant = _text(params, "grant_type")
        client_id = _text(params, "client_id")
        secret = _text(params, "client_secret")
        try:
            if grant == "refresh_token":
                refresh = _text(params, "refresh_token")
                token = refresh_pair(self.portal, client_id, secret, refresh)
            elif grant == "authorization_code":
                code = _text(params, "code")
                token = exchange_code(self.portal, client_id, secret, code)
            else:
                raise OAuthError("invalid_request", "Unsupported grant_type")
        except OAuthError as error:
            return error.response()
        return JSONResponse(token_body(self.portal, token, str(request.base_url)))

    async def mint(self, request: Request) -> Response:
        try:
            body = await _control_body(request)
            user_id, scopes, client_id = self._grant_subject(body)
            expires_in = body.get("expires_in")
            if expires_in is not None and (
                not isinstance(expires_in, int) or expires_in < 0
            ):
                raise ValueError("expires_in must be a non-negative integer")
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        token = mint_pair(
            self.portal,
            user_id=user_id,
            scopes=scopes,
            client_id=client_id,
            expires_in=expires_in,
        )
        answer = token_body(self.portal, token, str(request.base_url))
        answer["client_id"] = client_id
        answer["client_secret"] = oauth_settings(self.portal).clients[client_id]
        return JSONResponse(answer)

    async def code(self, request: Request) -> Response:
        try:
            body = await _control_body(request)
            user_id, scopes, client_id = self._grant_subject(body)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        code = issue_code(
            self.portal, user_id=user_id, scopes=scopes, client_id=client_id
        )
        return JSONResponse(
            {
                "code": code,
                "expires_in": CODE_LIFETIME_S,
                "domain": self.portal.domain,
                "member_id": self.portal.member_id,
                "scope": ",".join(sorted(scopes)),
                "server_domain": request.url.netloc,
                "client_id": client_id,
                "client_secret": oauth_settings(self.portal).clients[client_id],
            }
        )

    async def expire(self, request: Request) -> Response:
        try:
            body = await _control_body(request)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        wanted = body.get("access_token")
        now = time.time()
        expired = 0
        for access_token, token in self.portal.oauth_tokens.items():
            if wanted is None or access_token == wanted:
                token.expires_at = min(token.expires_at, now)
                expired += 1
        return JSONResponse({"expired": expired})

    async def settings(self, request: Request) -> Response:
        current = oauth_settings(self.portal)
        try:
            body = await _control_body(request)
            lifetime = body.get("access_token_lifetime_s", current.access_lifetime_s)
            if not isinstance(lifetime, int) or lifetime < 0:
                raise ValueError("access_token_lifetime_s must be a non-negative int")
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        current.access_lifetime_s = lifetime
        return JSONResponse({"access_token_lifetime_s": current.access_lifetime_s})

    def _grant_subject(self, body: dict[str, Any]) -> tuple[int, frozenset[str], str]:
        user_id = intval(body.get("user_id", 1))
        if user_id not in self.portal.table("user"):
            raise ValueError(f"no user {user_id} on this portal")
        scopes = parse_scopes(body.get("scopes"))
        client_id = str(body.get("client_id") or DEFAULT_CLIENT_ID)
        secret = body.get("client_secret")
        clients = oauth_settings(self.portal).clients
        if isinstance(secret, str) and secret:
            clients[client_id] = secret
        elif client_id not in clients:
            clients[client_id] = secrets.token_hex(16)
        return user_id, scopes, client_id


def oauth_routes(portal: Portal) -> list[BaseRoute]:
    """The auth server's token endpoint and the `/_sandbox/oauth/` controls."""
    endpoints = OAuthEndpoints(portal)
    both = ["GET", "POST"]
    return [
        Route("/oauth/token/", endpoints.token, methods=both),
        Route("/oauth/token", endpoints.token, methods=both),
        Route("/_sandbox/oauth/tokens", endpoints.mint, methods=["POST"]),
        Route("/_sandbox/oauth/codes", endpoints.code, methods=["POST"]),
        Route("/_sandbox/oauth/expire", endpoints.expire, methods=["POST"]),
        Route("/_sandbox/oauth/settings", endpoints.settings, methods=["POST"]),
    ]
