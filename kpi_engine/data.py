"""What one KPI query reads from the portal, the query itself and a closed month."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from connectors.bitrix24.models import (
    Activity,
    Deal,
    Lead,
    StageHistory,
    User,
    parse_moment,
)

CrmModeName = Literal["simple", "classic"]


class KpiError(Exception):
    """A KPI query that cannot be answered as asked."""


class InvalidPeriod(KpiError, ValueError):
    """`--to` on or before `--from`, or an `as_of` without an offset."""


class UnknownManager(KpiError, LookupError):
    """`--manager` names an id that `user.get` does not know."""

    def __init__(self, manager: int) -> None:
        super().__init__(f"user {manager} is not an employee known to user.get")
        self.manager = manager


@dataclass(frozen=True)
class KpiData:
    """Everything read from the portal for one query."""

    mode: CrmModeName
    users: Mapping[int, User]
    deals: Sequence[Deal]
    leads: Sequence[Lead] = ()
    deal_history: Sequence[StageHistory] = ()
    lead_history: Sequence[StageHistory] = ()
    activities: Sequence[Activity] = ()


@dataclass(frozen=True)
class KpiQuery:
    """Period `[start, end)` in business-zone dates, seen as of an aware instant."""

    start: date
    end: date
    as_of: datetime
    manager: int | None = None

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InvalidPeriod(
                f"the period must end after it starts: {self.start} … {self.end}"
            )
        if self.as_of.tzinfo is None or self.as_of.utcoffset() is None:
            raise InvalidPeriod("as_of must carry a UTC offset")


@dataclass(frozen=True)
class DealValues:
    """The fields of a deal Bitrix24 keeps no history of, as they were read."""

    opportunity: Decimal
    currency_id: str | None
    assigned_by_id: int | None
    contact_id: int | None
    category_id: int
    visit_field: datetime | None

    @classmethod
    def of(cls, deal: Deal, visit_field: str | None) -> DealValues:
        """The values of `deal` now; `visit_field` names the visit-time field."""
        return cls(
            opportunity=deal.opportunity,
            currency_id=deal.currency_id,
            assigned_by_id=deal.assigned_by_id,
            contact_id=deal.contact_id,
            category_id=deal.category_id,
            visit_field=deal.datetime_field(visit_field) if visit_field else None,
        )

    def to_json(self) -> dict[str, Any]:
        """Ids as strings, money as a decimal string, the date-time in ISO 8601."""
        return {
            "opportunity": str(self.opportunity),
            "currency_id": self.currency_id,
            "assigned_by_id": _id_text(self.assigned_by_id),
            "contact_id": _id_text(self.contact_id),
            "category_id": str(self.category_id),
            "visit_field": (
                self.visit_field.isoformat() if self.visit_field is not None else None
            ),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DealValues:
        """The inverse of `to_json`."""
        return cls(
            opportunity=Decimal(data["opportunity"]),
            currency_id=data.get("currency_id"),
            assigned_by_id=_id_value(data.get("assigned_by_id")),
            contact_id=_id_value(data.get("contact_id")),
            category_id=int(data["category_id"]),
            visit_field=parse_moment(data.get("visit_field")),
        )


@dataclass(frozen=True)
class ClosedMonth:
    """A month's reported figures (the JSON report) and the deal values behind them."""

    month: str
    closed_at: datetime
    figures: Mapping[str, Any]
    deals: Mapping[int, DealValues] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form to store; `from_json` reads it back unchanged."""
        return {
            "month": self.month,
            "closed_at": self.closed_at.isoformat(),
            "figures": dict(self.figures),
            "deals": {
                str(deal_id): values.to_json()
                for deal_id, values in sorted(self.deals.items())
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClosedMonth:
        """The inverse of `to_json`."""
        closed_at = parse_moment(data["closed_at"])
        if closed_at is None:
            raise ValueError("closed_at is missing")
        return cls(
            month=str(data["month"]),
            closed_at=closed_at,
            figures=data["figures"],
            deals={
                int(deal_id): DealValues.from_json(values)
                for deal_id, values in data.get("deals", {}).items()
            },
        )


def _id_text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _id_value(value: Any) -> int | None:
    return None if value in (None, "") else int(value)
