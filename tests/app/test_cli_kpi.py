"""`leadloop kpi`, `kpi close` and `report` against a sandbox portal."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from app import cli
from tests.app.conftest import kpi_portal
from tests.sandbox.conftest import RunningSandbox
from tests.support import REDIS_URL

RULES = """
[crm]
mode = "simple"
pipelines = [0]
visit_field = "UF_CRM_LL_VISIT_AT"

[crm.stages]
booked = ["PREPARATION"]
confirmed = ["PREPAYMENT_INVOICE"]
visited = ["WON"]
no_show = ["EXECUTING"]
cancelled = ["FINAL_INVOICE"]

[bonus.managers."10"]
plan = "50000.00"
"""
WEEK = ["--from", "2025-01-06", "--to", "2025-01-13"]
AS_OF = ["--as-of", "2025-01-13T09:00:00+03:00"]


@pytest.fixture(scope="module")
def portal() -> Iterator[RunningSandbox]:
    with kpi_portal(deals=300, activities=1200) as sandbox:
        yield sandbox


@pytest.fixture
def environment(
    portal: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Settings pointing at the sandbox and the test Redis; keys removed afterwards."""
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    monkeypatch.setenv("LEADLOOP_CONFIG", str(rules))
    monkeypatch.setenv("LEADLOOP_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("LEADLOOP_BITRIX24_WEBHOOK_URL", portal.webhook)
    yield
    client = redis.Redis.from_url(REDIS_URL)
    patterns = ["leadloop:kpi:closed:2025-01*", "leadloop:kpi:weekly:2025-W02:*"]
    patterns.append(f"leadloop:bitrix24:127.0.0.1:{portal.base_url.rsplit(':')[-1]}*")
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern))
        if keys:
            client.delete(*keys)
    client.close()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


@pytest.mark.usefixtures("environment")
class TestKpi:
    def test_json_has_the_shape_of_kpi_md(self) -> None:
        result = run("kpi", *WEEK, *AS_OF)

        assert result.exit_code == 0, result.output
        figures = json.loads(result.stdout)
        assert list(figures) == ["period", "managers", "total", "warnings"]
        assert figures["period"] == {
            "start": "2025-01-06T00:00:00+03:00",
            "end": "2025-01-13T00:00:00+03:00",
            "as_of": "2025-01-13T09:00:00+03:00",
            "timezone": "Europe/Moscow",
            "final": False,
        }
        assert figures["total"]["leads"] > 0
        assert all(isinstance(row["id"], str) for row in figures["managers"])

    def test_csv_has_a_row_per_manager_and_a_total(self) -> None:
        result = run("kpi", *WEEK, *AS_OF, "--format", "csv")

        assert result.exit_code == 0, result.output
        rows = list(csv.reader(io.StringIO(result.stdout)))
        assert rows[0][:3] == ["id", "name", "leads"]
        assert rows[-1][0] == "total"
        assert [row[0] for row in rows[1:-1]] == ["10", "11", "12", "13", "14"]

    def test_markdown_is_the_same_table(self) -> None:
        result = run("kpi", *WEEK, *AS_OF, "--format", "md")

        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith("| id | name | leads |")
        assert lines[1].startswith("|---|---|")
        assert lines[-1].startswith("| total |")

    def test_a_table_says_on_stderr_which_warnings_json_would_name(self) -> None:
        codes = {
            w["code"] for w in json.loads(run("kpi", *WEEK, *AS_OF).stdout)["warnings"]
        }

        result = run("kpi", *WEEK, *AS_OF, "--format", "md")

        assert codes, "the generated history has deals without a contact"
        assert "warning(s):" in result.stderr
        assert all(code in result.stderr for code in codes)
        assert "warning" not in result.stdout

    def test_one_manager_alone_with_the_whole_total(self) -> None:
        everyone = json.loads(run("kpi", *WEEK, *AS_OF).stdout)

        result = run("kpi", *WEEK, *AS_OF, "--manager", "11")

        assert result.exit_code == 0, result.output
        alone = json.loads(result.stdout)
        assert [row["id"] for row in alone["managers"]] == ["11"]
        assert alone["total"] == everyone["total"]

    def test_an_unknown_manager_is_a_usage_error(self) -> None:
        result = run("kpi", *WEEK, *AS_OF, "--manager", "999")

        assert result.exit_code == 2
        assert "Invalid value for '--manager'" in result.stderr
        assert "999" in result.stderr

    def test_to_on_or_before_from_is_a_usage_error(self) -> None:
        result = run("kpi", "--from", "2025-01-13", "--to", "2025-01-13")

        assert result.exit_code == 2
        assert "Invalid value for '--to': must be after --from" in result.stderr

    def test_as_of_without_an_offset_is_a_usage_error(self) -> None:
        result = run("kpi", *WEEK, "--as-of", "2025-01-13T09:00:00")

        assert result.exit_code == 2
        assert "give the offset" in result.stderr

    def test_from_and_to_are_required(self) -> None:
        result = run("kpi", "--from", "2025-01-06")

        assert result.exit_code == 2
        assert "--from and --to are required" in result.stderr


@pytest.mark.usefixtures("environment")
class TestKpiClose:
    def test_a_closed_month_recomputes_without_differences(self) -> None:
        closed = run("kpi", "close", "2025-01")

        assert closed.exit_code == 0, closed.output
        assert closed.stdout.startswith("2025-01 closed: ")
        month = json.loads(
            run("kpi", "--from", "2025-01-01", "--to", "2025-02-01").stdout
        )
        codes = {warning["code"] for warning in month["warnings"]}
        assert not {code for code in codes if code.startswith("closed_month")}
        stored = redis.Redis.from_url(REDIS_URL)
        try:
            assert stored.ttl("leadloop:kpi:closed:2025-01") == -1
        finally:
            stored.close()

    def test_closing_twice_is_refused_with_the_way_out(self) -> None:
        run("kpi", "close", "2025-01")

        again = run("kpi", "close", "2025-01")

        assert again.exit_code == 1
        assert "2025-01 was closed at" in again.stderr
        assert "--replace closes it again" in again.stderr
        assert run("kpi", "close", "2025-01", "--replace").exit_code == 0

    def test_a_month_not_over_cannot_be_closed(self) -> None:
        result = run("kpi", "close", "2099-01")

        assert result.exit_code == 2
        assert "2099-01 is not over yet" in result.stderr

    @pytest.mark.parametrize(
        ("options", "named"),
        [
            (["--manager", "10"], "--manager"),
            (WEEK, "--from, --to"),
            (AS_OF, "--as-of"),
        ],
    )
    def test_options_that_narrow_the_figures_are_refused(
        self, options: list[str], named: str
    ) -> None:
        result = run("kpi", *options, "close", "2025-01")

        assert result.exit_code == 2
        assert f"{named}: `kpi close` closes the whole month" in result.stderr
        stored = redis.Redis.from_url(REDIS_URL)
        try:
            assert stored.exists("leadloop:kpi:closed:2025-01") == 0
        finally:
            stored.close()

    def test_a_bad_month_is_a_usage_error(self) -> None:
        result = run("kpi", "close", "2025-13")

        assert result.exit_code == 2
        assert "'2025-13' is not a month like 2025-01" in result.stderr


@pytest.mark.usefixtures("environment")
class TestReport:
    def test_it_prints_the_feed_post(self) -> None:
        result = run("report", "--week", "2025-W02", *AS_OF)

        assert result.exit_code == 0, result.output
        title, _, message = result.stdout.partition("\n\n")
        assert title == "Итоги недели 06.01.2025 – 12.01.2025 (2025-W02)"
        assert "[B]Неделя по менеджерам[/B]" in message
        assert "[B]Январь 2025: с начала месяца[/B]" in message

    def test_post_posts_once(self, portal: RunningSandbox) -> None:
        first = run("report", "--week", "2025-W02", "--post")
        again = run("report", "--week", "2025-W02", "--post")

        assert first.exit_code == 0, first.output
        assert first.stdout.startswith("Posted 2025-W02 to the feed: post ")
        assert again.stdout.startswith("2025-W02 was posted before: post ")
        titles = [post["TITLE"] for post in portal.result("log.blogpost.get")]
        assert titles.count("Итоги недели 06.01.2025 – 12.01.2025 (2025-W02)") == 1

    def test_a_bad_week_is_a_usage_error(self) -> None:
        result = run("report", "--week", "2025-W99")

        assert result.exit_code == 2
        assert "'2025-W99' is not a week of its year" in result.stderr

    def test_only_an_ended_week_is_posted(self) -> None:
        result = run("report", "--week", "2099-W02", "--post")

        assert result.exit_code == 2
        assert "--post takes a week that has ended" in result.stderr


def test_without_a_portal_it_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEADLOOP_REDIS_URL", REDIS_URL)

    result = run("kpi", *WEEK)

    assert result.exit_code == 1
    assert "LEADLOOP_BITRIX24_WEBHOOK_URL is not set" in result.stderr
