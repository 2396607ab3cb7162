from __future__ import annotations

from datetime import time

import pytest

from app.config import BusinessRules, ConfigError, parse_rules


def problems_of(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_rules(text, source="rules.toml")
    return str(raised.value)


class TestReminderDefaults:
    def test_the_day_before_at_noon_and_two_hours_before(self) -> None:
        reminders = BusinessRules().reminders

        assert reminders.enabled is True
        assert reminders.day_before is True
        assert reminders.day_before_at == time(12, 0)
        assert reminders.hours_before == [2]

    def test_quiet_from_nine_in_the_evening_to_nine_in_the_morning(self) -> None:
        assert BusinessRules().reminders.quiet_hours == (time(21, 0), time(9, 0))

    def test_a_call_task_three_hours_before_and_an_outcome_check(self) -> None:
        reminders = BusinessRules().reminders

        assert reminders.call_if_unconfirmed_hours == 3
        assert reminders.outcome_check is True
        assert (reminders.horizon_hours, reminders.reconcile_minutes) == (48, 5)

    def test_whatsapp_outside_the_window_gets_a_russian_template(self) -> None:
        reminders = BusinessRules().reminders

        assert reminders.whatsapp_template == "visit_reminder"
        assert reminders.whatsapp_language == "ru"
        assert reminders.whatsapp_parameters == ["{when}"]

    def test_texts_are_russian_and_buttons_fit_whatsapp(self) -> None:
        texts = BusinessRules().reminders.texts

        assert texts.confirm_button == "Подтверждаю"
        assert texts.cancel_button == "Отменить запись"
        assert "{when}" in texts.day_before
        assert len(texts.cancel_button) <= 20


class TestReminderOverrides:
    def test_every_setting_can_be_changed(self) -> None:
        rules = parse_rules(
            "[reminders]\n"
            "day_before_at = '18:30'\n"
            "hours_before = [3, 1]\n"
            "quiet_hours = ['22:00', '08:00']\n"
            "call_if_unconfirmed_hours = 0\n"
            "outcome_check = false\n"
            "reconcile_minutes = 10\n"
            "whatsapp_template = 'salon_reminder_2'\n"
            "whatsapp_language = 'en_US'\n"
            "whatsapp_parameters = ['{date}', '{time}']\n"
            "[reminders.texts]\n"
            "confirm_button = 'Да, приду'\n"
        )

        reminders = rules.reminders
        assert reminders.day_before_at == time(18, 30)
        assert reminders.hours_before == [3, 1]
        assert reminders.quiet_hours == (time(22, 0), time(8, 0))
        assert reminders.call_if_unconfirmed_hours == 0
        assert reminders.outcome_check is False
        assert reminders.reconcile_minutes == 10
        assert reminders.whatsapp_template == "salon_reminder_2"
        assert reminders.whatsapp_language == "en_US"
        assert reminders.whatsapp_parameters == ["{date}", "{time}"]
        assert reminders.texts.confirm_button == "Да, приду"

    def test_reminders_can_be_turned_off(self) -> None:
        assert parse_rules("[reminders]\nenabled = false").reminders.enabled is False


class TestInvalidReminderRules:
    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            (
                "hours_before = [0]",
                "reminders.hours_before[0]: input should be greater",
            ),
            ("hours_before = [48]", "reminders.hours_before[0]: input should be less"),
            ("hours_before = [2, 2]", "reminders.hours_before[1]: 2 is listed twice"),
            ("hours_before = ['2']", "reminders.hours_before[0]: input should be a"),
            (
                "day_before_at = '25:00'",
                "reminders.day_before_at: '25:00' is not a time",
            ),
            (
                "quiet_hours = ['21:00', '21:00']",
                "reminders.quiet_hours: start and end must differ",
            ),
            ("call_if_unconfirmed_hours = -1", "reminders.call_if_unconfirmed_hours"),
            ("reconcile_minutes = 7", "reminders.reconcile_minutes: must divide 60"),
            ("horizon_hours = 0", "reminders.horizon_hours: input should be greater"),
            ("enabled = 'yes'", "reminders.enabled: input should be a valid boolean"),
            (
                "whatsapp_template = 'Visit Reminder'",
                "reminders.whatsapp_template: 'Visit Reminder' is not a WhatsApp",
            ),
            (
                "whatsapp_language = 'russian'",
                "reminders.whatsapp_language: 'russian' is not a language code",
            ),
            (
                "whatsapp_parameters = ['{name}']",
                "reminders.whatsapp_parameters[0]: unknown placeholder {name}",
            ),
            ("surprise = 1", "reminders.surprise: unknown key"),
        ],
    )
    def test_a_bad_value_is_named_with_its_key(self, toml: str, problem: str) -> None:
        assert problem in problems_of(f"[reminders]\n{toml}")

    @pytest.mark.parametrize(
        ("toml", "problem"),
        [
            ("day_before = 'Ждём {visit}'", "reminders.texts.day_before: unknown"),
            ("confirm_button = ''", "reminders.texts.confirm_button: string should"),
            (
                "confirm_button = 'Подтверждаю запись на визит'",
                "reminders.texts.confirm_button: string should have at most 20",
            ),
            ("task_call = 'Позвонить {text}'", "reminders.texts.task_call: unknown"),
            (
                "cancel_button = 'Подтверждаю'",
                "reminders.texts.cancel_button: must differ from confirm_button",
            ),
        ],
    )
    def test_a_bad_text_is_named_with_its_key(self, toml: str, problem: str) -> None:
        assert problem in problems_of(f"[reminders.texts]\n{toml}")
