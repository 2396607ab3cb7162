"""The dashboard in a real headless Chromium: it loads, its numbers are `/api/kpi`'s,
its charts render, every number opens the rows behind it, the console stays clean,
and in production it takes the admin token first."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.dashboard.conftest import MONTH, TOKEN, RunningApi

CHARTS = ("leads", "funnel", "no_show", "first_response")
PERIODS = {
    "a closed month": MONTH,
    "a week": {"from": "2025-01-06", "to": "2025-01-13", "as_of": MONTH["as_of"]},
    # The bonus so far: a month seen in its middle.
    "a month in progress": {
        "from": "2025-02-01",
        "to": "2025-03-01",
        "as_of": "2025-02-14T18:30:00+03:00",
    },
}


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.expected: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"{message.type}: {message.text}")


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(
        locale="ru-RU", viewport={"width": 1440, "height": 900}
    )
    watched = Watched(context.new_page())
    yield watched
    context.close()
    assert watched.problems == watched.expected


def api_kpi(api: RunningApi, period: dict[str, str]) -> dict[str, Any]:
    response = httpx.get(
        f"{api.base_url}/api/kpi",
        params=period,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def shown(text: str) -> Decimal | None:
    """A number as the page writes it ("1 234,50 ₽", "33,33 %", "12,5", "—")."""
    text = text.replace("\u00a0", "").replace(" ", "").replace("₽", "").strip()
    if text == "—":
        return None
    if text.endswith("%"):
        return Decimal(text[:-1].replace(",", ".")) / 100
    return Decimal(text.replace(",", "."))


def in_json(row: dict[str, Any], path: str) -> Decimal | None:
    value: Any = row
    for key in path.split("."):
        value = None if value is None else value[key]
    if value is None:
        return None
    return Decimal(str(value))


def page_figures(page: Page) -> dict[str, dict[str, Decimal | None]]:
    """Every manager row's numbers by metric path, as the tables show them."""
    cells = page.locator("table.figures td[data-metric]").evaluate_all(
        """cells => cells.map(cell => [
            cell.parentElement.dataset.manager, cell.dataset.metric, cell.innerText
        ])"""
    )
    figures: dict[str, dict[str, Decimal | None]] = {}
    for manager, metric, text in cells:
        if metric != "plan_progress" and text:
            figures.setdefault(manager, {})[metric] = shown(text)
    return figures


def open_dashboard(watched: Watched, api: RunningApi, period: dict[str, str]) -> Page:
    page = watched.page
    response = page.goto(f"{api.base_url}/dashboard?{urlencode(period)}")
    assert response is not None
    assert response.status == 200
    return page


class TestDashboardInChromium:
    def test_it_loads_in_russian_with_both_tables(
        self, watched: Watched, local_api: RunningApi
    ) -> None:
        page = open_dashboard(watched, local_api, MONTH)

        assert page.title() == "Показатели продаж · leadloop"
        assert page.locator("html").get_attribute("lang") == "ru"
        assert page.locator("table.figures").count() == 2
        assert "01.01.2025 – 31.01.2025" in page.locator("#period-line").inner_text()

    @pytest.mark.parametrize("period", list(PERIODS))
    def test_every_number_equals_the_api_for_the_same_period(
        self, watched: Watched, local_api: RunningApi, period: str
    ) -> None:
        figures = page_figures(open_dashboard(watched, local_api, PERIODS[period]))
        expected = api_kpi(local_api, PERIODS[period])

        managers = {row["id"]: row for row in expected["managers"]}
        assert set(figures) == {*managers, "total"}
        compared = 0
        for manager, shown_figures in figures.items():
            row = expected["total"] if manager == "total" else managers[manager]
            for metric, value in shown_figures.items():
                assert value == in_json(row, metric), (manager, metric)
                compared += 1
        # Per manager 16 activity and 6 money figures (plan and bonus included); the
        # total row has no plan or bonus.
        assert compared == 22 * len(managers) + 20
        assert expected["total"]["leads"] > 0
        # Plan and bonus are a calendar month's only, compared above when there.
        assert (managers["10"]["bonus"] is not None) == (period != "a week")

    def test_each_chart_renders_with_data_marks(
        self, watched: Watched, local_api: RunningApi
    ) -> None:
        page = open_dashboard(watched, local_api, MONTH)

        for name in CHARTS:
            chart = page.locator(f'figure[data-chart="{name}"] svg.chart')
            box = chart.bounding_box()
            assert box is not None, name
            assert box["width"] > 300, name
            assert box["height"] > 100, name
            assert chart.locator(".mark").count() > 0, name
        days = page.locator('figure[data-chart="leads"] rect.mark')
        assert days.count() >= 31  # every day of January has leads of some channel

    @pytest.mark.parametrize(
        ("metric", "card"),
        [("visits", "/crm/deal/details/"), ("leads", "/crm/deal/details/"),
         ("calls", "/crm/")],
    )  # fmt: skip
    def test_a_number_opens_the_rows_behind_it(
        self, watched: Watched, local_api: RunningApi, metric: str, card: str
    ) -> None:
        page = open_dashboard(watched, local_api, MONTH)
        cell = page.locator(f'tr[data-manager="10"] td[data-metric="{metric}"] a')
        number = int(cell.inner_text())

        cell.click()
        page.wait_for_load_state()

        assert "/dashboard/deals?" in page.url
        count = page.locator("#row-count").get_attribute("data-count")
        assert int(count or -1) == number
        assert page.locator("table.deals tbody tr").count() == number
        link = page.locator("table.deals tbody tr").first.locator("a").first
        portal = local_api.settings.bitrix24_webhook_url
        assert portal is not None
        base = portal.get_secret_value().removesuffix("/rest/1/sandbox/")
        assert (link.get_attribute("href") or "").startswith(base + card)

    def test_the_funnel_opens_the_leads_that_came(
        self, watched: Watched, local_api: RunningApi
    ) -> None:
        page = open_dashboard(watched, local_api, MONTH)
        bars = page.locator('figure[data-chart="funnel"] a')
        assert bars.count() == 4
        came = (bars.nth(3).locator("text").text_content() or "").split(" ")[0]

        bars.nth(3).click()
        page.wait_for_load_state()

        assert page.locator("table.deals tbody tr").count() == int(came)

    def test_the_month_picker_shows_another_month(
        self, watched: Watched, local_api: RunningApi
    ) -> None:
        page = open_dashboard(watched, local_api, MONTH)

        page.locator('input[name="month"]').fill("2024-12")
        page.locator('input[name="month"] >> xpath=../../button').click()
        page.wait_for_load_state()

        assert "01.12.2024 – 31.12.2024" in page.locator("#period-line").inner_text()


class TestDashboardInProduction:
    def test_without_a_session_it_asks_for_the_token(
        self, watched: Watched, production_api: RunningApi
    ) -> None:
        page = watched.page
        response = page.goto(f"{production_api.base_url}/dashboard?{urlencode(MONTH)}")

        assert response is not None
        assert response.status == 200
        assert response.request.redirected_from is not None
        assert response.request.redirected_from.url.endswith(urlencode(MONTH))
        assert page.url.startswith(f"{production_api.base_url}/dashboard/login?next=")
        assert page.locator('input[name="token"]').is_visible()
        assert page.locator("table.figures").count() == 0

    def test_a_script_without_a_token_gets_401(
        self, production_api: RunningApi
    ) -> None:
        response = httpx.get(f"{production_api.base_url}/dashboard", params=MONTH)

        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"

    def test_a_bearer_token_is_enough(self, production_api: RunningApi) -> None:
        response = httpx.get(
            f"{production_api.base_url}/dashboard",
            params=MONTH,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )

        assert response.status_code == 200
        assert 'data-metric="leads"' in response.text

    def test_the_token_opens_it_and_sets_a_strict_cookie(
        self, watched: Watched, production_api: RunningApi
    ) -> None:
        page = watched.page
        page.goto(f"{production_api.base_url}/dashboard?{urlencode(MONTH)}")

        page.locator('input[name="token"]').fill(TOKEN)
        with page.expect_navigation():
            page.locator('form[action="/dashboard/login"] button').click()

        assert page.locator("table.figures").count() == 2
        assert "01.01.2025" in page.locator("#period-line").inner_text()
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["secure"] is True
        assert TOKEN not in cookie["value"]

    def test_a_wrong_token_is_refused(
        self, watched: Watched, production_api: RunningApi
    ) -> None:
        page = watched.page
        page.goto(f"{production_api.base_url}/dashboard/login")

        page.locator('input[name="token"]').fill(TOKEN + "x")
        with page.expect_navigation():
            page.locator('form[action="/dashboard/login"] button').click()

        assert page.locator("#login-failed").is_visible()
        assert page.context.cookies() == []
        # The refusal is a 401, which Chromium reports on the console.
        watched.expected = [
            "error: Failed to load resource: the server responded with a status of "
            "401 (Unauthorized)"
        ]
