"""`[intake] followup_reply_every_minutes`: the bot's answers after the hand-off."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.config import BusinessRules, parse_rules
from tests.app.test_config import EXAMPLE, problems_of


class TestFollowUpReplyInterval:
    def test_defaults_to_ten_minutes(self) -> None:
        intake = BusinessRules().intake

        assert intake.followup_reply_every_minutes == 10
        assert intake.followup_reply_every == timedelta(minutes=10)

    def test_the_rules_file_sets_it(self) -> None:
        rules = parse_rules("[intake]\nfollowup_reply_every_minutes = 45\n")

        assert rules.intake.followup_reply_every == timedelta(minutes=45)

    def test_zero_answers_every_message(self) -> None:
        rules = parse_rules("[intake]\nfollowup_reply_every_minutes = 0\n")

        assert rules.intake.followup_reply_every == timedelta(0)

    def test_the_example_file_documents_the_default(self) -> None:
        text = EXAMPLE.read_text(encoding="utf-8")

        assert "followup_reply_every_minutes = 10" in text
        assert parse_rules(text).intake.followup_reply_every_minutes == 10

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("-1", "greater than or equal to 0"),
            ("1441", "less than or equal to 1440"),
            ('"10"', "valid integer"),
            ("2.5", "valid integer"),
        ],
    )
    def test_a_wrong_value_is_named_with_its_key(
        self, value: str, problem: str
    ) -> None:
        problems = problems_of(f"[intake]\nfollowup_reply_every_minutes = {value}\n")

        assert "intake.followup_reply_every_minutes: " in problems
        assert problem in problems
