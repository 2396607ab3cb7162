"""The rule-based qualifier: service, time, name, phone, budget and readiness.

It is the default when no model is configured and the fallback when a model fails,
so it has to be good on its own. Every value it finds carries the client's exact
words as evidence. Words are compared by their Snowball stems, so "ногтей" finds the
synonym "ногти" and "маникюрчик" finds "маникюр".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

import snowballstemmer  # type: ignore[import-untyped]

from app.config import Service
from qualification.phones import Phone, find_phones, normalize_phone
from qualification.schema import (
    READINESS_RU,
    Budget,
    ClientMessage,
    Judgement,
    Qualification,
    Readiness,
    Urgency,
)
from qualification.timeparse import TimeWindow, parse_time

# A preferred time that starts within this long of the message makes a lead hot.
HOT_WITHIN = timedelta(hours=48)
_STEMMER = snowballstemmer.stemmer("russian")
_WORD = re.compile(r"[a-zа-я]+(?:-[a-zа-я]+)*")


def fold(text: str) -> str:
    """Lower case with ё as е, the same length as the text, for matching."""
    return "".join(_fold_char(char) for char in text)


def _fold_char(char: str) -> str:
    lower = char.lower()
    if len(lower) != 1:
        return char
    return "е" if lower == "ё" else lower


@lru_cache(maxsize=16384)
def _stem(word: str) -> str:
    return str(_STEMMER.stemWord(word))


@dataclass(frozen=True)
class _Token:
    stem: str
    start: int
    end: int


def _tokens(folded: str) -> list[_Token]:
    return [
        _Token(_stem(match.group()), match.start(), match.end())
        for match in _WORD.finditer(folded)
    ]


@dataclass(frozen=True)
class Found:
    """A value found in the text and the client's exact words for it."""

    value: str
    quote: str
    start: int


# --- services ----------------------------------------------------------------------


class ServiceMatcher:
    """Finds the configured services a text names, by title or synonym."""

    def __init__(self, services: Mapping[str, Service]) -> None:
        self._phrases = sorted(
            (
                (tuple(token.stem for token in _tokens(fold(phrase))), service_id)
                for service_id, service in services.items()
                for phrase in service.phrases()
            ),
            key=lambda entry: -len(entry[0]),
        )

    def find_all(self, text: str) -> list[Found]:
        """Every service named, in the order the client named them."""
        tokens = _tokens(fold(text))
        found: dict[str, Found] = {}
        for index in range(len(tokens)):
            match = self._match_at(tokens, index)
            if match is None or (index > 0 and tokens[index - 1].stem == "не"):
                continue
            service_id, end = match
            quote = text[tokens[index].start : end]
            found.setdefault(service_id, Found(service_id, quote, tokens[index].start))
        return sorted(found.values(), key=lambda item: item.start)

    def find(self, text: str) -> Found | None:
        """The first service named, if any."""
        return next(iter(self.find_all(text)), None)

    def _match_at(self, tokens: list[_Token], index: int) -> tuple[str, int] | None:
        # Longest phrases first: "окрашивание бровей" before "окрашивание".
        for stems, service_id in self._phrases:
            window = tokens[index : index + len(stems)]
            if len(window) == len(stems) and all(
                token.stem.startswith(stem)
                for token, stem in zip(window, stems, strict=True)
            ):
                return service_id, window[-1].end
        return None


# --- name --------------------------------------------------------------------------

# Words that open a message or answer a question but are never a first name.
_NOT_NAMES_TEXT = """
    здравствуйте здравствуй привет приветствую добрый доброе доброй день вечер утро
    хочу хотела хотел хотелось можно да нет ок окей ага угу спасибо благодарю
    подскажите скажите девушка записаться запишите запись сколько цена стоимость
    а и ну вот так уже тоже бы не просто клиент клиентка новый новая постоянный
    постоянная ваш ваша вас здесь тут очень буду могу сама сам извините простите
    алло хорошо отлично понятно ясно супер класс интересует интересно вопрос
    пожалуйста срочно сегодня завтра послезавтра утром вечером днем мне меня я мы
    это кто как что где когда зачем почему администратор менеджер мастер
"""
_NOT_NAMES = frozenset(_NOT_NAMES_TEXT.split())
_INTRO = re.compile(
    r"(?:меня\s+зовут|зовут\s+меня|мое\s+имя|имя)\s*[-—:,]?\s*"
    r"(?P<name>[a-zа-я]+(?:[- ][a-zа-я]+)?)"
)
_SELF = re.compile(r"(?:^|[\s,.!])(?:я|это)\s+(?P<name>[a-zа-я]+)(?=$|[\s,.!?])")
_OPENING = re.compile(r"^\s*(?P<name>[a-zа-я]{2,20})\s*,")
_BARE = re.compile(r"^\s*(?P<name>[a-zа-я]{2,20}(?:[- ][a-zа-я]{2,20})?)\s*[.!)]*\s*$")


class NameReader:
    """A first name from "меня зовут Анна", "Я Анна", "Анна, …" or a bare "Анна"."""

    def __init__(self, services: ServiceMatcher, zone: ZoneInfo) -> None:
        self._services = services
        self._zone = zone

    def find(self, text: str, at: datetime, *, asked: bool) -> Found | None:
        folded = fold(text)
        match = _INTRO.search(folded)
        if match is not None:
            return self._found(text, match, at, first_word_only=False)
        match = _SELF.search(folded)
        if match is not None and self._capitalised(text, match):
            return self._found(text, match, at)
        match = _OPENING.match(folded)
        if match is not None and self._capitalised(text, match):
            return self._found(text, match, at)
        match = _BARE.match(folded) if asked else None
        if match is not None:
            return self._found(text, match, at, first_word_only=False)
        return None

    def _capitalised(self, text: str, match: re.Match[str]) -> bool:
        return text[match.start("name")].isupper()

    def _found(
        self,
        text: str,
        match: re.Match[str],
        at: datetime,
        *,
        first_word_only: bool = True,
        quote_from: int | None = None,
    ) -> Found | None:
        raw = text[match.start("name") : match.end("name")]
        words = raw.split()[:1] if first_word_only else raw.split()
        if not words or not self._plausible(" ".join(words), at):
            return None
        name = " ".join(word[:1].upper() + word[1:].lower() for word in words)
        start = match.start() if quote_from is None else quote_from
        quote = text[start : match.end("name")].strip(" ,.;:!?—-")
        return Found(name, quote, start)

    def _plausible(self, candidate: str, at: datetime) -> bool:
        folded = fold(candidate)
        if any(word in _NOT_NAMES for word in re.split(r"[- ]", folded)):
            return False
        if self._services.find(candidate) is not None:
            return False
        return parse_time(candidate, at, self._zone) is None


# --- budget ------------------------------------------------------------------------

_NUMBER = r"\d{1,3}(?:[ \u00a0]\d{3})+(?!\d)|\d+(?:[.,]\d+)?"
_UNIT = r"(?:к|k|тыс(?:яч[аи]?)?\.?|т\.?\s?р\.?|тр|р\.?|руб\w*\.?|₽)(?![а-я])"
_THOUSANDS = ("к", "k", "тыс", "т", "тр")
_NOT_MONEY_AFTER = r"(?!\s*(?:год|г\.|лет|мин|час|шт|раз|см|мм|%))"
_BUDGET_RANGE = re.compile(
    rf"(?:бюджет\s+)?(?:от\s+)?(?P<a>{_NUMBER})\s*(?P<ua>{_UNIT})?\s*"
    rf"(?:-|–|—|до)\s*(?P<b>{_NUMBER})\s*(?P<ub>{_UNIT})?{_NOT_MONEY_AFTER}"
)
_BUDGET_CAP = re.compile(
    r"(?P<word>бюджет(?:\s+у\s+меня)?(?:\s+(?:до|около|примерно))?|до|не\s+дороже|"
    r"не\s+больше|не\s+более|максимум|в\s+пределах|в\s+районе|около|примерно|"
    r"где-то|за)\s+"
    rf"(?P<b>{_NUMBER})\s*(?P<ub>{_UNIT})?{_NOT_MONEY_AFTER}"
)
_BUDGET_FLOOR = re.compile(
    rf"\bот\s+(?P<a>{_NUMBER})\s*(?P<ua>{_UNIT})?{_NOT_MONEY_AFTER}"
)
# Below this a bare number is an hour or a count, not roubles ("до 18").
_SMALLEST_BARE_AMOUNT = Decimal(100)


def find_budget(text: str) -> tuple[Budget, str] | None:
    """A budget in roubles with its quote: "до 3000", "3-5 тыс", "бюджет 2к"."""
    folded = _blank_phones(text, fold(text))
    for read in (_budget_range, _budget_cap, _budget_floor):
        found = read(folded)
        if found is not None:
            budget, (start, end) = found
            return budget, text[start:end].strip()
    return None


def _blank_phones(text: str, folded: str) -> str:
    chars = list(folded)
    for found in find_phones(text):
        chars[found.start : found.end] = " " * (found.end - found.start)
    return "".join(chars)


def _budget_range(folded: str) -> tuple[Budget, tuple[int, int]] | None:
    for match in _BUDGET_RANGE.finditer(folded):
        high = _amount(match["b"], match["ub"])
        low = _amount(match["a"], match["ua"])
        if match["ua"] is None and match["ub"] is not None and low < _raw(match["b"]):
            low = _amount(match["a"], match["ub"])  # "3-5 тыс": both in thousands
        keyword = match.group().startswith("бюджет")
        if not (_is_money(low, match["ua"] or match["ub"], keyword) and high > low):
            continue
        return Budget(low=low, high=high), match.span()
    return None


def _budget_cap(folded: str) -> tuple[Budget, tuple[int, int]] | None:
    for match in _BUDGET_CAP.finditer(folded):
        amount = _amount(match["b"], match["ub"])
        word = match["word"]
        if not _is_money(amount, match["ub"], word.startswith("бюджет")):
            continue
        if word.endswith(("около", "примерно", "в районе", "где-то")):
            return Budget(low=amount, high=amount), match.span()
        return Budget(high=amount), match.span()
    return None


def _budget_floor(folded: str) -> tuple[Budget, tuple[int, int]] | None:
    for match in _BUDGET_FLOOR.finditer(folded):
        amount = _amount(match["a"], match["ua"])
        if _is_money(amount, match["ua"], keyword=False):
            return Budget(low=amount), match.span()
    return None


def _raw(number: str) -> Decimal:
    return Decimal(re.sub(r"[ \u00a0]", "", number).replace(",", "."))


def _amount(number: str, unit: str | None) -> Decimal:
    amount = _raw(number)
    if unit is not None and unit.rstrip(".").replace(" ", "").startswith(_THOUSANDS):
        amount *= 1000
    return amount.quantize(Decimal("0.01"))


def _is_money(amount: Decimal, unit: str | None, keyword: bool) -> bool:
    return amount > 0 and (
        unit is not None or keyword or amount >= _SMALLEST_BARE_AMOUNT
    )


# --- urgency and readiness ---------------------------------------------------------

_URGENT = re.compile(
    r"\b(?:срочн\w*|прямо\s+сейчас|сейчас\s+же|как\s+можно\s+(?:скорее|раньше|быстрее)|"
    r"поскорее|побыстрее|сегодня|горит|asap)\b"
)
_INTENT = re.compile(
    r"\b(?:записат\w*|запишит\w*|запишусь|запишете|запись|забронир\w*|"
    r"(?:хочу|хотела?|можно|могу)\s+(?:бы\s+)?(?:на|к\s+вам|прийти|подойти)|"
    r"(?:есть|будет)\s+(?:ли\s+)?(?:свободн\w+\s+)?(?:окошк\w*|окн\w*|мест\w*)|"
    r"свободн\w+\s+(?:время|окошк\w*|окн\w*)|приду|подойду)\b"
)
_COLD = re.compile(
    r"\b(?:просто\s+(?:узнать|спросить|интересуюсь|интересно|уточнить)|"
    r"пока\s+(?:думаю|не\s+\w+|просто)|подумаю|не\s+сейчас|когда-нибудь|"
    r"на\s+будущее|в\s+будущем|позже\s+(?:решу|напишу)|дорого)\b"
)


def find_first(pattern: re.Pattern[str], text: str) -> str | None:
    """The client's words for the first match of `pattern`, if any."""
    match = pattern.search(fold(text))
    return None if match is None else text[match.start() : match.end()]


# --- the qualifier -----------------------------------------------------------------


@dataclass
class _Reading:
    """What the messages said so far; later messages override earlier ones."""

    service: Found | None = None
    time: TimeWindow | None = None
    time_at: datetime | None = None
    name: Found | None = None
    phone: tuple[Phone, str] | None = None
    budget: tuple[Budget, str] | None = None
    urgent: str | None = None
    intent: str | None = None
    cold: str | None = None


class RuleQualifier:
    """Russian rules over the configured services; no network, no model."""

    def __init__(self, services: Mapping[str, Service], zone: ZoneInfo) -> None:
        self.services = dict(services)
        self.zone = zone
        self.matcher = ServiceMatcher(services)
        self.names = NameReader(self.matcher, zone)

    async def qualify(self, messages: Sequence[ClientMessage]) -> Qualification:
        """The qualification the rules give (a coroutine like the model's)."""
        return self.read(messages)

    def read(self, messages: Sequence[ClientMessage]) -> Qualification:
        """Read every message in order into one qualification."""
        reading = _Reading()
        for message in messages:
            self._read_one(reading, message)
        now = messages[-1].at if messages else None
        return self._qualification(reading, now)

    def _read_one(self, reading: _Reading, message: ClientMessage) -> None:
        text, at = message.text, message.at
        if not text.strip():
            return
        reading.service = self.matcher.find(text) or reading.service
        window = parse_time(text, at, self.zone)
        if window is not None:
            reading.time, reading.time_at = window, at
        asked_name = message.asked == "name"
        reading.name = self.names.find(text, at, asked=asked_name) or reading.name
        reading.phone = self._phone(text, asked=message.asked == "phone") or (
            reading.phone
        )
        reading.budget = find_budget(text) or reading.budget
        reading.urgent = find_first(_URGENT, text) or reading.urgent
        intent, cold = find_first(_INTENT, text), find_first(_COLD, text)
        if intent is not None or window is not None:
            reading.cold = None  # wanting a time later outweighs "подумаю" earlier
        reading.intent = intent or reading.intent
        reading.cold = cold or reading.cold

    def _phone(self, text: str, *, asked: bool) -> tuple[Phone, str] | None:
        found = find_phones(text)
        if found:
            return found[0].phone, found[0].raw
        phone = normalize_phone(text) if asked else None
        return None if phone is None else (phone, text.strip())

    def _qualification(self, reading: _Reading, now: datetime | None) -> Qualification:
        evidence: dict[Judgement, tuple[str, ...]] = {}
        if reading.service is not None:
            evidence["service"] = (reading.service.quote,)
        if reading.time is not None:
            evidence["preferred_time"] = reading.time.quotes
        if reading.name is not None:
            evidence["name"] = (reading.name.quote,)
        if reading.phone is not None:
            evidence["phone"] = (reading.phone[1],)
        if reading.budget is not None:
            evidence["budget"] = (reading.budget[1],)
        urgency, urgency_quotes = self._urgency(reading)
        if urgency_quotes:
            evidence["urgency"] = urgency_quotes
        readiness, readiness_quotes = self._readiness(reading, urgency)
        if readiness_quotes:
            evidence["readiness"] = readiness_quotes
        return Qualification(
            service=reading.service.value if reading.service else None,
            preferred_time=reading.time,
            name=reading.name.value if reading.name else None,
            phone=reading.phone[0].e164 if reading.phone else None,
            phone_extension=reading.phone[0].extension if reading.phone else None,
            readiness=readiness,
            urgency=urgency,
            budget=reading.budget[0] if reading.budget else None,
            summary=self.summarise(
                reading.service.value if reading.service else None,
                reading.time,
                reading.budget[0] if reading.budget else None,
                urgency,
                readiness,
                now,
            ),
            evidence=evidence,
        )

    def _urgency(self, reading: _Reading) -> tuple[Urgency, tuple[str, ...]]:
        if reading.urgent is not None:
            return "urgent", (reading.urgent,)
        window, at = reading.time, reading.time_at
        today = at.astimezone(self.zone).date() if at is not None else None
        if window is not None and window.first_day == today:
            return "urgent", window.quotes
        return "normal", ()

    def _readiness(
        self, reading: _Reading, urgency: Urgency
    ) -> tuple[Readiness, tuple[str, ...]]:
        if reading.cold is not None:
            return "cold", (reading.cold,)
        intent = (reading.intent,) if reading.intent else ()
        window, at = reading.time, reading.time_at
        if urgency == "urgent" and (intent or window or reading.service):
            return "hot", _unique((*intent, *self._urgency(reading)[1]))
        if window is not None and at is not None and window.start - at <= HOT_WITHIN:
            return "hot", _unique((*intent, *window.quotes))
        if intent or window is not None:
            return "warm", _unique((*intent, *(window.quotes if window else ())))
        return "warm", ()

    def summarise(
        self,
        service_id: str | None,
        window: TimeWindow | None,
        budget: Budget | None,
        urgency: Urgency,
        readiness: Readiness,
        now: datetime | None,
    ) -> str:
        """One line in Russian for the manager: what, when, how much, how hot."""
        service = self.services.get(service_id or "")
        parts = [f"Услуга: {service.title}" if service else "Услуга не названа"]
        if window is not None and now is not None:
            parts.append(f"время: {window.describe(now)}")
        if budget is not None:
            parts.append(f"бюджет: {budget.describe()}")
        if urgency == "urgent":
            parts.append("срочно")
        parts.append(f"лид {READINESS_RU[readiness]}")
        return "; ".join(parts) + "."


def _unique(quotes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(quotes))


def iter_quotes(qualification: Qualification) -> Iterator[str]:
    """Every quote behind the qualification, once each."""
    seen: set[str] = set()
    for quotes in qualification.evidence.values():
        for quote in quotes:
            if quote not in seen:
                seen.add(quote)
                yield quote
