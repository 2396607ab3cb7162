from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from qualification.timeparse import TimeWindow, parse_time

MOSCOW = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
# Wednesday 8 January 2025, 14:05 in Moscow (UTC+3 all year, no DST).
NOW = datetime(2025, 1, 8, 14, 5, tzinfo=MOSCOW)

WED, THU, FRI, SAT, SUN = (date(2025, 1, day) for day in range(8, 13))
NEXT_MON, NEXT_TUE = date(2025, 1, 13), date(2025, 1, 14)

Expected = tuple[date, date, time | None, time | None]


def window(text: str, now: datetime = NOW, zone: ZoneInfo = MOSCOW) -> TimeWindow:
    found = parse_time(text, now, zone)
    assert found is not None, text
    return found


def shape(found: TimeWindow) -> Expected:
    return found.first_day, found.last_day, found.start_time, found.end_time


class TestPhrases:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("завтра после 18", (THU, THU, time(18), None)),
            ("в субботу утром", (SAT, SAT, time(8), time(12))),
            (
                "15.12 в 10:30",
                (date(2025, 12, 15), date(2025, 12, 15), time(10, 30), time(10, 30)),
            ),
            ("сегодня вечером", (WED, WED, time(17), time(22))),
            ("послезавтра в 11", (FRI, FRI, time(11), time(11))),
            ("на следующей неделе", (NEXT_MON, date(2025, 1, 19), None, None)),
            ("в пн", (NEXT_MON, NEXT_MON, None, None)),
            ("хочу записаться на завтра", (THU, THU, None, None)),
            ("Завтра после 18:30", (THU, THU, time(18, 30), None)),
            ("ЗАВТРА В 10", (THU, THU, time(10), time(10))),
            ("в пятницу в 15:00", (FRI, FRI, time(15), time(15))),
            ("во вторник к 19", (NEXT_TUE, NEXT_TUE, time(19), time(19))),
            ("в понедельник в 9:00", (NEXT_MON, NEXT_MON, time(9), time(9))),
            ("в сб.", (SAT, SAT, None, None)),
            ("в воскресенье днём", (SUN, SUN, time(12), time(17))),
            ("в четверг после обеда", (THU, THU, time(14), time(18))),
            ("завтра до обеда", (THU, THU, time(8), time(13))),
            ("в субботу ближе к вечеру", (SAT, SAT, time(16), time(20))),
            ("завтра с 10 до 12", (THU, THU, time(10), time(12))),
            ("завтра между 2 и 4", (THU, THU, time(14), time(16))),
            ("завтра в 7 вечера", (THU, THU, time(19), time(19))),
            ("завтра в 8 утра", (THU, THU, time(8), time(8))),
            ("завтра в 7", (THU, THU, time(19), time(19))),
            ("завтра утром в 7", (THU, THU, time(7), time(7))),
            ("завтра в час дня", (THU, THU, time(13), time(13))),
            ("завтра в 2 дня", (THU, THU, time(14), time(14))),
            ("завтра после шести", (THU, THU, time(18), None)),
            ("завтра в полдень", (THU, THU, time(12), time(12))),
            ("завтра часов в 5", (THU, THU, time(17), time(17))),
            ("завтра около 11 утра", (THU, THU, time(11), time(11))),
            ("завтра вечером после 19", (THU, THU, time(19), time(22))),
            ("в пятницу или в субботу", (FRI, SAT, None, None)),
            ("в следующую субботу", (date(2025, 1, 18), date(2025, 1, 18), None, None)),
            ("в эту субботу", (SAT, SAT, None, None)),
            ("в субботу на следующей неделе", (date(2025, 1, 18),) * 2 + (None, None)),
            ("на этой неделе", (WED, date(2025, 1, 12), None, None)),
            ("на выходных", (SAT, SUN, None, None)),
            ("в выходные утром", (SAT, SUN, time(8), time(12))),
            ("3 января в 12", (date(2026, 1, 3), date(2026, 1, 3), time(12), time(12))),
            ("25 декабря", (date(2025, 12, 25),) * 2 + (None, None)),
            ("на 25 дек.", (date(2025, 12, 25),) * 2 + (None, None)),
            ("10 мая в 14:00", (date(2025, 5, 10),) * 2 + (time(14), time(14))),
            ("20 числа", (date(2025, 1, 20),) * 2 + (None, None)),
            ("на 20-е", (date(2025, 1, 20),) * 2 + (None, None)),
            ("5-го", (date(2025, 2, 5),) * 2 + (None, None)),
            ("15.12.2025", (date(2025, 12, 15),) * 2 + (None, None)),
            ("1.02.26", (date(2026, 2, 1),) * 2 + (None, None)),
            ("15/01", (date(2025, 1, 15),) * 2 + (None, None)),
            ("через 3 дня", (SAT, SAT, None, None)),
            ("через неделю", (date(2025, 1, 15),) * 2 + (None, None)),
            ("в ближайшее время", (WED, FRI, None, None)),
            ("в любое время", (WED, date(2025, 1, 14), None, None)),
            ("через 2 часа", (WED, WED, time(16, 5), time(16, 5))),
            ("через полчаса", (WED, WED, time(14, 35), time(14, 35))),
            ("через полтора часа", (WED, WED, time(15, 35), time(15, 35))),
            ("через 40 минут", (WED, WED, time(14, 45), time(14, 45))),
            ("прямо сейчас", (WED, WED, time(14, 5), None)),
            ("как можно скорее", (WED, WED, time(14, 5), None)),
            ("можно сегодня после 5?", (WED, WED, time(17), None)),
        ],
    )
    def test_reads_the_window_the_client_means(
        self, text: str, expected: Expected
    ) -> None:
        assert shape(window(text)) == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            # Still ahead today: today.
            ("после 18", (WED, WED, time(18), None)),
            ("вечером", (WED, WED, time(17), time(22))),
            ("в 7 вечера", (WED, WED, time(19), time(19))),
            ("10:30", (THU, THU, time(10, 30), time(10, 30))),
            ("в 10.30", (THU, THU, time(10, 30), time(10, 30))),
            ("до 12", (THU, THU, None, time(12))),
            ("утром", (THU, THU, time(8), time(12))),
            ("в обед", (WED, WED, time(12), time(15))),
        ],
    )
    def test_a_time_without_a_day_is_today_or_tomorrow_once_passed(
        self, text: str, expected: Expected
    ) -> None:
        assert shape(window(text)) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "здравствуйте",
            "хочу на маникюр",
            "бюджет до 3000",
            "до 3000 руб",
            "3-5 тыс",
            "на 2 часа",
            "на пару дней",
            "волосы средней длины",
            "в 5 дней",
            "через месяц",
            "мой номер 8 (999) 000-00-01",
            "",
        ],
    )
    def test_text_without_a_time_gives_none(self, text: str) -> None:
        assert parse_time(text, NOW, MOSCOW) is None

    def test_the_quotes_are_the_clients_exact_words(self) -> None:
        text = "Хочу на маникюр ЗАВТРА, часов в 5, можно?"

        found = window(text)

        assert found.quotes == ("ЗАВТРА", "часов в 5")
        assert all(quote in text for quote in found.quotes)

    def test_a_phone_in_the_text_is_not_read_as_a_date(self) -> None:
        found = window("8.999.000.00.01, завтра в 11")

        assert shape(found) == (THU, THU, time(11), time(11))

    def test_a_calendar_date_wins_over_a_weekday(self) -> None:
        found = window("в субботу, 18.01, в 12")

        assert found.first_day == date(2025, 1, 18)

    def test_a_date_without_a_year_already_past_is_next_years(self) -> None:
        found = window("7.01 в 10")

        assert found.first_day == date(2026, 1, 7)

    def test_the_same_weekday_as_today_means_next_week(self) -> None:
        assert window("в среду").first_day == date(2025, 1, 15)

    def test_an_impossible_date_is_not_a_window(self) -> None:
        assert parse_time("31.02", NOW, MOSCOW) is None

    def test_now_must_be_aware(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            parse_time("завтра", datetime(2025, 1, 8, 14, 5), MOSCOW)


class TestBusinessZone:
    def test_tomorrow_at_2340_is_the_next_business_date(self) -> None:
        late = datetime(2025, 1, 8, 20, 40, tzinfo=UTC)  # 23:40 in Moscow

        found = window("хочу записаться на завтра", late)

        assert shape(found) == (THU, THU, None, None)
        assert found.start == datetime(2025, 1, 9, tzinfo=MOSCOW)

    def test_after_midnight_in_moscow_tomorrow_moves_although_utc_has_not(
        self,
    ) -> None:
        after_midnight = datetime(2025, 1, 8, 21, 30, tzinfo=UTC)  # 00:30 Thursday

        assert window("завтра", after_midnight).first_day == FRI
        assert window("сегодня", after_midnight).first_day == THU

    def test_vladivostok_is_a_day_ahead_of_utc(self) -> None:
        utc_evening = datetime(2025, 1, 8, 15, 0, tzinfo=UTC)  # 01:00 Thu there

        found = window("завтра в 10", utc_evening, VLADIVOSTOK)

        assert found.first_day == FRI
        assert found.start == datetime(2025, 1, 10, 0, 0, tzinfo=UTC)

    def test_through_2_hours_across_the_spring_dst_change_is_two_real_hours(
        self,
    ) -> None:
        # Berlin moves from 02:00 CET to 03:00 CEST on 30 March 2025.
        before = datetime(2025, 3, 30, 1, 30, tzinfo=BERLIN)

        found = window("через 2 часа", before, BERLIN)

        assert found.start.astimezone(UTC) - before.astimezone(UTC) == timedelta(
            hours=2
        )
        assert found.start_time == time(4, 30)

    def test_a_whole_day_across_the_dst_change_is_23_hours(self) -> None:
        saturday = datetime(2025, 3, 29, 12, 0, tzinfo=BERLIN)

        found = window("завтра", saturday, BERLIN)

        # Aware datetimes in one zone subtract as wall clocks: compare in UTC.
        length = found.end.astimezone(UTC) - found.start.astimezone(UTC)
        assert length == timedelta(hours=23)
        assert found.start.utcoffset() == timedelta(hours=1)
        assert found.end.utcoffset() == timedelta(hours=2)

    def test_windows_are_in_the_business_zone_whatever_now_is_given_in(self) -> None:
        found = window("завтра после 18", NOW.astimezone(UTC))

        assert found.zone == "Europe/Moscow"
        assert found.start == datetime(2025, 1, 9, 15, 0, tzinfo=UTC)


class TestWindow:
    def test_an_exact_time_starts_and_ends_at_once(self) -> None:
        found = window("завтра в 10:30")

        assert found.exact
        assert found.start == found.end == datetime(2025, 1, 9, 10, 30, tzinfo=MOSCOW)

    def test_is_past_once_the_whole_window_has_gone(self) -> None:
        found = window("сегодня утром")

        assert found.is_past(NOW)
        assert not window("сегодня вечером").is_past(NOW)

    def test_survives_a_round_trip_through_json(self) -> None:
        found = window("в субботу утром")

        assert TimeWindow.model_validate_json(found.model_dump_json()) == found

    def test_rejects_a_range_that_ends_before_it_starts(self) -> None:
        with pytest.raises(ValueError, match="before first_day"):
            TimeWindow(first_day=FRI, last_day=THU, zone="Europe/Moscow", quotes=("x",))


class TestDescribe:
    @pytest.mark.parametrize(
        ("text", "russian"),
        [
            ("завтра после 18", "завтра, 9 января, после 18:00"),
            ("в субботу утром", "в субботу, 11 января, с 08:00 до 12:00"),
            ("15.12 в 10:30", "15 декабря, в 10:30"),
            ("сегодня", "сегодня, 8 января"),
            ("послезавтра до 12", "послезавтра, 10 января, до 12:00"),
            ("на следующей неделе", "с 13 по 19 января"),
            ("3 января", "3 января 2026"),
            ("с 30 января по 2 февраля", "с 30 января по 2 февраля"),
        ],
    )
    def test_repeats_the_window_in_russian(self, text: str, russian: str) -> None:
        assert window(text).describe(NOW) == russian
