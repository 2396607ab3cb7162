"""The bonus formula, its rounding, and the exact arithmetic under it."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from app.config import BonusTerms
from kpi_engine.bonus import bonus_for
from kpi_engine.metrics import percentile
from kpi_engine.rounding import half_up, money, share


def terms(
    *,
    base: str = "0.00",
    plan: str | None = "0.00",
    rate: str = "0.03",
    per_retained: str = "1000.00",
) -> BonusTerms:
    return BonusTerms(
        base=Decimal(base),
        plan=None if plan is None else Decimal(plan),
        rate=Decimal(rate),
        per_retained=Decimal(per_retained),
    )


class TestBonusFor:
    def test_each_part_is_rounded_half_up_and_the_payout_sums_them(self) -> None:
        """KPI-2: 1234.50 x 3 % = 37.035 rounds half up to 37.04."""
        bonus = bonus_for(
            Decimal("101234.50"),
            3,
            terms(base="15000.00", plan="100000.00", per_retained="750.00"),
        )

        # over 1234.50 x 0.03 = 37.035 -> 37.04; 3 x 750.00 = 2250.00
        assert bonus.over_plan == Decimal("1234.50")
        assert bonus.percent_part == Decimal("37.04")
        assert bonus.retention_part == Decimal("2250.00")
        assert bonus.payout == Decimal("17287.04")

    def test_revenue_under_plan_gives_no_percent_part(self) -> None:
        bonus = bonus_for(Decimal("900.00"), 0, terms(plan="1000.00"))

        assert bonus.over_plan == Decimal("0.00")
        assert bonus.percent_part == Decimal("0.00")
        assert str(bonus.payout) == "0.00"

    def test_without_a_plan_the_percent_part_is_zero(self) -> None:
        bonus = bonus_for(Decimal("50000.00"), 1, terms(plan=None, base="100.00"))

        assert (bonus.plan, bonus.over_plan) == (None, None)
        assert bonus.percent_part == Decimal("0.00")
        assert bonus.payout == Decimal("1100.00")

    def test_a_rate_with_more_places_rounds_once_at_the_end(self) -> None:
        # 333.33 x 0.015 = 4.99995 -> 5.00
        bonus = bonus_for(Decimal("333.33"), 0, terms(rate="0.015"))

        assert bonus.percent_part == Decimal("5.00")


class TestRounding:
    @pytest.mark.parametrize(
        ("value", "places", "expected"),
        [
            (Decimal("37.035"), 2, "37.04"),
            (Decimal("0.125"), 2, "0.13"),
            (Decimal("2.5"), 0, "3"),
            (Fraction(655, 100), 1, "6.6"),
            (Fraction(1, 3), 4, "0.3333"),
            (Fraction(2, 3), 4, "0.6667"),
            (Fraction(1, 8), 2, "0.13"),
            (Fraction(-1, 8), 2, "-0.13"),
            (0, 4, "0.0000"),
        ],
    )
    def test_half_up(
        self, value: Decimal | Fraction | int, places: int, expected: str
    ) -> None:
        """KPI-2: ROUND_HALF_UP, including 37.035 -> 37.04."""
        assert str(half_up(value, places)) == expected

    def test_money_keeps_two_places(self) -> None:
        assert str(money(Decimal("1234.5"))) == "1234.50"
        assert str(money(0)) == "0.00"

    def test_a_share_of_nothing_is_null(self) -> None:
        assert share(0, 0) is None
        assert share(0, 5) == Decimal("0.0000")

    def test_decimal_sums_of_money_strings_are_exact(self) -> None:
        """KPI-2, B24-5: Decimal sums of money strings are exact (15000.80)."""
        # A float sum of 15000.50 + 0.10 + 0.20 gives 15000.800000000001.
        total = sum((Decimal(s) for s in ("15000.50", "0.10", "0.20")), Decimal(0))

        assert str(total) == "15000.80"


class TestPercentile:
    def test_one_value_is_every_percentile(self) -> None:
        assert percentile([Fraction(7)], Fraction(9, 10)) == 7

    def test_nothing_has_no_percentile(self) -> None:
        assert percentile([], Fraction(1, 2)) is None

    def test_ten_values_match_numpys_linear_default(self) -> None:
        values = [Fraction(v) for v in range(1, 11)]

        # numpy.percentile(range(1, 11), [50, 90]) == [5.5, 9.1]
        assert percentile(values, Fraction(1, 2)) == Fraction(11, 2)
        assert percentile(values, Fraction(9, 10)) == Fraction(91, 10)

    def test_the_top_rank_is_the_maximum(self) -> None:
        values = [Fraction(1), Fraction(4)]

        assert percentile(values, Fraction(1)) == 4
