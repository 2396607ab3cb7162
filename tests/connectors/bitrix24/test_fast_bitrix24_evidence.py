"""fast-bitrix24 1.8.14 and the gateway on the same sandbox scenarios, side by side.

Each test records what fast-bitrix24 does (its observed behaviour is asserted, so a
release that changes it fails here and the README's decision gets revisited) and
what the gateway does on the same scenario. The README's "Dependencies" section
cites these tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import fast_bitrix24.srh
import httpx
import pytest

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import InvalidCredentials
from connectors.bitrix24.fast_adapter import fast_bitrix_puller
from connectors.bitrix24.pull import Puller
from connectors.bitrix24.writes import Writer
from tests.connectors.bitrix24.conftest import MOSCOW, Sleeps, Wire
from tests.sandbox.conftest import RunningSandbox

HOT_FIELD = {
    "ID": "901",
    "ENTITY_ID": "CRM_DEAL",
    "FIELD_NAME": "UF_CRM_IS_HOT",
    "USER_TYPE_ID": "boolean",
    "MULTIPLE": "N",
    "MANDATORY": "N",
    "SETTINGS": {"DEFAULT_VALUE": 0},
}


def deals(ids: range, **fields: str) -> list[dict[str, str]]:
    """Legacy deal rows as `crm.deal.list` returns them."""
    return [
        {
            "ID": str(deal_id),
            "TITLE": f"Deal {deal_id}",
            "STAGE_ID": "NEW",
            "STAGE_SEMANTIC_ID": "P",
            "CATEGORY_ID": "0",
            "OPENED": "Y",
            "CLOSED": "N",
            **fields,
        }
        for deal_id in ids
    ]


def ids_of(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["ID"]) for row in rows]


async def collect(rows: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row async for row in rows]


@dataclass
class AfterFirstPage:
    """Changes the portal once, right after the first answer from `path_suffix`.

    The change is made over REST, as a manager's edit would be, while the client
    waits between its first page and the rest.
    """

    path_suffix: str
    change: Callable[[], None]
    done: bool = False

    def seen(self, path: str) -> None:
        if not self.done and path.endswith(self.path_suffix):
            self.done = True
            self.change()

    async def httpx_hook(self, response: httpx.Response) -> None:
        self.seen(response.request.url.path)

    def aiohttp_trace(self) -> aiohttp.TraceConfig:
        async def on_end(
            session: aiohttp.ClientSession,
            context: object,
            params: aiohttp.TraceRequestEndParams,
        ) -> None:
            self.seen(params.url.path)

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_end)
        return trace


@dataclass
class AiohttpWire:
    """What fast-bitrix24 sent: each request's path and decoded JSON body."""

    sent: list[tuple[str, Any]] = field(default_factory=list)

    def trace(self) -> aiohttp.TraceConfig:
        async def on_chunk(
            session: aiohttp.ClientSession,
            context: object,
            params: aiohttp.TraceRequestChunkSentParams,
        ) -> None:
            self.sent.append((params.url.path, json.loads(params.chunk)))

        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(on_chunk)
        return trace

    def bodies(self, path_suffix: str) -> list[Any]:
        return [body for path, body in self.sent if path.endswith(path_suffix)]


@pytest.fixture
def aiohttp_wire() -> AiohttpWire:
    return AiohttpWire()


def gateway(http: httpx.AsyncClient, portal: RunningSandbox) -> Bitrix24Client:
    return Bitrix24Client(
        http, WebhookCredentials(portal.webhook), portal_zone=MOSCOW, sleep=Sleeps()
    )


async def gateway_pull(
    portal: RunningSandbox,
    change: AfterFirstPage,
    filter_: dict[str, object] | None,
    select: list[str],
) -> list[dict[str, Any]]:
    """The gateway's pull with one page per request, so the change falls between."""
    hooks = {"response": [change.httpx_hook]}
    async with httpx.AsyncClient(timeout=10, event_hooks=hooks) as http:
        puller = Puller(gateway(http, portal), pages_per_batch=1)
        return await collect(puller.pull("deal", filter_, select))


async def fast_pull(
    portal: RunningSandbox,
    change: AfterFirstPage,
    filter_: dict[str, object] | None,
    select: list[str],
) -> list[dict[str, Any]]:
    async with fast_bitrix_puller(
        portal.webhook, trace_configs=[change.aiohttp_trace()]
    ) as puller:
        return await collect(puller.pull("deal", filter_, select))


class TestRowsChangingDuringThePull:
    """A deal is deleted and a new one arrives after the first page."""

    @staticmethod
    def leave_and_arrive(portal: RunningSandbox, path_suffix: str) -> AfterFirstPage:
        def change() -> None:
            portal.result("crm.deal.delete", {"id": 10})
            portal.result("crm.deal.add", {"fields": {"TITLE": "Arrived mid-pull"}})

        return AfterFirstPage(path_suffix, change)

    async def test_fast_bitrix24_silently_skips_a_deal_that_never_changed(
        self, portal: RunningSandbox
    ) -> None:
        portal.load({"deals": deals(range(1, 121))})

        rows = await fast_pull(
            portal,
            self.leave_and_arrive(portal, "crm.deal.list"),
            None,
            ["ID", "TITLE"],
        )

        # Offsets 50 and 100 were computed from the first page's total (120); after
        # deal 10 left, offset 50 starts at deal 52. 120 rows came back, as many as
        # `total`, so not even its RuntimeWarning fired.
        present = set(ids_of(rows))
        missing = [deal_id for deal_id in range(11, 121) if deal_id not in present]
        assert missing == [51]
        assert len(rows) == 120
        assert 121 in present

    async def test_the_gateway_returns_every_deal_that_stayed_once_in_order(
        self, portal: RunningSandbox
    ) -> None:
        portal.load({"deals": deals(range(1, 121))})
        change = self.leave_and_arrive(portal, "/batch")

        rows = await gateway_pull(portal, change, None, ["ID", "TITLE"])

        # Deal 10 was read before it was deleted; the new deal 121 is included.
        assert ids_of(rows) == list(range(1, 122))


class TestARowEnteringTheFilter:
    """Deal 5 moves into the filtered stage, deal 51 is edited."""

    FILTER: ClassVar[dict[str, object]] = {"STAGE_ID": "NEW"}
    SELECT: ClassVar[list[str]] = ["ID", "TITLE", "STAGE_ID"]

    @staticmethod
    def load(portal: RunningSandbox) -> None:
        rows = deals(range(1, 122))
        rows[4].update(STAGE_ID="WON", STAGE_SEMANTIC_ID="S", CLOSED="Y")
        portal.load({"deals": rows})

    @staticmethod
    def enter_and_edit(portal: RunningSandbox, path_suffix: str) -> AfterFirstPage:
        def change() -> None:
            portal.result("crm.deal.update", {"id": 5, "fields": {"STAGE_ID": "NEW"}})
            portal.result("crm.deal.update", {"id": 51, "fields": {"TITLE": "Edited"}})

        return AfterFirstPage(path_suffix, change)

    async def test_fast_bitrix24_returns_a_deal_twice_with_only_a_warning(
        self, portal: RunningSandbox
    ) -> None:
        self.load(portal)

        with pytest.warns(RuntimeWarning, match=r"\(121\) doesn't equal 'total'"):
            rows = await fast_pull(
                portal,
                self.enter_and_edit(portal, "crm.deal.list"),
                self.FILTER,
                self.SELECT,
            )

        # Everything after page 1 shifted one place, so deal 51 is read again; it was
        # edited in between, so the pickle-based de-duplication keeps both versions.
        # Outside pytest the RuntimeWarning is one log line and the list is returned.
        titles = [row["TITLE"] for row in rows if row["ID"] == "51"]
        assert sorted(titles) == ["Deal 51", "Edited"]
        assert len(rows) == 121

    async def test_the_gateway_returns_each_deal_that_matched_throughout_once(
        self, portal: RunningSandbox
    ) -> None:
        self.load(portal)

        rows = await gateway_pull(
            portal, self.enter_and_edit(portal, "/batch"), self.FILTER, self.SELECT
        )

        # Deal 5 entered below the keyset cursor, after its range was read.
        assert ids_of(rows) == [*range(1, 5), *range(6, 122)]


class TestTwoPullsAtOnce:
    """Deals and activities pulled at the same time on one client."""

    @staticmethod
    def load(portal: RunningSandbox) -> None:
        activities = [
            {"ID": str(n), "OWNER_TYPE_ID": "2", "OWNER_ID": "1", "TYPE_ID": "2"}
            for n in range(1, 121)
        ]
        portal.load({"deals": deals(range(1, 121)), "activities": activities})
        # The first activity page is still on its way when the deals' first answer
        # arrives, as happens whenever two lists are pulled together.
        portal.http.post(
            "/_sandbox/faults",
            json={"method": "crm.activity.list", "kind": "latency", "seconds": 0.3},
        ).raise_for_status()

    @staticmethod
    async def both_in_slow_mode(
        portal: RunningSandbox,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with fast_bitrix_puller(portal.webhook) as puller:
            with puller.bitrix.slow(1):
                return await asyncio.gather(
                    collect(puller.pull("deal", None, ["ID"])),
                    collect(puller.pull("activity", None, ["ID"])),
                )

    async def test_fast_bitrix24_in_slow_mode_returns_one_page_of_the_first_list(
        self, portal: RunningSandbox
    ) -> None:
        self.load(portal)

        with pytest.warns(RuntimeWarning, match=r"\(50\) doesn't equal 'total'"):
            deal_rows, activity_rows = await self.both_in_slow_mode(portal)

        # With the one request slot taken by the activities, get_all for deals
        # scheduled none of its remaining pages and returned page 1. The same path
        # opens whenever its concurrency cap has been cut to the requests in flight,
        # which it does after failures (divided by 3 each time, down to 1).
        assert ids_of(deal_rows) == list(range(1, 51))
        assert ids_of(activity_rows) == list(range(1, 121))

    async def test_the_gateway_pulls_both_lists_completely(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        self.load(portal)
        puller = Puller(gateway(http, portal), pages_per_batch=1)

        deal_rows, activity_rows = await asyncio.gather(
            collect(puller.pull("deal", None, ["ID"])),
            collect(puller.pull("activity", None, ["ID"])),
        )

        assert ids_of(deal_rows) == list(range(1, 121))
        assert ids_of(activity_rows) == list(range(1, 121))


class TestBooleanFilter:
    """B24-1: three hundred deals, every other one hot (a boolean user field)."""

    @staticmethod
    def load(portal: RunningSandbox) -> None:
        rows = [
            {**deal, "UF_CRM_IS_HOT": "1" if int(deal["ID"]) % 2 == 0 else "0"}
            for deal in deals(range(1, 301))
        ]
        portal.load({"userfields": [HOT_FIELD], "deals": rows})

    async def test_fast_bitrix24_sends_true_as_text_in_batches_and_loses_100_deals(
        self, portal: RunningSandbox, aiohttp_wire: AiohttpWire
    ) -> None:
        self.load(portal)

        with pytest.warns(RuntimeWarning, match=r"\(50\) doesn't equal 'total'"):
            async with fast_bitrix_puller(
                portal.webhook, trace_configs=[aiohttp_wire.trace()]
            ) as puller:
                rows = await collect(
                    puller.pull("deal", {"UF_CRM_IS_HOT": True}, ["ID"])
                )

        # Page 1 went as JSON (`true` matches); pages 2 and 3 went inside a batch,
        # where Python's True became the text "True", which matches nothing.
        assert ids_of(rows) == list(range(2, 101, 2))
        assert aiohttp_wire.bodies("/crm.deal.list")[0]["filter"] == {
            "UF_CRM_IS_HOT": True
        }
        commands = aiohttp_wire.bodies("/batch")[0]["cmd"].values()
        assert all("?filter[UF_CRM_IS_HOT]=True&" in command for command in commands)

    async def test_the_gateway_sends_1_on_every_page_and_gets_all_150(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        self.load(portal)
        puller = Puller(gateway(http, portal), pages_per_batch=1)

        rows = await collect(puller.pull("deal", {"UF_CRM_IS_HOT": True}, ["ID"]))

        assert ids_of(rows) == list(range(2, 301, 2))
        commands = [body["cmd"]["p0"] for body in wire.bodies("/batch")]
        assert len(commands) == 4
        assert all("&filter[UF_CRM_IS_HOT]=1&" in command for command in commands)


class TestUnauthorized:
    """A webhook code the portal does not know (HTTP 401)."""

    async def test_fast_bitrix24_keeps_the_status_and_drops_the_error_body(
        self, portal: RunningSandbox
    ) -> None:
        wrong = f"{portal.base_url}/rest/1/wrong-code/"

        async with fast_bitrix_puller(wrong) as puller:
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                await collect(puller.pull("deal", None, ["ID"]))

        assert caught.value.status == 401
        shown = f"{caught.value!s} {caught.value!r} {caught.value.message}"
        assert "INVALID_CREDENTIALS" not in shown
        assert "Invalid request credentials" not in shown

    async def test_fast_bitrix24_asks_for_a_new_token_on_every_401_without_end(
        self, portal: RunningSandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(fast_bitrix24.srh, "sleep", Sleeps())
        asked: list[int] = []

        async def revoked_token() -> str:
            asked.append(1)
            if len(asked) == 25:
                # Stands in for a person killing the process: nothing else stops it.
                raise RuntimeError("stopped by the test")
            return "revoked-access-token"

        async with aiohttp.ClientSession(raise_for_status=True) as session:
            bitrix = fast_bitrix24.BitrixAsync(
                f"{portal.base_url}/rest/",
                token_func=revoked_token,
                verbose=False,
                client=session,
            )
            with pytest.raises(RuntimeError, match="stopped by the test"):
                await bitrix.call("crm.deal.get", {"id": 1}, raw=True)

        assert len(asked) == 25
        assert portal.http.get("/_sandbox/stats").json()["requests"] == 24

    async def test_the_gateway_raises_the_portals_code_and_text(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        client = Bitrix24Client(
            http,
            WebhookCredentials(f"{portal.base_url}/rest/1/wrong-code/"),
            portal_zone=MOSCOW,
        )

        with pytest.raises(InvalidCredentials) as caught:
            await collect(Puller(client).pull("deal", None, ["ID"]))

        assert caught.value.status == 401
        assert caught.value.code == "INVALID_CREDENTIALS"
        assert caught.value.description == "Invalid request credentials"
        assert len(wire.requests) == 1


class TestWriteThatTimesOut:
    """The portal creates the deal, then answers after the timeout."""

    async def test_fast_bitrix24_resends_the_create_into_four_deals(
        self,
        portal: RunningSandbox,
        aiohttp_wire: AiohttpWire,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        pauses = Sleeps()
        monkeypatch.setattr(fast_bitrix24.srh, "sleep", pauses)
        portal.http.post(
            "/_sandbox/faults",
            json={
                "method": "crm.deal.add",
                "kind": "timeout_after_write",
                "seconds": 1.0,
                "times": 3,
            },
        ).raise_for_status()

        async with fast_bitrix_puller(
            portal.webhook, timeout_s=0.3, trace_configs=[aiohttp_wire.trace()]
        ) as puller:
            new_id = await puller.bitrix.call(
                "crm.deal.add", {"fields": {"TITLE": "Intake 501"}}
            )

        created = portal.result("crm.deal.list", {"filter": {"TITLE": "Intake 501"}})
        # Three timed-out batches and a fourth that answered: four deals, and the
        # caller is told about one of them, with no error.
        assert len(created) == 4
        assert new_id == int(created[-1]["ID"])
        assert len(aiohttp_wire.bodies("/batch")) == 4
        assert len(pauses.delays) == 3

    async def test_the_gateway_finds_the_deal_by_its_key_and_creates_one(
        self, portal: RunningSandbox, wire: Wire
    ) -> None:
        portal.http.post(
            "/_sandbox/faults",
            json={
                "method": "crm.deal.add",
                "kind": "timeout_after_write",
                "seconds": 1.0,
                "times": 3,
            },
        ).raise_for_status()
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(0.3), event_hooks={"request": [wire.record]}
        ) as http:
            writer = Writer(gateway(http, portal), sleep=Sleeps())

            created = await writer.create(
                "deal", {"TITLE": "Intake 502"}, key="intake-502"
            )

        deals_made = portal.result("crm.deal.list", {"filter": {"TITLE": "Intake 502"}})
        assert [int(deal["ID"]) for deal in deals_made] == [created.id]
        assert wire.count("/crm.deal.add") == 1
