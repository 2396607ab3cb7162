"""The weekly report: its week, its page in the feed, and posting it exactly once."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from arq import Retry
from arq.cron import cron
from pydantic import SecretStr
from redis.asyncio import Redis
from structlog.testing import capture_logs

from app.clients import open_clients
from app.config import BusinessRules
from app.settings import Settings
from app.worker import build_worker
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client, RetryPolicy
from connectors.bitrix24.errors import WriteOutcomeUnknown
from kpi_engine.chart import chart_png
from kpi_engine.data import KpiData
from kpi_engine.period import week_just_ended
from kpi_engine.tasks import WEEKLY_REPORT, retry_delay, weekly_report
from kpi_engine.weekly import (
    FeedPost,
    PostInProgress,
    WeeklyPoster,
    build_report,
    money_text,
    render,
    report_queries,
    share_text,
    week_label,
)
from sandbox.server import SandboxOptions
from tests.kpi_engine.builders import (
    call_out,
    data,
    deal,
    message_out,
    path,
    rules,
)
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.support import REDIS_URL

MSK = ZoneInfo("Europe/Moscow")
MONDAY = date(2025, 1, 6)
POSTED = datetime(2025, 1, 13, 9, tzinfo=MSK)
PLAN = '\n[bonus.managers."17"]\nplan = "10000.00"\n'


def at(text: str) -> str:
    return datetime.fromisoformat(text).replace(tzinfo=MSK).isoformat()


def won(deal_id: int, won_at: str, amount: str, *, contact: int = 0) -> list[Any]:
    """A deal booked the day before and visited (won) at `won_at` for `amount`."""
    visit = datetime.fromisoformat(won_at).replace(tzinfo=MSK)
    booked = (visit - timedelta(days=1)).isoformat()
    return [
        deal(
            id=deal_id,
            created=booked,
            opportunity=amount,
            contact=contact or 7000 + deal_id,
        ),
        path(deal_id, ("NEW", booked), ("BOOKED", booked), ("WON", visit.isoformat())),
    ]


def kpi1_week() -> KpiData:
    """known-faults KPI-1: deals A–D of manager 17, won around the report week."""
    rows = [
        won(1, "2025-01-05 23:59:00", "10000.00"),  # A: the Sunday before
        won(2, "2025-01-06 00:00:00", "20000.00"),  # B: the week's first instant
        won(3, "2025-01-12 23:59:59", "30000.00"),  # C: its last second
        won(4, "2025-01-13 08:30:00", "40000.00"),  # D: Monday, before the post
    ]
    return data(
        deals=[row[0] for row in rows],
        history=[entry for row in rows for entry in row[1]],
    )


class TestTheWeek:
    def test_posted_monday_9_it_is_the_calendar_week_before(self) -> None:
        """KPI-1: posted on Monday at 09:00, the report covers the calendar week."""
        assert week_just_ended(POSTED, rules().zone) == (MONDAY, date(2025, 1, 13))

    def test_at_00_30_monday_the_week_is_the_one_just_ended(self) -> None:
        # 00:30 Moscow is still Sunday in UTC.
        moment = datetime(2025, 1, 12, 21, 30, tzinfo=UTC)
        assert week_just_ended(moment, rules().zone)[0] == MONDAY

    def test_a_week_across_two_months_is_reported_with_both_months(self) -> None:
        week, *months = report_queries(date(2024, 12, 30), POSTED)

        assert (week.start, week.end) == (date(2024, 12, 30), date(2025, 1, 6))
        assert [(m.start, m.end) for m in months] == [
            (date(2024, 12, 1), date(2025, 1, 1)),
            (date(2025, 1, 1), date(2025, 2, 1)),
        ]

    def test_the_label_is_the_iso_week(self) -> None:
        assert week_label(MONDAY) == "2025-W02"
        assert week_label(date(2024, 12, 30)) == "2025-W01"

    def test_kpi_1_only_what_happened_inside_the_week_counts(self) -> None:
        """KPI-1: only deals B and C count: 50,000.00."""
        report = build_report(kpi1_week(), MONDAY, POSTED, rules())

        week = report.result.managers[0]
        assert week.metrics.revenue == 50000  # B and C, not A or D
        assert [item.deal_id for item in week.evidence.revenue] == [2, 3]
        [(month, january)] = report.months
        assert month == "2025-01"
        assert january.managers[0].metrics.revenue == 100000  # all four are January

    def test_a_report_week_starts_on_a_monday(self) -> None:
        with pytest.raises(ValueError, match="Monday"):
            build_report(kpi1_week(), date(2025, 1, 7), POSTED, rules())


class TestThePage:
    def test_the_title_names_the_week_and_ends_in_its_marker(self) -> None:
        post = render(build_report(kpi1_week(), MONDAY, POSTED, rules()), rules())

        assert post.title == "Итоги недели 06.01.2025 – 12.01.2025 (2025-W02)"
        assert post.marker == "(2025-W02)"

    def test_figures_are_those_of_the_report_written_the_russian_way(self) -> None:
        post = render(build_report(kpi1_week(), MONDAY, POSTED, rules()), rules())

        # Two visits of the week, an average check of 25 000.00, none unconfirmed.
        assert "[TD]25\u00a0000,00[/TD]" in post.message
        assert "[TD]100\u00a0000,00[/TD]" in post.message  # January so far
        assert post.message.startswith(
            "Неделя с 06.01.2025 по 12.01.2025 (Europe/Moscow), данные на "
            "13.01.2025 09:00."
        )

    def test_kpi_2_the_payout_in_the_post_is_the_payout_in_json(self) -> None:
        """KPI-2: the post shows the same 37.04 as the report."""
        # 1234.50 over a plan of 0.00 at 3 %: 37.035, half up to 37.04.
        rows = won(1, "2025-01-08 12:00:00", "1234.50")
        month_plan = '\n[bonus.managers."17"]\nplan = "0.00"\n'
        report = build_report(
            data(deals=[rows[0]], history=rows[1]), MONDAY, POSTED, rules(month_plan)
        )

        [(_, january)] = report.months
        assert january.managers[0].bonus is not None
        assert str(january.managers[0].bonus.percent_part) == "37.04"
        message = render(report, rules(month_plan)).message
        assert "[TD]37,04[/TD]" in message

    def test_an_open_months_retention_is_marked_not_final(self) -> None:
        message = render(
            build_report(kpi1_week(), MONDAY, POSTED, rules()), rules()
        ).message

        assert "Вернувшиеся клиенты (удержание ещё не окончательное)" in message

    def test_null_shares_and_money_are_dashes(self) -> None:
        assert money_text(None) == "—"
        assert share_text(None) == "—"
        assert share_text(Decimal("0.3333")) == "33,33\u00a0%"
        assert money_text(Decimal("1234567.50")) == "1\u00a0234\u00a0567,50"

    def test_texts_come_from_the_configuration(self) -> None:
        custom = rules(
            '\n[report.texts]\ntitle = "Неделя {start}—{end}"\n'
            'week_heading = "По людям"\n'
        )
        post = render(build_report(kpi1_week(), MONDAY, POSTED, custom), custom)

        assert post.title == "Неделя 06.01.2025—12.01.2025 (2025-W02)"
        assert "[B]По людям[/B]" in post.message

    def test_the_three_largest_problems_are_listed_largest_first(self) -> None:
        # Five leads of the week: one never answered, one answered after two
        # hours, three at once; one of the week's visits is a no-show.
        created = {n: at(f"2025-01-{n + 6:02d} 10:00:00") for n in range(1, 5)}
        deals = [deal(id=n, created=created[n], contact=100 + n) for n in created]
        history = [row for n in created for row in path(n, ("NEW", created[n]))]
        touches = [
            call_out(id=1, start=at("2025-01-08 12:00:00"), on=(2, 2)),
            message_out(id=2, start=at("2025-01-09 10:01:00"), on=(2, 3)),
            call_out(id=3, start=at("2025-01-10 10:02:00"), on=(2, 4)),
            call_out(id=4, start=at("2025-01-08 12:01:00"), on=(2, 9)),
        ]
        no_show = won(9, "2025-01-09 12:00:00", "100.00")
        no_show[1][-1] = no_show[1][-1].model_copy(update={"stage_id": "NO_SHOW"})
        report = build_report(
            data(
                deals=[*deals, no_show[0]],
                history=[*history, *no_show[1]],
                activities=touches,
            ),
            MONDAY,
            POSTED,
            rules(),
        )

        assert [problem.kind for problem in report.problems] == [
            "unanswered",
            "slowest",
            "no_shows",
        ]
        unanswered, slowest, no_shows = (p.text for p in report.problems)
        assert unanswered == "Лиды без ответа человека: 1 из 5 (сделка 1)"
        assert slowest == (
            "Ответ позже 15 рабочих минут: 1 из 5; дольше всех ждали: "
            "сделка 2 — 2 ч 00 мин (Анна М17)"
        )
        assert no_shows == "Записи на неделю: 1, из них неявки: 1 (сделка 9)"

    def test_warnings_of_the_week_and_months_are_merged_per_kind(self) -> None:
        rows = won(1, "2025-01-08 12:00:00", "100.00")
        without_contact = rows[0].model_copy(update={"contact_id": None})
        report = build_report(
            data(deals=[without_contact], history=rows[1]), MONDAY, POSTED, rules()
        )

        message = render(report, rules()).message
        warnings = message.split("[B]Предупреждения о данных[/B]\n")[1]
        assert warnings.count("Сделки без контакта") == 1
        assert "Сделки без контакта не участвуют в удержании: сделка 1" in warnings
        assert "Нет плана: процент от выручки не начисляется: Анна М17" in warnings


class TestTheChartOnThePage:
    def test_the_post_carries_the_weeks_chart_as_one_png(self) -> None:
        report = build_report(kpi1_week(), MONDAY, POSTED, rules(PLAN))

        post = render(report, rules(PLAN))

        [chart] = post.files
        assert chart.name == "итоги-недели-2025-W02.png"
        assert chart.content == chart_png(report, rules(PLAN).report.texts)
        assert chart.content.startswith(b"\x89PNG\r\n\x1a\n")

    def test_the_files_name_comes_from_the_configuration(self) -> None:
        custom = rules('\n[report.texts]\nchart_file = "kpi-{week}.png"\n')

        post = render(build_report(kpi1_week(), MONDAY, POSTED, custom), custom)

        assert [file.name for file in post.files] == ["kpi-2025-W02.png"]

    def test_a_week_without_managers_is_posted_without_a_chart(self) -> None:
        empty = build_report(data(staff=()), MONDAY, POSTED, rules())

        post = render(empty, rules())

        assert post.files == ()
        assert "Заметных проблем нет." in post.message


# -- posting --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feed_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as portal:
        yield portal


@pytest.fixture
def feed(feed_server: RunningSandbox) -> RunningSandbox:
    feed_server.reset()
    return feed_server


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:weekly"


@pytest.fixture
async def cleanup(redis: Redis, prefix: str) -> AsyncIterator[None]:
    yield
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)


def client_on(
    feed: RunningSandbox, http: httpx.AsyncClient, attempts: int = 1
) -> Bitrix24Client:
    async def no_sleep(seconds: float) -> None:
        return None

    return Bitrix24Client(
        http,
        WebhookCredentials(feed.webhook),
        portal_zone=MSK,
        retry=RetryPolicy(attempts=attempts),
        sleep=no_sleep,
    )


POST = FeedPost(
    title="Итоги недели 06.01.2025 – 12.01.2025 (2025-W02)",
    message="[B]Неделя[/B]",
    marker="(2025-W02)",
)


async def build_post() -> FeedPost:
    return POST


def old_post(number: int) -> dict[str, Any]:
    """A colleague's feed post of 2024, as `log.blogpost.get` shows it."""
    return {
        "ID": str(number),
        "BLOG_ID": "1",
        "PUBLISH_STATUS": "P",
        "TITLE": f"Новости {number}",
        "AUTHOR_ID": "1",
        "MICRO": "N",
        "DETAIL_TEXT": "…",
        "DATE_PUBLISH": at(f"2024-06-01 10:{number % 60:02d}:00"),
    }


def posts(feed: RunningSandbox) -> list[dict[str, Any]]:
    return list(feed.result("log.blogpost.get"))


def adds(feed: RunningSandbox) -> int:
    stats = feed.http.get("/_sandbox/stats").json()
    return int(stats["by_method"].get("log.blogpost.add", 0))


@pytest.mark.usefixtures("cleanup")
class TestPostingOnce:
    async def test_the_post_goes_to_the_configured_recipients_once(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            first = await poster.post("2025-W02", build_post, ["DR1", "U1"])
            again = await poster.post("2025-W02", build_post, ["DR1", "U1"])

        assert first.created
        assert not again.created
        assert again.post_id == first.post_id
        assert [p["TITLE"] for p in posts(feed)] == [POST.title]
        snapshot = feed.http.get("/_sandbox/snapshot").json()
        assert snapshot["blogposts"][0]["DETAIL_TEXT"] == POST.message
        assert adds(feed) == 1

    async def test_two_workers_at_once_post_one_report(
        self, feed: RunningSandbox, prefix: str
    ) -> None:
        async def worker() -> str:
            redis = Redis.from_url(REDIS_URL)
            try:
                async with httpx.AsyncClient() as http:
                    poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
                    try:
                        await poster.post("2025-W02", build_post, ["UA"])
                    except PostInProgress:
                        return "in progress"
                    return "posted"
            finally:
                await redis.aclose()

        outcomes = await asyncio.gather(worker(), worker())

        assert sorted(outcomes) in (["in progress", "posted"], ["posted", "posted"])
        assert len(posts(feed)) == 1

    async def test_a_failed_post_is_retried_and_posted_once(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        # An HTML error page from the portal's front end: nothing was posted, but
        # the client cannot know that.
        feed.http.post(
            "/_sandbox/faults",
            json={"method": "log.blogpost.add", "kind": "html", "times": 1},
        ).raise_for_status()
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            with pytest.raises(WriteOutcomeUnknown):
                await poster.post("2025-W02", build_post, ["UA"])
            retried = await poster.post("2025-W02", build_post, ["UA"])

        assert retried.created
        assert len(posts(feed)) == 1
        assert adds(feed) == 2  # the failed attempt, then the post

    async def test_a_post_whose_answer_was_lost_is_found_not_doubled(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        # The portal posts, then answers too late for the client's timeout.
        feed.http.post(
            "/_sandbox/faults",
            json={
                "method": "log.blogpost.add",
                "kind": "timeout_after_write",
                "seconds": 2,
                "times": 1,
            },
        ).raise_for_status()
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            with pytest.raises(WriteOutcomeUnknown):
                await poster.post("2025-W02", build_post, ["UA"])
            found = await poster.post("2025-W02", build_post, ["UA"])

        [post] = posts(feed)
        assert not found.created
        assert found.post_id == int(post["ID"])
        assert adds(feed) == 1
        assert await poster.posted("2025-W02") == found.post_id

    async def test_the_lookup_stops_at_posts_older_than_the_first_attempt(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        feed.load({"blogposts": [old_post(number) for number in range(1, 121)]})
        await redis.set(f"{prefix}:2025-W02:attempt", repr(time.time()))
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            posted = await poster.post("2025-W02", build_post, ["UA"])

        assert posted.created
        stats = feed.http.get("/_sandbox/stats").json()["by_method"]
        assert stats["log.blogpost.get"] == 1  # page 1 ends in a post of 2024: stop
        assert posts(feed)[0]["TITLE"] == POST.title

    async def test_the_lookup_reads_further_pages_for_the_marker(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        ours = {
            **old_post(1),
            "TITLE": POST.title,
            "DATE_PUBLISH": at("2025-01-13 09:00:05"),
        }
        recent = [
            {**old_post(n), "DATE_PUBLISH": at("2025-01-13 10:00:00")}
            for n in range(2, 62)
        ]
        feed.load({"blogposts": [ours, *recent]})
        since = datetime(2025, 1, 13, 9, tzinfo=MSK).timestamp()
        await redis.set(f"{prefix}:2025-W02:attempt", repr(since))
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            posted = await poster.post("2025-W02", build_post, ["UA"])

        assert (posted.post_id, posted.created) == (1, False)
        assert adds(feed) == 0
        assert feed.http.get("/_sandbox/stats").json()["by_method"] == {
            "log.blogpost.get": 2
        }

    async def test_a_posted_week_is_remembered_without_expiry(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            await poster.post("2025-W02", build_post, ["UA"])

        assert await redis.ttl(f"{prefix}:2025-W02:post") == -1
        assert not await redis.exists(f"{prefix}:2025-W02:lease")

    async def test_a_held_lease_means_another_process_is_posting(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        await redis.set(f"{prefix}:2025-W02:lease", "someone-else", px=60_000)
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            with pytest.raises(PostInProgress):
                await poster.post("2025-W02", build_post, ["UA"])

        assert posts(feed) == []


@functools.cache
def chart_post() -> FeedPost:
    """The KPI-1 week's post, with its chart."""
    return render(build_report(kpi1_week(), MONDAY, POSTED, rules(PLAN)), rules(PLAN))


async def build_chart_post() -> FeedPost:
    return chart_post()


def attached(feed: RunningSandbox) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = feed.http.get("/_sandbox/feed/files").json()["files"]
    return files


def file_bytes(feed: RunningSandbox, attached_id: int) -> bytes:
    response = feed.http.get(f"/_sandbox/feed/files/{attached_id}")
    response.raise_for_status()
    return response.content


@pytest.mark.usefixtures("cleanup")
class TestPostingTheChart:
    async def test_the_chart_goes_as_a_name_and_base64_pair(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        bodies: list[bytes] = []

        async def keep(request: httpx.Request) -> None:
            bodies.append(request.content)

        async with httpx.AsyncClient(event_hooks={"request": [keep]}) as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            await poster.post("2025-W02", build_chart_post, ["UA"])

        [sent] = [json.loads(body) for body in bodies]
        [chart] = chart_post().files
        assert sent["FILES"] == [
            [chart.name, base64.b64encode(chart.content).decode("ascii")]
        ]

    async def test_the_feed_entry_carries_exactly_the_rendered_image(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            posted = await poster.post("2025-W02", build_chart_post, ["UA"])

        [entry] = feed.result("log.blogpost.get", {"POST_ID": posted.post_id})
        [file_id] = entry["FILES"]
        assert entry["UF_BLOG_POST_FILE"]["VALUE"] == [file_id]
        assert entry["HAS_PROPS"] == "Y"
        [chart] = chart_post().files
        assert file_bytes(feed, file_id) == chart.content
        assert attached(feed) == [
            {
                "id": file_id,
                "object_id": 1,
                "post_id": posted.post_id,
                "name": "итоги-недели-2025-W02.png",
                "size": len(chart.content),
            }
        ]

    async def test_posting_twice_makes_one_post_with_one_image(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            first = await poster.post("2025-W02", build_chart_post, ["UA"])
            again = await poster.post("2025-W02", build_chart_post, ["UA"])

        assert again.post_id == first.post_id
        assert len(posts(feed)) == 1
        assert [file["post_id"] for file in attached(feed)] == [first.post_id]

    async def test_a_failed_post_is_retried_with_its_image(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        feed.http.post(
            "/_sandbox/faults",
            json={"method": "log.blogpost.add", "kind": "html", "times": 1},
        ).raise_for_status()
        async with httpx.AsyncClient() as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            with pytest.raises(WriteOutcomeUnknown):
                await poster.post("2025-W02", build_chart_post, ["UA"])
            retried = await poster.post("2025-W02", build_chart_post, ["UA"])

        [entry] = posts(feed)
        [file] = attached(feed)
        assert (entry["FILES"], file["post_id"]) == ([file["id"]], retried.post_id)
        assert file_bytes(feed, file["id"]) == chart_post().files[0].content

    async def test_a_lost_answer_is_found_with_its_image_not_doubled(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        feed.http.post(
            "/_sandbox/faults",
            json={
                "method": "log.blogpost.add",
                "kind": "timeout_after_write",
                "seconds": 2,
                "times": 1,
            },
        ).raise_for_status()
        async with httpx.AsyncClient(timeout=httpx.Timeout(0.5)) as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            with pytest.raises(WriteOutcomeUnknown):
                await poster.post("2025-W02", build_chart_post, ["UA"])
            found = await poster.post("2025-W02", build_chart_post, ["UA"])

        assert not found.created
        assert adds(feed) == 1
        [file] = attached(feed)
        assert file["post_id"] == found.post_id

    async def test_a_post_without_a_chart_sends_no_files(
        self, feed: RunningSandbox, redis: Redis, prefix: str
    ) -> None:
        bodies: list[bytes] = []

        async def keep(request: httpx.Request) -> None:
            bodies.append(request.content)

        async with httpx.AsyncClient(event_hooks={"request": [keep]}) as http:
            poster = WeeklyPoster(client_on(feed, http), redis, prefix=prefix)
            await poster.post("2025-W02", build_post, ["UA"])

        assert "FILES" not in json.loads(bodies[0])
        [entry] = posts(feed)
        assert (entry["HAS_PROPS"], "FILES" in entry) == ("N", False)
        assert attached(feed) == []


# -- the cron -----------------------------------------------------------------------


class TestCron:
    def test_it_runs_monday_9_00_business_time_whatever_the_server_zone(
        self,
    ) -> None:
        """Q-3: the weekly cron is due at 09:00 Moscow, tz-aware."""
        job = dataclasses.replace(WEEKLY_REPORT)  # the worker's own stays untouched
        # 08:59 Moscow is 05:59 UTC: not yet; the next run is 09:00 Moscow.
        job.calculate_next(datetime(2025, 1, 13, 5, 59, tzinfo=UTC).astimezone(MSK))
        assert job.next_run == datetime(2025, 1, 13, 9, 0, tzinfo=MSK)
        assert job.next_run.utcoffset() == timedelta(hours=3)
        # Just after a run the next one is a week later, still tz-aware.
        job.calculate_next(datetime(2025, 1, 13, 9, 0, 1, tzinfo=MSK))
        assert job.next_run == datetime(2025, 1, 20, 9, 0, tzinfo=MSK)

    async def test_the_worker_registers_it_in_the_business_zone(self) -> None:
        """Q-3: the worker runs the weekly cron in Europe/Moscow."""
        settings = Settings(_env_file=None, redis_url=REDIS_URL)
        worker = build_worker(settings, BusinessRules(), handle_signals=False)
        try:
            names = [job.name for job in worker.cron_jobs]
            assert names.count("kpi.weekly_report") == 1
            assert worker.timezone == MSK
        finally:
            await worker.close()

    @pytest.mark.parametrize("process_zone", ["UTC", "Pacific/Auckland"])
    async def test_the_process_zone_changes_nothing(
        self, monkeypatch: pytest.MonkeyPatch, process_zone: str
    ) -> None:
        """Q-3: a container on UTC (or anywhere) still posts Monday 09:00 Moscow."""
        monkeypatch.setenv("TZ", process_zone)
        time.tzset()
        try:
            assert datetime.now().astimezone().tzinfo != MSK  # arq's default zone
            settings = Settings(_env_file=None, redis_url=REDIS_URL)
            worker = build_worker(settings, BusinessRules(), handle_signals=False)
            try:
                assert worker.timezone == MSK
                [job] = [
                    dataclasses.replace(job)
                    for job in worker.cron_jobs
                    if job.name == "kpi.weekly_report"
                ]
                # As arq asks: "now" in the worker's zone, whatever the process's.
                job.calculate_next(datetime.now(tz=worker.timezone))
            finally:
                await worker.close()
        finally:
            monkeypatch.undo()  # TZ as it was, for the rest of the run
            time.tzset()

        assert job.next_run is not None
        assert job.next_run.tzinfo == MSK
        assert (job.next_run.weekday(), job.next_run.hour, job.next_run.minute) == (
            0,
            9,
            0,
        )
        assert job.next_run - datetime.now(UTC) <= timedelta(days=7)

    def test_retries_back_off_to_half_an_hour(self) -> None:
        delays = [retry_delay(job_try) for job_try in range(1, 9)]
        assert delays[:3] == [timedelta(minutes=m) for m in (1, 2, 4)]
        assert delays[-1] == timedelta(minutes=30)

    async def test_two_workers_running_the_cron_post_once(
        self, feed: RunningSandbox, redis: Redis
    ) -> None:
        settings = Settings(
            _env_file=None,
            redis_url=REDIS_URL,
            bitrix24_webhook_url=SecretStr(feed.webhook),
        )
        business = BusinessRules()
        now = datetime.now(MSK)
        week = week_label(week_just_ended(now, business.zone)[0])
        queue = f"test:{uuid.uuid4().hex}"
        # Room for both workers to start before the run time, even on a busy machine.
        soon = (now + timedelta(seconds=4)).replace(microsecond=0)
        line = cron(
            weekly_report,
            # arq's cron job id is the name and the run time, outside any queue: a
            # name of the test's own, so that another run at the same second (a
            # second checkout's tests on this Redis) cannot take this run's job.
            name=f"kpi.weekly_report.{queue}",
            second=soon.second,
            microsecond=0,
            max_tries=1,
        )
        workers = [
            build_worker(
                settings,
                business,
                queue_name=queue,
                cron_jobs=[line],
                handle_signals=False,
                poll_delay=0.05,
            )
            for _ in range(2)
        ]
        runs = [asyncio.create_task(worker.main()) for worker in workers]
        try:
            await _until(lambda: len(posts(feed)) == 1, seconds=15)
            await asyncio.sleep(1.5)  # room for a second post, were there one
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            for worker in workers:
                await worker.close()
            keys = [
                k async for k in redis.scan_iter(match=f"leadloop:kpi:weekly:{week}:*")
            ]
            keys += [k async for k in redis.scan_iter(match=f"{queue}*")]
            if keys:
                await redis.delete(*keys)

        [post] = posts(feed)
        assert post["TITLE"].endswith(f"({week})")
        assert adds(feed) == 1
        assert sum(worker.jobs_complete for worker in workers) == 1


class TestTheJobOnABadPortal:
    """The job itself (`weekly_report`) when the portal cannot be read."""

    UNTRUSTED_PAGES: ClassVar[dict[str, Any]] = {
        "result": {
            # Rows out of id order, on every batch: no pull can prove it saw all.
            "result": {"p0": [{"ID": "2"}, {"ID": "1"}]},
            "result_error": [],
            "result_total": [],
            "result_next": [],
            "result_time": [],
        },
        "time": {},
    }

    @pytest.fixture
    async def ctx(
        self, feed: RunningSandbox, redis: Redis
    ) -> AsyncIterator[dict[str, Any]]:
        settings = Settings(
            _env_file=None,
            redis_url=REDIS_URL,
            bitrix24_webhook_url=SecretStr(feed.webhook),
        )
        clients = open_clients(REDIS_URL)
        scheduled = datetime.now(UTC)
        week = week_label(week_just_ended(scheduled, MSK)[0])
        try:
            yield {
                "settings": settings,
                "rules": BusinessRules(),
                "clients": clients,
                "enqueue_time": scheduled,
                "job_try": 1,
            }
        finally:
            await clients.aclose()
            keys = [
                k async for k in redis.scan_iter(match=f"leadloop:kpi:weekly:{week}:*")
            ]
            if keys:
                await redis.delete(*keys)

    async def test_a_pull_that_cannot_be_trusted_posts_nothing_and_is_retried(
        self, feed: RunningSandbox, ctx: dict[str, Any]
    ) -> None:
        """B24-1: no KPI from a short pull; the job comes back and then posts once."""
        feed.http.post(
            "/_sandbox/faults",
            json={
                "method": "batch",
                "kind": "status",
                "status": 200,
                "body": self.UNTRUSTED_PAGES,
                "times": 1000,
            },
        ).raise_for_status()

        with capture_logs() as logs, pytest.raises(Retry) as retried:
            await weekly_report(ctx)

        assert retried.value.defer_score == 60_000  # ms: the first retry, 1 minute
        assert posts(feed) == []
        assert adds(feed) == 0
        assert [
            line["error"] for line in logs if line["event"] == "kpi.weekly_retry"
        ] == ["IncompletePull"]
        # The portal reads again: the retry posts the report, once.
        feed.http.delete("/_sandbox/faults").raise_for_status()
        post_id = await weekly_report({**ctx, "job_try": 2})
        assert post_id is not None
        assert len(posts(feed)) == 1


async def _until(condition: Any, *, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.1)
