"""The [services] table and the dialog's texts in [messages]."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.config import (
    DEFAULT_SERVICES,
    BusinessRules,
    ConfigError,
    Messages,
    load_rules,
    parse_rules,
)
from tests.app.conftest import REPO

EXAMPLE = REPO / "deploy" / "leadloop.example.toml"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_rules(text, source="rules.toml")
    return raised.value.problems


class TestServices:
    def test_without_a_table_the_usual_salon_services_are_known_without_prices(
        self,
    ) -> None:
        services = BusinessRules().services

        assert services == DEFAULT_SERVICES
        assert services["manicure"].title == "Маникюр"
        assert "ногти" in services["manicure"].synonyms
        assert "подстричься" in services["haircut"].synonyms
        assert all(
            s.price_from is None and s.price_to is None for s in services.values()
        )

    def test_the_example_file_lists_services_with_decimal_prices(self) -> None:
        services = load_rules(EXAMPLE).services

        assert services["manicure"].price_from == Decimal("1500.00")
        assert services["manicure"].price_to == Decimal("2500.00")
        assert services["coloring"].price_to is None
        assert services["haircut"].phrases()[:2] == ["Стрижка", "подстричься"]

    def test_a_configured_table_is_the_whole_list(self) -> None:
        rules = parse_rules('[services.nails]\ntitle = "Ногтевой сервис"\n')

        assert list(rules.services) == ["nails"]
        assert rules.services["nails"].synonyms == []

    def test_phrases_are_trimmed_and_single_spaced(self) -> None:
        rules = parse_rules(
            '[services.brows]\ntitle = "  Брови "\nsynonyms = ["коррекция   бровей"]\n'
        )

        assert rules.services["brows"].phrases() == ["Брови", "коррекция бровей"]

    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            (
                '[services."Маникюр"]\ntitle = "Маникюр"',
                "services.\"Маникюр\": 'Маникюр' is not a service id like manicure",
            ),
            ("[services.manicure]\nprice_from = '1.00'", "services.manicure.title: "),
            (
                '[services.manicure]\ntitle = "М"\nprice_from = 1500.5',
                'services.manicure.price_from: write money as a string, e.g. "1500.5"',
            ),
            (
                '[services.manicure]\ntitle = "М"\nprice_from = "2000.00"\n'
                'price_to = "1500.00"',
                "services.manicure.price_to: must not be below price_from (2000.00)",
            ),
            (
                '[services.manicure]\ntitle = "М"\nsynonyms = ["ногти", " "]',
                "services.manicure.synonyms[1]: must be a non-empty phrase",
            ),
            (
                '[services.manicure]\ntitle = "М"\ncolour = "red"',
                "services.manicure.colour: unknown key",
            ),
            (
                '[services.manicure]\ntitle = "Маникюр"\nsynonyms = ["ногти"]\n'
                '[services.pedicure]\ntitle = "Педикюр"\nsynonyms = ["Ногти"]',
                "services.pedicure.synonyms[0]: 'Ногти' already names the service "
                "'manicure'",
            ),
            (
                '[services.manicure]\ntitle = "Маникюр"\n'
                '[services.pedicure]\ntitle = "Педикюр"\nsynonyms = ["маникюр"]',
                "services.pedicure.synonyms[0]: 'маникюр' already names the service "
                "'manicure'",
            ),
            (
                '[services.a]\ntitle = "Массаж"\n[services.b]\ntitle = "массаж"',
                "services.b.title: 'массаж' is already the title of 'a'",
            ),
        ],
    )
    def test_a_broken_service_is_named_by_its_key_path(
        self, toml: str, problem: str
    ) -> None:
        problems = problems_of(toml)

        assert any(line.startswith(problem) for line in problems), problems


class TestDialogTexts:
    def test_every_dialog_text_has_a_russian_default(self) -> None:
        messages = Messages()

        assert messages.ask_name == "Как к вам обращаться?"
        assert "{opens}" in messages.done_after_hours
        assert "{opens}" in messages.handoff_after_hours
        assert messages.confirm.format(service="Маникюр", time="завтра", name="Анна")

    def test_the_example_file_spells_out_the_defaults(self) -> None:
        assert load_rules(EXAMPLE).messages == Messages()

    def test_a_text_may_drop_its_placeholders(self) -> None:
        rules = parse_rules('[messages]\ndone_after_hours = "Спасибо, ответим утром."')

        assert rules.messages.done_after_hours == "Спасибо, ответим утром."

    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            (
                'confirm = "{service} {phone}"',
                "messages.confirm: unknown placeholder {phone} (known: {service}, "
                "{time}, {name})",
            ),
            (
                'handoff_after_hours = "ответим {opens"',
                "messages.handoff_after_hours: not a valid template",
            ),
            ('ask_name = ""', "messages.ask_name: string should have at least 1"),
        ],
    )
    def test_a_broken_text_is_named_by_its_key_path(
        self, toml: str, problem: str
    ) -> None:
        problems = problems_of(f"[messages]\n{toml}\n")

        assert any(line.startswith(problem) for line in problems), problems
