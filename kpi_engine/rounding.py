"""Half-up rounding of exact numbers; the one rounding rule of KPI.md."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

CENT = Decimal("0.01")


def half_up(value: Decimal | Fraction | int, places: int) -> Decimal:
    """`value` rounded half away from zero to `places` decimals, exactly."""
    if isinstance(value, Decimal):
        return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    exact = Fraction(value)
    scaled = abs(exact) * 10**places
    units = int(scaled + Fraction(1, 2))  # floor of a non-negative number
    sign = -1 if exact < 0 else 1
    return Decimal(sign * units).scaleb(-places)


def money(value: Decimal | int) -> Decimal:
    """Money rounded half up to the kopeck."""
    return half_up(Decimal(value), 2)


def share(numerator: int, denominator: int) -> Decimal | None:
    """`numerator / denominator` to 4 decimals; None when the denominator is zero."""
    if denominator == 0:
        return None
    return half_up(Fraction(numerator, denominator), 4)
