"""A hand-computed month: checks in three currencies, retention and the bonus.

January 2025 in Moscow, seen on 3 February. Visits (visit field unless noted):

| deal | manager | client | visit (Moscow)          | check               |
|------|---------|--------|-------------------------|---------------------|
| 10   | 18      | 700    | 2024-12-10 00:30 (WON)  | (before P)          |
| 12   | 18      | 701    | 2024-12-10 12:00 (WON)  | (before P)          |
| 19   | 18      | 705    | 2024-12-20 12:00 (WON)  | (before P)          |
| 20   | 18      | 705    | 2024-12-28 12:00 (WON)  | (before P)          |
| 21   | 18      | 705    | 2025-01-12 12:00        | 800.00              |
| 16   | 17      | 704    | 2025-01-05 12:00        | 500.00              |
| 18   | 17      | 704    | 2025-01-07 12:00        | 300.00              |
| 11   | 17      | 700    | 2025-01-09 23:30        | 1234.50             |
| 13   | 17      | 701    | 2025-01-10 12:00        | 100.00 USD x 95.00  |
| 14   | 17      | 702    | 2025-01-15 12:00        | 1.50 EUR x 6.15     |
| 15   | 17      | 703    | 2025-01-20 12:00        | 50.00 KZT, no rate  |
| 17   | 17      | 704    | 2025-01-25 12:00        | 700.00              |

Client 700 returns after 30 local days (Dec 10 -> Jan 9; 31 days apart in UTC):
retained. Client 701 returns on day 31: not. Client 704 returns within January on
17's own deals; client 705's latest earlier visit is deal 20.
Manager 17: revenue 1234.50 + 9500.00 + 9.23 + 500.00 + 700.00 + 300.00 = 12243.73
over 6 checks (average 2040.62); retained 700 and 704; bonus 20000.00 + 3 % of
11243.73 = 337.31 + 2 x 1000.00 = 22337.31. Manager 18: revenue 800.00, retained 705,
no plan; cohort W (Dec 2 - Jan 2) = {700, 701, 705}, retained 700 and 705: 0.6667.
"""

from __future__ import annotations

from typing import Any

from connectors.bitrix24.models import Deal, StageHistory
from kpi_engine.data import KpiData
from tests.kpi_engine.builders import data, deal, kpi, manager, path, rules

MONEY = """
[money]
currency = "RUB"

[money.rates]
USD = "92.15"
EUR = "6.15"

[money.rates."2025-01"]
USD = "95.00"

[bonus]
per_retained = "1000.00"

[bonus.managers."17"]
base = "20000.00"
plan = "1000.00"

[bonus.managers."18"]
per_retained = "1500.00"
"""
AS_OF = "2025-02-03T10:00:00+03:00"


def visit(
    deal_id: int,
    *,
    manager: int,
    client: int,
    created: str,
    booked: str,
    visited: str,
    field: bool = True,
    amount: str = "0.00",
    currency: str = "RUB",
) -> tuple[Deal, list[StageHistory]]:
    """A deal booked and visited; the visit time is the field, or the WON row."""
    made = deal(
        id=deal_id,
        created=created,
        manager=manager,
        contact=client,
        opportunity=amount,
        currency=currency,
        visit=visited if field else None,
    )
    history = path(deal_id, ("NEW", created), ("BOOKED", booked), ("WON", visited))
    return made, history


def month() -> KpiData:
    made = [
        visit(
            10,
            manager=18,
            client=700,
            created="2024-12-01T10:00:00+03:00",
            booked="2024-12-05T10:00:00+03:00",
            visited="2024-12-09T21:30:00+00:00",
            field=False,
            amount="2000.00",
        ),
        visit(
            12,
            manager=18,
            client=701,
            created="2024-12-01T10:00:00+03:00",
            booked="2024-12-05T10:00:00+03:00",
            visited="2024-12-10T12:00:00+03:00",
            field=False,
            amount="1000.00",
        ),
        visit(
            19,
            manager=18,
            client=705,
            created="2024-12-15T10:00:00+03:00",
            booked="2024-12-15T11:00:00+03:00",
            visited="2024-12-20T12:00:00+03:00",
            field=False,
        ),
        visit(
            20,
            manager=18,
            client=705,
            created="2024-12-21T10:00:00+03:00",
            booked="2024-12-21T11:00:00+03:00",
            visited="2024-12-28T12:00:00+03:00",
            field=False,
        ),
        visit(
            21,
            manager=18,
            client=705,
            created="2024-12-30T10:00:00+03:00",
            booked="2024-12-30T11:00:00+03:00",
            visited="2025-01-12T12:00:00+03:00",
            amount="800.00",
        ),
        visit(
            16,
            manager=17,
            client=704,
            created="2025-01-02T10:00:00+03:00",
            booked="2025-01-02T11:00:00+03:00",
            visited="2025-01-05T12:00:00+03:00",
            amount="500.00",
        ),
        visit(
            18,
            manager=17,
            client=704,
            created="2025-01-04T10:00:00+03:00",
            booked="2025-01-04T11:00:00+03:00",
            visited="2025-01-07T12:00:00+03:00",
            amount="300.00",
        ),
        visit(
            11,
            manager=17,
            client=700,
            created="2025-01-02T10:00:00+03:00",
            booked="2025-01-02T10:30:00+03:00",
            visited="2025-01-09T23:30:00+03:00",
            amount="1234.50",
        ),
        visit(
            13,
            manager=17,
            client=701,
            created="2025-01-03T10:00:00+03:00",
            booked="2025-01-03T11:00:00+03:00",
            visited="2025-01-10T12:00:00+03:00",
            amount="100.00",
            currency="USD",
        ),
        visit(
            14,
            manager=17,
            client=702,
            created="2025-01-05T10:00:00+03:00",
            booked="2025-01-05T11:00:00+03:00",
            visited="2025-01-15T12:00:00+03:00",
            amount="1.50",
            currency="EUR",
        ),
        visit(
            15,
            manager=17,
            client=703,
            created="2025-01-06T10:00:00+03:00",
            booked="2025-01-06T11:00:00+03:00",
            visited="2025-01-20T12:00:00+03:00",
            amount="50.00",
            currency="KZT",
        ),
        visit(
            17,
            manager=17,
            client=704,
            created="2025-01-20T10:00:00+03:00",
            booked="2025-01-20T11:00:00+03:00",
            visited="2025-01-25T12:00:00+03:00",
            amount="700.00",
        ),
    ]
    return data(
        deals=[made_deal for made_deal, _ in made],
        history=[row for _, rows in made for row in rows],
    )


def report(as_of: str = AS_OF) -> dict[str, Any]:
    return kpi(month(), "2025-01-01", "2025-02-01", as_of, business=rules(MONEY))


class TestRevenue:
    def test_checks_are_converted_per_check_and_summed(self) -> None:
        row = manager(report(), 17)

        assert (row["visits"], row["revenue"], row["average_check"]) == (
            7,
            "12243.73",
            "2040.62",
        )

    def test_a_converted_check_carries_its_currency_amount_and_rate(self) -> None:
        evidence = manager(report(), 17)["evidence"]["revenue"]

        assert [item["deal_id"] for item in evidence] == [
            "16",
            "18",
            "11",
            "13",
            "14",
            "17",
        ]
        assert evidence[3] == {
            "deal_id": "13",
            "amount": "9500.00",
            "visit_at": "2025-01-10T12:00:00+03:00",
            "currency": "USD",
            "original_amount": "100.00",
            "rate": "95.00",
        }
        # 1.50 x 6.15 = 9.225: half up to 9.23 (half-even would give 9.22).
        assert evidence[4]["amount"] == "9.23"
        assert evidence[4]["rate"] == "6.15"
        assert "currency" not in evidence[0]

    def test_a_check_without_a_rate_is_left_out_and_warned_about(self) -> None:
        result = report()

        assert manager(result, 17)["evidence"]["revenue_left_out"] == [
            {"deal_id": "15", "reason": "no rate for KZT in 2025-01"}
        ]
        assert result["warnings"][0] == {
            "code": "check_left_out",
            "message": "checks left out of revenue: no rate for KZT in 2025-01",
            "deal_ids": ["15"],
            "user_ids": ["17"],
        }

    def test_the_total_is_one_sum_over_all_checks(self) -> None:
        total = report()["total"]

        assert (total["visits"], total["revenue"], total["average_check"]) == (
            8,
            "13043.73",
            "1863.39",
        )

    def test_the_flat_rate_applies_in_a_month_without_a_table(self) -> None:
        made, history = visit(
            30,
            manager=17,
            client=800,
            created="2025-02-02T10:00:00+03:00",
            booked="2025-02-02T11:00:00+03:00",
            visited="2025-02-03T12:00:00+03:00",
            amount="10.01",
            currency="USD",
        )
        february = kpi(
            data(deals=[made], history=history),
            "2025-02-01",
            "2025-03-01",
            "2025-02-04T00:00:00+03:00",
            business=rules(MONEY),
        )

        # 10.01 x 92.15 = 922.4215
        assert manager(february, 17)["evidence"]["revenue"][0]["amount"] == "922.42"
        assert manager(february, 17)["evidence"]["revenue"][0]["rate"] == "92.15"


class TestRetention:
    def test_retained_clients_of_each_manager_with_evidence(self) -> None:
        result = report()

        assert manager(result, 17)["retained_clients"] == 2
        assert manager(result, 17)["evidence"]["retained"] == [
            {"client_id": "700", "return_deal_id": "11", "earlier_deal_id": "10"},
            {"client_id": "704", "return_deal_id": "18", "earlier_deal_id": "16"},
        ]
        assert manager(result, 18)["evidence"]["retained"] == [
            {"client_id": "705", "return_deal_id": "21", "earlier_deal_id": "20"},
        ]

    def test_the_total_counts_distinct_clients(self) -> None:
        assert report()["total"]["retained_clients"] == 3

    def test_retention_of_the_cohort_thirty_days_back(self) -> None:
        result = report()

        assert manager(result, 18)["retention_30d"] == 0.6667
        assert manager(result, 17)["retention_30d"] is None
        assert result["total"]["retention_30d"] == 0.6667

    def test_the_period_is_final_thirty_days_after_its_end(self) -> None:
        assert report()["period"]["final"] is False
        assert report("2025-03-03T00:00:00+03:00")["period"]["final"] is True


class TestBonus:
    def test_bonus_of_a_manager_with_a_plan(self) -> None:
        assert manager(report(), 17)["bonus"] == {
            "base": "20000.00",
            "plan": "1000.00",
            "over_plan": "11243.73",
            "rate": "0.03",
            "percent_part": "337.31",
            "per_retained": "1000.00",
            "retention_part": "2000.00",
            "payout": "22337.31",
        }

    def test_bonus_of_a_manager_without_a_plan(self) -> None:
        assert manager(report(), 18)["bonus"] == {
            "base": "0.00",
            "plan": None,
            "over_plan": None,
            "rate": "0.03",
            "percent_part": "0.00",
            "per_retained": "1500.00",
            "retention_part": "1500.00",
            "payout": "1500.00",
        }

    def test_a_manager_without_a_plan_is_warned_about(self) -> None:
        assert report()["warnings"][1:] == [
            {
                "code": "manager_without_plan",
                "message": "manager 18 has no plan: percent part 0.00",
                "deal_ids": [],
                "user_ids": ["18"],
            }
        ]

    def test_inside_the_month_the_bonus_is_the_bonus_so_far(self) -> None:
        # By 11 January deals 16, 18, 11 and 13 were visited; 14-17 not yet.
        row = manager(report("2025-01-11T00:00:00+03:00"), 17)

        assert row["revenue"] == "11534.50"
        assert row["bonus"]["over_plan"] == "10534.50"
        assert row["bonus"]["percent_part"] == "316.04"  # 316.035 half up
        assert row["bonus"]["retention_part"] == "2000.00"
        assert row["bonus"]["payout"] == "22316.04"

    def test_no_bonus_for_a_period_that_is_not_a_month(self) -> None:
        week = kpi(month(), "2025-01-06", "2025-01-13", AS_OF, business=rules(MONEY))

        assert all(row["bonus"] is None for row in week["managers"])
        assert "manager_without_plan" not in [w["code"] for w in week["warnings"]]
