"""The client on the wire: exact bodies, batch results, retries that never duplicate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
import structlog
from redis.asyncio import Redis

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import (
    Bitrix24Client,
    Command,
    RetryPolicy,
    is_read,
)
from connectors.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    InsufficientScope,
    InvalidCredentials,
    NotFound,
    OperationTimeLimited,
    RateLimited,
    Rejected,
    Unavailable,
    WriteOutcomeUnknown,
)
from connectors.bitrix24.ratelimit import PortalRateLimiter
from sandbox.phpform import parse_str
from sandbox.server import SandboxOptions
from tests.connectors.bitrix24.conftest import MOSCOW, Sleeps, Wire
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox

PORTAL = "https://example.bitrix24.ru/rest/1/s3cretc0de/"
TIME = {"start": 1736110000, "finish": 1736110000.1, "duration": 0.1}
QUERY_LIMIT = {
    "error": "QUERY_LIMIT_EXCEEDED",
    "error_description": "Too many requests",
}
HTML_502 = "<html><body>502 Bad Gateway</body></html>"


def ok(result: Any, **extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"result": result, "time": TIME, **extra})


def html(status: int) -> httpx.Response:
    return httpx.Response(status, text=HTML_502, headers={"Content-Type": "text/html"})


def sent(route: respx.Route) -> list[Any]:
    return [json.loads(call.request.content) for call in route.calls]


class FakeClock:
    def __init__(self, now: float = 1_736_110_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class TickingSleeps(Sleeps):
    """A fake sleep that moves the fake clock on by the time slept."""

    clock: FakeClock = field(default_factory=FakeClock)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds


@pytest.fixture
async def portal_http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps(clock: FakeClock) -> TickingSleeps:
    return TickingSleeps(clock=clock)


@pytest.fixture
def client(
    portal_http: httpx.AsyncClient, sleeps: Sleeps, clock: FakeClock
) -> Bitrix24Client:
    return Bitrix24Client(
        portal_http,
        WebhookCredentials(PORTAL),
        portal_zone=MOSCOW,
        sleep=sleeps,
        clock=clock,
        jitter=lambda: 0.0,
    )


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=PORTAL, assert_all_called=False) as router:
        yield router


class TestCall:
    async def test_a_call_posts_every_value_as_the_portal_reads_it(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("crm.deal.list").mock(return_value=ok([], total=0))

        await client.call(
            "crm.deal.list",
            {
                "filter": {
                    "OPENED": True,
                    ">=DATE_CREATE": datetime(2025, 1, 5, 21, 0, tzinfo=UTC),
                    "@STAGE_ID": ["NEW", "WON"],
                },
                "select": ["ID", "TITLE"],
                "start": -1,
            },
        )

        request = route.calls.last.request
        assert str(request.url) == PORTAL + "crm.deal.list"
        assert request.headers["content-type"] == "application/json; charset=utf-8"
        assert json.loads(request.content) == {
            "filter": {
                "OPENED": "Y",
                ">=DATE_CREATE": "2025-01-06 00:00:00",
                "@STAGE_ID": ["NEW", "WON"],
            },
            "select": ["ID", "TITLE"],
            "start": "-1",
        }

    async def test_the_envelope_keeps_total_next_and_time(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        mock.post("crm.deal.list").mock(
            return_value=ok([{"ID": "1"}], total=120, next=50)
        )

        envelope = await client.call_envelope("crm.deal.list")

        assert envelope.result == [{"ID": "1"}]
        assert (envelope.total, envelope.next) == (120, 50)
        assert envelope.time["duration"] == 0.1

    async def test_a_missing_record_is_not_found(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        body = load_fixture("bitrix24/crm.lead.get.error-not-found.json")
        mock.post("crm.lead.get").mock(return_value=httpx.Response(400, json=body))

        with pytest.raises(NotFound):
            await client.call("crm.lead.get", {"id": 999})

    @pytest.mark.parametrize(
        ("method", "read"),
        [
            ("crm.deal.list", True),
            ("crm.deal.get", True),
            ("crm.deal.fields", True),
            ("crm.duplicate.findbycomm", True),
            ("server.time", True),
            ("crm.deal.add", False),
            ("crm.deal.update", False),
            ("im.notify.system.add", False),
            ("event.offline.get", False),  # it deletes what it returns
            ("some.unknown.method", False),
        ],
    )
    def test_only_known_reads_count_as_reads(self, method: str, read: bool) -> None:
        assert is_read(method) is read


class TestBatch:
    async def test_commands_travel_as_php_queries_with_halt_as_a_number(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("batch").mock(
            return_value=ok({"result": {"find": [], "add": 501}, "result_error": []})
        )

        await client.batch(
            {
                "find": Command(
                    "crm.duplicate.findbycomm",
                    {"type": "PHONE", "values": ["+79990000001"]},
                ),
                "add": Command(
                    "crm.contact.add", {"fields": {"NAME": "Анна", "OPENED": True}}
                ),
            },
            halt=True,
        )

        assert sent(route) == [
            {
                "halt": 1,
                "cmd": {
                    "find": "crm.duplicate.findbycomm?type=PHONE"
                    "&values[0]=%2B79990000001",
                    "add": "crm.contact.add?fields[NAME]=%D0%90%D0%BD%D0%BD%D0%B0"
                    "&fields[OPENED]=Y",
                },
            }
        ]

    async def test_a_batched_filter_means_what_the_direct_call_means(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        """B24-1: a boolean filter is sent as Y both in a direct call and in a batch."""
        direct = mock.post("crm.deal.list").mock(return_value=ok([]))
        batch = mock.post("batch").mock(return_value=ok({"result": {"p50": []}}))
        params = {
            "filter": {
                "UF_CRM_IS_HOT": True,
                "STAGE_SEMANTIC_ID": "S",
                ">=CLOSEDATE": datetime(2025, 1, 5, 21, 0, tzinfo=UTC),
            },
            "start": 50,
        }

        await client.call("crm.deal.list", params)
        await client.batch({"p50": Command("crm.deal.list", params)})

        command = sent(batch)[0]["cmd"]["p50"]
        method, query = command.split("?", 1)
        assert method == "crm.deal.list"
        assert parse_str(query) == sent(direct)[0]
        assert "filter[UF_CRM_IS_HOT]=Y" in query

    async def test_each_command_gets_its_own_result_or_error(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        mock.post("batch").mock(
            return_value=ok(
                {
                    "result": {"deal": {"ID": "7"}},
                    "result_error": {
                        "lead": {"error": "", "error_description": "Not found"}
                    },
                    "result_total": [],
                    "result_next": [],
                    "result_time": {"deal": {"start": 1, "duration": 0.01}},
                }
            )
        )
        commands = {
            "deal": Command("crm.deal.get", {"id": 7}),
            "lead": Command("crm.lead.get", {"id": 8}),
            "task": Command("tasks.task.get", {"taskId": 9}),
        }

        result = await client.batch(commands, halt=True)

        assert result.value("deal") == {"ID": "7"}
        assert isinstance(result.errors["lead"], NotFound)
        assert result.errors["lead"].method == "crm.lead.get"
        with pytest.raises(NotFound):
            result.value("lead")
        with pytest.raises(Bitrix24Error, match="did not run"):
            result.value("task")

    async def test_recorded_error_answer_maps_every_command(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        answer = load_fixture("bitrix24/batch.error-halt0.response.json")
        mock.post("batch").mock(return_value=httpx.Response(200, json=answer))

        result = await client.batch(
            {
                "get_user": Command("user.current"),
                "get_department": Command("department.get", {"ID": 1}),
            }
        )

        assert result.results == {}
        assert {name: type(error) for name, error in result.errors.items()} == {
            "get_user": InsufficientScope,
            "get_department": InsufficientScope,
        }

    async def test_recorded_linked_answer_keeps_totals_and_times(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        answer = load_fixture("bitrix24/batch.linked.response.json")
        mock.post("batch").mock(return_value=httpx.Response(200, json=answer))

        result = await client.batch(
            {
                "get_user": Command("user.current"),
                "get_department": Command(
                    "department.get", {"ID": "$result[get_user][UF_DEPARTMENT][0]"}
                ),
            }
        )

        assert result.value("get_department")[0]["NAME"] == "DEMO"
        assert result.totals == {"get_department": 1}
        assert set(result.times) == {"get_user", "get_department"}

    async def test_more_than_fifty_commands_are_refused_before_sending(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("batch")
        commands = {f"c{n}": Command("server.time") for n in range(51)}

        with pytest.raises(ValueError, match="at most 50"):
            await client.batch(commands)

        assert route.call_count == 0


class TestRetries:
    async def test_rate_limits_and_an_html_page_are_retried_with_growing_delays(
        self, client: Bitrix24Client, mock: respx.MockRouter, sleeps: Sleeps
    ) -> None:
        """B24-2: two 503s and an HTML 502 are retried with growing delays."""
        # Known fault B24-2: two 503s, an HTML 502, then the answer.
        route = mock.post("crm.duplicate.findbycomm").mock(
            side_effect=[
                httpx.Response(503, json=QUERY_LIMIT),
                httpx.Response(503, json=QUERY_LIMIT),
                html(502),
                ok([]),
            ]
        )

        result = await client.call(
            "crm.duplicate.findbycomm", {"type": "PHONE", "values": ["+79990000001"]}
        )

        assert result == []
        assert route.call_count == 4
        assert sleeps.delays == [0.5, 1.0, 2.0]

    async def test_jitter_adds_at_most_half_of_each_delay(
        self, portal_http: httpx.AsyncClient, mock: respx.MockRouter, sleeps: Sleeps
    ) -> None:
        """B24-2: the backoff is jittered."""
        client = Bitrix24Client(
            portal_http,
            WebhookCredentials(PORTAL),
            portal_zone=MOSCOW,
            sleep=sleeps,
            jitter=lambda: 0.999,
        )
        mock.post("server.time").mock(
            side_effect=[httpx.Response(503, json=QUERY_LIMIT)] * 2 + [ok("now")]
        )

        await client.call("server.time")

        assert sleeps.delays == pytest.approx([0.74975, 1.4995])

    async def test_retries_stop_after_five_attempts_with_a_typed_error(
        self, client: Bitrix24Client, mock: respx.MockRouter, sleeps: Sleeps
    ) -> None:
        """B24-2: at most five attempts, then the typed error RateLimited."""
        route = mock.post("crm.deal.list").mock(
            return_value=httpx.Response(503, json=QUERY_LIMIT)
        )

        with pytest.raises(RateLimited):
            await client.call("crm.deal.list")

        assert route.call_count == 5
        assert sleeps.delays == [0.5, 1.0, 2.0, 4.0]

    async def test_a_write_refused_by_the_rate_limit_is_sent_again(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("crm.contact.add").mock(
            side_effect=[httpx.Response(503, json=QUERY_LIMIT), ok(501)]
        )

        assert await client.call("crm.contact.add", {"fields": {"NAME": "A"}}) == 501
        assert route.call_count == 2

    async def test_a_write_whose_connection_never_opened_is_sent_again(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("crm.contact.add").mock(
            side_effect=[httpx.ConnectError("refused")] * 2 + [ok(501)]
        )

        assert await client.call("crm.contact.add", {"fields": {"NAME": "A"}}) == 501
        assert route.call_count == 3

    @pytest.mark.parametrize(
        "failure",
        [
            html(502),
            httpx.Response(
                500, json={"error": "ERROR_CORE", "error_description": "SQL"}
            ),
            httpx.Response(200, text="<html>maintenance</html>"),
            httpx.ReadTimeout("read timed out"),
            httpx.RemoteProtocolError("server disconnected"),
        ],
    )
    async def test_a_write_with_an_unclear_outcome_is_never_sent_twice(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: Sleeps,
        failure: httpx.Response | Exception,
    ) -> None:
        route = mock.post("crm.contact.add").mock(side_effect=[failure, ok(502)])

        with pytest.raises(WriteOutcomeUnknown) as caught:
            await client.call("crm.contact.add", {"fields": {"NAME": "A"}})

        assert route.call_count == 1
        assert sleeps.delays == []
        assert caught.value.method == "crm.contact.add"

    @pytest.mark.parametrize(
        "failure",
        [
            httpx.ReadTimeout("read timed out"),
            httpx.Response(200, text="<html>maintenance</html>"),
            httpx.Response(200, content=b"\xff\xfe not utf-8"),
        ],
    )
    async def test_a_read_with_an_unclear_outcome_is_retried(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        failure: httpx.Response | Exception,
    ) -> None:
        route = mock.post("crm.deal.get").mock(side_effect=[failure, ok({"ID": "7"})])

        assert await client.call("crm.deal.get", {"id": 7}) == {"ID": "7"}
        assert route.call_count == 2

    async def test_a_batch_with_a_write_is_a_write(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("batch").mock(side_effect=[html(502), ok({"result": {}})])

        with pytest.raises(WriteOutcomeUnknown):
            await client.batch(
                {
                    "find": Command("crm.duplicate.findbycomm", {"type": "PHONE"}),
                    "add": Command("crm.contact.add", {"fields": {"NAME": "A"}}),
                }
            )

        assert route.call_count == 1

    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            ("INVALID_CREDENTIALS", InvalidCredentials),
            ("NO_AUTH_FOUND", InvalidCredentials),
            ("insufficient_scope", InsufficientScope),
            ("expired_token", ExpiredToken),  # a webhook has no token to refresh
        ],
    )
    async def test_a_webhook_401_is_configuration_and_never_retried(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: Sleeps,
        code: str,
        expected: type[Bitrix24Error],
    ) -> None:
        """B24-3: in webhook mode a 401 is a configuration error and is not retried."""
        route = mock.post("crm.deal.list").mock(
            return_value=httpx.Response(401, json={"error": code})
        )

        with pytest.raises(expected):
            await client.call("crm.deal.list")

        assert route.call_count == 1
        assert sleeps.delays == []

    async def test_a_rejected_request_is_not_retried(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("crm.item.list").mock(
            return_value=httpx.Response(
                400,
                json={
                    "error": "INVALID_ARG_VALUE",
                    "error_description": "Invalid filter: field 'x' is not allowed",
                },
            )
        )

        with pytest.raises(Rejected):
            await client.call("crm.item.list", {"entityTypeId": 2})

        assert route.call_count == 1

    async def test_errors_and_logs_never_show_the_webhook_code(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        mock.post("crm.deal.list").mock(side_effect=httpx.ConnectError("refused"))

        with pytest.raises(Unavailable) as caught:
            await client.call("crm.deal.list")

        assert "s3cretc0de" not in str(caught.value)
        assert "s3cretc0de" not in repr(client.credentials)
        assert "s3cretc0de" not in caplog.text


class TestAPortalThatRefusesConnections:
    @staticmethod
    def refused_until(clock: FakeClock, until: float, then: httpx.Response) -> Any:
        """A respx side effect: connections refused until the clock reaches `until`."""

        def answer(request: httpx.Request) -> httpx.Response:
            if clock.now < until:
                raise httpx.ConnectError("connection refused", request=request)
            return then

        return answer

    async def test_a_thirty_second_outage_is_ridden_out_by_a_write(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: TickingSleeps,
        clock: FakeClock,
    ) -> None:
        back_at = clock.now + 30
        route = mock.post("crm.contact.add").mock(
            side_effect=self.refused_until(clock, back_at, ok(501))
        )

        contact_id = await client.call("crm.contact.add", {"fields": {"NAME": "A"}})

        assert contact_id == 501
        # 0.5 + 1 + 2 + 4 + 8 + 8 + 8 = 31.5 s: the try after the outage answers.
        assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert route.call_count == 8

    async def test_waits_between_tries_never_exceed_the_cap(
        self,
        portal_http: httpx.AsyncClient,
        mock: respx.MockRouter,
        sleeps: TickingSleeps,
        clock: FakeClock,
    ) -> None:
        policy = RetryPolicy(max_delay_s=3.0, unavailable_for_s=20.0)
        client = Bitrix24Client(
            portal_http,
            WebhookCredentials(PORTAL),
            portal_zone=MOSCOW,
            retry=policy,
            sleep=sleeps,
            clock=clock,
            jitter=lambda: 0.999,
        )
        mock.post("server.time").mock(side_effect=httpx.ConnectError("refused"))

        with pytest.raises(Unavailable) as caught:
            await client.call("server.time")

        assert caught.value.sent is False
        assert max(sleeps.delays) <= 3.0 * 1.5  # the cap, plus at most half in jitter
        assert sum(sleeps.delays) == pytest.approx(20.0)

    async def test_the_deadline_counts_from_the_first_refusal_not_the_call(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: TickingSleeps,
        clock: FakeClock,
    ) -> None:
        # Two rate-limit answers (4.5 s of waits), then a portal that stays down.
        route = mock.post("crm.deal.list").mock(
            side_effect=[httpx.Response(503, json=QUERY_LIMIT)] * 2
            + [httpx.ConnectError("refused")] * 50
        )

        with pytest.raises(Unavailable):
            await client.call("crm.deal.list")

        refusals = sleeps.delays[2:]
        assert sleeps.delays[:2] == [0.5, 1.0]
        assert sum(refusals) == pytest.approx(60.0)
        assert route.call_count == 2 + len(refusals) + 1

    async def test_sent_failures_still_stop_after_five_attempts(
        self, client: Bitrix24Client, mock: respx.MockRouter, sleeps: TickingSleeps
    ) -> None:
        refused = [httpx.ConnectError("refused")] * 3
        route = mock.post("crm.deal.list").mock(
            side_effect=[*refused, *[httpx.Response(503, json=QUERY_LIMIT)] * 9]
        )

        with pytest.raises(RateLimited):
            await client.call("crm.deal.list")

        assert route.call_count == 3 + RetryPolicy().attempts

    async def test_a_zero_window_gives_up_at_the_first_refusal(
        self, portal_http: httpx.AsyncClient, mock: respx.MockRouter, sleeps: Sleeps
    ) -> None:
        client = Bitrix24Client(
            portal_http,
            WebhookCredentials(PORTAL),
            portal_zone=MOSCOW,
            retry=RetryPolicy(unavailable_for_s=0.0),
            sleep=sleeps,
        )
        route = mock.post("crm.deal.list").mock(side_effect=httpx.ConnectError("x"))

        with pytest.raises(Unavailable):
            await client.call("crm.deal.list")

        assert route.call_count == 1
        assert sleeps.delays == []

    @pytest.mark.parametrize(
        "policy", [{"unavailable_for_s": -1.0}, {"redirects": -1}, {"attempts": 0}]
    )
    def test_a_policy_that_cannot_work_is_refused(self, policy: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=r"cannot|needs"):
            RetryPolicy(**policy)


RENAMED = "https://renamed.bitrix24.ru/rest/1/s3cretc0de/"


class TestARenamedPortal:
    @staticmethod
    def moved(location: str, status: int = 302) -> httpx.Response:
        page = f'<html><body>Moved to <a href="{location}">here</a></body></html>'
        return httpx.Response(
            status,
            text=page,
            headers={"Location": location, "Content-Type": "text/html"},
        )

    async def test_the_request_is_sent_again_to_the_new_host_as_it_was(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        old = mock.post("crm.deal.add").mock(
            return_value=self.moved(RENAMED + "crm.deal.add.json")
        )
        with respx.mock(base_url=RENAMED) as renamed:
            new = renamed.post("crm.deal.add").mock(return_value=ok(77))

            with structlog.testing.capture_logs() as logs:
                deal_id = await client.call("crm.deal.add", {"fields": {"TITLE": "A"}})

        assert deal_id == 77
        assert old.call_count == 1
        assert sent(new) == sent(old) == [{"fields": {"TITLE": "A"}}]
        assert client.moved_to == "https://renamed.bitrix24.ru"
        redirect = [entry for entry in logs if entry["event"] == "bitrix24.redirect"]
        assert redirect == [
            {
                "event": "bitrix24.redirect",
                "log_level": "warning",
                "method": "crm.deal.add",
                "status": 302,
                "new_host": "renamed.bitrix24.ru",
            }
        ]
        assert "s3cretc0de" not in repr(logs)

    async def test_later_calls_go_to_the_new_host_directly(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        old = mock.post("server.time").mock(return_value=self.moved(RENAMED, 301))
        with respx.mock(base_url=RENAMED) as renamed:
            new = renamed.post("server.time").mock(return_value=ok("now"))

            for _ in range(3):
                await client.call("server.time")

        assert (old.call_count, new.call_count) == (1, 3)

    async def test_two_hops_are_followed_a_third_is_not(
        self, client: Bitrix24Client, mock: respx.MockRouter, sleeps: Sleeps
    ) -> None:
        hops = [f"https://hop{n}.bitrix24.ru/rest/1/s3cretc0de/" for n in (1, 2, 3)]
        mock.post("server.time").mock(return_value=self.moved(hops[0]))
        with respx.mock(assert_all_called=False) as others:
            others.post(hops[0] + "server.time").mock(return_value=self.moved(hops[1]))
            last = others.post(hops[1] + "server.time").mock(
                return_value=self.moved(hops[2])
            )

            with pytest.raises(Unavailable, match="too many redirects") as caught:
                await client.call("server.time")

        assert last.call_count == 1
        assert caught.value.sent is False
        assert sleeps.delays == []  # the same redirect would come back

    @pytest.mark.parametrize(
        ("location", "why"),
        [
            ("http://renamed.bitrix24.ru/rest/1/s3cretc0de/", "leaves https"),
            ("", "same host"),
            ("ftp://renamed.bitrix24.ru/", "no usable Location"),
            (PORTAL + "crm.deal.list", "same host"),
        ],
    )
    async def test_a_redirect_that_cannot_be_trusted_is_not_followed(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        location: str,
        why: str,
    ) -> None:
        route = mock.post("crm.deal.list").mock(return_value=self.moved(location))

        with pytest.raises(Unavailable, match=why):
            await client.call("crm.deal.list")

        assert route.call_count == 1
        assert client.moved_to is None

    @pytest.mark.parametrize("status", [300, 303, 304])
    async def test_other_redirect_statuses_are_refused_without_a_retry(
        self, client: Bitrix24Client, mock: respx.MockRouter, status: int
    ) -> None:
        route = mock.post("crm.deal.add").mock(return_value=self.moved(RENAMED, status))

        with pytest.raises(Unavailable, match="not a redirect of a renamed portal"):
            await client.call("crm.deal.add", {"fields": {"TITLE": "A"}})

        assert route.call_count == 1

    async def test_the_sandbox_redirect_of_a_renamed_portal_is_followed(
        self, portal: RunningSandbox, wire: Wire, http: httpx.AsyncClient
    ) -> None:
        # The sandbox on `portal` is the new host; a second one plays the old name.
        options = SandboxOptions(port=free_port(), rate_limit="off")
        with running_sandbox(options) as old:
            old.http.post(
                "/_sandbox/faults",
                json={
                    "method": "*",
                    "kind": "redirect",
                    "times": 5,
                    "location": f"{portal.webhook}crm.deal.add.json",
                },
            ).raise_for_status()
            client = Bitrix24Client(
                http, WebhookCredentials(old.webhook), portal_zone=MOSCOW
            )

            first = await client.call("crm.deal.add", {"fields": {"TITLE": "Moved"}})
            second = await client.call("crm.deal.add", {"fields": {"TITLE": "Moved"}})
            old_stats = old.http.get("/_sandbox/stats").json()
            old_deals = old.http.get("/_sandbox/snapshot").json().get("deals", [])

        deals = portal.result("crm.deal.list", {"filter": {"TITLE": "Moved"}})
        assert sorted(int(deal["ID"]) for deal in deals) == [first, second]
        assert client.moved_to == portal.base_url
        assert [request.url.host for request in wire.requests] == ["127.0.0.1"] * 3
        assert [request.url.port for request in wire.requests][1:] == [
            int(portal.base_url.rsplit(":", 1)[1])
        ] * 2
        # The old host answered once, with the redirect, and created nothing.
        assert old_stats["requests"] == 1
        assert old_deals == []


class TestOperatingLimit:
    @staticmethod
    def blocked() -> httpx.Response:
        return httpx.Response(
            429,
            json={
                "error": "OPERATION_TIME_LIMIT",
                "error_description": "Method is blocked due to operation time limit.",
            },
        )

    async def test_a_blocked_method_waits_until_its_reset_then_runs(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: Sleeps,
        clock: FakeClock,
    ) -> None:
        reset_at = int(clock.now) + 30
        timing = {**TIME, "operating": 400.5, "operating_reset_at": reset_at}
        route = mock.post("crm.activity.list").mock(
            side_effect=[ok([], time=timing), self.blocked(), ok([{"ID": "1"}])]
        )

        await client.call("crm.activity.list")
        rows = await client.call("crm.activity.list")

        assert rows == [{"ID": "1"}]
        assert route.call_count == 3
        assert sleeps.delays == [30.0]

    async def test_a_block_of_unknown_length_is_raised_at_once(
        self, client: Bitrix24Client, mock: respx.MockRouter
    ) -> None:
        route = mock.post("crm.activity.list").mock(return_value=self.blocked())

        with pytest.raises(OperationTimeLimited) as caught:
            await client.call("crm.activity.list")

        assert caught.value.reset_at is None
        assert route.call_count == 1

    async def test_a_reset_time_already_past_is_not_waited_for_again(
        self,
        client: Bitrix24Client,
        mock: respx.MockRouter,
        sleeps: Sleeps,
        clock: FakeClock,
    ) -> None:
        timing = {**TIME, "operating_reset_at": int(clock.now) - 5}
        route = mock.post("crm.activity.list").mock(
            side_effect=[ok([], time=timing), self.blocked()]
        )
        await client.call("crm.activity.list")

        with pytest.raises(OperationTimeLimited):
            await client.call("crm.activity.list")

        assert route.call_count == 2
        assert sleeps.delays == []

    async def test_a_long_block_is_raised_with_its_reset_and_costs_no_more_requests(
        self, client: Bitrix24Client, mock: respx.MockRouter, clock: FakeClock
    ) -> None:
        reset_at = int(clock.now) + 500
        timing = {**TIME, "operating": 419.0, "operating_reset_at": reset_at}
        route = mock.post("crm.activity.list").mock(
            side_effect=[ok([], time=timing), self.blocked()]
        )
        other = mock.post("crm.deal.list").mock(return_value=ok([]))
        await client.call("crm.activity.list")

        for _ in range(2):
            with pytest.raises(OperationTimeLimited) as caught:
                await client.call("crm.activity.list")
            assert caught.value.reset_at == reset_at
        await client.call("crm.deal.list")

        assert route.call_count == 2
        assert other.call_count == 1


class TestAgainstTheSandbox:
    async def test_a_write_that_times_out_after_happening_is_not_repeated(
        self, portal: RunningSandbox, wire: Wire, sleeps: Sleeps
    ) -> None:
        portal.http.post(
            "/_sandbox/faults",
            json={
                "method": "crm.deal.add",
                "kind": "timeout_after_write",
                "seconds": 1,
            },
        ).raise_for_status()
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(0.3), event_hooks={"request": [wire.record]}
        ) as http:
            client = Bitrix24Client(
                http, WebhookCredentials(portal.webhook), portal_zone=MOSCOW
            )

            with pytest.raises(WriteOutcomeUnknown):
                await client.call("crm.deal.add", {"fields": {"TITLE": "Intake 77"}})

        deals = portal.result("crm.deal.list", {"filter": {"TITLE": "Intake 77"}})
        assert len(deals) == 1
        assert wire.count("/crm.deal.add") == 1

    async def test_bursts_of_query_limit_errors_create_the_deal_once(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, sleeps: Sleeps
    ) -> None:
        portal.http.post(
            "/_sandbox/faults",
            json={"method": "crm.deal.add", "kind": "error", "times": 2},
        ).raise_for_status()

        deal_id = await webhook_client.call(
            "crm.deal.add", {"fields": {"TITLE": "Intake 78", "OPENED": True}}
        )

        deals = portal.result("crm.deal.list", {"filter": {"TITLE": "Intake 78"}})
        assert [deal["ID"] for deal in deals] == [str(deal_id)]
        assert portal.http.get("/_sandbox/stats").json()["http_by_method"] == {
            "crm.deal.add": 3,
            "crm.deal.list": 1,
        }
        assert len(sleeps.delays) == 2

    async def test_an_html_error_page_on_a_read_is_retried(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        """B24-2: an HTML error page is a retryable transport error."""
        portal.http.post(
            "/_sandbox/faults", json={"method": "server.time", "kind": "html"}
        ).raise_for_status()

        answer = await webhook_client.call("server.time")

        assert answer.startswith("20")
        assert wire.count("/server.time") == 2

    async def test_a_wrong_webhook_code_fails_at_once(
        self, portal: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        client = Bitrix24Client(
            http,
            WebhookCredentials(f"{portal.base_url}/rest/1/wrong-code/"),
            portal_zone=MOSCOW,
        )

        with pytest.raises(InvalidCredentials):
            await client.call("crm.deal.list")

        assert len(wire.requests) == 1

    async def test_a_portal_refusing_connections_gives_a_clear_error_not_a_duplicate(
        self, http: httpx.AsyncClient, wire: Wire, sleeps: TickingSleeps
    ) -> None:
        # Nothing listens on this port: every connection is refused.
        dead = f"http://127.0.0.1:{free_port()}/rest/1/sandbox/"
        client = Bitrix24Client(
            http,
            WebhookCredentials(dead),
            portal_zone=MOSCOW,
            sleep=sleeps,
            clock=sleeps.clock,
            jitter=lambda: 0.0,
        )

        with pytest.raises(Unavailable) as caught:
            await client.call("crm.deal.add", {"fields": {"TITLE": "x"}})

        assert caught.value.sent is False
        # Doubling up to 8 s, the last wait cut to the 60 s deadline, one last try.
        assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, *[8.0] * 6, 4.5]
        assert len(wire.requests) == 12

    async def test_a_method_over_its_operating_time_is_held_back(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        portal.settings(operating_limit_s=0.1)
        portal.http.post(
            "/_sandbox/faults",
            json={"method": "crm.deal.list", "kind": "latency", "seconds": 0.2},
        ).raise_for_status()
        first = await webhook_client.call_envelope("crm.deal.list")

        for _ in range(2):
            with pytest.raises(OperationTimeLimited) as caught:
                await webhook_client.call("crm.deal.list")
            assert caught.value.reset_at == first.time["operating_reset_at"]

        assert wire.count("/crm.deal.list") == 2

    @pytest.mark.slow
    async def test_two_processes_stay_inside_the_portals_bucket(
        self,
        portal: RunningSandbox,
        key_prefix: str,
        redis_factory: Callable[[], Redis],
    ) -> None:
        portal.settings(rate_limit="standard")
        async with (
            httpx.AsyncClient(timeout=10) as api_http,
            httpx.AsyncClient(timeout=10) as worker_http,
        ):
            clients = [
                Bitrix24Client(
                    http,
                    WebhookCredentials(portal.webhook),
                    portal_zone=MOSCOW,
                    limiter=PortalRateLimiter(
                        redis_factory(), "sandbox", key_prefix=key_prefix
                    ),
                )
                for http in (api_http, worker_http)
            ]
            loop = asyncio.get_running_loop()
            started = loop.time()

            answers = await asyncio.gather(
                *(clients[n % 2].call("server.time") for n in range(56))
            )
            elapsed = loop.time() - started

        stats = portal.http.get("/_sandbox/stats").json()
        assert len(answers) == 56
        assert stats["rejected_rate_limit"] == 0
        assert stats["requests"] == 56
        # 7 requests over the 49 the limiter lets through at once, at 2 a second
        assert 2.5 <= elapsed < 10.0
