"""The shared upstream clients a process creates once at start-up and closes at exit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.exceptions import AuthenticationError, RedisError

from connectors.messengers.base import messenger_client

# Room for a slow portal page, short enough that a hung connection cannot hold a job
# for minutes.
UPSTREAM_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Clients:
    """One Redis client (it can enqueue arq jobs) and one HTTP client per upstream:
    `http` for Bitrix24 and the LLM, one per messenger API."""

    redis: ArqRedis
    http: httpx.AsyncClient
    telegram: httpx.AsyncClient
    whatsapp: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.telegram.aclose()
        await self.whatsapp.aclose()
        await self.http.aclose()
        await self.redis.aclose()


def open_clients(redis_url: str) -> Clients:
    """Create the clients; nothing connects until first use."""
    return Clients(
        redis=redis_client(redis_url),
        http=httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT),
        # Apart from `http`: a messenger's slow answers never hold the portal's pool.
        telegram=messenger_client(),
        whatsapp=messenger_client(),
    )


def redis_client(redis_url: str) -> ArqRedis:
    pool = ConnectionPool.from_url(
        redis_url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S
    )
    client = ArqRedis(pool_or_conn=pool)
    # The client owns its pool: aclose() disconnects it (as Redis.from_pool does).
    client.auto_close_connection_pool = True
    return client


# What ping_redis says when Redis answers but refuses the URL's user or password,
# and what to do about it.
REDIS_AUTH_REFUSED = "it refused the user or password (AuthenticationError)"
REDIS_AUTH_FIX = (
    "correct the user and password in LEADLOOP_REDIS_URL "
    "(redis://user:password@host:6379/0), or leave them out for a Redis without a "
    "password"
)


async def ping_redis(redis: ArqRedis) -> str | None:
    """None when Redis answers PING, otherwise why not (without the URL)."""
    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
            await redis.ping()
    except TimeoutError:
        return "timed out"
    except AuthenticationError:
        return REDIS_AUTH_REFUSED
    except (RedisError, OSError) as exc:
        return f"unreachable ({type(exc).__name__})"
    return None


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
