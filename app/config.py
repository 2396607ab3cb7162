"""Business rules from the TOML file named by `LEADLOOP_CONFIG`, validated on load.

Money and rates are `Decimal`, written in TOML as strings (`"1000.00"`): a TOML float is
binary and cannot hold every kopeck, so floats are rejected where money is expected.
"""

from __future__ import annotations

import re
import tomllib
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal
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
    return value


def _time_zone(value: Any) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"{value!r} is not an IANA time zone like Europe/Moscow"
        ) from None
    return str(value)


Money = Annotated[Decimal, BeforeValidator(_money)]
Rate = Annotated[Decimal, BeforeValidator(_rate)]
BonusRate = Annotated[Decimal, BeforeValidator(_bonus_rate)]
PerRetained = Annotated[Decimal, BeforeValidator(_money), AfterValidator(_per_retained)]
UserId = Annotated[str, BeforeValidator(_user_id)]
Currency = Annotated[str, BeforeValidator(_currency)]
Day = Annotated[date, BeforeValidator(_date)]
Clock = Annotated[time, BeforeValidator(_clock)]
StageId = Annotated[str, BeforeValidator(_stage_id)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

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
    stages: StageRoles = StageRoles()
    lead_statuses: LeadStatuses = LeadStatuses()


class CalendarRules(_Section):
    working_days: list[Weekday] = ["mon", "tue", "wed", "thu", "fri", "sat"]
    hours: tuple[Clock, Clock] = (time(9, 0), time(21, 0))
    holidays: list[Day] = []
    extra_working_days: list[Day] = []

    @field_validator("working_days")
    @classmethod
    def _no_repeated_days(cls, days: list[Weekday]) -> list[Weekday]:
        for index, day in enumerate(days):
            if day in days[:index]:
                raise _Problem(f"{day!r} is listed twice", at=(index,))
        return days

    @field_validator("hours")
    @classmethod
    def _start_before_end(cls, hours: tuple[time, time]) -> tuple[time, time]:
        start, end = hours
        if start >= end:
            raise ValueError(f"start {start:%H:%M} must be before end {end:%H:%M}")
        return hours

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


class BusinessRules(_Section):
    """The whole business-rules file; every section has working defaults."""

    timezone: Annotated[str, BeforeValidator(_time_zone)] = "Europe/Moscow"
    crm: CrmRules = CrmRules()
    calendar: CalendarRules = CalendarRules()
    kpi: KpiRules = KpiRules()
    money: MoneyRules = MoneyRules()
    bonus: BonusRules = BonusRules()
    messages: Messages = Messages()

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
