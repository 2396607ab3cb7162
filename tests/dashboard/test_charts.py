"""The SVG charts and the Russian number formats, without a browser."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date
from decimal import Decimal

from app.config import BusinessRules
from kpi_engine.dashboard.charts import (
    FunnelStep,
    funnel_chart,
    leads_chart,
    no_show_chart,
    wait_chart,
)
from kpi_engine.dashboard.service import DayLeads, WeekRate
from kpi_engine.dashboard.views import money

SVG = "{http://www.w3.org/2000/svg}"
TEXTS = BusinessRules().dashboard.texts


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314  the charts' own output, not a reader's


def marks(svg: str) -> list[ET.Element]:
    rects = parse(svg).iter(f"{SVG}rect")
    return [rect for rect in rects if rect.get("class") == "mark"]


def hint(mark: ET.Element) -> str | None:
    return mark.findtext(f"{SVG}title")


def texts_of(svg: str) -> list[str]:
    return [text.text or "" for text in parse(svg).iter(f"{SVG}text")]


class TestCharts:
    def test_a_day_draws_one_segment_per_channel_it_had(self) -> None:
        days = [
            DayLeads(date(2026, 11, 2), {"telegram": 3, "phone": 1}),
            DayLeads(date(2026, 11, 3), {"whatsapp": 2}),
        ]

        drawn = marks(leads_chart(days, TEXTS))

        assert len(drawn) == 3
        hints = [hint(rect) for rect in drawn]
        assert hints == [
            "2 ноября: Telegram 3",
            "2 ноября: Телефон 1",
            "3 ноября: WhatsApp 2",
        ]

    def test_without_leads_the_chart_says_so_and_draws_nothing(self) -> None:
        svg = leads_chart([DayLeads(date(2026, 11, 2), {})], TEXTS)

        assert marks(svg) == []
        assert TEXTS.no_data in texts_of(svg)

    def test_funnel_bars_link_to_their_lists_with_shares_of_leads(self) -> None:
        steps = [
            FunnelStep("Лиды", 8, "/dashboard/deals?metric=leads&from=x"),
            FunnelStep("Пришли", 2, "/dashboard/deals?metric=visited_leads&from=x"),
        ]

        svg = funnel_chart(steps, TEXTS)

        links = [a.get("href") for a in parse(svg).iter(f"{SVG}a")]
        assert links == [step.href for step in steps]
        assert "2 · 25,00\u00a0%" in texts_of(svg)

    def test_a_week_without_outcomes_shows_a_dash_and_high_weeks_are_red(self) -> None:
        weeks = [
            WeekRate(date(2026, 11, 2), no_shows=0, visits=0),
            WeekRate(date(2026, 11, 9), no_shows=3, visits=17),
            WeekRate(date(2026, 11, 16), no_shows=1, visits=19),
        ]

        svg = no_show_chart(weeks, TEXTS)

        assert [rect.get("fill") for rect in marks(svg)] == ["#d9534f", "#4a6fd8"]
        assert {"—", "15\u00a0%", "5\u00a0%"} <= set(texts_of(svg))

    def test_first_response_bins_show_their_counts(self) -> None:
        svg = wait_chart([5, 3, 0, 1, 0, 2], TEXTS)

        assert len(marks(svg)) == 4
        assert hint(marks(svg)[-1]) == "без ответа: 2"


class TestMoney:
    def test_roubles_are_grouped_with_a_comma_and_the_sign(self) -> None:
        assert money(Decimal("1234.56")) == "1\u00a0234,56\u00a0₽"

    def test_another_currency_keeps_its_code(self) -> None:
        assert money(Decimal("50.00"), "USD") == "50,00\u00a0USD"

    def test_nothing_is_a_dash(self) -> None:
        assert money(None) == "—"
