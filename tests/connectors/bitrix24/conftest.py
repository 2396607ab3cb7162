"""Shared fixtures: the sandbox portal over real HTTP, real Redis, gateway clients,
and a front end that loses the portal's answer after a write."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from sandbox.server import SandboxOptions
from tests.sandbox.conftest import RunningSandbox, free_port, start_sandbox

MOSCOW = ZoneInfo("Europe/Moscow")
# Tests use their own Redis database and a fresh key prefix each.
TEST_REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    options = SandboxOptions(port=free_port(), rate_limit="off")
    server, thread, app = start_sandbox(options)
    base_url = f"http://127.0.0.1:{options.port}"
    with httpx.Client(base_url=base_url, timeout=30) as http:
        yield RunningSandbox(base_url, app, http)
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    """A fresh sandbox portal, limits off, reached over a real socket."""
    portal_server.reset()
    portal_server.settings(rate_limit="off")
    return portal_server


@dataclass
class Wire:
    """Every request the gateway's httpx client sent, with its decoded JSON body."""

    requests: list[httpx.Request] = field(default_factory=list)

    async def record(self, request: httpx.Request) -> None:
        await request.aread()
        self.requests.append(request)

    def bodies(self, path_suffix: str) -> list[Any]:
        return [
            json.loads(request.content)
            for request in self.requests
            if request.url.path.endswith(path_suffix)
        ]

    def count(self, path_suffix: str) -> int:
        return sum(1 for r in self.requests if r.url.path.endswith(path_suffix))


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def http(wire: Wire) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(10.0), event_hooks={"request": [wire.record]}
    ) as client:
        yield client


@dataclass
class Sleeps:
    """A stand-in for asyncio.sleep that records the delays and returns at once."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def webhook_client(
    portal: RunningSandbox, http: httpx.AsyncClient, sleeps: Sleeps
) -> Bitrix24Client:
    """A gateway client on the sandbox's default inbound webhook."""
    return Bitrix24Client(
        http,
        WebhookCredentials(portal.webhook),
        portal_zone=MOSCOW,
        sleep=sleeps,
        retry=RetryPolicy(),
    )


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
async def redis(key_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def redis_factory() -> AsyncIterator[Callable[[], Redis]]:
    """More Redis connections, as separate processes would hold."""
    made: list[Redis] = []

    def make() -> Redis:
        client = Redis.from_url(TEST_REDIS_URL)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


HTML_502 = "<html><body>502 Bad Gateway</body></html>"


class PageAfterWrite(httpx.AsyncBaseTransport):
    """A front end that lets a request through to the portal, then loses the answer
    and sends its own 502 page: the write happened, the caller cannot tell."""

    def __init__(self, marker: str, times: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.marker = marker.encode()
        self.times = times

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        seen = request.url.path.encode() + request.content
        if self.times > 0 and self.marker in seen:
            self.times -= 1
            await response.aread()
            await response.aclose()
            return httpx.Response(
                502, text=HTML_502, headers={"Content-Type": "text/html"}
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


ClientFactory = Callable[..., Bitrix24Client]


@pytest.fixture
async def client_with(
    portal: RunningSandbox, wire: Wire, sleeps: Sleeps
) -> AsyncIterator[ClientFactory]:
    """Clients on the sandbox with their own transport or timeout, wire recorded."""
    made: list[httpx.AsyncClient] = []

    def make(
        *, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0
    ) -> Bitrix24Client:
        http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s),
            event_hooks={"request": [wire.record]},
        )
        made.append(http)
        return Bitrix24Client(
            http, WebhookCredentials(portal.webhook), portal_zone=MOSCOW, sleep=sleeps
        )

    yield make
    for http in made:
        await http.aclose()


def fault(portal: RunningSandbox, **spec: Any) -> None:
    portal.http.post("/_sandbox/faults", json=spec).raise_for_status()


def methods_sent(wire: Wire) -> list[str]:
    """Every method that crossed the wire, batch commands included, in order."""
    methods = []
    for request in wire.requests:
        name = request.url.path.rsplit("/", 1)[1]
        if name == "batch":
            commands = json.loads(request.content)["cmd"].values()
            methods += [command.partition("?")[0] for command in commands]
        else:
            methods.append(name)
    return methods
