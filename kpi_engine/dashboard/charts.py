"""The dashboard's four charts as inline SVG, drawn here: no script, no network.

Each chart is a `<figure>`-ready `<svg>` with a `<title>` for screen readers; every
data mark (a bar or a bar segment) has the class `mark` and its own `<title>`, which
the browser shows on hover and the browser test counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from html import escape

from markupsafe import Markup

from app.config import DashboardTexts
from app.russian import day_month
from kpi_engine.dashboard.service import DayLeads, WeekRate
from kpi_engine.rounding import half_up
from kpi_engine.weekly import share_text

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 34, 40
CHANNEL_COLOURS = {
    "telegram": "#2a9fd6",
    "whatsapp": "#2fb45a",
    "phone": "#f0a020",
    "other": "#97a3b4",
}
BAR, WARN, TARGET = "#4a6fd8", "#d9534f", "#888"
NO_SHOW_TARGET = Fraction(1, 10)  # DESIGN.md: no-shows under 10 %


@dataclass(frozen=True)
class FunnelStep:
    """One step of the funnel: its label, count and the deal list behind it."""

    label: str
    count: int
    href: str


def _svg(title: str, body: list[str], *, height: int = HEIGHT) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}">'
        f"<title>{escape(title)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704  every text in it is escaped


def _text(x: float, y: float, text: str, css: str = "", anchor: str = "middle") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{css}">'
        f"{escape(text)}</text>"
    )


def _rect(
    x: float, y: float, w: float, h: float, colour: str, hint: str, css: str = "mark"
) -> str:
    return (
        f'<rect class="{css}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
        f'height="{h:.1f}" fill="{colour}"><title>{escape(hint)}</title></rect>'
    )


def _empty(title: str, texts: DashboardTexts) -> Markup:
    return _svg(title, [_text(WIDTH / 2, HEIGHT / 2, texts.no_data, "muted")])


def _nice_step(value: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) of about a quarter of
    `value`, so that an axis has four or five lines."""
    rough = max(value / 4, 1)
    power = 1.0
    while power * 10 <= rough:
        power *= 10
    return next(
        power * factor for factor in (1, 2, 2.5, 5, 10) if power * factor >= rough
    )


def _axis(highest: int, plot_h: float) -> tuple[float, list[str]]:
    """Grid lines and labels up to the first step at or above `highest`."""
    step = _nice_step(highest)
    top = step * max(1, -(-highest // step))
    body, tick = [], 0.0
    while tick <= top:
        y = TOP + plot_h - plot_h * tick / top
        body.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'class="grid"/>'
        )
        label = f"{tick:g}".replace(".", ",")
        body.append(_text(LEFT - 6, y + 4, label, "tick", "end"))
        tick += step
    return top, body


def leads_chart(days: Sequence[DayLeads], texts: DashboardTexts) -> Markup:
    """Stacked bars: leads created each day, by channel."""
    title = texts.chart_leads
    totals = [sum(day.channels.values()) for day in days]
    if not days or not any(totals):
        return _empty(title, texts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_value, body = _axis(max(totals), plot_h)
    slot = plot_w / len(days)
    body += _legend(texts)
    label_every = max(1, round(len(days) / 10))
    for index, day in enumerate(days):
        x = LEFT + index * slot + slot * 0.12
        y: float = TOP + plot_h
        for channel, colour in CHANNEL_COLOURS.items():
            count = day.channels.get(channel, 0)
            if not count:
                continue
            h = plot_h * count / top_value
            y -= h
            hint = f"{day_month(day.day)}: {texts.channels[channel]} {count}"
            body.append(_rect(x, y, slot * 0.76, h, colour, hint))
        if index % label_every == 0:
            label = day.day.strftime("%d.%m")
            body.append(_text(x + slot * 0.38, TOP + plot_h + 16, label, "tick"))
    return _svg(title, body)


def _legend(texts: DashboardTexts) -> list[str]:
    body, x = [], LEFT
    for channel, colour in CHANNEL_COLOURS.items():
        name = texts.channels[channel]
        body.append(
            f'<rect x="{x}" y="8" width="12" height="12" fill="{colour}" '
            f'class="legend"/>'
        )
        body.append(_text(x + 16, 18, name, "tick", "start"))
        x += 24 + 8 * len(name)
    return body


def funnel_chart(steps: Sequence[FunnelStep], texts: DashboardTexts) -> Markup:
    """Horizontal bars from leads to visits; each links to its deal list."""
    title = texts.chart_funnel
    leads = steps[0].count if steps else 0
    if not leads:
        return _empty(title, texts)
    label_w, row_h = 120, 46
    plot_w = WIDTH - LEFT - label_w - RIGHT - 90
    height = TOP + row_h * len(steps) + 10
    body = []
    for index, step in enumerate(steps):
        y = TOP + index * row_h
        w = max(plot_w * step.count / leads, 1)
        part = share_text(half_up(Fraction(step.count, leads), 4))
        hint = f"{step.label}: {step.count} ({texts.of_leads.format(share=part)})"
        body.append(_text(LEFT + label_w - 8, y + 22, step.label, "label", "end"))
        body.append(
            f'<a href="{escape(step.href)}" class="funnel-link">'
            + _rect(LEFT + label_w, y + 4, w, row_h - 14, BAR, hint)
            + _text(
                LEFT + label_w + w + 8,
                y + 22,
                f"{step.count} · {part}",
                "value",
                "start",
            )
            + "</a>"
        )
    return _svg(title, body, height=height)


def no_show_chart(weeks: Sequence[WeekRate], texts: DashboardTexts) -> Markup:
    """Bars: the share of appointments that ended in a no-show, week by week."""
    title = texts.chart_no_show
    if not any(week.rate is not None for week in weeks):
        return _empty(title, texts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    highest = max(week.rate or Fraction(0) for week in weeks)
    top = max(Fraction(math.ceil(highest * 10), 10), NO_SHOW_TARGET * 2)
    slot = plot_w / len(weeks)
    body = []
    for tick in (Fraction(0), top / 2, top):
        tick_y = float(TOP + plot_h - plot_h * tick / top)
        body.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{tick_y:.1f}" '
            f'y2="{tick_y:.1f}" class="grid"/>'
        )
        body.append(_text(LEFT - 6, tick_y + 4, _percent(tick), "tick", "end"))
    target_y = float(TOP + plot_h - plot_h * NO_SHOW_TARGET / top)
    for index, week in enumerate(weeks):
        x = LEFT + index * slot + slot * 0.2
        last = week.start + timedelta(days=6)
        label = f"{week.start:%d.%m}–{last:%d.%m}"
        body.append(_text(x + slot * 0.3, TOP + plot_h + 16, label, "tick"))
        if week.rate is None:
            body.append(_text(x + slot * 0.3, TOP + plot_h - 6, "—", "value"))
            continue
        h = max(float(plot_h * week.rate / top), 1.0)
        y = TOP + plot_h - h
        colour = WARN if week.rate > NO_SHOW_TARGET else BAR
        hint = f"{label}: {week.no_shows} из {week.no_shows + week.visits}"
        body.append(_rect(x, y, slot * 0.6, h, colour, hint))
        body.append(_text(x + slot * 0.3, y - 5, _percent(week.rate), "value"))
    body.append(
        f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{target_y:.1f}" '
        f'y2="{target_y:.1f}" class="target" stroke="{TARGET}"/>'
    )
    body.append(
        _text(WIDTH - RIGHT, target_y - 4, _percent(NO_SHOW_TARGET), "tick", "end")
    )
    return _svg(title, body)


def _percent(value: Fraction) -> str:
    percent = half_up(value * 100, 1).normalize()
    return f"{percent:f}".replace(".", ",") + "\u00a0%" if percent else "0\u00a0%"


def wait_chart(bins: Sequence[int], texts: DashboardTexts) -> Markup:
    """Bars: inquiries by how long they waited for a first human touch."""
    title = texts.chart_first_response
    if not any(bins):
        return _empty(title, texts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top_value, body = _axis(max(bins), plot_h)
    slot = plot_w / len(bins)
    for index, (count, label) in enumerate(zip(bins, texts.wait_bins, strict=True)):
        x = LEFT + index * slot + slot * 0.15
        h = plot_h * count / top_value
        y = TOP + plot_h - h
        colour = WARN if index == len(bins) - 1 else BAR
        if count:
            body.append(_rect(x, y, slot * 0.7, h, colour, f"{label}: {count}"))
        body.append(_text(x + slot * 0.35, y - 5, str(count), "value"))
        body.append(_text(x + slot * 0.35, TOP + plot_h + 16, label, "tick"))
    return _svg(title, body)
