from __future__ import annotations

from datetime import datetime, time
from typing import Any

import pytest
from redis.asyncio import Redis

from app.config import (
    BusinessRules,
    CalendarRules,
    ConfigError,
    IntakeRules,
    Shift,
    parse_rules,
)
from qualification.managers import (
    ManagerPicker,
    Schedule,
    call_back_by,
    tier_of,
    when_words,
)
from qualification.schema import Qualification, QualifiedLead
from tests.qualification.conftest import MOSCOW

# Wednesday 8 January 2025; the salon works Monday to Saturday, 09:00-21:00.
WEDNESDAY = datetime(2025, 1, 8, 14, 5, tzinfo=MOSCOW)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment in January 2025, Moscow time (the 8th is a Wednesday)."""
    return datetime(2025, 1, day, hour, minute, tzinfo=MOSCOW)


def rules(**intake: Any) -> BusinessRules:
    return BusinessRules(intake=IntakeRules.model_validate(intake))


def lead(
    *, readiness: str = "warm", urgency: str = "normal", handover: bool = False
) -> QualifiedLead:
    evidence: dict[str, tuple[str, ...]] = {}
    if readiness != "warm":
        evidence["readiness"] = ("хочу сегодня",)
    if urgency != "normal":
        evidence["urgency"] = ("срочно",)
    qualification = Qualification.model_validate(
        {"readiness": readiness, "urgency": urgency, "evidence": evidence}
    )
    return QualifiedLead(
        intake_id="00000000-0000-4000-8000-000000000001",
        channel="telegram",
        chat_id="100000001",
        sender_id="100000001",
        name=None,
        phone=None,
        service_id=None,
        service_title=None,
        preferred_time=None,
        qualification=qualification,
        transcript=(),
        handover=handover,
        created_at=WEDNESDAY,
    )


@pytest.fixture
def salon() -> Schedule:
    return Schedule.of(BusinessRules())


class TestSchedule:
    def test_works_from_opening_until_just_before_closing(
        self, salon: Schedule
    ) -> None:
        assert salon.is_working(at(8, 9, 0))
        assert salon.is_working(at(8, 20, 59))
        assert not salon.is_working(at(8, 21, 0))
        assert not salon.is_working(at(8, 8, 59))

    def test_sunday_and_holidays_are_days_off(self) -> None:
        calendar = CalendarRules.model_validate({"holidays": ["2025-01-09"]})
        schedule = Schedule.of(BusinessRules(calendar=calendar))

        assert not schedule.is_working(at(12, 12))  # Sunday
        assert not schedule.is_working(at(9, 12))  # the holiday, a Thursday
        assert schedule.next_start(at(8, 22)) == at(10, 9)

    def test_working_minutes_carry_over_the_night(self, salon: Schedule) -> None:
        assert salon.add_working_minutes(at(8, 20, 55), 15) == at(9, 9, 10)

    def test_working_minutes_skip_sunday(self, salon: Schedule) -> None:
        saturday_evening = at(11, 20, 30)

        assert salon.add_working_minutes(saturday_evening, 60) == at(13, 9, 30)

    def test_a_shift_narrows_the_business_hours(self) -> None:
        shift = Shift(working_days=["mon", "wed"], hours=(time(12), time(15)))
        schedule = Schedule.of(BusinessRules(), shift)

        assert schedule.next_start(at(8, 15, 30)) == at(13, 12)
        assert schedule.add_working_minutes(at(8, 14, 0), 90) == at(13, 12, 30)


class TestDeadlines:
    def test_a_hot_lead_is_due_in_fifteen_working_minutes(
        self, salon: Schedule
    ) -> None:
        deadline = call_back_by(salon, "hot", rules().intake.deadlines, WEDNESDAY)

        assert deadline == at(8, 14, 20)

    def test_a_warm_lead_is_due_in_two_working_hours_across_closing(
        self, salon: Schedule
    ) -> None:
        deadline = call_back_by(salon, "warm", rules().intake.deadlines, at(8, 20))

        assert deadline == at(9, 10)

    def test_a_cold_lead_is_due_the_next_working_morning(self, salon: Schedule) -> None:
        deadlines = rules().intake.deadlines

        assert call_back_by(salon, "cold", deadlines, WEDNESDAY) == at(9, 10)
        assert call_back_by(salon, "cold", deadlines, at(11, 15)) == at(13, 10)
        # Before opening, the next morning is this morning.
        assert call_back_by(salon, "cold", deadlines, at(8, 2)) == at(8, 10)

    def test_deadlines_come_from_the_rules(self, salon: Schedule) -> None:
        deadlines = rules(
            deadlines={"hot": 5, "cold": 240, "morning_grace_minutes": 0}
        ).intake.deadlines

        assert call_back_by(salon, "hot", deadlines, WEDNESDAY) == at(8, 14, 10)
        assert call_back_by(salon, "cold", deadlines, WEDNESDAY) == at(8, 18, 5)

    def test_asking_for_a_person_or_urgency_makes_a_lead_hot(self) -> None:
        assert tier_of(lead(handover=True)) == "hot"
        assert tier_of(lead(urgency="urgent")) == "hot"
        assert tier_of(lead(readiness="cold")) == "cold"
        assert tier_of(lead()) == "warm"


class TestWhenWords:
    def test_within_the_hour_it_counts_minutes(self, salon: Schedule) -> None:
        assert when_words(salon, WEDNESDAY, at(8, 14, 20)) == "в течение 15 минут"
        assert when_words(salon, WEDNESDAY, at(8, 14, 6)) == "в течение 1 минуты"
        assert when_words(salon, WEDNESDAY, at(8, 14, 26)) == "в течение 21 минуты"
        assert when_words(salon, WEDNESDAY, at(8, 14, 16)) == "в течение 11 минут"

    def test_later_today_or_on_another_day_it_names_the_time(
        self, salon: Schedule
    ) -> None:
        assert when_words(salon, WEDNESDAY, at(8, 16, 5)) == "сегодня до 16:05"
        assert when_words(salon, at(8, 20), at(9, 10)) == "завтра до 10:00"

    def test_when_closed_it_says_when_the_manager_starts(self, salon: Schedule) -> None:
        assert when_words(salon, at(8, 22), at(9, 9, 15)) == "завтра после 09:00"
        assert when_words(salon, at(8, 7), at(8, 9, 15)) == "сегодня после 09:00"
        saturday_night = at(11, 22)
        assert when_words(salon, saturday_night, at(13, 9, 15)) == (
            "в понедельник после 09:00"
        )


class TestManagerPicker:
    async def test_managers_take_new_clients_in_turn(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(
            redis, rules(managers=["23", "17"]), counter_key=f"{key_prefix}:rr"
        )

        picked = [await picker.pick(WEDNESDAY, None) for _ in range(4)]

        assert [p.manager_id for p in picked if p] == [17, 23, 17, 23]
        assert {p.reason for p in picked if p} == {"round_robin"}

    async def test_the_previous_manager_keeps_the_client(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(
            redis, rules(managers=["17", "23"]), counter_key=f"{key_prefix}:rr"
        )

        picked = await picker.pick(WEDNESDAY, 23)

        assert picked is not None
        assert (picked.manager_id, picked.reason) == (23, "previous")
        assert await redis.get(f"{key_prefix}:rr") is None

    async def test_a_previous_manager_no_longer_listed_gives_way_to_the_turn(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(
            redis, rules(managers=["17"]), counter_key=f"{key_prefix}:rr"
        )

        picked = await picker.pick(WEDNESDAY, 1)

        assert picked is not None
        assert (picked.manager_id, picked.reason) == (17, "round_robin")

    async def test_only_managers_on_shift_take_clients(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(
            redis,
            rules(
                managers=["17", "23"],
                shifts={"17": {"hours": ["09:00", "15:00"]}},
            ),
            counter_key=f"{key_prefix}:rr",
        )

        afternoon = [await picker.pick(at(8, 16), None) for _ in range(3)]

        assert [p.manager_id for p in afternoon if p] == [23, 23, 23]

    async def test_with_nobody_working_the_first_to_start_takes_the_client(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(
            redis,
            rules(
                managers=["17", "23"],
                shifts={"23": {"hours": ["12:00", "21:00"]}},
            ),
            counter_key=f"{key_prefix}:rr",
        )

        picked = await picker.pick(at(8, 22), None)

        assert picked is not None
        assert (picked.manager_id, picked.reason) == (17, "next_to_start")
        assert picked.schedule.next_start(at(8, 22)) == at(9, 9)

    async def test_bonus_managers_serve_when_intake_lists_none(
        self, redis: Redis, key_prefix: str
    ) -> None:
        configured = parse_rules('[bonus.managers."41"]\nbase = "1000.00"')
        picker = ManagerPicker(redis, configured, counter_key=f"{key_prefix}:rr")

        picked = await picker.pick(WEDNESDAY, None)

        assert picker.managers == (41,)
        assert picked is not None
        assert picked.manager_id == 41

    async def test_nobody_configured_keeps_a_previous_manager_or_answers_none(
        self, redis: Redis, key_prefix: str
    ) -> None:
        picker = ManagerPicker(redis, rules(), counter_key=f"{key_prefix}:rr")

        kept = await picker.pick(WEDNESDAY, 5)

        assert kept is not None
        assert kept.manager_id == 5
        assert await picker.pick(WEDNESDAY, None) is None


class TestIntakeRules:
    def test_a_deadline_is_working_minutes_or_next_morning(self) -> None:
        with pytest.raises(ConfigError, match=r"intake\.deadlines\.hot"):
            parse_rules('[intake.deadlines]\nhot = "soon"')
        with pytest.raises(ConfigError, match="1–10080"):
            parse_rules("[intake.deadlines]\nwarm = 0")

    def test_a_shift_starts_before_it_ends(self) -> None:
        with pytest.raises(ConfigError, match="must be before"):
            parse_rules('[intake.shifts."17"]\nhours = ["15:00", "09:00"]')

    def test_sources_and_fields_are_checked(self) -> None:
        with pytest.raises(ConfigError, match=r"intake\.fields"):
            parse_rules('[intake.fields]\nreadiness = "not a code"')

        configured = parse_rules(
            '[intake.sources]\ntelegram = "UC_TG01"\n'
            '[intake.fields]\nreadiness = "UF_CRM_READINESS"'
        )

        assert configured.intake.sources["telegram"] == "UC_TG01"
        assert configured.intake.fields == {"readiness": "UF_CRM_READINESS"}
