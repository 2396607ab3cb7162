"""When the client wants to come, from Russian free text, relative to "now".

"завтра после 18", "в субботу утром", "15.12 в 10:30", "через 2 часа": the result is
a window of days and clock times in the business time zone, with the client's own words
that gave it. Everything is relative to the moment the client wrote, converted to the
business zone first, so "завтра" at 23:40 Moscow time is the next Moscow date whatever
the server's zone.

dateparser 1.5.0 was measured against these phrases and left out: it read
"3 января в 12" as the year 2112, "15.12 в 10:30" as 8 December, dropped the hour of
"послезавтра в 11", and has no notion of "утром" or "после 18". A small set of rules
for the phrases salon clients write is shorter than the corrections it would need.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, model_validator

from app.russian import RELATIVE_DAYS, day_month

# Re-exported: qualification.managers names weekdays through this module.
from app.russian import WEEKDAY_ACCUSATIVE as WEEKDAY_ACCUSATIVE
from qualification.phones import find_phones

# A day's hours as clients mean them when they name a part of the day.
MORNING = (time(8), time(12))
DAYTIME = (time(12), time(17))
LUNCH = (time(12), time(15))
AFTER_LUNCH = (time(14), time(18))
BEFORE_LUNCH = (time(8), time(13))
TOWARDS_EVENING = (time(16), time(20))
EVENING = (time(17), time(22))
# "в 7" from a salon client means 19:00: nobody books a manicure at 7 a.m.
LATEST_BARE_MORNING_HOUR = 7
# "в ближайшее время": today and the two days after.
SOON_DAYS = 3
# "в любое время": any day of the coming week.
ANY_TIME_DAYS = 7

# Month names as written after a day number, full and short: "15 дек", "3 мая".
_MONTHS = (
    r"(?:январ[яье]|янв|феврал[яье]|фев|март[ае]?|мар|апрел[яье]|апр|ма[йяе]|"
    r"июн[яье]?|июл[яье]?|август[ае]?|авг|сентябр[яье]|сент?|октябр[яье]|окт|"
    r"ноябр[яье]|нояб?|декабр[яье]|дек)\b\.?"
)
_MONTH_PREFIXES = (
    "янв",
    "фев",
    "мар",
    "апр",
    "ма",
    "июн",
    "июл",
    "авг",
    "сен",
    "окт",
    "ноя",
    "дек",
)
# (word forms, short form); "сред" alone would also match "средней длины".
_WEEKDAYS = (
    (r"понедельник[а-я]{0,2}", "пн"),
    (r"вторник[а-я]{0,2}", "вт"),
    (r"сред[аыу]", "ср"),
    (r"четверг[а-я]{0,2}", "чт"),
    (r"пятниц[аыу]", "пт"),
    (r"суббот[аыу]", "сб"),
    (r"воскресень[еяю]", "вс"),
)
_HOUR_WORDS = {
    "час": 1,
    "один": 1,
    "одного": 1,
    "два": 2,
    "двух": 2,
    "три": 3,
    "трех": 3,
    "четыре": 4,
    "четырех": 4,
    "пять": 5,
    "пяти": 5,
    "шесть": 6,
    "шести": 6,
    "семь": 7,
    "семи": 7,
    "восемь": 8,
    "восьми": 8,
    "девять": 9,
    "девяти": 9,
    "десять": 10,
    "десяти": 10,
    "одиннадцать": 11,
    "одиннадцати": 11,
    "двенадцать": 12,
    "двенадцати": 12,
    "полдень": 12,
    "полудня": 12,
}
_COUNT_WORDS = {
    "пару": 2,
    "два": 2,
    "две": 2,
    "три": 3,
    "четыре": 4,
    "пять": 5,
    "шесть": 6,
    "семь": 7,
    "десять": 10,
}


class TimeWindow(BaseModel):
    """Days (inclusive) and clock times the client named, in the business zone.

    `start_time` None means from the start of each day, `end_time` None to its end;
    equal times mean an exact moment ("в 10:30").
    """

    model_config = ConfigDict(frozen=True)

    first_day: date
    last_day: date
    start_time: time | None = None
    end_time: time | None = None
    zone: str
    quotes: tuple[str, ...]

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.last_day < self.first_day:
            raise ValueError("last_day is before first_day")
        return self

    @property
    def exact(self) -> bool:
        return self.start_time is not None and self.start_time == self.end_time

    @property
    def start(self) -> datetime:
        """The earliest moment of the window, aware."""
        return _at(self.first_day, self.start_time or time(0), ZoneInfo(self.zone))

    @property
    def end(self) -> datetime:
        """The end of the window (exclusive; equal to `start` when exact), aware."""
        zone = ZoneInfo(self.zone)
        if self.end_time is None:
            return _at(self.last_day + timedelta(days=1), time(0), zone)
        return _at(self.last_day, self.end_time, zone)

    def is_past(self, now: datetime) -> bool:
        """True when the whole window lies before `now`."""
        return self.start < now if self.exact else self.end <= now

    def describe(self, now: datetime) -> str:
        """The window in Russian, as the bot repeats it to the client."""
        today = now.astimezone(ZoneInfo(self.zone)).date()
        days = _describe_days(self.first_day, self.last_day, today)
        hours = _describe_hours(self.start_time, self.end_time)
        return f"{days}, {hours}" if hours else days


def parse_time(text: str, now: datetime, zone: ZoneInfo) -> TimeWindow | None:
    """The window the text names, relative to `now`; None when it names none."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local_now = now.astimezone(zone)
    scan = _Scan(text)
    parts = list(_parts(scan, local_now))
    if not parts:
        return None
    return _combine(parts, local_now, zone)


# --- text --------------------------------------------------------------------------


def _fold(char: str) -> str:
    lower = char.lower()
    if len(lower) != 1:
        return char
    return "е" if lower == "ё" else lower


class _Scan:
    """The text folded for matching (same length), and the spans already read."""

    def __init__(self, original: str) -> None:
        chars = [_fold(char) for char in original]
        # A phone's digit groups would read as dates and hours.
        for found in find_phones(original):
            chars[found.start : found.end] = " " * (found.end - found.start)
        self.folded = "".join(chars)
        self.original = original
        self._read: list[tuple[int, int]] = []

    def unread(self, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
        for match in pattern.finditer(self.folded):
            start, end = match.span()
            if not any(start < b and a < end for a, b in self._read):
                yield match

    def mark_read(self, match: re.Match[str]) -> None:
        self._read.append(match.span())

    def quote(self, match: re.Match[str]) -> str:
        return self.original[match.start() : match.end()].strip(" ,.;:!?")


# --- parts -------------------------------------------------------------------------

PartKind = Literal["moment", "day", "days", "hours", "after", "before", "exact"]
Hours = tuple[time | None, time | None]


@dataclass(frozen=True)
class _Part:
    kind: PartKind
    start: int
    days: tuple[date, date] | None = None
    moment: datetime | None = None
    hours: Hours = (None, None)
    explicit: bool = False  # a calendar date, which wins over weekdays
    week: bool = False  # "на следующей неделе", which a weekday narrows
    quote: str = ""


_HOUR = r"(?:\d{1,2}(?:[:.]\d{2})?|" + "|".join(_HOUR_WORDS) + r")(?![\d\w])"
_POD = r"(?:\s+(?P<pod>утра|дня|вечера|ночи))?"
_HOURS_WORD = r"(?:\s*(?:час(?:а|ов)?|ч)\b\.?)?"
# What may not follow an hour: then the number is a date, money, or a count.
_NOT_AN_HOUR = (
    r"(?!\s*(?:-?е\b|-?го\b|числа|"
    + _MONTHS
    + r"|к\b|k\b|тыс|т\.?\s?р|р\b|р\.|руб|₽|\$|%|человек|раз|мин|недел|дней|сут|мес))"
)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.VERBOSE)


# Durations that are not a time of day ("на 2 часа", "на пару дней"): read, ignored.
_LENGTH = _rx(
    r"""\bна\s+(?:\d{1,2}|пару|два|две|три|полтора)\s+
    (?:час\w*|дн\w*|недел\w*|сут\w*|мин\w*)"""
)
_DURATION = _rx(
    r"""\bчерез\s+(?:(?P<n>\d{1,3}|пару|два|две|три|четыре|пять|шесть|семь|
    десять)\s+)?(?P<unit>полчаса|полтора\s+часа|минут[уы]?\b|мин\b|час(?:а|ов)?\b|
    сутки|день|дн(?:я|ей)|недел(?:ю|и|ь)|месяц)"""
)
_NOW = _rx(
    r"""\bпрямо\s+сейчас\b|\bсейчас\s+же\b|\bкак\s+можно\s+(?:скорее|раньше|быстрее)\b
    |\bпоскорее\b|\bпобыстрее\b|\b(?:можно|хочу|давайте|могу|приду|подойду|прийти|
    подойти|записаться)\s+(?:[а-я]+\s+)?сейчас\b"""
)
_SOON = _rx(r"\bв\s+ближайш(?:ее|ие)\s+(?:время|дни)\b")
_ANY_TIME = _rx(r"\bв\s+любое\s+время\b|\bкогда\s+угодно\b|\bв\s+любой\s+день\b")
_NUMERIC_DATE = _rx(
    r"(?<![\d:.,])(?P<d>\d{1,2})[./](?P<m>\d{1,2})(?:[./](?P<y>\d{4}|\d{2}))?(?![\d:])"
    r"(?!\s*(?:к|k|тыс|т\.?\s?р|р|руб\w*|₽)(?![а-я]))"  # "1.5к" is money
)
_NAMED_DATE = _rx(
    r"(?<![\d:.])(?P<d>\d{1,2})(?:-?(?:го|е|ое))?\s+(?P<month>"
    + _MONTHS
    + r")(?:\s+(?P<y>\d{4}))?"
)
_MONTH_DAY = _rx(r"(?<![\d:.])(?P<d>\d{1,2})(?:-?(?:го|е)\b(?:\s+числа)?|\s+числа\b)")
_RELATIVE_DAY = _rx(r"\b(?P<word>послезавтра|завтра|сегодня|седня)\b")
_WEEK = _rx(
    r"""\bна\s+(?P<which>эт(?:ой|у)\s+|следующ\w*\s+|будущ\w*\s+)?недел[еию]\b
    |\b(?P<next>следующ\w*|будущ\w*)\s+недел[еияю]\b"""
)
_WEEKEND = _rx(
    r"\b(?:(?:в|на)\s+)?(?P<which>эти\s+|следующие\s+|ближайшие\s+)?выходн(?:ые|ых)\b"
)
_WEEKDAY = _rx(
    r"\b(?:(?P<which>следующ\w*|эт(?:от|у|о|а)|ближайш\w*)\s+)?(?P<wd>"
    + "|".join(rf"{forms}\b|{short}\b\.?" for forms, short in _WEEKDAYS)
    + r")"
)
_PART_OF_DAY = _rx(
    r"""\b(?P<word>с\s+утра|утр(?:ом|о|ечком)|ближе\s+к\s+вечеру|к\s+вечеру|
    вечер(?:ом|ком)?|после\s+обеда|до\s+обеда|в\s+обед|днем)\b"""
)
_RANGE = _rx(
    rf"""\b(?:с|со|между)\s+(?P<a>{_HOUR}){_NOT_AN_HOUR}{_HOURS_WORD}\s*
    (?:до|по|и|-|–)\s*(?P<b>{_HOUR}){_NOT_AN_HOUR}{_HOURS_WORD}{_POD}"""
)
_AFTER = _rx(
    rf"""\b(?:после|позже|не\s+раньше|начиная\s+с|с)\s+(?P<a>{_HOUR})
    {_NOT_AN_HOUR}{_HOURS_WORD}{_POD}"""
)
_BEFORE = _rx(
    rf"""\b(?:до|не\s+позже|не\s+позднее|раньше)\s+(?P<b>{_HOUR})
    {_NOT_AN_HOUR}{_HOURS_WORD}{_POD}"""
)
_EXACT = _rx(
    rf"""\b(?:час(?:ов|иков)\s+)?(?:в|во|к|около|на|примерно\s+в)\s+
    (?P<t>{_HOUR}){_NOT_AN_HOUR}{_HOURS_WORD}{_POD}"""
)
_CLOCK = _rx(r"(?<![\d:.])(?P<t>\d{1,2}:\d{2})(?!\d)" + _POD)

_Reader = Callable[[re.Match[str]], "_Part | None"]


def _parts(scan: _Scan, now: datetime) -> Iterator[_Part]:
    """Every date and time expression, the most specific patterns first."""
    today = now.date()
    hint = _part_of_day_hint(scan.folded)
    readers: list[tuple[re.Pattern[str], _Reader]] = [
        (_LENGTH, lambda m: None),
        (_DURATION, lambda m: _duration(m, now)),
        (_NOW, lambda m: _from_now(m, now)),
        (_SOON, lambda m: _days_from(m, today, SOON_DAYS)),
        (_ANY_TIME, lambda m: _days_from(m, today, ANY_TIME_DAYS)),
        (_NAMED_DATE, lambda m: _named_date(m, today)),
        (_NUMERIC_DATE, lambda m: _numeric_date(m, today)),
        (_MONTH_DAY, lambda m: _month_day(m, today)),
        (_RELATIVE_DAY, lambda m: _relative_day(m, today)),
        (_WEEKEND, lambda m: _weekend(m, today)),
        (_WEEK, lambda m: _week(m, today)),
        (_WEEKDAY, lambda m: _weekday(m, today)),
        (_PART_OF_DAY, _part_of_day),
        (_RANGE, lambda m: _hours_part("hours", m, hint)),
        (_AFTER, lambda m: _hours_part("after", m, hint)),
        (_BEFORE, lambda m: _hours_part("before", m, hint)),
        (_EXACT, lambda m: _hours_part("exact", m, hint)),
        (_CLOCK, lambda m: _hours_part("exact", m, hint)),
    ]
    for pattern, read in readers:
        for match in scan.unread(pattern):
            part = read(match)
            if part is None and pattern is not _LENGTH:
                continue  # not what it looked like: later patterns may read it
            scan.mark_read(match)
            if part is not None:
                yield dataclasses.replace(part, quote=scan.quote(match))


def _duration(match: re.Match[str], now: datetime) -> _Part | None:
    unit = match["unit"]
    count = _count(match["n"])
    if unit == "полчаса":
        delta = timedelta(minutes=30)
    elif unit.startswith("полтора"):
        delta = timedelta(minutes=90)
    elif unit.startswith("мин"):
        delta = timedelta(minutes=count)
    elif unit.startswith("час"):
        delta = timedelta(hours=count)
    elif unit.startswith("недел"):
        return _on_day(match, now.date() + timedelta(weeks=count))
    elif unit == "месяц":
        return None  # "через месяц" is too vague to be a preference
    else:
        return _on_day(match, now.date() + timedelta(days=count))
    # Hours are physical time: across a DST change "через 2 часа" is two hours.
    moment = (now.astimezone(UTC) + delta).astimezone(now.tzinfo)
    return _Part(
        "moment", match.start(), moment=moment.replace(second=0, microsecond=0)
    )


def _count(word: str | None) -> int:
    if word is None:
        return 1
    return int(word) if word.isdigit() else _COUNT_WORDS[word]


def _from_now(match: re.Match[str], now: datetime) -> _Part:
    today = now.date()
    return _Part("after", match.start(), (today, today), hours=(_minute(now), None))


def _on_day(match: re.Match[str], day: date, *, explicit: bool = False) -> _Part:
    return _Part("day", match.start(), (day, day), explicit=explicit)


def _days_from(match: re.Match[str], first: date, count: int) -> _Part:
    return _Part("days", match.start(), (first, first + timedelta(days=count - 1)))


def _named_date(match: re.Match[str], today: date) -> _Part | None:
    word = match["month"]
    month = next(
        index + 1
        for index, prefix in enumerate(_MONTH_PREFIXES)
        if word.startswith(prefix)
    )
    return _dated(match, today, int(match["d"]), month, match["y"])


def _numeric_date(match: re.Match[str], today: date) -> _Part | None:
    day, month = int(match["d"]), int(match["m"])
    if not 1 <= month <= 12:
        return None  # "10.30" is a clock time; the clock patterns read it
    return _dated(match, today, day, month, match["y"])


def _dated(
    match: re.Match[str], today: date, day: int, month: int, year_text: str | None
) -> _Part | None:
    if year_text is not None:
        years = [int(year_text) + (2000 if len(year_text) == 2 else 0)]
    else:
        # Without a year it is the next such date: in December "15.01" is January.
        years = [today.year, today.year + 1]
    for year in years:
        try:
            found = date(year, month, day)
        except ValueError:
            return None
        if year_text is not None or found >= today:
            return _on_day(match, found, explicit=True)
    return None


def _month_day(match: re.Match[str], today: date) -> _Part | None:
    day = int(match["d"])
    for months_ahead in range(3):
        index = today.month - 1 + months_ahead
        try:
            found = date(today.year + index // 12, index % 12 + 1, day)
        except ValueError:
            continue  # "31 числа" in a 30-day month: the next month that has one
        if found >= today:
            return _on_day(match, found, explicit=True)
    return None


def _relative_day(match: re.Match[str], today: date) -> _Part:
    offset = {"сегодня": 0, "седня": 0, "завтра": 1, "послезавтра": 2}[match["word"]]
    return _on_day(match, today + timedelta(days=offset))


def _weekday(match: re.Match[str], today: date) -> _Part:
    word = match["wd"].rstrip(".")
    weekday = next(
        index
        for index, (forms, short) in enumerate(_WEEKDAYS)
        if word == short or re.fullmatch(forms, word)
    )
    which = match["which"] or ""
    if which.startswith("следующ"):
        # "в следующую субботу": the Saturday of next week.
        next_monday = today + timedelta(days=7 - today.weekday())
        return _on_day(match, next_monday + timedelta(days=weekday))
    ahead = (weekday - today.weekday()) % 7
    if ahead == 0 and not which.startswith("эт"):
        ahead = 7  # "в среду" said on a Wednesday: for today people say "сегодня"
    return _on_day(match, today + timedelta(days=ahead))


def _week(match: re.Match[str], today: date) -> _Part:
    next_monday = today + timedelta(days=7 - today.weekday())
    which = match["which"] or match["next"] or ""
    if which.startswith(("следующ", "будущ")):
        days = (next_monday, next_monday + timedelta(days=6))
    else:
        days = (today, next_monday - timedelta(days=1))
    return _Part("days", match.start(), days, week=True)


def _weekend(match: re.Match[str], today: date) -> _Part:
    saturday = today + timedelta(days=(5 - today.weekday()) % 7)
    if today.weekday() == 6:
        saturday = today - timedelta(days=1)
    if (match["which"] or "").startswith("следующ"):
        saturday += timedelta(days=7)
    days = (max(saturday, today), saturday + timedelta(days=1))
    return _Part("days", match.start(), days, week=True)


def _part_of_day(match: re.Match[str]) -> _Part:
    word = re.sub(r"\s+", " ", match["word"])
    if word == "после обеда":
        hours = AFTER_LUNCH
    elif word == "до обеда":
        hours = BEFORE_LUNCH
    elif word == "в обед":
        hours = LUNCH
    elif word.endswith("к вечеру"):
        hours = TOWARDS_EVENING
    elif "утр" in word:
        hours = MORNING
    elif word.startswith("вечер"):
        hours = EVENING
    else:
        hours = DAYTIME
    return _Part("hours", match.start(), hours=hours)


def _part_of_day_hint(folded: str) -> str | None:
    """A part of the day named anywhere, which settles "в 7" as 7 or 19."""
    if re.search(r"\bутр", folded):
        return "утра"
    if re.search(r"\bвечер|\bднем\b|\bобед", folded):
        return "вечера"
    return None


def _hours_part(kind: PartKind, match: re.Match[str], hint: str | None) -> _Part | None:
    pod = match["pod"] or hint
    named = match.groupdict()
    first = _clock(named.get("a") or named.get("t") or named.get("b"), pod)
    if first is None:
        return None
    if kind == "hours":
        second = _clock(match["b"], pod)
        if second is None or second <= first:
            return None
        return _Part("hours", match.start(), hours=(first, second))
    if kind == "after":
        return _Part("after", match.start(), hours=(first, None))
    if kind == "before":
        return _Part("before", match.start(), hours=(None, first))
    return _Part("exact", match.start(), hours=(first, first))


def _clock(text: str | None, pod: str | None) -> time | None:
    if text is None:
        return None
    hour_text, _, minute_text = text.replace(".", ":").partition(":")
    hour = int(hour_text) if hour_text.isdigit() else _HOUR_WORDS[hour_text]
    minute = int(minute_text) if minute_text else 0
    hour = _afternoon(hour, pod)
    if not 0 <= hour <= 23 or not 0 <= minute <= 59:
        return None
    return time(hour, minute)


def _afternoon(hour: int, pod: str | None) -> int:
    if hour == 24:
        return 0
    if pod in ("дня", "вечера") and hour < 12:
        return hour + 12
    if pod == "ночи":
        return 0 if hour == 12 else hour + 12 if 6 <= hour < 12 else hour
    if pod == "утра":
        return hour
    return hour + 12 if 1 <= hour <= LATEST_BARE_MORNING_HOUR else hour


def _minute(moment: datetime) -> time:
    return moment.time().replace(second=0, microsecond=0)


# --- combining ---------------------------------------------------------------------


def _combine(parts: list[_Part], now: datetime, zone: ZoneInfo) -> TimeWindow | None:
    quotes = tuple(part.quote for part in sorted(parts, key=lambda part: part.start))
    moment = next((part.moment for part in parts if part.moment is not None), None)
    if moment is not None:
        clock = _minute(moment)
        day = moment.date()
        return TimeWindow(
            first_day=day,
            last_day=day,
            start_time=clock,
            end_time=clock,
            zone=zone.key,
            quotes=quotes,
        )

    days = _days(parts)
    start_time, end_time = _hours(parts)
    if days is None:
        if start_time is None and end_time is None:
            return None
        return _today_or_tomorrow((start_time, end_time), now, zone, quotes)
    return TimeWindow(
        first_day=days[0],
        last_day=days[1],
        start_time=start_time,
        end_time=end_time,
        zone=zone.key,
        quotes=quotes,
    )


def _days(parts: list[_Part]) -> tuple[date, date] | None:
    """Calendar dates win over weekdays and "завтра"; several days make a range."""
    dated = [part for part in parts if part.days is not None]
    chosen = [part for part in dated if part.explicit] or dated
    ranges = [part.days for part in chosen if part.days is not None]
    single = [part.days[0] for part in chosen if part.days and part.kind == "day"]
    week = next((part.days for part in chosen if part.days and part.week), None)
    if single and week is not None:
        # "в субботу на следующей неделе": that week's Saturday.
        ranges = [(day, day) for day in (_into(week, day) for day in single)]
    elif single:
        ranges = [(day, day) for day in single]
    if not ranges:
        return None
    return min(first for first, _ in ranges), max(last for _, last in ranges)


def _into(week: tuple[date, date], day: date) -> date:
    first, last = week
    if first <= day <= last:
        return day
    return first + timedelta(days=(day.weekday() - first.weekday()) % 7)


def _hours(parts: list[_Part]) -> Hours:
    """An exact time wins; bounds and parts of the day narrow each other."""
    exact = [part for part in parts if part.kind == "exact"]
    if exact:
        return exact[0].hours
    timed = [part for part in parts if part.kind in ("hours", "after", "before")]
    start = max((p.hours[0] for p in timed if p.hours[0] is not None), default=None)
    end = min((p.hours[1] for p in timed if p.hours[1] is not None), default=None)
    if start is not None and end is not None and end <= start:
        # "вечером до 12" contradicts itself; the bound typed first is kept.
        return timed[0].hours
    return start, end


def _today_or_tomorrow(
    hours: Hours, now: datetime, zone: ZoneInfo, quotes: tuple[str, ...]
) -> TimeWindow:
    """A time without a day is today's, or tomorrow's once today's has passed."""
    today = TimeWindow(
        first_day=now.date(),
        last_day=now.date(),
        start_time=hours[0],
        end_time=hours[1],
        zone=zone.key,
        quotes=quotes,
    )
    if not today.is_past(now):
        return today
    tomorrow = now.date() + timedelta(days=1)
    return today.model_copy(update={"first_day": tomorrow, "last_day": tomorrow})


# --- Russian wording ---------------------------------------------------------------


def _describe_days(first: date, last: date, today: date) -> str:
    if first == last:
        return _describe_day(first, today)
    if (first.year, first.month) == (last.year, last.month):
        return f"с {first.day} по {_day_month(last, today)}"
    return f"с {_day_month(first, today)} по {_day_month(last, today)}"


def _describe_day(day: date, today: date) -> str:
    offset = (day - today).days
    named = RELATIVE_DAYS.get(offset)
    if named is None and 0 < offset < 7:
        named = WEEKDAY_ACCUSATIVE[day.weekday()]
    dated = _day_month(day, today)
    return f"{named}, {dated}" if named else dated


def _day_month(day: date, today: date) -> str:
    text = day_month(day)
    return text if day.year == today.year else f"{text} {day.year}"


def _describe_hours(start: time | None, end: time | None) -> str:
    if start is not None and end is not None:
        if start == end:
            return f"в {start:%H:%M}"
        return f"с {start:%H:%M} до {end:%H:%M}"
    if start is not None:
        return f"после {start:%H:%M}"
    if end is not None:
        return f"до {end:%H:%M}"
    return ""


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone)
