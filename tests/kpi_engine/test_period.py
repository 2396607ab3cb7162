"""Periods, as_of, days(P), working days and business minutes."""

from __future__ import annotations

from datetime import date, datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from kpi_engine.data import InvalidPeriod, KpiQuery
from kpi_engine.period import (
    Period,
    Span,
    business_minutes,
    iso_week_period,
    month_period,
    needed_window,
    week_just_ended,
)
from tests.kpi_engine.builders import query, rules

MSK = ZoneInfo("Europe/Moscow")


def period(start: str, end: str, as_of: str, extra: str = "") -> Period:
    return Period.of(query(start, end, as_of), rules(extra))


def minutes(start: str, end: str, extra: str = "") -> Fraction:
    calendar = rules(extra).calendar
    return business_minutes(
        datetime.fromisoformat(start), datetime.fromisoformat(end), calendar, MSK
    )


class TestQuery:
    def test_end_on_the_start_date_is_an_error(self) -> None:
        with pytest.raises(InvalidPeriod):
            query("2025-01-06", "2025-01-06", "2025-01-13T09:00:00+03:00")

    def test_end_before_the_start_is_an_error(self) -> None:
        with pytest.raises(InvalidPeriod):
            query("2025-01-13", "2025-01-06", "2025-01-13T09:00:00+03:00")

    def test_as_of_without_an_offset_is_an_error(self) -> None:
        with pytest.raises(InvalidPeriod):
            KpiQuery(
                start=date(2025, 1, 6),
                end=date(2025, 1, 13),
                as_of=datetime(2025, 1, 13, 9),
            )


class TestPeriod:
    def test_period_runs_from_local_midnight_to_local_midnight(self) -> None:
        span = period("2025-01-06", "2025-01-13", "2025-01-13T09:00:00+03:00").span

        assert span.start.astimezone(MSK).isoformat() == "2025-01-06T00:00:00+03:00"
        assert span.end.astimezone(MSK).isoformat() == "2025-01-13T00:00:00+03:00"

    def test_the_end_is_exclusive_and_the_start_inclusive(self) -> None:
        span = period("2025-01-06", "2025-01-13", "2025-01-13T09:00:00+03:00").span

        assert datetime.fromisoformat("2025-01-05T21:00:00+00:00") in span
        assert datetime.fromisoformat("2025-01-05T20:59:59+00:00") not in span
        assert datetime.fromisoformat("2025-01-12T20:59:59+00:00") in span
        assert datetime.fromisoformat("2025-01-12T21:00:00+00:00") not in span

    def test_retention_window_is_the_period_moved_back_30_days(self) -> None:
        window = period("2025-01-01", "2025-02-01", "2025-03-05T00:00:00+03:00")

        assert window.retention_window == Span(
            datetime.fromisoformat("2024-12-02T00:00:00+03:00"),
            datetime.fromisoformat("2025-01-02T00:00:00+03:00"),
        )

    def test_a_whole_calendar_month_is_a_month(self) -> None:
        as_of = "2025-03-01T00:00:00+03:00"

        assert period("2025-02-01", "2025-03-01", as_of).is_month
        assert period("2024-12-01", "2025-01-01", as_of).is_month
        assert not period("2025-02-01", "2025-02-28", as_of).is_month
        assert not period("2025-02-02", "2025-03-02", as_of).is_month
        assert not period("2025-01-01", "2025-03-01", as_of).is_month

    def test_final_from_local_midnight_30_days_after_the_end(self) -> None:
        def final(as_of: str) -> bool:
            return period("2025-01-01", "2025-02-01", as_of).final

        assert not final("2025-03-02T23:59:59+03:00")
        assert final("2025-03-03T00:00:00+03:00")
        assert final("2025-03-02T21:00:00+00:00")
        assert not final("2025-03-02T20:59:59+00:00")


class TestDays:
    def test_a_finished_month_counts_every_day(self) -> None:
        january = period("2025-01-01", "2025-02-01", "2025-02-10T00:00:00+03:00")

        # Mon-Sat by default: January 2025 has Sundays 5, 12, 19, 26.
        assert (january.days(), january.working_days()) == (31, 27)

    def test_a_day_that_begins_exactly_at_as_of_has_begun(self) -> None:
        as_midnight = period("2025-01-01", "2025-02-01", "2025-01-10T00:00:00+03:00")
        before = period("2025-01-01", "2025-02-01", "2025-01-09T23:59:59+03:00")

        assert as_midnight.days() == 10
        assert before.days() == 9

    def test_as_of_in_utc_is_read_in_the_business_zone(self) -> None:
        # 21:00 UTC on the 9th is midnight of the 10th in Moscow.
        mid = period("2025-01-01", "2025-02-01", "2025-01-09T21:00:00+00:00")

        # Jan 1-10 with Sundays 5 off: 9 working days.
        assert (mid.days(), mid.working_days()) == (10, 9)

    def test_as_of_before_the_period_gives_no_days(self) -> None:
        early = period("2025-01-01", "2025-02-01", "2024-12-31T23:59:59+03:00")

        assert (early.days(), early.working_days()) == (0, 0)

    def test_holidays_and_extra_working_days(self) -> None:
        extra = """
[calendar]
working_days = ["mon", "tue", "wed", "thu", "fri"]
holidays = ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-06", "2025-01-07"]
extra_working_days = ["2025-01-04"]
"""
        week = period("2024-12-30", "2025-01-06", "2025-01-10T00:00:00+03:00", extra)
        next_week = period(
            "2025-01-06", "2025-01-13", "2025-01-20T00:00:00+03:00", extra
        )

        # Mon 30 and Tue 31 work, Wed-Fri are holidays, Saturday the 4th is worked.
        assert (week.days(), week.working_days()) == (7, 3)
        # Mon 6 and Tue 7 are holidays; Wed-Fri work.
        assert next_week.working_days() == 3


class TestBusinessMinutes:
    def test_minutes_within_one_working_day(self) -> None:
        assert minutes("2025-01-06T10:00:00+03:00", "2025-01-06T10:05:30+03:00") == (
            Fraction(11, 2)
        )

    def test_the_night_between_two_working_days_does_not_count(self) -> None:
        assert minutes("2025-01-06T20:59:00+03:00", "2025-01-07T09:01:00+03:00") == 2

    def test_across_a_weekend_seconds_are_fractions(self) -> None:
        # Fri 20:50:30-21:00 is 9.5; Saturday works (720); Sunday not; Mon 10.
        assert minutes(
            "2025-01-10T20:50:30+03:00", "2025-01-13T09:10:00+03:00"
        ) == Fraction(1479, 2)

    def test_outside_working_hours_is_zero(self) -> None:
        assert minutes("2025-01-06T21:30:00+03:00", "2025-01-06T23:30:00+03:00") == 0
        assert minutes("2025-01-12T10:00:00+03:00", "2025-01-12T12:00:00+03:00") == 0

    def test_instants_in_utc_are_placed_in_the_business_zone(self) -> None:
        # 06:00 UTC is 09:00 in Moscow: the working day has just begun.
        assert minutes("2025-01-06T05:00:00+00:00", "2025-01-06T06:20:00+00:00") == 20

    def test_a_holiday_is_skipped_and_an_extra_working_day_counts(self) -> None:
        extra = """
[calendar]
holidays = ["2025-01-07"]
extra_working_days = ["2025-01-12"]
hours = ["10:00", "19:00"]
"""
        # Mon 18:00-19:00 (60), Tue holiday, Wed 10:00-10:30 (30).
        assert (
            minutes("2025-01-06T18:00:00+03:00", "2025-01-08T10:30:00+03:00", extra)
            == 90
        )
        # Sun 12th worked 10:00-19:00 (540), Mon 10:00-10:01 (1).
        assert (
            minutes("2025-01-11T23:00:00+03:00", "2025-01-13T10:01:00+03:00", extra)
            == 541
        )

    def test_an_end_before_the_start_is_zero(self) -> None:
        assert minutes("2025-01-06T10:00:00+03:00", "2025-01-06T09:30:00+03:00") == 0


class TestNamedPeriods:
    def test_month_runs_to_the_first_of_the_next(self) -> None:
        assert month_period("2024-12") == (date(2024, 12, 1), date(2025, 1, 1))
        assert month_period("2025-02") == (date(2025, 2, 1), date(2025, 3, 1))

    def test_iso_week_runs_monday_to_monday(self) -> None:
        assert iso_week_period("2025-W02") == (date(2025, 1, 6), date(2025, 1, 13))
        assert iso_week_period("2025-W01") == (date(2024, 12, 30), date(2025, 1, 6))

    @pytest.mark.parametrize("text", ["2025-13", "2025-1", "January"])
    def test_a_malformed_month_is_an_error(self, text: str) -> None:
        with pytest.raises(InvalidPeriod):
            month_period(text)

    @pytest.mark.parametrize("text", ["2025-W54", "2025-02", "2025W02"])
    def test_a_malformed_week_is_an_error(self, text: str) -> None:
        with pytest.raises(InvalidPeriod):
            iso_week_period(text)

    @pytest.mark.parametrize(
        "now",
        [
            "2025-01-13T09:00:00+03:00",
            "2025-01-13T06:00:00+00:00",
            "2025-01-12T21:30:00+00:00",  # Monday 00:30 in Moscow, Sunday in UTC
            "2025-01-19T23:59:59+03:00",
        ],
    )
    def test_the_week_just_ended_is_the_calendar_week_before(self, now: str) -> None:
        assert week_just_ended(datetime.fromisoformat(now), MSK) == (
            date(2025, 1, 6),
            date(2025, 1, 13),
        )

    def test_sunday_night_belongs_to_the_week_still_running(self) -> None:
        now = datetime.fromisoformat("2025-01-12T23:59:00+03:00")

        assert week_just_ended(now, MSK) == (date(2024, 12, 30), date(2025, 1, 6))


class TestNeededWindow:
    def test_reads_inquiries_of_p_visits_from_w_and_activities_to_as_of(
        self,
    ) -> None:
        window = needed_window(
            query("2025-01-01", "2025-02-01", "2025-01-20T12:00:00+03:00"), rules()
        )

        def at(text: str) -> datetime:
            return datetime.fromisoformat(text)

        assert window.inquiries.start == at("2025-01-01T00:00:00+03:00")
        assert window.inquiries.end == at("2025-01-20T12:00:00.000001+03:00")
        assert window.bookings == window.inquiries
        assert window.visits == Span(
            at("2024-12-02T00:00:00+03:00"), at("2025-02-01T00:00:00+03:00")
        )
        assert window.history_until == at("2025-01-20T12:00:00+03:00")
        assert window.activities == window.inquiries
        assert window.calls_in_progress.start == at("2025-01-01T00:00:00+03:00")

    def test_a_finished_period_reads_inquiries_to_its_end(self) -> None:
        window = needed_window(
            query("2025-01-06", "2025-01-13", "2025-03-01T00:00:00+03:00"), rules()
        )

        assert window.inquiries.end == datetime.fromisoformat(
            "2025-01-13T00:00:00+03:00"
        )
        assert window.activities.end == datetime.fromisoformat(
            "2025-03-01T00:00:00.000001+03:00"
        )


def test_week_just_ended_refuses_a_naive_clock() -> None:
    with pytest.raises(ValueError, match="offset"):
        week_just_ended(datetime(2025, 1, 13, 9), MSK)
