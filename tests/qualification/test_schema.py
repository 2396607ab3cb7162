from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from pydantic import ValidationError

from qualification.schema import Budget, Qualification, QualifiedLead, TranscriptLine
from qualification.timeparse import TimeWindow
from tests.qualification.conftest import MOSCOW, NOW


def lead(**overrides: object) -> QualifiedLead:
    values: dict[str, object] = {
        "intake_id": "c0ffee00-0000-4000-8000-000000000001",
        "channel": "telegram",
        "chat_id": "100000001",
        "sender_id": "100000001",
        "name": "Анна",
        "phone": "+79990000001",
        "service_id": "manicure",
        "service_title": "Маникюр",
        "preferred_time": TimeWindow(
            first_day=date(2025, 1, 9),
            last_day=date(2025, 1, 9),
            zone="Europe/Moscow",
            quotes=("завтра",),
        ),
        "qualification": Qualification(),
        "transcript": (
            TranscriptLine(at=NOW, author="client", text="Хочу маникюр"),
            TranscriptLine(at=NOW, author="bot", text="Когда вам удобно прийти?"),
        ),
        "created_at": NOW,
    }
    values.update(overrides)
    return QualifiedLead.model_validate(values)


class TestQualification:
    def test_a_judgement_without_evidence_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="service has no evidence"):
            Qualification(service="manicure")

    def test_moving_readiness_needs_evidence_but_the_default_does_not(self) -> None:
        assert Qualification().readiness == "warm"
        with pytest.raises(ValidationError, match="readiness has no evidence"):
            Qualification(readiness="hot")

        hot = Qualification(readiness="hot", evidence={"readiness": ("срочно",)})
        assert hot.judgements() == ["readiness"]

    def test_the_summary_is_one_line(self) -> None:
        with pytest.raises(ValidationError, match="one line"):
            Qualification(summary="первая\nвторая")

    def test_unsupported_names_judgements_whose_quotes_are_not_in_the_text(
        self,
    ) -> None:
        found = Qualification(
            service="manicure",
            urgency="urgent",
            evidence={"service": ("Маникюр",), "urgency": ("очень срочно",)},
        )

        assert found.unsupported("хочу  маникюр, срочно") == ["urgency"]

    def test_survives_a_round_trip_through_json(self) -> None:
        found = Qualification(
            budget=Budget(high=Decimal("3000")), evidence={"budget": ("до 3000",)}
        )

        assert Qualification.model_validate_json(found.model_dump_json()) == found


class TestBudget:
    @pytest.mark.parametrize(
        ("budget", "russian"),
        [
            (Budget(high=Decimal("3000")), "до 3\u00a0000\u00a0₽"),
            (Budget(low=Decimal("2000")), "от 2\u00a0000\u00a0₽"),
            (
                Budget(low=Decimal("3000"), high=Decimal("5000")),
                "от 3\u00a0000 до 5\u00a0000\u00a0₽",
            ),
            (
                Budget(low=Decimal("4000"), high=Decimal("4000")),
                "около 4\u00a0000\u00a0₽",
            ),
            (Budget(high=Decimal("1500.50")), "до 1\u00a0500,50\u00a0₽"),
        ],
    )
    def test_describes_itself_in_russian(self, budget: Budget, russian: str) -> None:
        assert budget.describe() == russian

    def test_needs_a_bound_in_order(self) -> None:
        with pytest.raises(ValidationError, match="low or a high"):
            Budget()
        with pytest.raises(ValidationError, match="below low"):
            Budget(low=Decimal("5000"), high=Decimal("3000"))


class TestQualifiedLead:
    def test_is_complete_with_name_phone_service_and_time(self) -> None:
        assert lead().complete
        assert not lead(phone=None).complete
        assert not lead(preferred_time=None, handover=True).complete

    def test_the_transcript_reads_as_local_time_lines(self) -> None:
        assert lead().transcript_text(MOSCOW) == (
            "[08.01 14:05] Клиент: Хочу маникюр\n"
            "[08.01 14:05] Бот: Когда вам удобно прийти?"
        )
