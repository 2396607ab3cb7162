"""The report formats: JSON in KPI.md's shape, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json

from kpi_engine.metrics import compute
from kpi_engine.report import to_csv, to_json, to_markdown
from kpi_engine.result import KpiResult
from tests.kpi_engine.builders import data, deal, path, query, rules, user

BONUS = """
[bonus.managers."17"]
plan = "1000.00"

[bonus.managers."18"]
plan = "5000.00"
"""


def result() -> KpiResult:
    visited = deal(
        id=101,
        created="2025-01-10T10:00:00+03:00",
        contact=7001,
        opportunity="1234.5",
        visit="2025-01-15T12:00:00+03:00",
    )
    history = path(
        101,
        ("NEW", "2025-01-10T10:00:00+03:00"),
        ("BOOKED", "2025-01-10T10:30:00+03:00"),
        ("WON", "2025-01-15T13:00:00+03:00"),
    )
    kpi_data = data(deals=[visited], history=history)
    staff = dict(kpi_data.users)
    staff[17] = user(id=17, name="Анна", last_name="Иванова | VIP")
    kpi_data = type(kpi_data)(
        mode="simple", users=staff, deals=kpi_data.deals, deal_history=history
    )
    return compute(
        kpi_data,
        query("2025-01-01", "2025-02-01", "2025-02-02T00:00:00+03:00"),
        rules(BONUS),
    )


class TestJson:
    def test_it_survives_json_text_unchanged(self) -> None:
        report = to_json(result())

        assert json.loads(json.dumps(report)) == report

    def test_top_level_keys_follow_the_contract(self) -> None:
        report = to_json(result())

        assert list(report) == ["period", "managers", "total", "warnings"]
        assert list(report["managers"][0])[:3] == ["id", "name", "leads"]
        assert list(report["managers"][0])[-2:] == ["bonus", "evidence"]

    def test_ids_are_strings_and_money_has_two_decimals(self) -> None:
        report = to_json(result())
        row = report["managers"][0]

        assert row["id"] == "17"
        assert row["revenue"] == "1234.50"
        assert row["evidence"]["revenue"][0]["deal_id"] == "101"
        assert row["evidence"]["revenue"][0]["amount"] == "1234.50"
        assert row["bonus"]["per_retained"] == "1000.00"
        assert row["bonus"]["percent_part"] == "7.04"  # 234.50 x 0.03 = 7.035

    def test_the_total_has_no_id_bonus_or_evidence(self) -> None:
        total = to_json(result())["total"]

        assert "id" not in total
        assert "bonus" not in total
        assert "evidence" not in total


class TestCsv:
    def test_one_row_per_manager_and_a_total_row(self) -> None:
        rows = list(csv.reader(io.StringIO(to_csv(result()))))

        assert [row[0] for row in rows] == ["id", "17", "18", "total"]
        assert rows[1][1] == "Анна Иванова | VIP"

    def test_columns_flatten_first_response_and_bonus(self) -> None:
        header = next(csv.reader(io.StringIO(to_csv(result()))))

        assert header[2:5] == ["leads", "leads_per_day", "conversion"]
        assert "first_response_median_min" in header
        assert "first_response_within_sla_share" in header
        assert header[-1] == "bonus_payout"

    def test_null_is_an_empty_cell_and_numbers_read_as_in_json(self) -> None:
        table = csv.DictReader(io.StringIO(to_csv(result())))
        rows = {row["id"]: row for row in table}

        assert rows["17"]["conversion"] == "1.0"
        assert rows["17"]["leads_per_day"] == "0.0323"  # 1 / 31
        assert rows["17"]["revenue"] == "1234.50"
        assert rows["18"]["conversion"] == ""
        assert rows["18"]["average_check"] == ""
        assert rows["18"]["bonus_payout"] == "0.00"
        assert rows["total"]["bonus_payout"] == ""


class TestMarkdown:
    def test_the_same_table_with_a_dash_for_null(self) -> None:
        lines = to_markdown(result()).splitlines()
        header = lines[0].strip("| ").split(" | ")

        assert len(lines) == 5
        assert lines[1] == "|" + "---|" * len(header)
        assert lines[2].startswith("| 17 | Анна Иванова \\| VIP | 1 |")
        assert lines[3].startswith("| 18 | Анна М18 | 0 | 0.0 | — |")
        assert lines[4].startswith("| total |  | 1 |")
