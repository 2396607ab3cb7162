"""The issue's faults, each against the sandbox over real sockets.

For every fault: nothing duplicated, nothing missed, and a clear error where retrying
cannot help. Waiting is done on a fake clock that only moves when the client sleeps,
so a 30-second outage takes milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from redis.asyncio import Redis

from connectors.bitrix24.auth import (
    OAuthCredentials,
    OAuthTokens,
    OAuthTokenStore,
    WebhookCredentials,
)
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import (
    AuthFailed,
    IncompletePull,
    OperationTimeLimited,
    RateLimited,
    Unavailable,
)
from connectors.bitrix24.pull import Puller
from connectors.bitrix24.writes import Writer
from sandbox.server import SandboxApp, SandboxOptions
from tests.connectors.bitrix24.conftest import MOSCOW, Sleeps, Wire
from tests.sandbox.conftest import RunningSandbox, free_port

Hook = Callable[[httpx.Request], Awaitable[None]]


def deals(ids: range) -> list[dict[str, str]]:
    """Legacy deal rows as `crm.deal.list` returns them."""
    return [
        {"ID": str(deal_id), "TITLE": f"Deal {deal_id}", "OPENED": "Y"}
        for deal_id in ids
    ]


def add_fault(portal: RunningSandbox, **fault: Any) -> None:
    portal.http.post("/_sandbox/faults", json=fault).raise_for_status()


def with_key(portal: RunningSandbox, key: str) -> list[int]:
    """Ids of the deals that carry our idempotency key."""
    rows = portal.result(
        "crm.deal.list",
        {"filter": {"ORIGINATOR_ID": "leadloop", "ORIGIN_ID": key}, "select": ["ID"]},
    )
    return [int(row["ID"]) for row in rows]


def http_by_method(portal: RunningSandbox) -> dict[str, int]:
    answer: dict[str, int] = portal.http.get("/_sandbox/stats").json()["http_by_method"]
    return answer


async def ids_pulled(
    rows: AsyncIterator[dict[str, Any]], into: list[int] | None = None
) -> list[int]:
    ids = [] if into is None else into
    async for row in rows:
        ids.append(int(row["ID"]))
    return ids


class FakeTime:
    """A clock and a sleep that move together: sleeping advances the clock and runs
    whatever was scheduled for the time reached."""

    def __init__(self, now: float = 1_796_000_000.0) -> None:
        self.now = now
        self.delays: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self._due.append((self.now + seconds, action))

    async def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.now += seconds
        due = [entry for entry in self._due if entry[0] <= self.now]
        self._due = [entry for entry in self._due if entry[0] > self.now]
        for _, action in due:
            action()


Rewrite = Callable[[httpx.Request, bytes], httpx.Response | None]


class Intermediary(httpx.AsyncBaseTransport):
    """A proxy in front of the portal: every request reaches the portal, and
    `rewrite` may replace the answer that comes back (None keeps it)."""

    def __init__(self, rewrite: Rewrite) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rewrite = rewrite

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        replaced = self.rewrite(request, body)
        if replaced is not None:
            return replaced
        return httpx.Response(
            response.status_code, headers=response.headers, content=body
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def client_on(
    http: httpx.AsyncClient, portal: RunningSandbox, fake: FakeTime | None = None
) -> Bitrix24Client:
    """A gateway client on the webhook, sleeping on fake time, without jitter."""
    fake = fake or FakeTime()
    return Bitrix24Client(
        http,
        WebhookCredentials(portal.webhook),
        portal_zone=MOSCOW,
        sleep=fake.sleep,
        clock=fake,
        jitter=lambda: 0.0,
    )


def writer_on(client: Bitrix24Client) -> Writer:
    return Writer(client, settle_s=1.0, sleep=Sleeps())


@pytest.fixture
async def hooked_http(wire: Wire) -> AsyncIterator[Callable[[Hook], httpx.AsyncClient]]:
    """httpx clients whose requests pass `hook` before they are sent (and are
    recorded on `wire`)."""
    made: list[httpx.AsyncClient] = []

    def make(hook: Hook) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0), event_hooks={"request": [wire.record, hook]}
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


class TestQueryLimitBursts:
    """B24-2: bursts of QUERY_LIMIT_EXCEEDED are waited out or end in RateLimited."""

    async def test_a_burst_on_a_pull_is_waited_out_and_every_row_arrives_once(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load({"deals": deals(range(1, 3001))})
        # A 503 on a batched method refuses the whole batch request, as the front
        # end does; three in a row.
        add_fault(portal, method="crm.deal.list", kind="error", times=3)
        fake = FakeTime()

        ids = await ids_pulled(Puller(client_on(http, portal, fake)).pull("deal"))

        assert ids == list(range(1, 3001))
        assert http_by_method(portal) == {"crm.deal.fields": 1, "batch": 5}
        assert fake.delays == [0.5, 1.0, 2.0]

    async def test_a_burst_on_a_create_is_retried_into_exactly_one_deal(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        add_fault(portal, method="crm.deal.add", kind="error", times=3)
        writer = writer_on(client_on(http, portal))

        created = await writer.create("deal", {"TITLE": "Intake 1"}, key="tg:1")

        assert with_key(portal, "tg:1") == [created.id]
        assert http_by_method(portal)["crm.deal.add"] == 4

    async def test_a_burst_longer_than_the_attempts_raises_rate_limited(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        add_fault(portal, method="crm.deal.add", kind="error", times=10)
        writer = writer_on(client_on(http, portal))

        with pytest.raises(RateLimited) as caught:
            await writer.create("deal", {"TITLE": "Intake 2"}, key="tg:2")

        assert caught.value.code == "QUERY_LIMIT_EXCEEDED"
        assert wire.count("/crm.deal.add") == RetryPolicy().attempts
        # Every attempt was refused before it ran: nothing was created.
        assert with_key(portal, "tg:2") == []


class TestOperatingTimeLimit:
    @staticmethod
    async def spend_the_budget(portal: RunningSandbox, client: Bitrix24Client) -> float:
        """One slow list call over a lowered budget; answers its reset time."""
        portal.settings(operating_limit_s=0.1)
        add_fault(portal, method="crm.deal.list", kind="latency", seconds=0.2)
        envelope = await client.call_envelope("crm.deal.list", {"select": ["ID"]})
        return float(envelope.time["operating_reset_at"])

    async def test_a_blocked_read_waits_for_the_methods_reset_then_answers(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        portal.load({"deals": deals(range(1, 4))})
        fake = FakeTime()
        client = client_on(http, portal, fake)
        reset_at = await self.spend_the_budget(portal, client)
        fake.now = reset_at - 30
        # At the reset the portal's ten-minute window has moved on.
        fake.after(30, lambda: portal.settings(operating_limit_s=420))

        rows = await client.call("crm.deal.list", {"select": ["ID"]})

        assert [row["ID"] for row in rows] == ["1", "2", "3"]
        assert fake.delays == [30.0]
        assert wire.count("/crm.deal.list") == 3  # spent, refused, answered

    async def test_a_reset_beyond_the_wait_limit_raises_with_its_time(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        fake = FakeTime()
        client = client_on(http, portal, fake)
        reset_at = await self.spend_the_budget(portal, client)
        fake.now = reset_at - 300

        for _ in range(2):
            with pytest.raises(OperationTimeLimited) as caught:
                await client.call("crm.deal.list", {"select": ["ID"]})
            assert caught.value.reset_at == reset_at

        # The second call knew the block and sent nothing.
        assert wire.count("/crm.deal.list") == 2
        assert fake.delays == []


class TestTimeoutAfterTheWrite:
    async def test_a_create_answered_too_late_leaves_exactly_one_deal(
        self, portal: RunningSandbox, wire: Wire
    ) -> None:
        add_fault(portal, method="crm.deal.add", kind="timeout_after_write", seconds=1)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(0.3), event_hooks={"request": [wire.record]}
        ) as http:
            writer = writer_on(client_on(http, portal))

            first = await writer.create("deal", {"TITLE": "Intake 3"}, key="tg:3")
            again = await writer.create("deal", {"TITLE": "Intake 3"}, key="tg:3")

        assert with_key(portal, "tg:3") == [first.id]
        assert (first.created, again.created) == (True, False)
        assert again.id == first.id
        assert wire.count("/crm.deal.add") == 1


class TestOAuthTokens:
    """B24-3: an expired token is refreshed once; a revoked one fails loudly."""

    @staticmethod
    async def oauth_client(
        portal: RunningSandbox,
        redis: Redis,
        key_prefix: str,
        http: httpx.AsyncClient,
        *,
        refresh_token: str | None = None,
    ) -> tuple[Bitrix24Client, OAuthTokens]:
        minted = portal.http.post("/_sandbox/oauth/tokens", json={"user_id": 1})
        pair: dict[str, Any] = minted.raise_for_status().json()
        if refresh_token is not None:
            pair["refresh_token"] = refresh_token
        store = OAuthTokenStore(redis, "sandbox", key_prefix=key_prefix)
        tokens = OAuthTokens.from_answer(pair)
        await store.save(tokens)
        credentials = OAuthCredentials(
            store,
            http,
            client_id=pair["client_id"],
            client_secret=SecretStr(pair["client_secret"]),
        )
        client = Bitrix24Client(
            http, credentials, portal_zone=MOSCOW, sleep=Sleeps(), jitter=lambda: 0.0
        )
        return client, tokens

    async def test_a_token_expiring_before_a_create_is_refreshed_once_and_replayed(
        self,
        portal: RunningSandbox,
        redis: Redis,
        key_prefix: str,
        hooked_http: Callable[[Hook], httpx.AsyncClient],
        wire: Wire,
    ) -> None:
        expired: list[str] = []

        async def expire_before_the_create(request: httpx.Request) -> None:
            if request.url.path.endswith("/crm.deal.add") and not expired:
                expired.append(tokens.access_token)
                portal.http.post(
                    "/_sandbox/oauth/expire", json={"access_token": tokens.access_token}
                ).raise_for_status()

        http = hooked_http(expire_before_the_create)
        client, tokens = await self.oauth_client(portal, redis, key_prefix, http)

        created = await writer_on(client).create(
            "deal", {"TITLE": "Intake 4"}, key="tg:4"
        )

        assert with_key(portal, "tg:4") == [created.id]
        assert wire.count("/oauth/token/") == 1
        sent = [body["auth"] for body in wire.bodies("/crm.deal.add")]
        assert len(sent) == 2  # refused with expired_token, then replayed once
        assert sent[0] == tokens.access_token != sent[1]

    async def test_a_revoked_refresh_token_fails_loudly_and_writes_nothing(
        self,
        portal: RunningSandbox,
        redis: Redis,
        key_prefix: str,
        http: httpx.AsyncClient,
        wire: Wire,
    ) -> None:
        client, _ = await self.oauth_client(
            portal, redis, key_prefix, http, refresh_token="revoked-refresh-token"
        )
        portal.http.post("/_sandbox/oauth/expire", json={}).raise_for_status()

        with pytest.raises(AuthFailed, match="re-authorise"):
            await writer_on(client).create("deal", {"TITLE": "Intake 5"}, key="tg:5")

        assert wire.count("/oauth/token/") == 1
        assert wire.count("/crm.deal.list") == 1  # the key lookup, refused once
        assert wire.count("/crm.deal.add") == 0


class TestHtmlErrorPage:
    async def test_html_pages_on_a_pull_are_retried_and_every_row_arrives_once(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load({"deals": deals(range(1, 2601))})
        add_fault(portal, method="crm.deal.list", kind="html", times=2)

        ids = await ids_pulled(Puller(client_on(http, portal)).pull("deal"))

        assert ids == list(range(1, 2601))
        assert http_by_method(portal)["batch"] == 4  # two pages refused, two answered

    async def test_an_html_page_after_the_create_ran_is_reconciled_not_repeated(
        self, portal: RunningSandbox, wire: Wire
    ) -> None:
        def gateway_error_after_the_write(
            request: httpx.Request, body: bytes
        ) -> httpx.Response | None:
            # The portal created the deal; the proxy in front answers 502 anyway.
            if request.url.path.endswith("/crm.deal.add"):
                return httpx.Response(502, html="<html><h1>502 Bad Gateway</h1></html>")
            return None

        async with httpx.AsyncClient(
            transport=Intermediary(gateway_error_after_the_write),
            event_hooks={"request": [wire.record]},
        ) as http:
            created = await writer_on(client_on(http, portal)).create(
                "deal", {"TITLE": "Intake 8"}, key="tg:8"
            )

        assert with_key(portal, "tg:8") == [created.id]
        paths = [request.url.path.rsplit("/", 1)[-1] for request in wire.requests]
        assert paths == ["crm.deal.list", "crm.deal.add", "crm.deal.list"]

    async def test_an_html_page_instead_of_a_create_is_reconciled_into_one_deal(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        add_fault(portal, method="crm.deal.add", kind="html", status=502)

        created = await writer_on(client_on(http, portal)).create(
            "deal", {"TITLE": "Intake 6"}, key="tg:6"
        )

        assert with_key(portal, "tg:6") == [created.id]
        # Looked up first, sent, unclear (HTML), looked up again, sent again.
        paths = [request.url.path.rsplit("/", 1)[-1] for request in wire.requests]
        assert paths == [
            "crm.deal.list",
            "crm.deal.add",
            "crm.deal.list",
            "crm.deal.add",
        ]


class Listener:
    """Serves one sandbox app on a fixed port; stopped and started again, it keeps
    its state, as a portal restarting behind its address does."""

    def __init__(self, app: SandboxApp, port: int) -> None:
        self.app = app
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app.build(), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox listener did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None


@dataclass
class Outage:
    """Takes the listener down just before the `nth` request to a path ending in
    `starts`, and brings it back after `down_s` seconds of the fake clock (never if
    None)."""

    listener: Listener
    fake: FakeTime
    starts: str
    down_s: float | None
    nth: int = 1
    seen: int = 0
    began: list[float] = field(default_factory=list)

    async def hook(self, request: httpx.Request) -> None:
        if self.began or not request.url.path.endswith(self.starts):
            return
        self.seen += 1
        if self.seen < self.nth:
            return
        self.began.append(self.fake.now)
        self.listener.stop()
        if self.down_s is not None:
            self.fake.after(self.down_s, self.listener.start)


@pytest.fixture
def restartable() -> Iterator[tuple[Listener, RunningSandbox]]:
    """A sandbox of its own whose listener a test may stop and start again."""
    port = free_port()
    app = SandboxApp(SandboxOptions(port=port, rate_limit="off"))
    listener = Listener(app, port)
    listener.start()
    base_url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base_url, timeout=30) as control:
        yield listener, RunningSandbox(base_url, app, control)
    listener.stop()


class TestPortalRefusingConnections:
    async def test_a_pull_rides_out_thirty_seconds_of_refused_connections(
        self,
        restartable: tuple[Listener, RunningSandbox],
        hooked_http: Callable[[Hook], httpx.AsyncClient],
    ) -> None:
        listener, portal = restartable
        portal.load({"deals": deals(range(1, 2401))})
        fake = FakeTime()
        outage = Outage(listener, fake, "/batch", down_s=30, nth=2)
        client = client_on(hooked_http(outage.hook), portal, fake)

        ids = await ids_pulled(Puller(client, pages_per_batch=20).pull("deal"))

        assert ids == list(range(1, 2401))
        assert sum(fake.delays) >= 30
        # The portal saw each request once: the refused ones never reached it.
        assert http_by_method(portal) == {"crm.deal.fields": 1, "batch": 3}

    async def test_a_create_during_the_outage_lands_once_when_it_is_over(
        self,
        restartable: tuple[Listener, RunningSandbox],
        hooked_http: Callable[[Hook], httpx.AsyncClient],
    ) -> None:
        listener, portal = restartable
        fake = FakeTime()
        outage = Outage(listener, fake, "/crm.deal.add", down_s=30)
        writer = writer_on(client_on(hooked_http(outage.hook), portal, fake))

        created = await writer.create("deal", {"TITLE": "Intake 7"}, key="tg:7")

        assert with_key(portal, "tg:7") == [created.id]
        assert http_by_method(portal)["crm.deal.add"] == 1

    async def test_a_longer_outage_raises_unavailable_after_the_deadline(
        self,
        restartable: tuple[Listener, RunningSandbox],
        hooked_http: Callable[[Hook], httpx.AsyncClient],
    ) -> None:
        listener, portal = restartable
        portal.load({"deals": deals(range(1, 101))})
        fake = FakeTime()
        outage = Outage(listener, fake, "/batch", down_s=None)
        client = client_on(hooked_http(outage.hook), portal, fake)

        with pytest.raises(Unavailable) as caught:
            await ids_pulled(Puller(client).pull("deal"))

        assert caught.value.sent is False
        assert sum(fake.delays) == pytest.approx(RetryPolicy().unavailable_for_s)
        assert fake.now - outage.began[0] == pytest.approx(60.0)


class TestRowsChangingDuringAPull:
    async def test_rows_deleted_and_added_between_requests_miss_and_repeat_nothing(
        self,
        portal: RunningSandbox,
        hooked_http: Callable[[Hook], httpx.AsyncClient],
    ) -> None:
        portal.load({"deals": deals(range(1, 3001))})
        batches: list[str] = []
        added: list[int] = []

        async def change_before_the_second_batch(request: httpx.Request) -> None:
            if not request.url.path.endswith("/batch"):
                return
            batches.append(request.url.path)
            if len(batches) != 2:
                return
            for deal_id in (100, 700, 1500):  # one behind the cursor, two ahead
                portal.result("crm.deal.delete", {"id": deal_id})
            for n in range(3):
                fields = {"TITLE": f"Arrived {n}"}
                added.append(portal.result("crm.deal.add", {"fields": fields}))

        client = client_on(hooked_http(change_before_the_second_batch), portal)

        ids = await ids_pulled(Puller(client, pages_per_batch=10).pull("deal"))

        # Deal 100 was read before it went; 700 and 1500 were gone when reached.
        assert ids == [n for n in range(1, 3001) if n not in (700, 1500)] + added
        assert added == [3001, 3002, 3003]

    async def test_a_page_that_starts_over_stops_the_pull_with_incomplete_pull(
        self, portal: RunningSandbox
    ) -> None:
        portal.load({"deals": deals(range(1, 301))})
        batches: list[bytes] = []

        def first_answer_again(
            request: httpx.Request, body: bytes
        ) -> httpx.Response | None:
            # A proxy cache answering the second batch with the first one's body:
            # the ids stop rising, so nothing after the first request is trusted.
            if request.url.path.endswith("/batch"):
                batches.append(body)
                return httpx.Response(200, json=json.loads(batches[0]))
            return None

        transport = Intermediary(first_answer_again)
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            puller = Puller(client_on(http, portal), pages_per_batch=2)
            seen: list[int] = []

            with pytest.raises(IncompletePull, match="after 100"):
                await ids_pulled(puller.pull("deal"), into=seen)

        assert seen == list(range(1, 101))
