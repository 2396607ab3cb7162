"""The KPI result as JSON (KPI.md's shape), CSV and a Markdown table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

from kpi_engine.result import (
    Bonus,
    DataWarning,
    Evidence,
    KpiResult,
    ManagerResult,
    Metrics,
    RevenueItem,
)

MISSING = "—"  # KPI.md: a null share is shown as a dash, never as 0


def to_json(result: KpiResult) -> dict[str, Any]:
    """The result in KPI.md's output shape: ids and money as strings."""
    period = result.period
    return {
        "period": {
            "start": period.start.isoformat(),
            "end": period.end.isoformat(),
            "as_of": period.as_of.isoformat(),
            "timezone": period.timezone,
            "final": period.final,
        },
        "managers": [_manager_json(row) for row in result.managers],
        "total": metrics_json(result.total),
        "warnings": [_warning_json(warning) for warning in result.warnings],
    }


def metrics_json(metrics: Metrics) -> dict[str, Any]:
    """Every metric in the table's order."""
    first = metrics.first_response
    return {
        "leads": metrics.leads,
        "leads_per_day": _number(metrics.leads_per_day),
        "conversion": _number(metrics.conversion),
        "bookings_made": metrics.bookings_made,
        "appointments": metrics.appointments,
        "confirmed_share": _number(metrics.confirmed_share),
        "cancellations": metrics.cancellations,
        "visits": metrics.visits,
        "no_shows": metrics.no_shows,
        "no_show_rate": _number(metrics.no_show_rate),
        "revenue": _money(metrics.revenue),
        "average_check": _money(metrics.average_check),
        "calls": metrics.calls,
        "calls_per_working_day": _number(metrics.calls_per_working_day),
        "first_response": {
            "median_min": _number(first.median_min),
            "p90_min": _number(first.p90_min),
            "unanswered": first.unanswered,
            "within_sla_share": _number(first.within_sla_share),
        },
        "retained_clients": metrics.retained_clients,
        "retention_30d": _number(metrics.retention_30d),
    }


def to_csv(result: KpiResult) -> str:
    """One row per manager and a total row; empty cells are null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in _table(result):
        writer.writerow("" if cell is None else cell for cell in row)
    return out.getvalue()


def to_markdown(result: KpiResult) -> str:
    """The CSV table as Markdown; null shows as a dash."""
    rows = list(_table(result))
    lines = [_md_row(rows[0]), "|" + "---|" * len(rows[0])]
    lines += [_md_row(row) for row in rows[1:]]
    return "\n".join(lines) + "\n"


# --- pieces --------------------------------------------------------------------------


def _manager_json(row: ManagerResult) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "name": row.name,
        **metrics_json(row.metrics),
        "bonus": _bonus_json(row.bonus) if row.bonus is not None else None,
        "evidence": _evidence_json(row.evidence),
    }


def _bonus_json(bonus: Bonus) -> dict[str, Any]:
    return {
        "base": _money(bonus.base),
        "plan": _money(bonus.plan),
        "over_plan": _money(bonus.over_plan),
        "rate": str(bonus.rate),
        "percent_part": _money(bonus.percent_part),
        "per_retained": _money(bonus.per_retained),
        "retention_part": _money(bonus.retention_part),
        "payout": _money(bonus.payout),
    }


def _evidence_json(evidence: Evidence) -> dict[str, Any]:
    return {
        "revenue": [_revenue_json(item) for item in evidence.revenue],
        "revenue_left_out": [
            {"deal_id": str(item.deal_id), "reason": item.reason}
            for item in evidence.revenue_left_out
        ],
        "retained": [
            {
                "client_id": str(item.client_id),
                "return_deal_id": str(item.return_deal_id),
                "earlier_deal_id": str(item.earlier_deal_id),
            }
            for item in evidence.retained
        ],
    }


def _revenue_json(item: RevenueItem) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "deal_id": str(item.deal_id),
        "amount": _money(item.amount),
        "visit_at": _moment(item.visit_at),
    }
    if item.currency is not None:
        entry["currency"] = item.currency
        entry["original_amount"] = _money(item.original_amount)
        entry["rate"] = str(item.rate)
    return entry


def _warning_json(warning: DataWarning) -> dict[str, Any]:
    return {
        "code": warning.code,
        "message": warning.message,
        "deal_ids": [str(deal_id) for deal_id in warning.deal_ids],
        "user_ids": [str(user_id) for user_id in warning.user_ids],
    }


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format(amount, "f")


def _number(value: Decimal | None) -> float | None:
    # The value is already rounded half up in Decimal; a float prints it back
    # unchanged (shortest repr), and JSON has no decimal type.
    return None if value is None else float(value)


def _moment(moment: datetime) -> str:
    return moment.isoformat()


def _flat(figures: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in figures.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}_")
        else:
            yield f"{prefix}{key}", value


_BONUS_KEYS = (
    "base",
    "plan",
    "over_plan",
    "rate",
    "percent_part",
    "per_retained",
    "retention_part",
    "payout",
)


def _table(result: KpiResult) -> Iterator[list[Any]]:
    metric_keys = [key for key, _ in _flat(metrics_json(result.total))]
    bonus_keys = [f"bonus_{key}" for key in _BONUS_KEYS]
    yield ["id", "name", *metric_keys, *bonus_keys]
    for row in result.managers:
        cells = dict(_flat(metrics_json(row.metrics)))
        bonus = _bonus_json(row.bonus) if row.bonus is not None else {}
        yield [
            str(row.id),
            row.name,
            *(_cell(cells[key]) for key in metric_keys),
            *(_cell(bonus.get(key)) for key in _BONUS_KEYS),
        ]
    total = dict(_flat(metrics_json(result.total)))
    yield [
        "total",
        "",
        *(_cell(total[key]) for key in metric_keys),
        *([None] * len(bonus_keys)),
    ]


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, float) else value


def _md_row(cells: list[Any]) -> str:
    shown = [
        MISSING if cell is None else str(cell).replace("|", "\\|") for cell in cells
    ]
    return "| " + " | ".join(shown) + " |"
