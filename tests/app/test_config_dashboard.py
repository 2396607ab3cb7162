"""`[dashboard.texts]`: the dashboard's Russian words, each overridable."""

from __future__ import annotations

import pytest

from app.config import BusinessRules, DashboardLists, parse_rules
from kpi_engine.dashboard.views import DRILL_METRICS
from tests.app.test_config import EXAMPLE, problems_of


class TestDashboardTexts:
    def test_the_defaults_are_russian(self) -> None:
        texts = BusinessRules().dashboard.texts

        assert texts.title == "Показатели продаж"
        assert texts.channels["phone"] == "Телефон"
        assert texts.lists["no_shows"] == "Неявки"
        assert texts.roles["no_show"] == "не пришёл"
        assert texts.entities.get("contact") == "контакт"
        assert texts.wait_bins[-1] == "без ответа"

    def test_the_example_file_shows_the_defaults(self) -> None:
        rules = parse_rules(EXAMPLE.read_text(encoding="utf-8"))

        assert rules.dashboard == BusinessRules().dashboard

    def test_a_word_is_overridden_and_the_rest_keep_their_defaults(self) -> None:
        rules = parse_rules(
            '[dashboard.texts]\ntitle = "Продажи"\n'
            '[dashboard.texts.lists]\nleads = "Все заявки"\n'
        )

        texts = rules.dashboard.texts
        assert (texts.title, texts.lists["leads"]) == ("Продажи", "Все заявки")
        assert texts.lists["calls"] == "Исходящие звонки"

    def test_every_deal_list_has_a_heading(self) -> None:
        assert set(DashboardLists.model_fields) == DRILL_METRICS

    def test_an_unknown_code_is_a_key_error(self) -> None:
        lists = BusinessRules().dashboard.texts.lists

        with pytest.raises(KeyError):
            lists["payouts"]
        assert lists.get("payouts") is None

    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            (
                '[dashboard.texts]\nwithin_sla = "Ответ за {minutes} мин"',
                "dashboard.texts.within_sla: unknown placeholder {minutes} "
                "(known: {sla})",
            ),
            (
                '[dashboard.texts]\ntitle = "Панель {month}"',
                "dashboard.texts.title: unknown placeholder {month} (known: none)",
            ),
            (
                '[dashboard.texts]\nperiod_line = "{start"',
                "dashboard.texts.period_line: not a valid template",
            ),
            ('[dashboard.texts]\nlogout = ""', "dashboard.texts.logout: "),
            (
                '[dashboard.texts]\nwait_bins = ["до 5 мин", "больше"]',
                "dashboard.texts.wait_bins: tuple should have at least 6 items",
            ),
            (
                '[dashboard.texts.lists]\npayouts = "Выплаты"',
                "dashboard.texts.lists.payouts: unknown key",
            ),
            ('[dashboard]\ntheme = "dark"', "dashboard.theme: unknown key"),
        ],
    )
    def test_a_wrong_text_is_named_with_its_key(self, toml: str, problem: str) -> None:
        assert problem in problems_of(toml)
