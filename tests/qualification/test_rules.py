from __future__ import annotations

from datetime import date, time, timedelta
from decimal import Decimal

import pytest

from qualification.rules import RuleQualifier, ServiceMatcher, find_budget
from qualification.schema import Budget, ClientMessage, Qualification, Slot
from tests.qualification.conftest import MOSCOW, NOW, SERVICES

RULES = RuleQualifier(SERVICES, MOSCOW)


def read(*texts: str, asked: Slot | None = None) -> Qualification:
    return RULES.read([ClientMessage(text, NOW, asked) for text in texts])


class TestServiceMatcher:
    @pytest.mark.parametrize(
        ("text", "service", "quote"),
        [
            ("Хочу маникюр", "manicure", "маникюр"),
            ("маникюрчик бы сделать", "manicure", "маникюрчик"),
            ("на маникюре была у вас", "manicure", "маникюре"),
            ("ногти привести в порядок", "manicure", "ногти"),
            ("что по ногтям?", "manicure", "ногтям"),
            ("ноготочки!", "manicure", "ноготочки"),
            ("покрытие гель-лаком", "manicure", "гель-лаком"),
            ("хочу стрижку", "haircut", "стрижку"),
            ("подстричься надо", "haircut", "подстричься"),
            ("Постричься можно?", "haircut", "Постричься"),
            ("ПЕДИКЮР", "pedicure", "ПЕДИКЮР"),
            ("окрашивание бровей", "brows", "окрашивание бровей"),
            ("окрашивание и тонировку", "coloring", "окрашивание"),
            ("окрашиванием волос", "coloring", "окрашиванием волос"),
        ],
    )
    def test_finds_the_service_by_title_synonym_or_inflection(
        self, text: str, service: str, quote: str
    ) -> None:
        found = ServiceMatcher(SERVICES).find(text)

        assert found is not None
        assert (found.value, found.quote) == (service, quote)
        assert found.quote in text

    def test_a_negated_service_is_skipped(self) -> None:
        found = ServiceMatcher(SERVICES).find("не маникюр, а педикюр")

        assert found is not None
        assert found.value == "pedicure"

    def test_several_services_come_in_the_clients_order(self) -> None:
        found = ServiceMatcher(SERVICES).find_all("педикюр и маникюр")

        assert [item.value for item in found] == ["pedicure", "manicure"]

    @pytest.mark.parametrize("text", ["здравствуйте", "сколько стоит?", "массаж", ""])
    def test_unknown_or_no_service_is_none(self, text: str) -> None:
        assert ServiceMatcher(SERVICES).find(text) is None


class TestBudget:
    @pytest.mark.parametrize(
        ("text", "low", "high", "quote"),
        [
            ("до 3000", None, "3000", "до 3000"),
            ("до 3 000 руб", None, "3000", "до 3 000 руб"),
            ("3-5 тыс", "3000", "5000", "3-5 тыс"),
            ("3–5к", "3000", "5000", "3–5к"),
            ("бюджет 2к", None, "2000", "бюджет 2к"),
            ("бюджет 1500", None, "1500", "бюджет 1500"),
            ("от 2000 до 3500 ₽", "2000", "3500", "от 2000 до 3500 ₽"),
            ("1500-3к", "1500", "3000", "1500-3к"),
            ("в пределах 1.5к", None, "1500", "в пределах 1.5к"),
            ("около 4000 р", "4000", "4000", "около 4000 р"),
            ("не дороже 2500 рублей", None, "2500", "не дороже 2500 рублей"),
            ("за 2,5 тыс", None, "2500", "за 2,5 тыс"),
            ("от 2000", "2000", None, "от 2000"),
        ],
    )
    def test_reads_roubles_from_russian_shorthand(
        self, text: str, low: str | None, high: str | None, quote: str
    ) -> None:
        found = find_budget(f"Цена {text}, если можно")

        expected = Budget(
            low=None if low is None else Decimal(low),
            high=None if high is None else Decimal(high),
        )
        assert found == (expected, quote)

    @pytest.mark.parametrize(
        "text",
        [
            "до 18",
            "с 10 до 12",
            "после 19:00",
            "15.12 в 10:30",
            "в 2025 году",
            "мой номер 8 (999) 000-00-01",
            "на 2 часа",
        ],
    )
    def test_hours_dates_and_phones_are_not_money(self, text: str) -> None:
        assert find_budget(text) is None

    def test_money_is_decimal(self) -> None:
        found = find_budget("бюджет 1.5к")

        assert found is not None
        assert found[0].high == Decimal("1500.00")
        assert isinstance(found[0].high, Decimal)


class TestName:
    @pytest.mark.parametrize(
        ("text", "name", "quote"),
        [
            ("меня зовут Анна", "Анна", "меня зовут Анна"),
            ("Меня зовут анна, хочу на маникюр", "Анна", "Меня зовут анна"),
            ("Я Мария", "Мария", "Я Мария"),
            ("Это Ольга, хочу подстричься", "Ольга", "Это Ольга"),
            ("Анна, хочу на маникюр", "Анна", "Анна"),
            ("Моё имя — Екатерина", "Екатерина", "Моё имя — Екатерина"),
        ],
    )
    def test_reads_a_name_the_client_gives(
        self, text: str, name: str, quote: str
    ) -> None:
        found = read(text)

        assert found.name == name
        assert found.evidence["name"] == (quote,)

    @pytest.mark.parametrize(
        ("text", "name"),
        [("Анна", "Анна"), ("анна", "Анна"), ("Анна Петрова.", "Анна Петрова")],
    )
    def test_a_bare_answer_to_the_name_question_is_the_name(
        self, text: str, name: str
    ) -> None:
        assert read(text, asked="name").name == name

    @pytest.mark.parametrize(
        "text",
        [
            "Анна",
            "я хочу записаться",
            "Здравствуйте, хочу маникюр",
            "Девушка, подскажите",
            "Маникюр, сколько стоит?",
            "Завтра, можно?",
        ],
    )
    def test_no_name_without_a_clear_sign(self, text: str) -> None:
        assert read(text).name is None

    @pytest.mark.parametrize("text", ["да", "Маникюр", "завтра", "Спасибо!", "123"])
    def test_answers_that_are_not_names_are_not_taken_as_names(self, text: str) -> None:
        assert read(text, asked="name").name is None


class TestPhone:
    def test_a_phone_in_free_text_is_normalised_with_its_quote(self) -> None:
        found = read("Анна, звоните на 8 (999) 000-00-01 после 18")

        assert found.phone == "+79990000001"
        assert found.evidence["phone"] == ("8 (999) 000-00-01",)

    def test_an_extension_is_kept_apart(self) -> None:
        found = read("+7 999 000-00-01 доб. 123", asked="phone")

        assert (found.phone, found.phone_extension) == ("+79990000001", "123")

    def test_an_invalid_number_gives_no_phone(self) -> None:
        assert read("12345", asked="phone").phone is None


class TestUrgencyAndReadiness:
    @pytest.mark.parametrize(
        ("text", "quote"),
        [
            ("срочно нужен маникюр", "срочно"),
            ("можно сегодня?", "сегодня"),
            ("хочу прямо сейчас", "прямо сейчас"),
            ("как можно скорее на стрижку", "как можно скорее"),
        ],
    )
    def test_urgent_words_make_an_urgent_hot_lead(self, text: str, quote: str) -> None:
        found = read(text)

        assert found.urgency == "urgent"
        assert found.evidence["urgency"] == (quote,)
        assert found.readiness == "hot"

    def test_wanting_to_book_for_tomorrow_is_hot(self) -> None:
        found = read("хочу записаться на маникюр завтра после 18")

        assert found.readiness == "hot"
        assert found.urgency == "normal"
        assert found.evidence["readiness"] == ("записаться", "завтра", "после 18")

    def test_wanting_to_book_next_week_is_warm(self) -> None:
        found = read("хочу записаться на следующей неделе")

        assert found.readiness == "warm"
        assert found.evidence["readiness"] == ("записаться", "на следующей неделе")

    @pytest.mark.parametrize(
        ("text", "quote"),
        [
            ("просто узнать цену на педикюр", "просто узнать"),
            ("подумаю пока, спасибо", "подумаю"),
            ("дорого", "дорого"),
        ],
    )
    def test_just_asking_is_cold(self, text: str, quote: str) -> None:
        found = read(text)

        assert found.readiness == "cold"
        assert found.evidence["readiness"] == (quote,)

    def test_a_later_wish_for_a_time_outweighs_an_earlier_doubt(self) -> None:
        found = read("подумаю", "хотя давайте завтра в 11")

        assert found.readiness == "hot"

    def test_no_signal_leaves_warm_without_evidence(self) -> None:
        found = read("здравствуйте")

        assert found.readiness == "warm"
        assert "readiness" not in found.evidence


class TestRuleQualifier:
    def test_takes_everything_from_one_message(self) -> None:
        text = (
            "Здравствуйте! Меня зовут Анна, хочу маникюрчик завтра после 18, "
            "бюджет до 3000, мой номер 8 (999) 000-00-01"
        )

        found = read(text)

        assert found.service == "manicure"
        assert found.name == "Анна"
        assert found.phone == "+79990000001"
        assert found.budget == Budget(high=Decimal("3000"))
        assert found.preferred_time is not None
        assert found.preferred_time.first_day == date(2025, 1, 9)
        assert found.preferred_time.start_time == time(18)
        assert found.readiness == "hot"
        assert found.source == "rules"
        assert found.unsupported(text) == []

    def test_every_quote_is_the_clients_own_words(self) -> None:
        text = "СРОЧНО! Ногти, сегодня вечером, до 2 тыс, Я Света, +7 999 000 00 01"

        found = read(text)

        for judgement in found.judgements():
            assert all(quote in text for quote in found.evidence[judgement])

    def test_a_later_message_corrects_an_earlier_one(self) -> None:
        found = read("хочу маникюр завтра", "ой, лучше педикюр в субботу")

        assert found.service == "pedicure"
        assert found.preferred_time is not None
        assert found.preferred_time.first_day == date(2025, 1, 11)

    def test_each_message_is_read_relative_to_when_it_was_written(self) -> None:
        later = NOW + timedelta(days=1)

        found = RULES.read(
            [ClientMessage("маникюр", NOW), ClientMessage("завтра", later)]
        )

        assert found.preferred_time is not None
        assert found.preferred_time.first_day == date(2025, 1, 10)

    def test_the_summary_is_one_russian_line(self) -> None:
        found = read("маникюр завтра после 18, бюджет 3-5 тыс, срочно")

        assert found.summary == (
            "Услуга: Маникюр; время: завтра, 9 января, после 18:00; "
            "бюджет: от 3\u00a0000 до 5\u00a0000\u00a0₽; срочно; лид горячий."
        )

    def test_nothing_known_is_an_empty_but_valid_qualification(self) -> None:
        found = RULES.read([])

        assert found.judgements() == []
        assert found.summary == "Услуга не названа; лид тёплый."

    async def test_qualify_is_the_async_face_of_read(self) -> None:
        messages = [ClientMessage("маникюр", NOW)]

        assert await RULES.qualify(messages) == RULES.read(messages)
