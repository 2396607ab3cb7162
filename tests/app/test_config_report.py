"""`[report]`: who sees the weekly post and its words, checked when the file loads."""

from __future__ import annotations

import pytest

from app.config import BusinessRules, ConfigError, parse_rules


def problems_of(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_rules(text, source="rules.toml")
    return str(raised.value)


class TestReportRules:
    def test_by_default_everyone_sees_a_russian_post(self) -> None:
        report = BusinessRules().report

        assert report.post is True
        assert report.recipients == ["UA"]
        assert report.texts.title == "Итоги недели {start} – {end}"
        assert report.texts.warnings.deal_without_contact.startswith("Сделки")

    def test_departments_and_users_in_any_case(self) -> None:
        report = parse_rules('[report]\nrecipients = ["dr5", "U17", "ua"]\n').report

        assert report.recipients == ["DR5", "U17", "UA"]

    def test_posting_can_be_turned_off(self) -> None:
        assert parse_rules("[report]\npost = false\n").report.post is False

    @pytest.mark.parametrize(
        ("recipients", "problem"),
        [
            ('["SG3"]', "report.recipients[0]: 'SG3' is not a feed recipient"),
            ('["U0"]', "report.recipients[0]: 'U0' is not a feed recipient"),
            ('["DR"]', "report.recipients[0]: 'DR' is not a feed recipient"),
            ("[5]", "report.recipients[0]: 5 is not a feed recipient"),
            ("[]", "report.recipients: list should have at least 1 item"),
            ('["UA", "ua"]', "report.recipients[1]: 'UA' is listed twice"),
        ],
    )
    def test_a_bad_recipient_is_named(self, recipients: str, problem: str) -> None:
        assert problem in problems_of(f"[report]\nrecipients = {recipients}\n")

    def test_post_must_be_a_boolean(self) -> None:
        assert "report.post: input should be a valid boolean" in problems_of(
            '[report]\npost = "yes"\n'
        )

    def test_texts_are_overridable(self) -> None:
        texts = parse_rules(
            '[report.texts]\ntitle = "Неделя {start}—{end}"\ntotal = "Итого"\n'
        ).report.texts

        assert (texts.title, texts.total) == ("Неделя {start}—{end}", "Итого")

    @pytest.mark.parametrize(
        ("line", "problem"),
        [
            (
                'title = "Неделя {week}"',
                "report.texts.title: unknown placeholder {week} "
                "(known: {start}, {end})",
            ),
            ('total = "Итого {count}"', "unknown placeholder {count} (known: none)"),
            ('title = "Неделя {start"', "report.texts.title: not a valid template"),
            ('leads = ""', "report.texts.leads: string should have at least 1"),
            ('colour = "red"', "report.texts.colour: unknown key"),
        ],
    )
    def test_a_bad_text_is_named(self, line: str, problem: str) -> None:
        assert problem in problems_of(f"[report.texts]\n{line}\n")

    def test_warning_texts_take_the_engines_detail_only(self) -> None:
        assert (
            "report.texts.warnings.check_left_out: unknown placeholder {ids}"
            in problems_of('[report.texts.warnings]\ncheck_left_out = "Чеки {ids}"\n')
        )
