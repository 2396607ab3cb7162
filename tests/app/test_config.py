from __future__ import annotations

import tomllib
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from app.config import BusinessRules, ConfigError, load_rules, parse_rules
from tests.app.conftest import REPO

EXAMPLE = REPO / "deploy" / "leadloop.example.toml"


def keys_missing_from(
    document: dict[str, Any], model: type[BaseModel], prefix: str = ""
) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if name not in document:
            missing.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(
            field.annotation, BaseModel
        ):
            missing += keys_missing_from(
                document[name], field.annotation, f"{prefix}{name}."
            )
    return missing


def problems_of(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_rules(text, source="rules.toml")
    return str(raised.value)


class TestDefaults:
    def test_no_file_means_the_documented_defaults(self) -> None:
        rules = load_rules(None)

        assert rules == BusinessRules()
        assert rules.zone == ZoneInfo("Europe/Moscow")
        assert rules.crm.mode == "auto"
        assert rules.calendar.working_days == ["mon", "tue", "wed", "thu", "fri", "sat"]
        assert rules.calendar.hours == (time(9, 0), time(21, 0))
        assert rules.kpi.sla_minutes == 15
        assert rules.money.currency == "RUB"
        assert rules.bonus.rate == Decimal("0.03")
        assert rules.bonus.per_retained == Decimal("1000.00")
        assert rules.messages.greeting.startswith("Здравствуйте")

    def test_an_empty_file_means_the_defaults(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.toml"
        path.write_text("")

        assert load_rules(path) == BusinessRules()

    def test_a_manager_without_a_table_gets_the_default_terms(self) -> None:
        terms = BusinessRules().bonus.terms_for("99")

        assert terms.base == Decimal("0.00")
        assert terms.plan is None
        assert terms.rate == Decimal("0.03")
        assert terms.per_retained == Decimal("1000.00")


class TestExampleFile:
    def test_loads(self) -> None:
        rules = load_rules(EXAMPLE)

        assert rules.crm.visit_field == "UF_CRM_LL_VISIT_AT"
        assert rules.crm.stages.role_of("PREPARATION") == "booked"
        assert rules.crm.stages.role_of("C7:UNKNOWN") is None
        assert rules.kpi.non_human_users == ["45"]
        assert date(2026, 1, 7) in rules.calendar.holidays

    def test_money_is_decimal_to_the_kopeck(self) -> None:
        bonus = load_rules(EXAMPLE).bonus

        assert bonus.terms_for("17").base == Decimal("30000.00")
        assert bonus.terms_for("17").plan == Decimal("400000.00")
        assert bonus.terms_for("17").rate == Decimal("0.03")
        assert bonus.terms_for("23").rate == Decimal("0.05")
        assert bonus.terms_for("23").per_retained == Decimal("1200.00")

    def test_a_month_table_overrides_the_flat_rate(self) -> None:
        money = load_rules(EXAMPLE).money

        assert money.rate("USD", "2026-11") == Decimal("93.40")
        assert money.rate("USD", "2026-12") == Decimal("92.15")
        assert money.rate("EUR", "2026-11") == Decimal("99.80")
        assert money.rate("RUB", "2026-11") == Decimal(1)
        assert money.rate("CNY", "2026-11") is None

    def test_documents_every_key_the_rules_know(self) -> None:
        document = tomllib.loads(EXAMPLE.read_text())

        assert keys_missing_from(document, BusinessRules) == []


class TestLoading:
    def test_a_missing_file_is_named_with_the_variable(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.toml"

        with pytest.raises(ConfigError) as raised:
            load_rules(path)

        message = str(raised.value)
        assert str(path) in message
        assert "LEADLOOP_CONFIG" in message
        assert "does not exist" in message

    def test_broken_toml_is_reported_with_its_position(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.toml"
        path.write_text("[crm\nmode = 'simple'\n")

        with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
            load_rules(path)

    def test_every_problem_is_listed_on_its_own_line(self) -> None:
        message = problems_of('timezone = "Mars/Olympus"\n[kpi]\nsla_minutes = 0\n')

        assert message.splitlines() == [
            "invalid configuration in rules.toml:",
            "  timezone: 'Mars/Olympus' is not an IANA time zone like Europe/Moscow",
            "  kpi.sla_minutes: input should be greater than 0",
        ]


class TestInvalidRules:
    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            ("timezone = 3", "timezone: 3 is not an IANA time zone"),
            ("surprise = 1", "surprise: unknown key"),
            ("[crm]\nmode = 'smart'", "crm.mode: input should be 'auto'"),
            ("[crm]\npipelines = [0, -1]", "crm.pipelines[1]: input should be greater"),
            (
                "[crm]\npipelines = ['1']",
                "crm.pipelines[0]: input should be a valid int",
            ),
            ("[crm]\nvisit_field = 'uf visit'", "crm.visit_field: 'uf visit' is not a"),
            (
                "[crm]\nvisit_field = 'UF_CRM_LEADLOOP_VISIT_AT'",
                "crm.visit_field: 'UF_CRM_LEADLOOP_VISIT_AT' is longer than the 20",
            ),
            (
                "[crm.stages]\nbooked = ['']",
                "crm.stages.booked[0]: must be a non-empty",
            ),
            (
                "[crm.stages]\nbooked = ['C1:NEW', 'WON']",
                "crm.stages.visited[0]: stage 'WON' already has the role 'booked'",
            ),
            (
                "[crm.stages]\nnew = ['NEW']\nlost = ['LOSE', 'NEW']",
                "crm.stages.lost[1]: stage 'NEW' already has the role 'new'",
            ),
            ("[crm.stages]\nwaiting = ['X']", "crm.stages.waiting: unknown key"),
            (
                "[crm.lead_statuses]\nnew = ['NEW']\nlost = ['NEW']",
                "crm.lead_statuses.lost[0]: status 'NEW' is also listed as new",
            ),
            ("[calendar]\nworking_days = ['monday']", "calendar.working_days[0]:"),
            (
                "[calendar]\nworking_days = ['mon', 'tue', 'mon']",
                "calendar.working_days[2]: 'mon' is listed twice",
            ),
            (
                "[calendar]\nhours = ['21:00', '09:00']",
                "calendar.hours: start 21:00 must be before end 09:00",
            ),
            (
                "[calendar]\nhours = ['9am', '21:00']",
                "calendar.hours[0]: '9am' is not a",
            ),
            ("[calendar]\nhours = ['09:00']", "calendar.hours[1]: field required"),
            (
                "[calendar]\nholidays = ['2026-02-30']",
                "calendar.holidays[0]: '2026-02-30' is not a date",
            ),
            (
                "[calendar]\nextra_working_days = [2026-01-03T10:00:00]",
                "calendar.extra_working_days[0]:",
            ),
            ("[kpi]\nsla_minutes = '15'", "kpi.sla_minutes: input should be a valid"),
            ("[kpi]\nsla_minutes = 0", "kpi.sla_minutes: input should be greater"),
            (
                "[kpi]\nnon_human_users = ['bot']",
                "kpi.non_human_users[0]: 'bot' is not a Bitrix24 user id",
            ),
            ("[money]\ncurrency = 'rub'", "money.currency: 'rub' is not a currency"),
            (
                "[money.rates]\nUSD = 92.15",
                'money.rates.USD: write a rate as a string, e.g. "92.15"',
            ),
            ("[money.rates]\nUSD = '0'", "money.rates.USD: must be greater than zero"),
            ("[money.rates]\nUSD = 'lots'", "money.rates.USD: 'lots' is not a decimal"),
            ("[money.rates]\nusd = '92'", "money.rates.usd: 'usd' is not a currency"),
            (
                '[money.rates."2026-11"]\nUSD = 93.4',
                'money.rates."2026-11".USD: write a rate as a string',
            ),
            (
                "[money.rates.november]\nUSD = '93'",
                "money.rates.november: a month table must be named like",
            ),
            (
                "[bonus]\nper_retained = '1500.01'",
                "bonus.per_retained: must lie within 500.00–1500.00",
            ),
            (
                "[bonus]\nper_retained = '499.99'",
                "bonus.per_retained: must lie within 500.00–1500.00",
            ),
            (
                "[bonus]\nper_retained = 1000.0",
                "bonus.per_retained: write money as a string",
            ),
            ("[bonus]\nrate = '3'", "bonus.rate: must lie within 0–1"),
            (
                "[bonus]\nrate = 0.03",
                'bonus.rate: write a rate as a string, e.g. "0.03"',
            ),
            (
                '[bonus.managers."17"]\nbase = 30000.5',
                'bonus.managers."17".base: write money as a string',
            ),
            (
                '[bonus.managers."17"]\nplan = "100.001"',
                "bonus.managers.\"17\".plan: '100.001' has more than two decimal",
            ),
            (
                '[bonus.managers."17"]\nbase = "-1.00"',
                'bonus.managers."17".base: must not be negative',
            ),
            (
                '[bonus.managers."17"]\nper_retained = "2000.00"',
                'bonus.managers."17".per_retained: must lie within 500.00–1500.00',
            ),
            (
                '[bonus.managers."17"]\nbonus = "1.00"',
                'bonus.managers."17".bonus: unknown key',
            ),
            (
                "[bonus.managers.anna]\nbase = '1.00'",
                "bonus.managers.anna: 'anna' is not a Bitrix24 user id",
            ),
            ("[messages]\ngreeting = ''", "messages.greeting: string should have"),
            ("[messages]\nhello = 'Привет'", "messages.hello: unknown key"),
        ],
    )
    def test_names_the_key_path_and_the_problem(self, toml: str, problem: str) -> None:
        assert problem in problems_of(toml)

    def test_a_message_never_echoes_a_whole_section(self) -> None:
        message = problems_of('[bonus.managers."17"]\nplan = 5.5\nbase = "1.00"\n')

        assert "base" not in message


class TestParsedValues:
    def test_user_ids_given_as_integers_become_strings(self) -> None:
        rules = parse_rules("[kpi]\nnon_human_users = [7, '08']\n")

        assert rules.kpi.non_human_users == ["7", "8"]

    def test_whole_money_amounts_gain_their_kopecks(self) -> None:
        rules = parse_rules('[bonus.managers.5]\nbase = 25000\nplan = "100000"\n')

        assert rules.bonus.terms_for("5").base == Decimal("25000.00")
        assert str(rules.bonus.terms_for("5").plan) == "100000.00"

    def test_toml_dates_and_times_are_accepted(self) -> None:
        rules = parse_rules(
            "[calendar]\nhours = [10:00:00, 20:30:00]\nholidays = [2026-03-09]\n"
        )

        assert rules.calendar.hours == (time(10, 0), time(20, 30))
        assert rules.calendar.holidays == [date(2026, 3, 9)]

    @pytest.mark.parametrize(
        ("day", "working"),
        [
            (date(2026, 1, 5), True),  # Monday
            (date(2026, 1, 4), False),  # Sunday
            (date(2026, 1, 7), False),  # Wednesday, a holiday
            (date(2026, 1, 3), True),  # Saturday that is an extra working day
            (date(2026, 1, 11), False),  # Sunday
        ],
    )
    def test_a_working_day_follows_the_calendar(self, day: date, working: bool) -> None:
        calendar = load_rules(EXAMPLE).calendar

        assert calendar.is_working_day(day) is working
