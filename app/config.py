"""Business rules from the TOML file named by `LEADLOOP_CONFIG`, validated on load.

Money and rates are `Decimal`, written in TOML as strings (`"1000.00"`): a TOML float is
binary and cannot hold every kopeck, so floats are rejected where money is expected.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

PER_RETAINED_MIN = Decimal("500.00")
PER_RETAINED_MAX = Decimal("1500.00")
_CENT = Decimal("0.01")


class ConfigError(Exception):
    """The business-rules file is missing, unreadable or breaks a rule."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class _Problem(ValueError):
    """A validator's complaint about a key below the one being validated."""

    def __init__(self, message: str, *, at: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


# --- value types -------------------------------------------------------------------


def _decimal(value: Any, *, what: str) -> Decimal:
    if isinstance(value, float):
        raise ValueError(
            f'write {what} as a string, e.g. "{value!r}": a TOML float loses kopecks'
        )
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be {what} written as a string")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _money(value: Any) -> Decimal:
    amount = _decimal(value, what="money")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount != amount.quantize(_CENT):
        raise ValueError(f"{value!r} has more than two decimal places")
    return amount.quantize(_CENT)


def _rate(value: Any) -> Decimal:
    rate = _decimal(value, what="a rate")
    if rate <= 0:
        raise ValueError("must be greater than zero")
    return rate


def _bonus_rate(value: Any) -> Decimal:
    rate = _decimal(value, what="a rate")
    if not 0 <= rate <= 1:
        raise ValueError("must lie within 0–1 (0.03 is 3 %)")
    return rate


def _per_retained(amount: Decimal) -> Decimal:
    if not PER_RETAINED_MIN <= amount <= PER_RETAINED_MAX:
        raise ValueError(f"must lie within {PER_RETAINED_MIN}–{PER_RETAINED_MAX}")
    return amount


def _user_id(value: Any) -> str:
    text = str(value).strip() if isinstance(value, str | int) else ""
    if isinstance(value, bool) or not text.isdigit() or int(text) == 0:
        raise ValueError(f"{value!r} is not a Bitrix24 user id (a positive integer)")
    return str(int(text))


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{3}", value):
        raise ValueError(f"{value!r} is not a currency code like RUB or USD")
    return value


def _date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a date like 2026-01-01")


def _clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{2}:\d{2}", value):
        try:
            return time.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a time like 09:00")


def _stage_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty stage id like NEW or C1:PREPARATION")
    return value


def _field_code(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        raise ValueError(f"{value!r} is not a field code like UF_CRM_VISIT_AT")
    # Bitrix24 refuses user-field codes over 20 characters, UF_CRM_ included.
    if value.startswith("UF_") and len(value) > 20:
        raise ValueError(
            f"{value!r} is longer than the 20 characters Bitrix24 allows a user field"
        )
    return value


def _time_zone(value: Any) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"{value!r} is not an IANA time zone like Europe/Moscow"
        ) from None
    return str(value)


def _listed_once(items: list[Any]) -> list[Any]:
    for index, item in enumerate(items):
        if item in items[:index]:
            raise _Problem(f"{item!r} is listed twice", at=(index,))
    return items


def _in_order(hours: tuple[time, time]) -> tuple[time, time]:
    start, end = hours
    if start >= end:
        raise ValueError(f"start {start:%H:%M} must be before end {end:%H:%M}")
    return hours


Money = Annotated[Decimal, BeforeValidator(_money)]
Rate = Annotated[Decimal, BeforeValidator(_rate)]
BonusRate = Annotated[Decimal, BeforeValidator(_bonus_rate)]
PerRetained = Annotated[Decimal, BeforeValidator(_money), AfterValidator(_per_retained)]
UserId = Annotated[str, BeforeValidator(_user_id)]
Currency = Annotated[str, BeforeValidator(_currency)]
Day = Annotated[date, BeforeValidator(_date)]
Clock = Annotated[time, BeforeValidator(_clock)]
StageId = Annotated[str, BeforeValidator(_stage_id)]
# Opening and closing time of a day: start before end.
Hours = Annotated[tuple[Clock, Clock], AfterValidator(_in_order)]
ListedOnce = AfterValidator(_listed_once)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekdays = Annotated[list[Weekday], ListedOnce]

# `[money.rates]` mixes flat rates (`USD = "92.15"`) and month tables
# (`[money.rates."2026-11"]`); the tag picks the shape. Tags are in angle brackets
# so that error paths can drop them (see `_key_path`).
_FLAT, _MONTH = "<rate>", "<month>"
_MONTH_KEY = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
RateEntry = Annotated[
    Annotated[Rate, Tag(_FLAT)] | Annotated[dict[Currency, Rate], Tag(_MONTH)],
    Discriminator(lambda value: _MONTH if isinstance(value, dict) else _FLAT),
]


# --- sections ----------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageRoles(_Section):
    """Bitrix24 stage ids per role; defaults are pipeline 0's fixed stages."""

    new: list[StageId] = ["NEW"]
    booked: list[StageId] = []
    confirmed: list[StageId] = []
    visited: list[StageId] = ["WON"]
    no_show: list[StageId] = []
    cancelled: list[StageId] = []
    lost: list[StageId] = ["LOSE", "APOLOGY"]

    @model_validator(mode="after")
    def _one_role_per_stage(self) -> StageRoles:
        roles: dict[str, str] = {}
        for role, stages in self:
            for index, stage in enumerate(stages):
                if stage in roles:
                    raise _Problem(
                        f"stage {stage!r} already has the role {roles[stage]!r}",
                        at=(role, index),
                    )
                roles[stage] = role
        return self

    def role_of(self, stage_id: str) -> str | None:
        """The role a stage plays, or None for stages without one."""
        return next((role for role, ids in self if stage_id in ids), None)


class LeadStatuses(_Section):
    """Classic mode: lead statuses that count as new or lost."""

    new: list[StageId] = ["NEW"]
    lost: list[StageId] = ["JUNK"]

    @model_validator(mode="after")
    def _disjoint(self) -> LeadStatuses:
        for index, status in enumerate(self.lost):
            if status in self.new:
                raise _Problem(
                    f"status {status!r} is also listed as new", at=("lost", index)
                )
        return self


class CrmRules(_Section):
    mode: Literal["auto", "simple", "classic"] = "auto"
    pipelines: list[Annotated[int, Field(ge=0, strict=True)]] = [0]
    visit_field: Annotated[str, BeforeValidator(_field_code)] | None = None
    # VALUE_TYPE of the phones leadloop writes on contacts.
    phone_type: Literal["WORK", "MOBILE", "HOME", "OTHER"] = "WORK"
    stages: StageRoles = StageRoles()
    lead_statuses: LeadStatuses = LeadStatuses()


class CalendarRules(_Section):
    working_days: Weekdays = ["mon", "tue", "wed", "thu", "fri", "sat"]
    hours: Hours = (time(9, 0), time(21, 0))
    holidays: list[Day] = []
    extra_working_days: list[Day] = []

    def is_working_day(self, day: date) -> bool:
        if day in self.extra_working_days:
            return True
        return WEEKDAYS[day.weekday()] in self.working_days and day not in self.holidays


class KpiRules(_Section):
    sla_minutes: int = Field(default=15, gt=0, strict=True)
    non_human_users: list[UserId] = []


class MoneyRules(_Section):
    currency: Currency = "RUB"
    rates: dict[str, RateEntry] = {}

    @field_validator("rates")
    @classmethod
    def _keys_fit_their_shape(
        cls, rates: dict[str, Decimal | dict[str, Decimal]]
    ) -> dict[str, Decimal | dict[str, Decimal]]:
        for key, entry in rates.items():
            if isinstance(entry, dict) and not _MONTH_KEY.fullmatch(key):
                raise _Problem('a month table must be named like "2026-11"', at=(key,))
            if not isinstance(entry, dict):
                try:
                    _currency(key)
                except ValueError as exc:
                    raise _Problem(str(exc), at=(key,)) from None
        return rates

    def rate(self, currency: str, month: str) -> Decimal | None:
        """Business-currency units per unit of `currency` in `month` (YYYY-MM)."""
        if currency == self.currency:
            return Decimal(1)
        table = self.rates.get(month)
        if isinstance(table, dict) and currency in table:
            return table[currency]
        flat = self.rates.get(currency)
        return flat if isinstance(flat, Decimal) else None


class ManagerBonus(_Section):
    base: Money = Decimal("0.00")
    plan: Money | None = None
    rate: BonusRate | None = None
    per_retained: PerRetained | None = None


class BonusTerms(_Section):
    """One manager's bonus terms with the defaults filled in."""

    base: Decimal
    plan: Decimal | None
    rate: Decimal
    per_retained: Decimal


class BonusRules(_Section):
    rate: BonusRate = Decimal("0.03")
    per_retained: PerRetained = Decimal("1000.00")
    managers: dict[UserId, ManagerBonus] = {}

    def terms_for(self, user_id: str) -> BonusTerms:
        manager = self.managers.get(user_id, ManagerBonus())
        return BonusTerms(
            base=manager.base,
            plan=manager.plan,
            rate=manager.rate if manager.rate is not None else self.rate,
            per_retained=(
                manager.per_retained
                if manager.per_retained is not None
                else self.per_retained
            ),
        )


_SERVICE_ID = re.compile(r"[a-z][a-z0-9_]*")


def _service_id(value: Any) -> str:
    if not isinstance(value, str) or not _SERVICE_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not a service id like manicure or hair_cut")
    return value


def _phrase(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty phrase")
    return " ".join(value.split())


def _folded(phrase: str) -> str:
    return phrase.casefold().replace("ё", "е")


ServiceId = Annotated[str, BeforeValidator(_service_id)]
Phrase = Annotated[str, BeforeValidator(_phrase)]


class Service(_Section):
    """One service clients ask for: its title, price range and the words for it."""

    title: Phrase
    price_from: Money | None = None
    price_to: Money | None = None
    synonyms: list[Phrase] = []

    @model_validator(mode="after")
    def _prices_in_order(self) -> Service:
        low, high = self.price_from, self.price_to
        if low is not None and high is not None and high < low:
            raise _Problem(f"must not be below price_from ({low})", at=("price_to",))
        return self

    def phrases(self) -> list[str]:
        """The title and every synonym: what the client may call it."""
        return [self.title, *self.synonyms]


def _distinct_phrases(services: dict[str, Service]) -> dict[str, Service]:
    """A title or synonym names one service only, or the bot could not tell."""
    owners: dict[str, str] = {}
    for service_id, service in services.items():
        owner = owners.setdefault(_folded(service.title), service_id)
        if owner != service_id:
            raise _Problem(
                f"{service.title!r} is already the title of {owner!r}",
                at=(service_id, "title"),
            )
    for service_id, service in services.items():
        for index, phrase in enumerate(service.synonyms):
            owner = owners.setdefault(_folded(phrase), service_id)
            if owner != service_id:
                raise _Problem(
                    f"{phrase!r} already names the service {owner!r}",
                    at=(service_id, "synonyms", index),
                )
    return services


Services = Annotated[dict[ServiceId, Service], AfterValidator(_distinct_phrases)]

# Without a [services] table the bot still recognises the usual salon services; it
# names no prices, because only the salon knows them.
DEFAULT_SERVICES: dict[str, Service] = {
    "manicure": Service(
        title="Маникюр",
        synonyms=["маникюрчик", "ногти", "ноготочки", "гель-лак", "покрытие"],
    ),
    "pedicure": Service(title="Педикюр", synonyms=["педикюрчик"]),
    "haircut": Service(
        title="Стрижка",
        synonyms=["подстричься", "постричься", "подстричь", "постричь", "стричься"],
    ),
    "coloring": Service(
        title="Окрашивание волос",
        synonyms=["окрашивание", "покрасить волосы", "покраска", "мелирование"],
    ),
    "styling": Service(title="Укладка", synonyms=["причёска", "локоны"]),
    "brows": Service(
        title="Брови", synonyms=["коррекция бровей", "окрашивание бровей"]
    ),
    "lashes": Service(
        title="Ресницы", synonyms=["наращивание ресниц", "ламинирование ресниц"]
    ),
    "facial": Service(
        title="Чистка лица", synonyms=["косметолог", "пилинг", "уход за лицом"]
    ),
    "massage": Service(title="Массаж"),
    "epilation": Service(
        title="Эпиляция", synonyms=["депиляция", "шугаринг", "восковая"]
    ),
}


class Messages(_Section):
    """What the bot says; Russian by default, each text overridable."""

    greeting: str = Field(
        default="Здравствуйте! Я помогу записаться. Как к вам обращаться?",
        min_length=1,
    )
    ask_phone: str = Field(
        default="Оставьте, пожалуйста, номер телефона для связи.", min_length=1
    )
    ask_service: str = Field(default="На какую услугу хотите записаться?", min_length=1)
    ask_time: str = Field(default="Когда вам удобно прийти?", min_length=1)
    handoff: str = Field(
        default="Передаю ваш вопрос администратору, он скоро ответит.", min_length=1
    )
    done: str = Field(
        default="Спасибо! Администратор свяжется с вами, чтобы подтвердить запись.",
        min_length=1,
    )
    # The dialog's other texts. {opens} is when the salon next opens ("завтра в
    # 09:00"), {services} the list of service titles, {price} a service's range.
    greeting_short: str = Field(default="Здравствуйте!", min_length=1)
    ask_name: str = Field(default="Как к вам обращаться?", min_length=1)
    ask_service_again: str = Field(
        default="Уточните, пожалуйста, услугу: {services}.", min_length=1
    )
    service_price: str = Field(default="{service}: {price}.", min_length=1)
    ask_time_again: str = Field(
        default=(
            "Не понял, когда вам удобно. Напишите, например: «завтра после 18» "
            "или «в субботу утром»."
        ),
        min_length=1,
    )
    time_past: str = Field(
        default="Это время уже прошло. Когда вам удобно прийти?", min_length=1
    )
    ask_phone_again: str = Field(
        default=(
            "Не получилось разобрать номер. Напишите его, пожалуйста, полностью, "
            "например +7 999 000-00-00."
        ),
        min_length=1,
    )
    ask_own_phone: str = Field(
        default=(
            "Чтобы записать вас, нужен ваш собственный номер: напишите его, пожалуйста."
        ),
        min_length=1,
    )
    media: str = Field(
        default="Я понимаю только текст. Напишите, пожалуйста, сообщением.",
        min_length=1,
    )
    confirm: str = Field(default="Ваша заявка: {service}, {time}.", min_length=1)
    done_after_hours: str = Field(
        default=(
            "Спасибо! Сейчас мы закрыты: администратор свяжется с вами {opens}, "
            "чтобы подтвердить запись."
        ),
        min_length=1,
    )
    handoff_after_hours: str = Field(
        default=(
            "Передаю ваш вопрос администратору. Сейчас мы закрыты, он ответит {opens}."
        ),
        min_length=1,
    )
    # A client's message after the hand-off went to the manager; said once a burst.
    forwarded: str = Field(
        default="Передал ваше сообщение администратору, он ответит в этом чате.",
        min_length=1,
    )
    forwarded_after_hours: str = Field(
        default=(
            "Передал ваше сообщение администратору. Сейчас мы закрыты, он ответит "
            "{opens} в этом чате."
        ),
        min_length=1,
    )
    # Once the lead is in the CRM: {when} is the manager's promise, honest about
    # working hours ("в течение 15 минут", "завтра после 09:00").
    next_step: str = Field(default="Менеджер свяжется с вами {when}.", min_length=1)
    next_step_returning: str = Field(
        default=(
            "Добавили ваше сообщение к вашей текущей заявке. "
            "Менеджер свяжется с вами {when}."
        ),
        min_length=1,
    )

    @model_validator(mode="after")
    def _known_placeholders(self) -> Messages:
        for name, allowed in MESSAGE_PLACEHOLDERS.items():
            try:
                _check_placeholders(getattr(self, name), allowed)
            except ValueError as exc:
                raise _Problem(str(exc), at=(name,)) from None
        return self


# The texts the dialog fills in, and the placeholders each may use.
MESSAGE_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "ask_service_again": ("services",),
    "service_price": ("service", "price"),
    "confirm": ("service", "time", "name"),
    "done_after_hours": ("opens",),
    "handoff_after_hours": ("opens",),
    "forwarded_after_hours": ("opens",),
    "next_step": ("when",),
    "next_step_returning": ("when",),
}


def _recipient(value: Any) -> str:
    code = value.strip().upper() if isinstance(value, str) else ""
    match = re.fullmatch(r"UA|(U|DR)(\d+)", code)
    if match is None or (match[2] is not None and int(match[2]) == 0):
        raise ValueError(
            f"{value!r} is not a feed recipient: UA (everyone), U<user id> or "
            "DR<department id>"
        )
    return code


def _check_placeholders(text: str, fields: tuple[str, ...]) -> None:
    """ValueError unless every `{name}` in `text` is one of `fields`."""
    try:
        names = {name for _, name, _, _ in Formatter().parse(text) if name}
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None
    unknown = sorted(names - set(fields))
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in fields) or "none"
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: {known})")


def _template(*fields: str) -> AfterValidator:
    """A text with `{name}` placeholders, each one of `fields`."""

    def check(text: str) -> str:
        _check_placeholders(text, fields)
        return text

    return AfterValidator(check)


Recipient = Annotated[str, BeforeValidator(_recipient)]
Text = Annotated[str, Field(min_length=1), _template()]
DetailText = Annotated[str, Field(min_length=1), _template("detail")]


class WarningTexts(_Section):
    """How the weekly post names each data warning; `{detail}` is the engine's text."""

    check_left_out: DetailText = "Чеки не вошли в выручку ({detail})"
    booked_without_visit_time: DetailText = (
        "Записи без времени визита не считаются визитами"
    )
    deal_without_contact: DetailText = "Сделки без контакта не участвуют в удержании"
    stage_without_role: DetailText = "Стадия без роли не учитывается ({detail})"
    manager_without_plan: DetailText = "Нет плана: процент от выручки не начисляется"
    closed_month_figure_changed: DetailText = (
        "Изменилось после закрытия месяца: {detail}"
    )
    closed_month_deal_changed: DetailText = (
        "Сделка изменилась после закрытия месяца: {detail}"
    )
    closed_month_deal_dropped: DetailText = (
        "Учитывалась при закрытии месяца, теперь нет"
    )
    closed_month_deal_added: DetailText = (
        "Учитывается теперь, при закрытии месяца не учитывалась"
    )


class ReportTexts(_Section):
    """The weekly post's words; Russian by default, each text overridable."""

    title: Annotated[str, Field(min_length=1), _template("start", "end")] = (
        "Итоги недели {start} – {end}"
    )
    period: Annotated[str, _template("start", "end", "timezone", "as_of")] = (
        "Неделя с {start} по {end} ({timezone}), данные на {as_of}."
    )
    week_heading: Text = "Неделя по менеджерам"
    manager: Text = "Менеджер"
    total: Text = "Всего"
    leads: Text = "Лиды"
    calls: Text = "Звонки"
    bookings_made: Text = "Записи"
    cancellations: Text = "Отмены"
    visits: Text = "Визиты"
    no_shows: Text = "Неявки"
    average_check: Text = "Средний чек"
    conversion: Text = "Конверсия в запись"
    confirmed_share: Text = "Подтверждено"
    no_show_rate: Text = "Доля неявок"
    first_response: Text = "Первый ответ, мин (медиана / p90)"
    month_heading: Annotated[str, Field(min_length=1), _template("month")] = (
        "{month}: с начала месяца"
    )
    revenue: Text = "Выручка"
    plan: Text = "План"
    plan_done: Text = "Выполнение плана"
    retained_clients: Text = "Вернувшиеся клиенты"
    bonus: Text = "Бонус на сегодня"
    not_final: Text = "удержание ещё не окончательное"
    problems_heading: Text = "Главные проблемы недели"
    no_problems: Text = "Заметных проблем нет."
    unanswered: Annotated[str, _template("count", "leads", "ids")] = (
        "Лиды без ответа человека: {count} из {leads} ({ids})"
    )
    slowest: Annotated[str, _template("count", "leads", "sla", "items")] = (
        "Ответ позже {sla} рабочих минут: {count} из {leads}; дольше всех ждали: "
        "{items}"
    )
    no_show_problem: Annotated[str, _template("count", "appointments", "ids")] = (
        "Записи на неделю: {appointments}, из них неявки: {count} ({ids})"
    )
    unconfirmed: Annotated[str, _template("count", "appointments")] = (
        "Записи на неделю: {appointments}, не подтверждены до визита: {count}"
    )
    cancellation_problem: Annotated[str, _template("count", "appointments")] = (
        "Записи на неделю: {appointments}, отменены: {count}"
    )
    deal_ref: Annotated[str, _template("id")] = "сделка {id}"
    lead_ref: Annotated[str, _template("id")] = "лид {id}"
    wait: Annotated[str, _template("hours", "minutes")] = "{hours} ч {minutes} мин"
    warnings_heading: Text = "Предупреждения о данных"
    no_warnings: Text = "Предупреждений нет: данные полные."
    # The chart attached to the post (kpi_engine/chart.py).
    chart_revenue: Annotated[str, Field(min_length=1), _template("month")] = (
        "{month}: выручка с начала месяца и план"
    )
    chart_week: Text = "Неделя: лиды, визиты и неявки"
    chart_no_plan: Text = "без плана"
    chart_plan_met: Text = "План выполнен"
    chart_money: Annotated[str, Field(min_length=1), _template("amount")] = "{amount} ₽"
    chart_file: Annotated[str, Field(min_length=1), _template("week")] = (
        "итоги-недели-{week}.png"
    )
    warnings: WarningTexts = WarningTexts()


class ReportRules(_Section):
    """The weekly feed post: whether the worker posts it and who sees it."""

    post: bool = Field(default=True, strict=True)
    recipients: Annotated[list[Recipient], ListedOnce] = Field(
        default=["UA"], min_length=1
    )
    texts: ReportTexts = ReportTexts()


# --- the dashboard -----------------------------------------------------------------

_DashboardPeriod = Annotated[
    str, Field(min_length=1), _template("start", "end", "timezone", "as_of")
]
_SlaText = Annotated[str, Field(min_length=1), _template("sla")]
_BonusPartsText = Annotated[
    str, Field(min_length=1), _template("base", "percent", "retention")
]
_ShareText = Annotated[str, Field(min_length=1), _template("share")]
_CountText = Annotated[str, Field(min_length=1), _template("count")]


class _Words(_Section):
    """Words looked up by a code: a channel, a deal list, a stage role."""

    def __getitem__(self, code: str) -> str:
        if code not in type(self).model_fields:
            raise KeyError(code)
        return cast(str, getattr(self, code))

    def get(self, code: str) -> str | None:
        return self[code] if code in type(self).model_fields else None


class DashboardChannels(_Words):
    """The inquiry channels in the leads chart and the lists."""

    telegram: Text = "Telegram"
    whatsapp: Text = "WhatsApp"
    phone: Text = "Телефон"
    other: Text = "Другие"


class DashboardLists(_Words):
    """The heading of each deal list behind a number."""

    leads: Text = "Лиды периода"
    booked_leads: Text = "Лиды, которые записались"
    confirmed_leads: Text = "Лиды, которые подтвердили запись"
    visited_leads: Text = "Лиды, которые пришли"
    unanswered: Text = "Лиды без ответа человека"
    within_sla: Text = "Лиды с ответом в срок"
    bookings_made: Text = "Записи, сделанные в периоде"
    appointments: Text = "Визиты по записи в периоде"
    confirmed: Text = "Визиты, подтверждённые до начала"
    cancellations: Text = "Отменённые визиты"
    visits: Text = "Состоявшиеся визиты"
    no_shows: Text = "Неявки"
    revenue: Text = "Чеки в выручке"
    retained: Text = "Повторные визиты вернувшихся клиентов"
    bonus: Text = "Сделки, от которых зависит бонус"
    cohort: Text = "Визиты клиентов за 30 дней до периода"
    cohort_retained: Text = "Визиты клиентов, вернувшихся в течение 30 дней"
    calls: Text = "Исходящие звонки"


class DashboardRoles(_Words):
    """What a deal's stage role means, beside its stage id."""

    new: Text = "новая"
    booked: Text = "записан"
    confirmed: Text = "подтвердил"
    visited: Text = "пришёл"
    no_show: Text = "не пришёл"
    cancelled: Text = "отменил"
    lost: Text = "потеряна"


class DashboardEntities(_Words):
    """What a CRM id in a list is."""

    deal: Text = "сделка"
    lead: Text = "лид"
    contact: Text = "контакт"


class DashboardTexts(_Section):
    """The dashboard's own words; the metric names come from `[report.texts]`, so
    the weekly post and the dashboard name each metric the same way."""

    title: Text = "Показатели продаж"
    period_heading: Text = "Период"
    month: Text = "Месяц"
    date_from: Text = "С"
    date_to: Text = "По (не включая)"
    show: Text = "Показать"
    period_line: _DashboardPeriod = "{start} – {end}, {timezone}; данные на {as_of}"
    managers_heading: Text = "Менеджеры: заявки, записи, визиты"
    money_heading: Text = "Выручка, план и бонус"
    leads_per_day: Text = "Лидов в день"
    appointments: Text = "Визиты по записи"
    calls_per_working_day: Text = "Звонков в рабочий день"
    median: Text = "Первый ответ, медиана, мин"
    p90: Text = "Первый ответ, p90, мин"
    unanswered: Text = "Без ответа"
    within_sla: _SlaText = "Ответ за {sla} мин"
    retention_30d: Text = "Удержание 30 дней"
    payout: Text = "Бонус на сегодня"
    bonus_parts: _BonusPartsText = (
        "оклад {base} + процент {percent} + за вернувшихся {retention}"
    )
    bonus_months_only: Text = "Бонус и план считаются за целый календарный месяц."
    no_plan: Text = "нет плана"
    not_final: Text = (
        "Удержание ещё может измениться: период закончился меньше 30 дней назад."
    )
    charts_heading: Text = "Графики"
    chart_leads: Text = "Лиды по дням и каналам"
    chart_funnel: Text = "Воронка: от лида до визита"
    chart_no_show: Text = "Доля неявок по неделям"
    chart_first_response: Text = "Время первого ответа, рабочие минуты"
    funnel_leads: Text = "Лиды"
    funnel_booked: Text = "Записались"
    funnel_confirmed: Text = "Подтвердили"
    funnel_visited: Text = "Пришли"
    of_leads: _ShareText = "{share} от лидов"
    no_data: Text = "Нет данных за период"
    warnings_heading: Text = "Предупреждения о данных"
    channels: DashboardChannels = DashboardChannels()
    # The first-response chart's bars: up to 5, 15, 60 and 240 minutes, more,
    # and no answer.
    wait_bins: Annotated[tuple[Text, ...], Field(min_length=6, max_length=6)] = (
        "до 5 мин",
        "5–15 мин",
        "15–60 мин",
        "1–4 ч",
        "больше 4 ч",
        "без ответа",
    )
    # The deal lists behind a number.
    back: Text = "← К показателям"
    rows_count: _CountText = "Строк: {count}"
    everyone: Text = "все менеджеры"
    column_id: Text = "ID"
    column_title: Text = "Название"
    column_stage: Text = "Стадия сейчас"
    column_manager: Text = "Менеджер"
    column_amount: Text = "Сумма"
    column_created: Text = "Создана"
    column_visit: Text = "Визит"
    column_channel: Text = "Канал"
    column_wait: Text = "Первый ответ, мин"
    column_started: Text = "Начало"
    column_bound: Text = "Привязан к"
    lists: DashboardLists = DashboardLists()
    roles: DashboardRoles = DashboardRoles()
    entities: DashboardEntities = DashboardEntities()
    # When a page cannot be shown.
    problem: Text = "Не удалось показать показатели"
    invalid_period: Text = (
        "Неверный период: конец должен быть позже начала, месяц — вида 2026-11."
    )
    period_too_long: Text = "Панель показывает не больше 366 дней за раз."
    unknown_metric: Text = "За этим числом нет списка сделок."
    portal_missing: Text = (
        "Bitrix24 не подключён: задайте LEADLOOP_BITRIX24_WEBHOOK_URL."
    )
    portal_failed: DetailText = (
        "Bitrix24 не ответил ({detail}). Попробуйте ещё раз позже."
    )
    # Signing in, production only.
    login_title: Text = "Вход в панель"
    login_hint: Text = "Введите токен администратора (LEADLOOP_ADMIN_TOKEN)."
    login_field: Text = "Токен"
    login_submit: Text = "Войти"
    login_failed: Text = "Токен не подошёл."
    logout: Text = "Выйти"


class DashboardRules(_Section):
    """`GET /dashboard`: what a manager reads there."""

    texts: DashboardTexts = DashboardTexts()


# --- reminders ---------------------------------------------------------------------

# What the client reads: {when} is relative to the day it is sent ("завтра в 10:00",
# "4 декабря в 10:00"), {date} "04.12", {time} "10:00".
ClientText = Annotated[str, Field(min_length=1), _template("when", "date", "time")]
# WhatsApp shows at most 20 characters of a reply button (reference §2.6).
ButtonText = Annotated[str, Field(min_length=1, max_length=20), _template()]
# What the manager reads: {when} is absolute ("4 декабря в 10:00"), {channel} the
# messenger's name.
ManagerText = Annotated[str, Field(min_length=1), _template("when", "channel")]
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2})?")


def _whatsapp_template_name(value: Any) -> str:
    if not isinstance(value, str) or not _TEMPLATE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a WhatsApp template name (lower-case letters, digits, _)"
        )
    return value


def _language_code(value: Any) -> str:
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a language code like ru or en_US")
    return value


class ReminderTexts(_Section):
    """The reminders' words, for the client and for the manager's CRM."""

    day_before: ClientText = (
        "Напоминаем о вашей записи {when}. Подтвердите, пожалуйста, что придёте."
    )
    hours_before: ClientText = "Ждём вас {when}. Всё в силе?"
    confirm_button: ButtonText = "Подтверждаю"
    cancel_button: ButtonText = "Отменить запись"
    confirmed: ClientText = "Спасибо! Ждём вас {when}."
    cancelled: ClientText = (
        "Запись отменена. Администратор свяжется с вами, чтобы подобрать другое время."
    )
    forwarded: ClientText = "Передал ваше сообщение администратору, он скоро ответит."
    comment_confirmed: ManagerText = (
        "Клиент подтвердил визит {when} кнопкой в напоминании ({channel})."
    )
    comment_cancelled: ManagerText = (
        "Клиент отменил визит {when} кнопкой в напоминании ({channel})."
    )
    comment_stale_answer: Annotated[
        str, Field(min_length=1), _template("when", "channel", "answer")
    ] = (
        "Клиент нажал «{answer}» в напоминании о визите {when} ({channel}), "
        "но запись уже изменилась."
    )
    comment_message: Annotated[
        str, Field(min_length=1), _template("when", "channel", "text")
    ] = "Ответ клиента на напоминание о визите {when} ({channel}):\n{text}"
    notify_message: Annotated[
        str, Field(min_length=1), _template("when", "channel", "deal")
    ] = (
        "Клиент написал в ответ на напоминание о визите {when} ({channel}), "
        "сделка {deal}."
    )
    task_call: ManagerText = "Позвонить клиенту: визит {when} не подтверждён"
    task_rebook: ManagerText = "Клиент отменил визит {when}: предложить другое время"
    task_unreachable: ManagerText = (
        "Напоминание о визите {when} не доставлено ({channel}): позвонить клиенту"
    )
    task_outcome: ManagerText = "Отметить итог визита {when}: пришёл клиент или нет"


class ReminderRules(_Section):
    """When reminders go out, what they say, and what the manager is asked to do."""

    enabled: bool = Field(default=True, strict=True)
    # The day before the visit at this local time, and whole hours before it.
    day_before: bool = Field(default=True, strict=True)
    day_before_at: Clock = time(12, 0)
    hours_before: Annotated[
        list[Annotated[int, Field(ge=1, le=47, strict=True)]], ListedOnce
    ] = [2]
    # No client message from start to end (across midnight when start > end); a
    # reminder may go at either boundary itself.
    quiet_hours: tuple[Clock, Clock] = (time(21, 0), time(9, 0))
    # A call task this many hours before a visit the client has not confirmed; 0: off.
    call_if_unconfirmed_hours: int = Field(default=3, ge=0, le=47, strict=True)
    # A task to record the outcome on the next working morning after the visit.
    outcome_check: bool = Field(default=True, strict=True)
    # The reconcile job looks this far ahead, every this many minutes.
    horizon_hours: int = Field(default=48, ge=1, le=168, strict=True)
    reconcile_minutes: int = Field(default=5, ge=1, le=30, strict=True)
    # The approved template sent outside WhatsApp's 24-hour window; its quick-reply
    # buttons must read as confirm_button and cancel_button, in that order: each is
    # sent the visit's data by position.
    whatsapp_template: Annotated[str, BeforeValidator(_whatsapp_template_name)] = (
        "visit_reminder"
    )
    whatsapp_language: Annotated[str, BeforeValidator(_language_code)] = "ru"
    whatsapp_parameters: list[ClientText] = ["{when}"]
    texts: ReminderTexts = ReminderTexts()

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_differ(cls, hours: tuple[time, time]) -> tuple[time, time]:
        if hours[0] == hours[1]:
            raise ValueError("start and end must differ")
        return hours

    @field_validator("reconcile_minutes")
    @classmethod
    def _divides_the_hour(cls, minutes: int) -> int:
        if 60 % minutes:
            raise ValueError("must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)")
        return minutes

    @model_validator(mode="after")
    def _distinct_buttons(self) -> ReminderRules:
        if self.texts.confirm_button == self.texts.cancel_button:
            raise _Problem(
                "must differ from confirm_button", at=("texts", "cancel_button")
            )
        return self


# --- intake hand-off ----------------------------------------------------------------

NEXT_MORNING = "next_morning"
# A week of working minutes: longer is not a call-back deadline.
_MAX_DEADLINE_MINUTES = 7 * 24 * 60
IntakeChannel = Literal["telegram", "whatsapp"]
# What the hand-off can write into a user field of the deal or lead, as text.
QualificationItem = Literal[
    "service", "preferred_time", "readiness", "urgency", "budget", "summary", "channel"
]


def _deadline(value: Any) -> int | str:
    if value == NEXT_MORNING:
        return NEXT_MORNING
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'must be working minutes or "{NEXT_MORNING}"')
    if not 1 <= value <= _MAX_DEADLINE_MINUTES:
        raise ValueError(f"must lie within 1–{_MAX_DEADLINE_MINUTES} working minutes")
    return value


def _source_id(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_|:.-]{1,50}", value):
        raise ValueError(f"{value!r} is not a source id like TELEGRAM or UC_1A2B3C")
    return value


CallBack = Annotated[int | str, BeforeValidator(_deadline)]
SourceId = Annotated[str, BeforeValidator(_source_id)]
FieldCode = Annotated[str, BeforeValidator(_field_code)]


class IntakeDeadlines(_Section):
    """How soon the manager calls back, by readiness: working minutes of the
    manager's shift, or "next_morning" (the next opening plus the grace)."""

    hot: CallBack = 15
    warm: CallBack = 120
    cold: CallBack = NEXT_MORNING
    morning_grace_minutes: int = Field(default=60, ge=0, le=720, strict=True)


class Shift(_Section):
    """One manager's working days and hours; what is left out follows [calendar]."""

    working_days: list[Weekday] | None = None
    hours: Hours | None = None


class IntakeRules(_Section):
    """Who gets a new lead, by when, and how it is written into the CRM."""

    # Bitrix24 user ids taking new clients in turn; empty: the [bonus.managers] ids.
    managers: list[UserId] = []
    shifts: dict[UserId, Shift] = {}
    deadlines: IntakeDeadlines = IntakeDeadlines()
    # SOURCE_ID per channel; `leadloop setup` or the portal's admin creates them.
    sources: dict[IntakeChannel, SourceId] = {
        "telegram": "TELEGRAM",
        "whatsapp": "WHATSAPP",
    }
    # The qualification in Russian in COMMENTS, and item by item in user fields.
    comments: bool = Field(default=True, strict=True)
    fields: dict[QualificationItem, FieldCode] = {}
    # A personal notification to the manager besides the task's own (Bitrix24
    # notifies a task's responsible when another user sets it); one more portal
    # request a lead.
    notify: bool = Field(default=False, strict=True)
    # After the hand-off the bot answers a client's messages once per burst: the
    # first message after this many quiet minutes (0: every message); the manager
    # gets every message on the deal either way.
    followup_reply_every_minutes: int = Field(default=10, ge=0, le=1440, strict=True)

    @property
    def followup_reply_every(self) -> timedelta:
        return timedelta(minutes=self.followup_reply_every_minutes)

    def manager_ids(self, bonus: BonusRules) -> list[int]:
        """The managers taking new clients, in id order."""
        ids = self.managers or list(bonus.managers)
        return sorted({int(user_id) for user_id in ids})


class BusinessRules(_Section):
    """The whole business-rules file; every section has working defaults."""

    timezone: Annotated[str, BeforeValidator(_time_zone)] = "Europe/Moscow"
    crm: CrmRules = CrmRules()
    calendar: CalendarRules = CalendarRules()
    kpi: KpiRules = KpiRules()
    money: MoneyRules = MoneyRules()
    bonus: BonusRules = BonusRules()
    services: Services = DEFAULT_SERVICES
    messages: Messages = Messages()
    report: ReportRules = ReportRules()
    dashboard: DashboardRules = DashboardRules()
    reminders: ReminderRules = ReminderRules()
    intake: IntakeRules = IntakeRules()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --- loading -----------------------------------------------------------------------


def load_rules(path: Path | None) -> BusinessRules:
    """Read and validate the rules file; no path means the defaults."""
    if path is None:
        return BusinessRules()

    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source, ["LEADLOOP_CONFIG names this file, but it does not exist"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot be read: {exc}"]) from None

    return parse_rules(text, source=source)


def parse_rules(text: str, *, source: str = "<string>") -> BusinessRules:
    """Validate rules given as TOML text."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None

    try:
        return BusinessRules.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        loc: tuple[str | int, ...] = tuple(detail["loc"])
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, _Problem):
            loc += cause.at
        if isinstance(cause, ValueError):
            message = str(cause)
        elif detail["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = detail["msg"][:1].lower() + detail["msg"][1:]
        problems.append(f"{_key_path(loc)}: {message}")
    return problems


def _key_path(loc: tuple[str | int, ...]) -> str:
    """`('bonus', 'managers', '17', 'plan')` → `bonus.managers."17".plan`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("<") or part == "[key]":
            continue  # union tags and pydantic's key marker are not TOML keys
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            quoted = '"' + part.replace('"', '\\"') + '"'
            path += f".{quoted}" if path else quoted
    return path or "(top level)"
