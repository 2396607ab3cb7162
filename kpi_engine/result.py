"""The computed figures of one KPI query, rounded as KPI.md says, before formatting."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction


@dataclass(frozen=True)
class FirstResponse:
    """Minutes rounded half up to 0.1; the share to 4 decimals."""

    median_min: Decimal | None
    p90_min: Decimal | None
    unanswered: int
    within_sla_share: Decimal | None


@dataclass(frozen=True)
class Metrics:
    """Every metric of KPI.md for one manager or the total, in the table's order."""

    leads: int
    leads_per_day: Decimal | None
    conversion: Decimal | None
    bookings_made: int
    appointments: int
    confirmed_share: Decimal | None
    cancellations: int
    visits: int
    no_shows: int
    no_show_rate: Decimal | None
    revenue: Decimal | None
    average_check: Decimal | None
    calls: int
    calls_per_working_day: Decimal | None
    first_response: FirstResponse
    retained_clients: int
    retention_30d: Decimal | None


@dataclass(frozen=True)
class RevenueItem:
    """One check in `revenue`; the last three are set for a converted check."""

    deal_id: int
    amount: Decimal
    visit_at: datetime
    currency: str | None = None
    original_amount: Decimal | None = None
    rate: Decimal | None = None


@dataclass(frozen=True)
class LeftOut:
    """A visit whose check is not in `revenue`, and why."""

    deal_id: int
    reason: str


@dataclass(frozen=True)
class RetainedItem:
    """A retained client: the return visit in P and the latest earlier visit."""

    client_id: int
    return_deal_id: int
    earlier_deal_id: int


@dataclass(frozen=True)
class Evidence:
    """The deals behind a manager's revenue and retained clients."""

    revenue: tuple[RevenueItem, ...] = ()
    revenue_left_out: tuple[LeftOut, ...] = ()
    retained: tuple[RetainedItem, ...] = ()


@dataclass(frozen=True)
class Bonus:
    """One manager's bonus for a calendar month; every part rounded to 0.01."""

    base: Decimal
    plan: Decimal | None
    over_plan: Decimal | None
    rate: Decimal
    percent_part: Decimal
    per_retained: Decimal
    retention_part: Decimal
    payout: Decimal


@dataclass(frozen=True)
class ManagerResult:
    """One row of `managers`."""

    id: int
    name: str | None
    metrics: Metrics
    bonus: Bonus | None
    evidence: Evidence


@dataclass(frozen=True)
class DataWarning:
    """Something counted in P rests on incomplete or changed data."""

    code: str
    message: str
    deal_ids: tuple[int, ...] = ()
    user_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PeriodInfo:
    """The period as reported: local midnights, `as_of` in the business zone."""

    start: datetime
    end: datetime
    as_of: datetime
    timezone: str
    final: bool
    days: int
    working_days: int


@dataclass(frozen=True)
class Wait:
    """How long one inquiry of P waited for its first human touch."""

    inquiry_id: int
    manager: int | None
    created_at: datetime
    touched_at: datetime | None
    minutes: Fraction | None
    """Business minutes, exact and unrounded; None when nobody answered by as_of."""


@dataclass(frozen=True)
class KpiResult:
    """Everything `compute` found for one query."""

    period: PeriodInfo
    managers: tuple[ManagerResult, ...]
    total: Metrics
    warnings: tuple[DataWarning, ...]
    counted_deal_ids: frozenset[int] = field(default_factory=frozenset)
    """Deals whose values the figures rest on (kept when a month is closed)."""
    manager: int | None = None
    """Set when `managers` was narrowed to one manager (`--manager`)."""
    waits: tuple[Wait, ...] = ()
    """Every inquiry of P (all managers) with its first-response wait, by id."""
