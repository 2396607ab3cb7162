"""The monthly bonus of one manager (KPI.md "Bonus")."""

from __future__ import annotations

from decimal import Decimal

from app.config import BonusTerms
from kpi_engine.result import Bonus
from kpi_engine.rounding import money


def bonus_for(revenue: Decimal, retained_clients: int, terms: BonusTerms) -> Bonus:
    """Base, percent and retention parts, each rounded half up; payout is their sum."""
    base = money(terms.base)
    if terms.plan is None:
        over_plan = None
        percent_part = money(0)
    else:
        over_plan = money(max(Decimal(0), revenue - terms.plan))
        percent_part = money(over_plan * terms.rate)
    retention_part = money(retained_clients * terms.per_retained)
    return Bonus(
        base=base,
        plan=terms.plan,
        over_plan=over_plan,
        rate=terms.rate,
        percent_part=percent_part,
        per_retained=terms.per_retained,
        retention_part=retention_part,
        payout=base + percent_part + retention_part,
    )
