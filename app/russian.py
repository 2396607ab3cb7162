"""Russian calendar words shared by the bot's texts, the CRM comments and reports."""

from __future__ import annotations

from datetime import date

# "4 декабря": a month after a day number.
MONTH_GENITIVE = (
    "января",
    "февраля",
    "марта",
    "апреля",
    "мая",
    "июня",
    "июля",
    "августа",
    "сентября",
    "октября",
    "ноября",
    "декабря",
)
# "Декабрь 2026": a month on its own.
MONTH_NOMINATIVE = (
    "январь",
    "февраль",
    "март",
    "апрель",
    "май",
    "июнь",
    "июль",
    "август",
    "сентябрь",
    "октябрь",
    "ноябрь",
    "декабрь",
)
# "приходите в субботу": a weekday as a time, Monday first.
WEEKDAY_ACCUSATIVE = (
    "в понедельник",
    "во вторник",
    "в среду",
    "в четверг",
    "в пятницу",
    "в субботу",
    "в воскресенье",
)
# Days from today that have a word of their own.
RELATIVE_DAYS = {0: "сегодня", 1: "завтра", 2: "послезавтра"}


def day_month(day: date) -> str:
    """`4 декабря`: the day of a date or a local datetime, and its month."""
    return f"{day.day} {MONTH_GENITIVE[day.month - 1]}"
