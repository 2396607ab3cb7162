"""The weekly report's picture: one PNG an owner reads at a glance in the feed.

Left, each manager's revenue of the month so far as a bar with the plan as a black
mark and the share done beside it; right, the week's leads, visits and no-shows.
Words come from `[report.texts]`; managers are sorted by the month's revenue.

Drawn on a `Figure` with an Agg canvas of its own (no pyplot, so nothing global is
shared between calls or threads) in DejaVu Sans, which matplotlib ships and which
has Cyrillic and the rouble sign. The PNG carries no software or time stamp: the
same report gives the same bytes, so a retried post attaches the same image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from app.config import ReportTexts
from app.russian import MONTH_NOMINATIVE
from kpi_engine.result import ManagerResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from kpi_engine.weekly import WeeklyReport

NBSP = "\u00a0"
DPI = 100
WIDTH_IN = 12.0
# Height grows with the team: the title and legends take about 1.9 in, each
# manager's row 0.55 in; a small team still gets a readable 5 in.
BASE_HEIGHT_IN = 1.9
ROW_HEIGHT_IN = 0.55
MIN_HEIGHT_IN = 5.0
FONT = "DejaVu Sans"

REVENUE = "#4c78a8"
PLAN_MET = "#54a24b"
PLAN_MARK = "#1f1f1f"
LEADS = "#9ecae9"
VISITS = "#54a24b"
NO_SHOWS = "#e45756"
MUTED = "#555555"
# Under each panel, in one row, clear of the bars.
LEGEND: dict[str, Any] = {
    "loc": "upper left",
    "bbox_to_anchor": (0, 0),
    "ncols": 3,
    "frameon": False,
    "prop": {"family": FONT, "size": 10},
}


@dataclass(frozen=True)
class ManagerBars:
    """One manager's row on both panels."""

    id: int
    name: str
    revenue: Decimal
    plan: Decimal | None
    leads: int
    visits: int
    no_shows: int


def chart_rows(report: WeeklyReport) -> list[ManagerBars]:
    """Every manager of the week or of its last month, by month revenue, largest
    first (the month the week ends in: the one the plan is being worked on)."""
    week = {row.id: row for row in report.result.managers}
    _, last_month = report.months[-1]
    month = {row.id: row for row in last_month.managers}
    rows = []
    for manager_id in week.keys() | month.keys():
        in_week = week.get(manager_id)
        in_month = month.get(manager_id)
        named = in_week or in_month
        assert named is not None  # the id came from one of the two
        bonus = in_month.bonus if in_month is not None else None
        revenue = in_month.metrics.revenue if in_month is not None else None
        leads, visits, no_shows = _week_counts(in_week)
        rows.append(
            ManagerBars(
                id=manager_id,
                name=named.name or f"#{manager_id}",
                revenue=revenue or Decimal(0),
                plan=bonus.plan if bonus is not None else None,
                leads=leads,
                visits=visits,
                no_shows=no_shows,
            )
        )
    rows.sort(key=lambda row: (-row.revenue, row.name, row.id))
    return rows


def chart_figure(report: WeeklyReport, texts: ReportTexts) -> Figure | None:
    """The report's figure, or None when the week and its month have no manager."""
    # Imported here, not above: matplotlib takes half a second to import (measured:
    # `import kpi_engine.weekly` 1.15 s with it, 0.6 s without), and the API, the
    # CLI and the worker import this module; only a process that draws pays.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = chart_rows(report)
    if not rows:
        return None
    height = max(MIN_HEIGHT_IN, BASE_HEIGHT_IN + ROW_HEIGHT_IN * len(rows))
    figure = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    last_day = report.start + timedelta(days=6)
    figure.suptitle(
        texts.title.format(start=_day(report.start), end=_day(last_day)),
        fontsize=15,
        fontweight="bold",
        fontfamily=FONT,
    )
    revenue_axes, week_axes = figure.subplots(
        1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    month, _ = report.months[-1]
    _revenue_panel(revenue_axes, rows, texts, month)
    _week_panel(week_axes, rows, texts)
    return figure


def chart_png(report: WeeklyReport, texts: ReportTexts) -> bytes | None:
    """The report's chart as PNG bytes, or None when there is nothing to draw."""
    figure = chart_figure(report, texts)
    if figure is None:
        return None
    return png_bytes(figure)


def png_bytes(figure: Figure) -> bytes:
    """The figure as a PNG without metadata that would change between runs."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _revenue_panel(
    axes: Axes, rows: Sequence[ManagerBars], texts: ReportTexts, month: str
) -> None:
    from matplotlib.lines import Line2D  # see chart_figure
    from matplotlib.patches import Patch

    positions = list(range(len(rows)))
    revenue = [float(row.revenue) for row in rows]
    colours = [
        PLAN_MET if row.plan and row.revenue >= row.plan else REVENUE for row in rows
    ]
    axes.barh(positions, revenue, height=0.6, color=colours)
    for position, row in zip(positions, rows, strict=True):
        if row.plan:
            axes.plot(
                [float(row.plan)] * 2,
                [position - 0.42, position + 0.42],
                color=PLAN_MARK,
                linewidth=3,
                solid_capstyle="butt",
            )
    widest = max(max(float(row.plan or 0), float(row.revenue)) for row in rows)
    for position, row in zip(positions, rows, strict=True):
        end = max(float(row.plan or 0), float(row.revenue))
        axes.text(
            end + widest * 0.02,
            position,
            _revenue_label(row, texts),
            va="center",
            fontsize=10,
            color=MUTED,
            fontfamily=FONT,
        )
    axes.set_xlim(0, (widest or 1) * 1.55)
    axes.set_yticks(positions, [row.name for row in rows], fontfamily=FONT)
    axes.invert_yaxis()
    axes.set_title(
        texts.chart_revenue.format(month=_month_name(month)),
        loc="left",
        fontsize=12,
        fontfamily=FONT,
    )
    axes.legend(
        handles=[
            Patch(color=REVENUE, label=texts.revenue),
            Patch(color=PLAN_MET, label=texts.chart_plan_met),
            Line2D([], [], color=PLAN_MARK, linewidth=3, label=texts.plan),
        ],
        **LEGEND,
    )
    _plain(axes)


def _week_panel(axes: Axes, rows: Sequence[ManagerBars], texts: ReportTexts) -> None:
    series = [
        (texts.leads, LEADS, [row.leads for row in rows]),
        (texts.visits, VISITS, [row.visits for row in rows]),
        (texts.no_shows, NO_SHOWS, [row.no_shows for row in rows]),
    ]
    height = 0.26
    widest = max(max(values) for _, _, values in series) or 1
    for index, (label, colour, values) in enumerate(series):
        offset = (index - 1) * height
        positions = [position + offset for position in range(len(rows))]
        axes.barh(positions, values, height=height, color=colour, label=label)
        for position, value in zip(positions, values, strict=True):
            axes.text(
                value + widest * 0.02,
                position,
                str(value),
                va="center",
                fontsize=9,
                color=MUTED,
                fontfamily=FONT,
            )
    axes.set_xlim(0, widest * 1.25)
    axes.set_title(texts.chart_week, loc="left", fontsize=12, fontfamily=FONT)
    axes.legend(**LEGEND)
    axes.tick_params(axis="y", left=False)
    _plain(axes)


def _plain(axes: Axes) -> None:
    """Values are written beside the bars: no x axis, no frame but the left line."""
    axes.set_xticks([])
    for side in ("top", "right", "bottom"):
        axes.spines[side].set_visible(False)
    axes.tick_params(axis="y", labelsize=11)


def _revenue_label(row: ManagerBars, texts: ReportTexts) -> str:
    amount = texts.chart_money.format(amount=_whole(row.revenue))
    if not row.plan:
        return f"{amount} · {texts.chart_no_plan}"
    percent = (row.revenue * 100 / row.plan).quantize(Decimal(1), ROUND_HALF_UP)
    return f"{amount} · {percent}{NBSP}%"


def _week_counts(row: ManagerResult | None) -> tuple[int, int, int]:
    if row is None:
        return 0, 0, 0
    return row.metrics.leads, row.metrics.visits, row.metrics.no_shows


def _whole(amount: Decimal) -> str:
    """`123456.50` → `123 457` (no-break spaces), whole roubles."""
    rounded = amount.quantize(Decimal(1), ROUND_HALF_UP)
    return f"{rounded:,f}".replace(",", NBSP)


def _day(day: date) -> str:
    return day.strftime("%d.%m.%Y")


def _month_name(month: str) -> str:
    year, number = month.split("-")
    return f"{MONTH_NOMINATIVE[int(number) - 1].capitalize()} {year}"
