"""The dashboard's tables and deal lists as rows of display-ready cells.

Numbers are written the Russian way by the weekly report's own formatters ("1 234,50
₽", "33,33 %", "12,5"), so the post and the dashboard never disagree on a figure.
Each cell names its metric by its path in `/api/kpi`'s JSON (`first_response.p90_min`,
`bonus.payout`) in `data-metric`, and links to the rows behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from functools import partial
from operator import attrgetter
from typing import ClassVar
from urllib.parse import urlencode, urlsplit

from app.config import BusinessRules, DashboardTexts, ReportTexts
from app.settings import Settings
from kpi_engine.dashboard.charts import FunnelStep
from kpi_engine.dashboard.service import channel_of
from kpi_engine.data import KpiQuery
from kpi_engine.drilldown import METRIC_ROWS, Drilldown
from kpi_engine.facts import role_map
from kpi_engine.result import KpiResult, ManagerResult, Metrics
from kpi_engine.rounding import half_up
from kpi_engine.weekly import DASH, NBSP, money_text, number_text, share_text

DRILL_METRICS = frozenset({*METRIC_ROWS, "bonus"})
CURRENCY_SIGNS = {"RUB": "₽"}


@dataclass(frozen=True)
class Cell:
    metric: str
    text: str
    href: str | None = None
    hint: str | None = None
    bar: int | None = None
    """Plan progress in whole percent (capped at 100) for the progress bar."""


@dataclass(frozen=True)
class Row:
    manager: str
    name: str
    cells: tuple[Cell, ...]
    total: bool = False


@dataclass(frozen=True)
class Table:
    heading: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def money(amount: Decimal | None, currency: str = "RUB") -> str:
    """`1 234,50 ₽` (another currency by its code), or a dash."""
    if amount is None:
        return DASH
    return f"{money_text(amount)}{NBSP}{CURRENCY_SIGNS.get(currency, currency)}"


def count(value: int) -> str:
    return f"{value:,}".replace(",", NBSP)


def deals_link(query: KpiQuery, metric: str, manager: int | None) -> str:
    """The deal list behind `metric` of `manager` (None: everyone) for `query`."""
    params = {
        "from": query.start.isoformat(),
        "to": query.end.isoformat(),
        "as_of": query.as_of.isoformat(),
        "metric": metric,
    }
    if manager is not None:
        params["manager"] = str(manager)
    return "/dashboard/deals?" + urlencode(params)


def portal_base(settings: Settings) -> str | None:
    """`https://salon.bitrix24.ru` from the inbound webhook URL, without its code."""
    url = settings.bitrix24_webhook_url
    if url is None:
        return None
    parts = urlsplit(url.get_secret_value())
    return f"{parts.scheme}://{parts.netloc}"


# --- the KPI tables ------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    heading: str
    metric: str
    """The attribute path in `Metrics`, which is also the path in the JSON."""
    drill: str | None
    show: Callable[[object], str]

    def cell(self, metrics: Metrics, query: KpiQuery, manager: int | None) -> Cell:
        value = attrgetter(self.metric)(metrics)
        href = deals_link(query, self.drill, manager) if self.drill else None
        return Cell(self.metric, self.show(value), href)


def _share(value: object) -> str:
    assert value is None or isinstance(value, Decimal)
    return share_text(value)


def _number(value: object) -> str:
    """`12.5000` → `12,5`: as the JSON's number prints, without trailing zeros."""
    assert value is None or isinstance(value, Decimal)
    return number_text(None if value is None else _plain(value))


def _plain(value: Decimal) -> Decimal:
    return (
        value.quantize(Decimal(1))
        if value == value.to_integral()
        else value.normalize()
    )


def _count(value: object) -> str:
    assert isinstance(value, int)
    return count(value)


def _activity_columns(
    report: ReportTexts, texts: DashboardTexts, sla: int
) -> list[_Column]:
    first = "first_response."
    within_sla = texts.within_sla.format(sla=sla)
    return [
        _Column(report.leads, "leads", "leads", _count),
        _Column(texts.leads_per_day, "leads_per_day", "leads", _number),
        _Column(report.conversion, "conversion", "booked_leads", _share),
        _Column(report.bookings_made, "bookings_made", "bookings_made", _count),
        _Column(texts.appointments, "appointments", "appointments", _count),
        _Column(report.confirmed_share, "confirmed_share", "confirmed", _share),
        _Column(report.cancellations, "cancellations", "cancellations", _count),
        _Column(report.visits, "visits", "visits", _count),
        _Column(report.no_shows, "no_shows", "no_shows", _count),
        _Column(report.no_show_rate, "no_show_rate", "no_shows", _share),
        _Column(report.calls, "calls", "calls", _count),
        _Column(texts.calls_per_working_day, "calls_per_working_day", "calls", _number),
        _Column(texts.median, first + "median_min", "leads", _number),
        _Column(texts.p90, first + "p90_min", "leads", _number),
        _Column(texts.unanswered, first + "unanswered", "unanswered", _count),
        _Column(within_sla, first + "within_sla_share", "within_sla", _share),
    ]


def activity_table(
    result: KpiResult, query: KpiQuery, rules: BusinessRules, texts: DashboardTexts
) -> Table:
    """Per manager and in total: leads, bookings, visits, calls, first response."""
    report = rules.report.texts
    columns = _activity_columns(report, texts, rules.kpi.sla_minutes)
    rows = [
        _metric_row(row.id, _name(row), row.metrics, columns, query)
        for row in result.managers
    ]
    rows.append(_metric_row(None, report.total, result.total, columns, query))
    return Table(
        texts.managers_heading,
        (report.manager, *(column.heading for column in columns)),
        tuple(rows),
    )


def _metric_row(
    manager: int | None,
    name: str,
    metrics: Metrics,
    columns: Sequence[_Column],
    query: KpiQuery,
) -> Row:
    cells = tuple(column.cell(metrics, query, manager) for column in columns)
    return Row(_manager_key(manager), name, cells, total=manager is None)


def money_table(
    result: KpiResult, query: KpiQuery, rules: BusinessRules, texts: DashboardTexts
) -> Table:
    """Per manager: revenue, average check, plan and its progress, retention, bonus."""
    report = rules.report.texts
    cash = partial(money, currency=rules.money.currency)
    rows = [_money_row(row, query, texts, cash) for row in result.managers]
    total = result.total
    revenue = deals_link(query, "revenue", None)
    cells = (
        Cell("revenue", cash(total.revenue), revenue),
        Cell("average_check", cash(total.average_check), revenue),
        Cell("bonus.plan", ""),
        Cell("plan_progress", ""),
        Cell(
            "retained_clients",
            count(total.retained_clients),
            deals_link(query, "retained", None),
        ),
        Cell(
            "retention_30d",
            share_text(total.retention_30d),
            deals_link(query, "cohort_retained", None),
        ),
        Cell("bonus.payout", ""),
    )
    rows.append(Row("total", report.total, cells, total=True))
    columns = (
        report.manager,
        report.revenue,
        report.average_check,
        report.plan,
        report.plan_done,
        report.retained_clients,
        texts.retention_30d,
        texts.payout,
    )
    return Table(texts.money_heading, columns, tuple(rows))


def _money_row(
    row: ManagerResult,
    query: KpiQuery,
    texts: DashboardTexts,
    cash: Callable[[Decimal | None], str],
) -> Row:
    metrics, bonus = row.metrics, row.bonus
    revenue_link = deals_link(query, "revenue", row.id)
    plan = bonus.plan if bonus is not None else None
    progress, bar = _progress(metrics.revenue, plan)
    payout = Cell("bonus.payout", DASH)
    if bonus is not None:
        hint = texts.bonus_parts.format(
            base=cash(bonus.base),
            percent=cash(bonus.percent_part),
            retention=cash(bonus.retention_part),
        )
        payout = Cell(
            "bonus.payout",
            cash(bonus.payout),
            deals_link(query, "bonus", row.id),
            hint,
        )
    cells = (
        Cell("revenue", cash(metrics.revenue), revenue_link),
        Cell("average_check", cash(metrics.average_check), revenue_link),
        Cell("bonus.plan", cash(plan) if bonus is not None else DASH),
        Cell("plan_progress", progress, revenue_link, bar=bar),
        Cell(
            "retained_clients",
            count(metrics.retained_clients),
            deals_link(query, "retained", row.id),
        ),
        Cell(
            "retention_30d",
            share_text(metrics.retention_30d),
            deals_link(query, "cohort_retained", row.id),
        ),
        payout,
    )
    return Row(_manager_key(row.id), _name(row), cells)


def _progress(revenue: Decimal | None, plan: Decimal | None) -> tuple[str, int | None]:
    if revenue is None or plan is None or plan <= 0:
        return DASH, None
    done = Fraction(revenue) / Fraction(plan)
    return share_text(half_up(done, 4)), min(100, int(done * 100))


def _name(row: ManagerResult) -> str:
    return row.name or f"#{row.id}"


def _manager_key(manager: int | None) -> str:
    return "total" if manager is None else str(manager)


# --- the funnel ----------------------------------------------------------------------


def funnel_steps(
    drill: Drilldown, query: KpiQuery, texts: DashboardTexts
) -> list[FunnelStep]:
    """Leads of the period, and how many of them booked, confirmed and came."""
    steps = (
        (texts.funnel_leads, "leads"),
        (texts.funnel_booked, "booked_leads"),
        (texts.funnel_confirmed, "confirmed_leads"),
        (texts.funnel_visited, "visited_leads"),
    )
    return [
        FunnelStep(label, len(drill.behind(metric)), deals_link(query, metric, None))
        for label, metric in steps
    ]


# --- the rows behind a number --------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One deal list: its heading, column names and rows of cells."""

    heading: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


def listing(
    drill: Drilldown,
    result: KpiResult,
    metric: str,
    manager: int | None,
    *,
    rules: BusinessRules,
    texts: DashboardTexts,
    portal: str | None,
    users: dict[int, str],
) -> Listing:
    """The rows behind `metric` of `manager`, each linked to its card in the portal."""
    if metric == "bonus":
        ids = sorted(
            {*drill.behind("revenue", manager), *drill.behind("retained", manager)}
        )
        kind = "deal"
    else:
        ids = list(drill.behind(metric, manager))
        kind = METRIC_ROWS[metric]
    who = users.get(manager, f"#{manager}") if manager is not None else texts.everyone
    heading = f"{texts.lists[metric]}: {who}"
    cards = _Cards(portal, texts)
    t = texts
    if kind == "inquiry":
        waits = {wait.inquiry_id: wait.minutes for wait in result.waits}
        columns = (t.column_id, t.column_title, t.column_channel, t.column_manager)
        return Listing(
            heading,
            (*columns, t.column_created, t.column_wait),
            tuple(
                _inquiry_cells(drill, i, waits.get(i), cards, rules, users) for i in ids
            ),
        )
    if kind == "call":
        columns = (t.column_id, t.column_started, t.column_manager, t.column_bound)
        return Listing(
            heading,
            columns,
            tuple(_call_cells(drill, i, cards, rules, users) for i in ids),
        )
    roles = role_map(rules.crm.stages)
    columns = (t.column_id, t.column_title, t.column_stage, t.column_manager)
    return Listing(
        heading,
        (*columns, t.column_amount, t.column_created, t.column_visit),
        tuple(_deal_cells(drill, i, cards, rules, roles, users) for i in ids),
    )


class _Cards:
    """Links to a CRM card in the portal (`/crm/deal/details/<id>/`)."""

    PATHS: ClassVar[dict[int, str]] = {1: "lead", 2: "deal", 3: "contact"}

    def __init__(self, portal: str | None, texts: DashboardTexts) -> None:
        self.portal = portal
        self.texts = texts

    def cell(self, entity: str, entity_id: int) -> Cell:
        href = None
        if self.portal is not None:
            href = f"{self.portal}/crm/{entity}/details/{entity_id}/"
        return Cell("id", str(entity_id), href, self.texts.entities.get(entity))


def _when(moment: datetime | None, rules: BusinessRules) -> str:
    if moment is None:
        return DASH
    return moment.astimezone(rules.zone).strftime("%d.%m.%Y %H:%M")


def _manager_name(manager: int | None, users: dict[int, str]) -> str:
    return DASH if manager is None else users.get(manager, f"#{manager}")


def _inquiry_cells(
    drill: Drilldown,
    inquiry_id: int,
    wait: Fraction | None,
    cards: _Cards,
    rules: BusinessRules,
    users: dict[int, str],
) -> tuple[Cell, ...]:
    texts = cards.texts
    inquiry = drill.inquiries[inquiry_id]
    channel = texts.channels[channel_of(inquiry.source_id, rules)]
    waited = DASH if wait is None else number_text(half_up(wait, 1))
    return (
        cards.cell(drill.inquiry_entity, inquiry_id),
        Cell("title", inquiry.title),
        Cell("channel", channel),
        Cell("manager", _manager_name(inquiry.manager, users)),
        Cell("created", _when(inquiry.created_at, rules)),
        Cell("wait", waited),
    )


def _call_cells(
    drill: Drilldown,
    call_id: int,
    cards: _Cards,
    rules: BusinessRules,
    users: dict[int, str],
) -> tuple[Cell, ...]:
    call = drill.calls[call_id]
    owner = Cell("bound", DASH)
    entity = _Cards.PATHS.get(call.owner_type_id or 0)
    if entity is not None and call.owner_id is not None:
        bound = cards.cell(entity, call.owner_id)
        owner = Cell(
            "bound", f"{cards.texts.entities[entity]} {call.owner_id}", bound.href
        )
    return (
        Cell("id", str(call.id)),
        Cell("started", _when(call.start_time, rules)),
        Cell("manager", _manager_name(call.responsible_id, users)),
        owner,
    )


def _deal_cells(
    drill: Drilldown,
    deal_id: int,
    cards: _Cards,
    rules: BusinessRules,
    roles: dict[str, str],
    users: dict[int, str],
) -> tuple[Cell, ...]:
    texts = cards.texts
    facts = drill.deals[deal_id]
    deal = facts.deal
    role = roles.get(deal.stage_id)
    stage = deal.stage_id if role is None else f"{texts.roles[role]} ({deal.stage_id})"
    amount = money(deal.opportunity, deal.currency_id or rules.money.currency)
    return (
        cards.cell("deal", deal_id),
        Cell("title", deal.title),
        Cell("stage", stage),
        Cell("manager", _manager_name(deal.assigned_by_id, users)),
        Cell("amount", amount),
        Cell("created", _when(deal.created_at, rules)),
        Cell("visit", _when(facts.visit_at, rules)),
    )
