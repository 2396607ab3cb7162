from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from reminders.booking import Answer, callback_data
from reminders.service import Reminders
from tests.reminders.conftest import FakeClock, Portal
from tests.reminders.test_answers import (
    DAY_BEFORE_NOON,
    STAMP,
    reminded,
    telegram_tap,
)


@pytest.fixture(autouse=True)
def at_noon_the_day_before(clock: FakeClock) -> None:
    clock.set(DAY_BEFORE_NOON)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestReminderMetrics:
    async def test_a_sent_reminder_counts_under_its_kind(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        labels = {"kind": "day_before", "outcome": "sent"}
        before = sample("leadloop_reminders_total", **labels)

        await reminded(portal, reminders)

        assert sample("leadloop_reminders_total", **labels) == before + 1

    async def test_a_reminder_sent_once_counts_once(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        labels = {"kind": "day_before", "outcome": "sent"}
        deal_id = await reminded(portal, reminders)
        before = sample("leadloop_reminders_total", **labels)

        again = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert again.outcome == "done"
        assert sample("leadloop_reminders_total", **labels) == before

    @pytest.mark.parametrize("answer", ["confirm", "cancel"])
    async def test_a_tap_counts_as_its_answer(
        self, portal: Portal, reminders: Reminders, answer: Answer
    ) -> None:
        deal_id = await reminded(portal, reminders)
        before = sample("leadloop_reminder_answers_total", answer=answer)

        tap = telegram_tap(portal, callback_data(answer, deal_id, STAMP))
        await reminders.answers.handle_answer(tap)

        assert sample("leadloop_reminder_answers_total", answer=answer) == before + 1
