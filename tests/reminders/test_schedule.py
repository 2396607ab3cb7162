from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from reminders.schedule import (
    GRACE,
    Decision,
    QuietHours,
    next_working_morning,
    place,
    plan,
    quiet_hours,
    superseded,
    when_to_send,
)
from tests.reminders.conftest import MOSCOW, START, VISIT, make_rules


def msk(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2027, month, day, hour, minute, tzinfo=MOSCOW)


def slots(
    visit: datetime, now: datetime, role: str = "booked", extra: str = ""
) -> dict[str, datetime]:
    planned = plan(visit, role, make_rules(extra), now)
    return {slot.kind: slot.due for slot in planned.slots}


def dropped(visit: datetime, now: datetime, extra: str = "") -> dict[str, str]:
    planned = plan(visit, "booked", make_rules(extra), now)
    return {item.kind: item.reason for item in planned.dropped}


NIGHT = QuietHours(time(21, 0), time(9, 0), MOSCOW)


class TestPlan:
    def test_a_booked_visit_gets_both_reminders_a_call_check_and_an_outcome_check(
        self,
    ) -> None:
        assert slots(VISIT, START) == {
            "day_before": msk(10, 12),
            "2h": msk(11, 13),
            "call": msk(11, 12),
            "outcome": msk(12, 9),
        }

    def test_a_confirmed_visit_only_waits_for_its_outcome(self) -> None:
        assert slots(VISIT, START, role="confirmed") == {"outcome": msk(12, 9)}

    @pytest.mark.parametrize("role", ["cancelled", "visited", "no_show", "lost", "new"])
    def test_a_visit_without_a_booking_gets_nothing(self, role: str) -> None:
        assert slots(VISIT, START, role=role) == {}

    def test_offsets_and_checks_follow_the_rules(self) -> None:
        extra = (
            "[reminders]\nday_before = false\nhours_before = [24, 3]\n"
            "call_if_unconfirmed_hours = 0\noutcome_check = false\n"
        )

        assert slots(VISIT, START, extra=extra) == {
            "24h": msk(10, 15),
            "3h": msk(11, 12),
        }

    def test_times_are_business_time_whatever_zone_the_visit_is_given_in(
        self,
    ) -> None:
        visit_in_utc = VISIT.astimezone(UTC)

        assert slots(visit_in_utc, START)["day_before"] == msk(10, 12)

    def test_a_reminder_whose_time_has_passed_is_dropped(self) -> None:
        booked_late = msk(10, 18)

        assert "day_before" not in slots(VISIT, booked_late)
        assert dropped(VISIT, booked_late) == {"day_before": "passed"}

    def test_a_reminder_a_little_late_still_goes(self) -> None:
        just_after = msk(10, 12) + GRACE - timedelta(minutes=1)

        assert slots(VISIT, just_after)["day_before"] == msk(10, 12)

    def test_a_call_check_after_its_time_is_dropped(self) -> None:
        booked_by_phone = msk(11, 13, 30)

        assert dropped(VISIT, booked_by_phone)["call"] == "passed"

    def test_an_outcome_check_after_its_time_still_runs(self) -> None:
        days_later = msk(15, 11)

        assert slots(VISIT, days_later)["outcome"] == msk(12, 9)


class TestQuietHours:
    def test_a_reminder_in_the_early_morning_moves_to_nine_when_that_is_nearer(
        self,
    ) -> None:
        visit = msk(11, 10, 30)  # 2h before: 08:30

        assert slots(visit, START)["2h"] == msk(11, 9)

    def test_a_reminder_moves_to_the_evening_before_when_nine_is_too_late(
        self,
    ) -> None:
        visit = msk(11, 9)  # 2h before: 07:00, and 09:00 is the visit itself

        assert slots(visit, START)["2h"] == msk(10, 21)

    def test_a_late_evening_reminder_moves_back_to_nine_pm(self) -> None:
        extra = "[reminders]\nday_before_at = '22:00'\n"

        assert slots(VISIT, START, extra=extra)["day_before"] == msk(10, 21)

    def test_no_allowed_time_before_the_visit_drops_the_reminder(self) -> None:
        visit = msk(11, 9)
        booked_at_night = msk(10, 22)

        assert dropped(visit, booked_at_night)["2h"] == "no_allowed_time"

    def test_the_boundaries_themselves_are_allowed(self) -> None:
        assert not NIGHT.contains(msk(10, 21))
        assert not NIGHT.contains(msk(11, 9))
        assert NIGHT.contains(msk(10, 21, 1))
        assert NIGHT.contains(msk(11, 8, 59))
        assert NIGHT.contains(msk(11, 0))

    def test_two_reminders_moved_to_the_same_time_send_once(self) -> None:
        visit = msk(11, 10, 30)
        extra = "[reminders]\nday_before = false\nhours_before = [2, 3]\n"

        assert slots(visit, START, extra=extra) == {
            "3h": msk(11, 9),
            "call": msk(11, 7, 30),
            "outcome": msk(12, 9),
        }
        assert dropped(visit, START, extra=extra) == {"2h": "same_time_as_another"}

    def test_a_daytime_quiet_span_works_the_same_way(self) -> None:
        extra = "[reminders]\nquiet_hours = ['13:00', '15:00']\n"
        visit = msk(11, 16)  # 2h before: 14:00, in the middle of the span

        due = slots(visit, START, extra=extra)["2h"]

        assert due in (msk(11, 13), msk(11, 15))
        assert not QuietHours(time(13), time(15), MOSCOW).contains(due)

    def test_the_span_around_a_night_moment_is_that_night(self) -> None:
        assert NIGHT.span(msk(10, 23)) == (msk(10, 21), msk(11, 9))
        assert NIGHT.span(msk(11, 3)) == (msk(10, 21), msk(11, 9))

    def test_a_moment_outside_is_kept_if_before_the_visit(self) -> None:
        assert place(msk(10, 12), VISIT, NIGHT, not_before=START) == msk(10, 12)
        assert place(VISIT, VISIT, NIGHT, not_before=START) is None


class TestNextWorkingMorning:
    def test_is_the_opening_time_of_the_next_day(self) -> None:
        assert next_working_morning(VISIT, make_rules()) == msk(12, 9)

    def test_skips_the_day_off(self) -> None:
        saturday = msk(13, 18)

        assert next_working_morning(saturday, make_rules()) == msk(15, 9)

    def test_skips_holidays_and_takes_extra_working_days(self) -> None:
        rules = make_rules(
            "[calendar]\nholidays = ['2027-03-12']\n"
            "extra_working_days = ['2027-03-14']\nhours = ['10:00', '20:00']\n"
        )

        assert next_working_morning(VISIT, rules) == msk(13, 10)
        assert next_working_morning(msk(13, 12), rules) == msk(14, 10)


class TestWhenToSend:
    quiet = quiet_hours(make_rules())

    def test_sends_in_the_daytime(self) -> None:
        assert when_to_send(msk(11, 13), VISIT, self.quiet).decision is Decision.SEND

    def test_a_job_late_into_the_night_waits_for_the_morning(self) -> None:
        timing = when_to_send(msk(10, 23), VISIT, self.quiet)

        assert timing.decision is Decision.DEFER
        assert timing.until == msk(11, 9)

    def test_a_night_job_before_an_early_visit_gives_up(self) -> None:
        timing = when_to_send(msk(11, 7), msk(11, 8, 30), self.quiet)

        assert (timing.decision, timing.reason) == (Decision.SKIP, "quiet_until_visit")

    def test_after_the_visit_nothing_is_sent(self) -> None:
        timing = when_to_send(VISIT, VISIT, self.quiet)

        assert (timing.decision, timing.reason) == (Decision.SKIP, "visit_passed")


class TestSuperseded:
    rules = make_rules()

    def test_a_day_before_reminder_run_after_the_two_hour_one_is_due(self) -> None:
        assert superseded("day_before", VISIT, self.rules, msk(11, 13, 5))

    def test_a_reminder_run_on_time_is_not(self) -> None:
        assert not superseded("day_before", VISIT, self.rules, msk(10, 12))
        assert not superseded("2h", VISIT, self.rules, msk(11, 13))

    def test_moved_reminders_are_compared_where_they_were_moved(self) -> None:
        visit = msk(11, 10, 30)  # 2h before moves from 08:30 to 09:00

        assert not superseded("day_before", visit, self.rules, msk(11, 8, 45))
        assert superseded("day_before", visit, self.rules, msk(11, 9))
