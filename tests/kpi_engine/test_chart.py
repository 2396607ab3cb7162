"""The weekly chart, drawn from a real week read off a generated portal."""

from __future__ import annotations

import asyncio
import re
import struct
import warnings
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from app.config import BusinessRules, ReportTexts, parse_rules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from kpi_engine.chart import chart_figure, chart_png, chart_rows, png_bytes
from kpi_engine.load import KpiLoader
from kpi_engine.weekly import WeeklyReport, build_report, report_queries
from sandbox.kpi_history import FIRST_MANAGER_ID, HistoryShape, generate
from sandbox.server import SandboxOptions
from tests.kpi_engine.builders import data, rules
from tests.sandbox.conftest import free_port, running_sandbox

MSK = ZoneInfo("Europe/Moscow")
MONDAY = date(2025, 1, 13)
AS_OF = datetime(2025, 1, 20, 9, tzinfo=MSK)
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "leadloop.example.toml"
# Plans for four of the five generated managers; the fifth has none.
PLANS = {
    FIRST_MANAGER_ID: "400000.00",
    FIRST_MANAGER_ID + 1: "120000.00",
    FIRST_MANAGER_ID + 2: "100000.00",
    FIRST_MANAGER_ID + 3: "70000.00",
}
EXAMPLE_MANAGERS = re.compile(r'\[bonus\.managers\."\d+"\]\n(?:\w+ = .*\n)*')
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def salon_rules(extra: str = "") -> BusinessRules:
    """The example configuration (its stages match the generated history) with
    plans for the generated managers instead of the example's own."""
    text = EXAMPLE_MANAGERS.sub("", EXAMPLE.read_text("utf-8"))
    for manager, plan in PLANS.items():
        text += f'\n[bonus.managers."{manager}"]\nplan = "{plan}"\n'
    return parse_rules(text + extra)


def read_week(webhook: str, rules: BusinessRules) -> WeeklyReport:
    """The report of MONDAY's week as the service builds it, off the portal."""

    async def read() -> WeeklyReport:
        async with httpx.AsyncClient() as http:
            client = Bitrix24Client(http, WebhookCredentials(webhook), portal_zone=MSK)
            loaded = await KpiLoader(client, rules).load(*report_queries(MONDAY, AS_OF))
        return build_report(loaded.data, MONDAY, AS_OF, rules)

    return asyncio.run(read())


@pytest.fixture(scope="module")
def portal_webhook() -> Iterator[str]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as portal:
        shape = HistoryShape(
            start=date(2024, 12, 1), end=date(2025, 2, 1), deals=200, activities=800
        )
        portal.load(generate(shape))
        yield portal.webhook


@pytest.fixture(scope="module")
def report(portal_webhook: str) -> WeeklyReport:
    return read_week(portal_webhook, salon_rules())


def words(figure: Figure) -> list[str]:
    return [text.get_text() for text in figure.findobj(Text) if text.get_text()]


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which comes first."""
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def chunk_types(png: bytes) -> list[bytes]:
    types, offset = [], len(PNG_SIGNATURE)
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        types.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return types


class TestTheChartOfARealWeek:
    def test_it_is_a_png_of_the_figures_size_under_150_kb(
        self, report: WeeklyReport
    ) -> None:
        figure = chart_figure(report, salon_rules().report.texts)
        assert figure is not None

        png = png_bytes(figure)

        width, height = figure.get_size_inches() * figure.dpi
        assert png.startswith(PNG_SIGNATURE)
        assert png_size(png) == (round(width), round(height))
        assert png_size(png)[0] == 1200
        assert len(png) < 150_000

    def test_every_manager_of_the_month_has_a_row_largest_revenue_first(
        self, report: WeeklyReport
    ) -> None:
        rows = chart_rows(report)

        [(month, january)] = report.months
        assert month == "2025-01"
        assert {row.name for row in rows} == {m.name for m in january.managers}
        assert [row.revenue for row in rows] == sorted(
            (row.revenue for row in rows), reverse=True
        )
        by_name = {m.name: m for m in january.managers}
        for row in rows:
            assert row.revenue == (by_name[row.name].metrics.revenue or 0)

    def test_the_weeks_bars_are_the_weeks_figures(self, report: WeeklyReport) -> None:
        rows = {row.name: row for row in chart_rows(report)}

        for manager in report.result.managers:
            row = rows[manager.name or f"#{manager.id}"]
            assert (row.leads, row.visits, row.no_shows) == (
                manager.metrics.leads,
                manager.metrics.visits,
                manager.metrics.no_shows,
            )
        assert sum(row.leads for row in rows.values()) == report.result.total.leads

    def test_its_words_are_russian_from_the_configuration(
        self, report: WeeklyReport
    ) -> None:
        figure = chart_figure(report, salon_rules().report.texts)
        assert figure is not None

        shown = words(figure)

        assert "Итоги недели 13.01.2025 – 19.01.2025" in shown
        assert "Январь 2025: выручка с начала месяца и план" in shown
        assert "Неделя: лиды, визиты и неявки" in shown
        legend = {"Выручка", "План выполнен", "План", "Лиды", "Визиты", "Неявки"}
        assert legend <= set(shown)
        assert {row.name for row in chart_rows(report)} <= set(shown)

    def test_each_plan_is_a_mark_at_the_plan_and_its_share_is_written(
        self, report: WeeklyReport
    ) -> None:
        texts = salon_rules().report.texts
        figure = chart_figure(report, texts)
        assert figure is not None
        revenue_axes = figure.axes[0]

        marks = sorted(
            line.get_xdata()[0]  # type: ignore[index]
            for line in revenue_axes.get_lines()
        )

        assert marks == sorted(float(plan) for plan in PLANS.values())
        labels = [t.get_text() for t in revenue_axes.texts]
        assert sum(label.endswith("\u00a0%") for label in labels) == len(PLANS)
        assert sum(label.endswith(" · без плана") for label in labels) == 1
        assert all("₽" in label for label in labels)

    def test_every_letter_has_a_glyph(self, report: WeeklyReport) -> None:
        with warnings.catch_warnings():
            # matplotlib warns "Glyph … missing from font" for a letter it cannot
            # draw, and draws a box instead.
            warnings.simplefilter("error")
            png = chart_png(report, salon_rules().report.texts)

        assert png is not None

    def test_the_same_report_draws_the_same_bytes(
        self, report: WeeklyReport, portal_webhook: str
    ) -> None:
        texts = salon_rules().report.texts
        again = read_week(portal_webhook, salon_rules())

        first, second = chart_png(report, texts), chart_png(again, texts)

        assert first is not None
        assert first == second
        # Nothing but the image itself: no software or time stamp to vary.
        assert chunk_types(first) == [b"IHDR", b"pHYs", b"IDAT", b"IEND"]

    def test_texts_can_be_changed_in_the_configuration(
        self, report: WeeklyReport
    ) -> None:
        custom = ReportTexts(chart_week="За неделю", chart_money="{amount} руб.")
        figure = chart_figure(report, custom)
        assert figure is not None

        shown = words(figure)

        assert "За неделю" in shown
        assert any(text.endswith("руб. · без плана") for text in shown)


class TestAnEmptyWeek:
    def test_with_no_manager_to_show_there_is_no_chart(self) -> None:
        empty = build_report(data(staff=()), date(2025, 1, 6), AS_OF, rules())

        assert chart_rows(empty) == []
        assert chart_png(empty, rules().report.texts) is None

    def test_a_manager_without_figures_gets_zero_bars(self) -> None:
        planned = rules('\n[bonus.managers."17"]\nplan = "1000.00"\n')
        quiet = build_report(data(), date(2025, 1, 6), AS_OF, planned)

        rows = chart_rows(quiet)

        assert [(r.revenue, r.plan, r.leads, r.visits) for r in rows] == [
            (Decimal(0), Decimal("1000.00"), 0, 0)
        ]
        assert chart_png(quiet, planned.report.texts) is not None
