"""Where calls go and with which credentials: an inbound webhook or an OAuth app.

A webhook URL holds its secret code in the path and an access token is a bearer
credential: neither appears in a repr, a log line or an error message.

OAuth tokens live in Redis, so every process of the service uses the same pair. Each
refresh spends the refresh token (reference §12), so one process at a time refreshes,
under a Redis lock, and the others pick up the pair it saved.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import LockError

from connectors.bitrix24.errors import (
    Bitrix24Error,
    ReauthorizationRequired,
    Unavailable,
    map_error,
)

log = structlog.stdlib.get_logger(__name__)

# The docs' auth server; tokens name their own in `server_endpoint`, which wins.
DEFAULT_AUTH_SERVER = "https://oauth.bitrix.info"
TOKEN_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True)
class Endpoint:
    """The REST base URL (ending in `/`) and the access token to send, if any."""

    base_url: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)


class Credentials(Protocol):
    """A source of endpoints; `renewable` ones can replace an expired token."""

    @property
    def renewable(self) -> bool: ...

    async def endpoint(self) -> Endpoint: ...

    async def renew(self, stale: Endpoint) -> None: ...


class WebhookCredentials:
    """An inbound webhook: `https://portal/rest/{user}/{code}/`, no token to renew."""

    renewable = False

    def __init__(self, url: SecretStr | str) -> None:
        plain = url.get_secret_value() if isinstance(url, SecretStr) else url
        if not plain.startswith(("http://", "https://")):
            raise ValueError("the webhook URL must be an http(s) URL")
        self._url = SecretStr(plain if plain.endswith("/") else plain + "/")

    def __repr__(self) -> str:
        return "WebhookCredentials(url=**********)"

    async def endpoint(self) -> Endpoint:
        return Endpoint(self._url.get_secret_value())

    async def renew(self, stale: Endpoint) -> None:
        # A webhook has no token: a 401 is configuration, never retried.
        raise NotImplementedError("a webhook has no token to renew")


@dataclass(frozen=True)
class OAuthTokens:
    """One access/refresh pair and where it applies, as the auth server returns it."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    client_endpoint: str
    server_endpoint: str = ""
    expires: int = 0
    member_id: str = ""

    @classmethod
    def from_answer(cls, body: dict[str, Any]) -> OAuthTokens:
        """From a token answer, an ONAPPINSTALL `auth` block, or a stored hash."""
        try:
            return cls(
                access_token=str(body["access_token"]),
                refresh_token=str(body["refresh_token"]),
                client_endpoint=str(body["client_endpoint"]),
                server_endpoint=str(body.get("server_endpoint") or ""),
                expires=int(body.get("expires") or 0),
                member_id=str(body.get("member_id") or ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a token answer: {type(error).__name__}") from None

    def as_hash(self) -> dict[str, str]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "client_endpoint": self.client_endpoint,
            "server_endpoint": self.server_endpoint,
            "expires": str(self.expires),
            "member_id": self.member_id,
        }


class OAuthTokenStore:
    """The portal's current token pair in one Redis hash."""

    def __init__(
        self, redis: Redis, portal: str, *, key_prefix: str = "leadloop:bitrix24"
    ) -> None:
        self.redis = redis
        self.portal = portal
        self.key = f"{key_prefix}:{portal}:oauth"
        self.lock_key = f"{key_prefix}:{portal}:oauth-refresh"

    async def load(self) -> OAuthTokens | None:
        # redis-py types its asyncio commands with the sync client's return types.
        raw = await cast(Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.key))
        if not raw:
            return None
        decoded = {_text(key): _text(value) for key, value in raw.items()}
        return OAuthTokens.from_answer(decoded)

    async def save(self, tokens: OAuthTokens) -> None:
        saving = self.redis.hset(self.key, mapping=tokens.as_hash())
        await cast(Awaitable[int], saving)


class OAuthCredentials:
    """An OAuth app's tokens from the store, refreshed one process at a time."""

    renewable = True

    def __init__(
        self,
        store: OAuthTokenStore,
        http: httpx.AsyncClient,
        *,
        client_id: str,
        client_secret: SecretStr,
        auth_server: str = DEFAULT_AUTH_SERVER,
        lock_timeout_s: float = 30.0,
        lock_wait_s: float = 40.0,
    ) -> None:
        self.store = store
        self.http = http
        self.client_id = client_id
        self._client_secret = client_secret
        self.auth_server = auth_server.rstrip("/")
        # The lock expires by itself if its holder dies mid-refresh.
        self.lock_timeout_s = lock_timeout_s
        self.lock_wait_s = lock_wait_s

    def __repr__(self) -> str:
        return f"OAuthCredentials(portal={self.store.portal!r})"

    async def endpoint(self) -> Endpoint:
        tokens = await self._stored()
        return Endpoint(_with_slash(tokens.client_endpoint), tokens.access_token)

    async def renew(self, stale: Endpoint) -> None:
        """Make sure the stored token is newer than `stale`, refreshing if need be."""
        if (await self._stored()).access_token != stale.access_token:
            return
        lock = self.store.redis.lock(
            self.store.lock_key,
            timeout=self.lock_timeout_s,
            blocking_timeout=self.lock_wait_s,
        )
        try:
            async with lock:
                current = await self._stored()
                if current.access_token != stale.access_token:
                    return  # another process refreshed while this one waited
                fresh = await self._exchange(current)
                await self.store.save(fresh)
        except LockError as error:
            raise Unavailable(
                "bitrix24 token refresh: the refresh lock was not free in time",
                method="oauth.token",
            ) from error
        log.info("bitrix24.token_refreshed", portal=self.store.portal)

    async def _stored(self) -> OAuthTokens:
        tokens = await self.store.load()
        if tokens is None:
            raise ReauthorizationRequired(
                "no OAuth tokens stored for this portal: install or re-authorise "
                "the app",
                code="NO_TOKENS",
            )
        return tokens

    async def _exchange(self, current: OAuthTokens) -> OAuthTokens:
        params = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "refresh_token": current.refresh_token,
        }
        try:
            response = await self.http.get(
                self._token_url(current), params=params, timeout=TOKEN_TIMEOUT
            )
        except httpx.HTTPError as error:
            sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
            raise Unavailable(
                f"oauth.token: {type(error).__name__}", sent=sent, method="oauth.token"
            ) from None
        body = _json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict):
            try:
                return OAuthTokens.from_answer(body)
            except ValueError:
                pass
        raise _refresh_error(response.status_code, body)

    def _token_url(self, current: OAuthTokens) -> str:
        server = self.auth_server
        if current.server_endpoint:
            parts = urlsplit(current.server_endpoint)
            server = f"{parts.scheme}://{parts.netloc}"
        return f"{server}/oauth/token/"


def _refresh_error(status: int, body: object) -> Bitrix24Error:
    error = map_error(status, body, method="oauth.token")
    if isinstance(error, ReauthorizationRequired):
        return ReauthorizationRequired(
            "the auth server refused the refresh token: re-authorise the app",
            code=error.code,
            description=error.description,
            status=status,
            method="oauth.token",
        )
    return error


def _json_or_none(response: httpx.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
