"""A realistic month of a beauty salon, shaped by the business rules, for the sandbox.

What `leadloop run` seeds before the live conversations: the 30 days before `now`
of a salon with four masters (one service each, from `[services]`) and three managers
(`[intake] managers` / `[bonus.managers]`), about 400 inquiries from Telegram,
WhatsApp and the phone, and what followed them — a chat-bot's instant answer, the
manager's first reply (minutes within working hours, the next morning at night, now
and then hours, sometimes never), calls, bookings into the masters' free slots,
reminders and confirmations, cancellations, no-shows, visits and clients who come
back within the month — plus bookings whose visits lie in the next days, so that
reminders and the dashboard have current work.

Every stage, field, source, zone and calendar comes from the rules: deals live in
the first tracked pipeline, move only through stages that have a role in
`[crm.stages]` (a role without a stage there is skipped: no such outcome), carry the
`[crm] visit_field`, the SOURCE_ID of `[intake.sources]` (phone inquiries: `CALL`,
the portal's own source for calls) and the business currency. The portal is in
simple CRM mode (deals only; `crm.settings.mode.get` answers simple) whatever
`[crm] mode` says. Rows are in the shapes the list methods return; the same rules,
`now` and seed give the same portal.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from app.config import WEEKDAYS, BusinessRules
from sandbox.defaults import DEAL_STAGES, DIRECTORIES, StatusTemplate, status_row
from sandbox.kpi_history import (
    CALL,
    CONTACT_TYPE,
    DEAL_TYPE,
    INCOMING,
    OUTGOING,
    PROVIDER,
    portal_time,
)

DAYS = 30
INQUIRIES = 400
MANAGERS = 3
OWNER_ID = 1  # the portal's administrator: the salon's owner, the webhook's user
FIRST_PADDED_MANAGER = 10  # ids for managers the rules do not name
PHONE_SOURCE = "CALL"  # [intake.sources] names messengers only
CHANNELS = ("telegram", "whatsapp", "phone")
CHANNEL_TITLES = {"telegram": "Telegram", "whatsapp": "WhatsApp", "phone": "Телефон"}
CHANNEL_WEIGHTS = (40, 33, 27)
# The four masters' services when the rules have them; else the first four listed.
WANTED_SERVICES = ("manicure", "haircut", "coloring", "facial")
# Minutes a visit takes and the price range (roubles) where [services] names none.
TYPICAL: dict[str, tuple[int, int, int]] = {
    "manicure": (90, 1500, 2500),
    "pedicure": (90, 2000, 3000),
    "haircut": (60, 1200, 3000),
    "coloring": (150, 3500, 7000),
    "styling": (60, 1500, 3000),
    "brows": (45, 800, 1500),
    "lashes": (120, 2000, 3500),
    "facial": (75, 2500, 4500),
    "massage": (60, 2000, 3500),
    "epilation": (60, 1500, 3000),
}
OTHER_SERVICE = (60, 1500, 3000)
# Salon demand by weekday (Monday first) and, per channel, by local hour.
WEEKDAY_DEMAND = (1.2, 1.1, 1.0, 1.0, 1.15, 0.9, 0.6)
MESSENGER_HOURS = (
    0.3, 0.15, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.7, 1.2, 1.5, 1.6,
    1.6, 1.4, 1.3, 1.3, 1.4, 1.6, 1.9, 2.1, 2.0, 1.6, 1.1, 0.6,
)  # fmt: skip
PHONE_HOURS = (
    0, 0, 0, 0, 0, 0, 0, 0, 0.2, 1.0, 1.8, 1.9,
    1.6, 1.3, 1.2, 1.3, 1.5, 1.7, 1.5, 1.0, 0.5, 0, 0, 0,
)  # fmt: skip
# How many days ahead clients book, by offset from the booking day.
BOOKING_AHEAD = (8, 25, 20, 14, 10, 8, 6, 5, 2, 1, 1)
STAGE_NAMES = {
    "new": "Новая заявка",
    "booked": "Записан",
    "confirmed": "Подтвердил",
    "visited": "Пришёл",
    "no_show": "Не пришёл",
    "cancelled": "Отменил",
    "lost": "Отказ",
}
ITEM_LABELS = {
    "service": "Услуга",
    "preferred_time": "Удобное время",
    "readiness": "Готовность",
    "urgency": "Срочность",
    "budget": "Бюджет",
    "summary": "Итог квалификации",
    "channel": "Канал",
}
USERFIELD_SETTINGS: dict[str, dict[str, Any]] = {
    "datetime": {
        "DEFAULT_VALUE": {"VALUE": "", "TYPE": "NONE"},
        "USE_SECOND": "Y",
        "USE_TIMEZONE": "N",
    },
    "string": {"SIZE": 20, "ROWS": 1, "REGEXP": "", "MIN_LENGTH": 0},
}
SEMANTICS = {"visited": "S", "lost": "F"}
FINAL_ROLES = frozenset(SEMANTICS)
MANAGER_NAMES = (
    ("Екатерина", "Смирнова"),
    ("Ольга", "Кузнецова"),
    ("Марина", "Павлова"),
    ("Дарья", "Соколова"),
    ("Алина", "Морозова"),
)
MASTER_NAMES = ("Ирина", "Светлана", "Виктория", "Наталья", "Юлия", "Оксана")
WOMEN = (
    "Анна", "Мария", "Елена", "Ольга", "Татьяна", "Наталья", "Ирина", "Екатерина",
    "Светлана", "Юлия", "Дарья", "Алина", "Ксения", "Виктория", "Полина", "Валерия",
    "Анастасия", "Марина", "Людмила", "Софья", "Алёна", "Кристина",
)  # fmt: skip
MEN = ("Александр", "Дмитрий", "Сергей", "Андрей", "Максим", "Иван", "Артём", "Павел")
# Men's forms; women's add "а" (Иванов, Иванова).
SURNAMES = (
    "Иванов", "Петров", "Смирнов", "Кузнецов", "Попов", "Васильев", "Соколов",
    "Михайлов", "Новиков", "Фёдоров", "Морозов", "Волков", "Алексеев", "Лебедев",
    "Семёнов", "Егоров", "Павлов", "Козлов", "Степанов", "Николаев", "Орлов",
    "Андреев", "Макаров", "Никитин", "Захаров", "Зайцев", "Соловьёв", "Борисов",
)  # fmt: skip


class SalonRulesError(ValueError):
    """The rules lack what a salon month needs (a new and a visited stage)."""


# -- what the rules say ----------------------------------------------------------------


@dataclass(frozen=True)
class _Offer:
    """One master's service: what it is called, how long it takes, what it costs."""

    service_id: str
    title: str
    master: str
    minutes: int
    price_from: Decimal
    price_to: Decimal


@dataclass(frozen=True)
class _Shift:
    days: tuple[str, ...]
    opens: time
    closes: time


@dataclass(frozen=True)
class _Salon:
    rules: BusinessRules
    zone: ZoneInfo
    pipeline: int
    stages: dict[str, str]
    offers: tuple[_Offer, ...]
    managers: tuple[int, ...]
    shifts: dict[int, _Shift]
    bots: tuple[int, ...]
    bot_is_employee: bool
    sources: dict[str, str]

    def works(self, day: date, shift: _Shift | None = None) -> bool:
        calendar = self.rules.calendar
        if shift is None:
            return calendar.is_working_day(day)
        if day in calendar.extra_working_days:
            return True
        return WEEKDAYS[day.weekday()] in shift.days and day not in calendar.holidays

    def opening(self, manager: int, moment: datetime) -> datetime:
        """`moment` when the manager is on shift then, else the shift's next start."""
        shift = self.shifts[manager]
        local = moment.astimezone(self.zone)
        for offset in range(15):
            day = local.date() + timedelta(days=offset)
            if not self.works(day, shift):
                continue
            closes = datetime.combine(day, shift.closes, self.zone)
            if local < closes:
                return max(local, datetime.combine(day, shift.opens, self.zone))
        return local

    def on_shift(self, manager: int, moment: datetime) -> bool:
        return self.opening(manager, moment) == moment.astimezone(self.zone)


def _salon(rules: BusinessRules) -> _Salon:
    pipeline = rules.crm.pipelines[0]
    managers = _managers(rules)
    calendar = rules.calendar
    shifts = {}
    for manager in managers:
        shift = rules.intake.shifts.get(str(manager))
        days = shift.working_days if shift and shift.working_days else None
        hours = shift.hours if shift and shift.hours else calendar.hours
        shifts[manager] = _Shift(tuple(days or calendar.working_days), *hours)
    bots = tuple(int(user) for user in rules.kpi.non_human_users)
    taken = {OWNER_ID, *managers}
    return _Salon(
        rules=rules,
        zone=rules.zone,
        pipeline=pipeline,
        stages=_stages(rules, pipeline),
        offers=_offers(rules),
        managers=managers,
        shifts=shifts,
        # Without non-human users in the rules the bot is a bot account, which
        # user.get does not list: its messages are no human touch either way.
        bots=bots or (next(i for i in range(2, 100) if i not in taken),),
        bot_is_employee=bool(bots),
        sources={**dict(rules.intake.sources.items()), "phone": PHONE_SOURCE},
    )


def _in_pipeline(stage: str, pipeline: int) -> bool:
    if pipeline == 0:
        return re.match(r"C\d+:", stage) is None
    return stage.startswith(f"C{pipeline}:")


def _stages(rules: BusinessRules, pipeline: int) -> dict[str, str]:
    """The first stage of each role in the pipeline; roles without one are left out."""
    stages = {}
    for role, ids in rules.crm.stages:
        stage = next((s for s in ids if _in_pipeline(s, pipeline)), None)
        if stage is not None:
            stages[role] = stage
    missing = sorted({"new", "visited"} - stages.keys())
    if missing:
        raise SalonRulesError(
            f"[crm.stages] has no {' or '.join(missing)} stage in pipeline {pipeline}"
        )
    return stages


def _managers(rules: BusinessRules) -> tuple[int, ...]:
    """The managers of the rules, padded with made-up ids to at least three."""
    ids = rules.intake.manager_ids(rules.bonus)
    ids += sorted(int(user) for user in rules.bonus.managers if int(user) not in ids)
    taken = {OWNER_ID, *ids, *(int(user) for user in rules.kpi.non_human_users)}
    candidate = FIRST_PADDED_MANAGER
    while len(ids) < MANAGERS:
        if candidate not in taken:
            ids.append(candidate)
        candidate += 1
    return tuple(ids)


def _offers(rules: BusinessRules) -> tuple[_Offer, ...]:
    chosen = [s for s in WANTED_SERVICES if s in rules.services]
    chosen += [s for s in rules.services if s not in chosen][: 4 - len(chosen)]
    offers = []
    for master, service_id in zip(MASTER_NAMES, chosen, strict=False):
        service = rules.services[service_id]
        minutes, low, high = TYPICAL.get(service_id, OTHER_SERVICE)
        price_from = service.price_from or Decimal(low)
        price_to = service.price_to or max(price_from * Decimal("1.6"), Decimal(high))
        offers.append(
            _Offer(service_id, service.title, master, minutes, price_from, price_to)
        )
    return tuple(offers)


# -- the month ------------------------------------------------------------------------


@dataclass
class _Client:
    id: int
    first_name: str
    last_name: str
    phone: str
    created: datetime
    source: str
    manager: int
    offer: _Offer
    last_visit: datetime | None = None
    busy_until: datetime | None = None


@dataclass
class _Deal:
    id: int
    client: _Client
    manager: int
    channel: str
    offer: _Offer
    created: datetime
    amount: Decimal
    moves: list[tuple[datetime, str]] = field(default_factory=list)
    visit: datetime | None = None


@dataclass
class _Touch:
    deal: _Deal
    kind: tuple[int, int]
    start: datetime
    minutes: float
    author: int
    completed: bool = True
    bot: bool = False


@dataclass
class _Month:
    salon: _Salon
    rng: random.Random
    now: datetime
    clients: list[_Client] = field(default_factory=list)
    visitors: list[_Client] = field(default_factory=list)  # who came at least once
    deals: list[_Deal] = field(default_factory=list)
    touches: list[_Touch] = field(default_factory=list)
    busy: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)
    phones: set[str] = field(default_factory=set)
    turn: int = 0


def salon_month(
    rules: BusinessRules, *, now: datetime, seed: int = 2026
) -> dict[str, Any]:
    """A snapshot of the salon's 30 days before `now` and its bookings after it."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    salon = _salon(rules)
    # A reproducible portal, not a secret: the same seed gives the same month.
    month = _Month(salon, random.Random(seed), now.astimezone(salon.zone))  # noqa: S311
    for arrival, channel in _arrivals(month):
        _inquiry(month, arrival, channel)
    return _snapshot(month)


def _arrivals(month: _Month) -> list[tuple[datetime, str]]:
    """About 400 inquiry instants and channels, by weekday and hour of demand."""
    rng, zone, now = month.rng, month.salon.zone, month.now
    start = now - timedelta(days=DAYS)
    count = round(INQUIRIES * rng.uniform(0.92, 1.08))
    days = [start.date() + timedelta(days=n) for n in range(DAYS + 1)]
    demand = [WEEKDAY_DEMAND[day.weekday()] for day in days]
    arrivals: list[tuple[datetime, str]] = []
    while len(arrivals) < count:
        channel = rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0]
        hours = PHONE_HOURS if channel == "phone" else MESSENGER_HOURS
        day = rng.choices(days, demand)[0]
        hour = rng.choices(range(24), hours)[0]
        moment = datetime.combine(day, time(hour), zone) + timedelta(
            seconds=rng.randrange(3600)
        )
        if start <= moment < now:
            arrivals.append((moment, channel))
    return sorted(arrivals)


def _inquiry(month: _Month, arrival: datetime, channel: str) -> None:
    rng, salon = month.rng, month.salon
    client = _returning_client(month, arrival)
    returning = client is not None
    if client is None:
        client = _new_client(month, arrival, channel)
    offer = client.offer if returning and rng.random() < 0.8 else _pick_offer(month)
    deal = _Deal(
        id=len(month.deals) + 1,
        client=client,
        manager=client.manager,
        channel=channel,
        offer=offer,
        created=arrival,
        amount=_price(rng, offer),
    )
    month.deals.append(deal)
    deal.moves.append((arrival, salon.stages["new"]))
    touched = _first_touch(month, deal)
    client.busy_until = arrival + timedelta(days=2)
    booked = _booking(month, deal, touched, returning)
    if booked is None:
        return
    visit = _visit_slot(month, deal, booked)
    deal.visit = visit
    _stage(month, deal, booked, "booked")
    client.busy_until = visit + timedelta(minutes=offer.minutes)
    confirmed = _confirmation(month, deal, booked, visit)
    if confirmed is not None and confirmed < visit:
        _stage(month, deal, confirmed, "confirmed")
    _visit_outcome(month, deal, booked, visit, confirmed)
    deal.moves.sort()


# -- clients and managers -------------------------------------------------------------


def _returning_client(month: _Month, arrival: datetime) -> _Client | None:
    """A client who visited one to five weeks ago and has nothing open, sometimes."""
    candidates = [
        client
        for client in month.visitors
        if client.last_visit is not None
        and timedelta(days=7) <= arrival - client.last_visit <= timedelta(days=35)
        and (client.busy_until is None or client.busy_until <= arrival)
    ]
    if not candidates or month.rng.random() >= 0.35:
        return None
    return month.rng.choice(candidates)


def _new_client(month: _Month, arrival: datetime, channel: str) -> _Client:
    rng, salon = month.rng, month.salon
    woman = rng.random() < 0.82
    surname = rng.choice(SURNAMES)
    created = arrival
    if rng.random() < 0.12:  # in the base from before the month, first deal now
        created = arrival - timedelta(days=rng.randrange(40, 500), hours=5)
    client = _Client(
        id=len(month.clients) + 1,
        first_name=rng.choice(WOMEN if woman else MEN),
        last_name=surname + "а" if woman else surname,
        phone=_phone(month),
        created=created,
        source=salon.sources[channel],
        manager=_manager_on_shift(month, arrival),
        offer=_pick_offer(month),
    )
    month.clients.append(client)
    return client


def _phone(month: _Month) -> str:
    while True:
        phone = f"+7999{month.rng.randrange(10**7):07d}"
        if phone not in month.phones:
            month.phones.add(phone)
            return phone


def _manager_on_shift(month: _Month, arrival: datetime) -> int:
    """New clients go in turn to the managers on shift, else to the first to start."""
    salon = month.salon
    month.turn += 1
    first = min(salon.opening(manager, arrival) for manager in salon.managers)
    ready = [m for m in salon.managers if salon.opening(m, arrival) == first]
    return ready[month.turn % len(ready)]


def _pick_offer(month: _Month) -> _Offer:
    offers = month.salon.offers
    weights = [4, 3, 2, 2][: len(offers)] + [1] * (len(offers) - 4)
    return month.rng.choices(offers, weights)[0]


def _price(rng: random.Random, offer: _Offer) -> Decimal:
    low, high = int(offer.price_from) // 50, int(offer.price_to) // 50
    return Decimal(rng.randint(low, max(low, high)) * 50).quantize(Decimal("0.01"))


# -- touches, bookings, visits ---------------------------------------------------------


def _touch(month: _Month, touch: _Touch) -> None:
    if touch.start <= month.now:
        month.touches.append(touch)


def _stage(month: _Month, deal: _Deal, moment: datetime, role: str) -> None:
    stage = month.salon.stages.get(role)
    if stage is not None and moment <= month.now:
        deal.moves.append((moment, stage))


def _reply_at(month: _Month, deal: _Deal, after: datetime) -> datetime | None:
    """When the manager first answers: minutes on shift, some slow, a few never."""
    rng = month.rng
    if rng.random() < 0.05:
        return None
    start = month.salon.opening(deal.manager, after)
    if rng.random() < 0.12:
        wait = rng.uniform(35, 240)
    else:
        wait = min(rng.lognormvariate(math.log(4), 0.8), 30)
    return start + timedelta(minutes=wait)


def _first_touch(month: _Month, deal: _Deal) -> datetime | None:
    """The first human touch, with the bot's answer and the calls around it."""
    rng, salon, created = month.rng, month.salon, deal.created
    if deal.channel == "phone":
        rang = created - timedelta(seconds=rng.randrange(5, 40))
        answered = salon.on_shift(deal.manager, created) and rng.random() < 0.88
        minutes = rng.uniform(2, 8) if answered else 0
        kind = (CALL, INCOMING)
        _touch(month, _Touch(deal, kind, rang, minutes, deal.manager, answered))
        if answered:
            return created
        reply = _reply_at(month, deal, created)
        if reply is not None:
            _touch(month, _Touch(deal, (CALL, OUTGOING), reply, 4, deal.manager))
    else:
        bot = rng.choice(salon.bots)
        answer = created + timedelta(seconds=rng.randrange(2, 25))
        _touch(month, _Touch(deal, (PROVIDER, OUTGOING), answer, 0, bot, bot=True))
        reply = _reply_at(month, deal, created)
        if reply is not None:
            _touch(month, _Touch(deal, (PROVIDER, OUTGOING), reply, 0, deal.manager))
            if rng.random() < 0.35:  # a call to agree on the time
                call = reply + timedelta(minutes=rng.uniform(3, 40))
                _touch(month, _Touch(deal, (CALL, OUTGOING), call, 5, deal.manager))
    return reply if reply is not None and reply <= month.now else None


def _booking(
    month: _Month, deal: _Deal, touched: datetime | None, returning: bool
) -> datetime | None:
    """When the visit was booked, or None; unbooked inquiries are often lost."""
    rng = month.rng
    if touched is None:
        if rng.random() < 0.5:
            _stage(
                month, deal, deal.created + timedelta(days=rng.uniform(2, 5)), "lost"
            )
        return None
    fast = touched - deal.created < timedelta(minutes=30)
    chance = 0.9 if returning else 0.7 if fast else 0.5
    booked = touched + timedelta(minutes=rng.uniform(2, 25))
    if rng.random() < chance and booked <= month.now:
        return booked
    if rng.random() < 0.75:
        _stage(month, deal, touched + timedelta(hours=rng.uniform(1, 72)), "lost")
    return None


def _visit_slot(month: _Month, deal: _Deal, booked: datetime) -> datetime:
    """A free slot of the master on a working day, a few days after the booking."""
    rng, salon, offer = month.rng, month.salon, deal.offer
    opens, closes = salon.rules.calendar.hours
    length = timedelta(minutes=offer.minutes)
    busy = month.busy.setdefault(offer.master, [])
    day = booked.date() + timedelta(
        days=rng.choices(range(len(BOOKING_AHEAD)), BOOKING_AHEAD)[0]
    )
    for _ in range(60):
        if salon.works(day):
            first = max(
                datetime.combine(day, opens, salon.zone),
                _ceil_half_hour(booked + timedelta(hours=2)),
            )
            last = datetime.combine(day, closes, salon.zone) - length
            slots = int((last - first) / timedelta(minutes=30)) + 1
            for _ in range(min(slots, 12)):
                start = first + timedelta(minutes=30 * rng.randrange(slots))
                if all(start >= end or start + length <= b for b, end in busy):
                    busy.append((start, start + length))
                    return start
        day += timedelta(days=1)
    raise SalonRulesError("no working day with free slots in [calendar]")


def _ceil_half_hour(moment: datetime) -> datetime:
    minute = 30 if moment.minute < 30 else 60
    if moment.minute in (0, 30) and moment.second == 0:
        minute = moment.minute
    base = moment.replace(minute=0, second=0, microsecond=0)
    return base + timedelta(minutes=minute)


def _confirmation(
    month: _Month, deal: _Deal, booked: datetime, visit: datetime
) -> datetime | None:
    """The day-before reminder answered, or else the manager's call; or None."""
    rng, salon, manager = month.rng, month.salon, deal.manager
    reminder = datetime.combine(
        visit.date() - timedelta(days=1),
        salon.rules.reminders.day_before_at,
        salon.zone,
    )
    if deal.channel != "phone" and booked < reminder:
        bot = rng.choice(salon.bots)
        _touch(month, _Touch(deal, (PROVIDER, OUTGOING), reminder, 0, bot, bot=True))
        if rng.random() < 0.72:
            return reminder + timedelta(minutes=rng.lognormvariate(3, 1))
    if visit - booked > timedelta(hours=5):
        call = salon.opening(manager, visit - timedelta(hours=rng.uniform(3, 26)))
        if call < visit - timedelta(hours=1):
            _touch(month, _Touch(deal, (CALL, OUTGOING), call, 2, manager))
            if rng.random() < 0.8:
                return call + timedelta(minutes=2)
    return None


def _visit_outcome(
    month: _Month,
    deal: _Deal,
    booked: datetime,
    visit: datetime,
    confirmed: datetime | None,
) -> None:
    """A cancellation before the visit, a no-show, or the visit and its check."""
    rng = month.rng
    outcome = _outcome(month, deal, confirmed is not None)
    if outcome == "cancelled":
        latest = visit - timedelta(hours=1)
        cancelled = booked + (latest - booked) * rng.uniform(0.3, 1)
        deal.moves = [move for move in deal.moves if move[0] < cancelled]
        _stage(month, deal, cancelled, "cancelled")
        deal.client.busy_until = cancelled
        if deal.channel == "phone":
            _touch(month, _Touch(deal, (CALL, INCOMING), cancelled, 2, deal.manager))
    elif outcome == "no_show":
        _stage(month, deal, visit + timedelta(minutes=rng.uniform(20, 60)), "no_show")
    else:
        ended = visit + timedelta(minutes=deal.offer.minutes + rng.uniform(0, 20))
        _stage(month, deal, ended, "visited")
        if ended <= month.now:
            if deal.client.last_visit is None:
                month.visitors.append(deal.client)
            deal.client.last_visit = visit
            if rng.random() < 0.25:  # the client took something extra
                extra = deal.amount * Decimal(rng.choice(["0.1", "0.2", "0.3"]))
                deal.amount = _round_to_50(deal.amount + extra)


def _round_to_50(amount: Decimal) -> Decimal:
    return (amount / 50).quantize(Decimal(1)) * 50 + Decimal("0.00")


def _outcome(month: _Month, deal: _Deal, confirmed: bool) -> str:
    roll, stages = month.rng.random(), month.salon.stages
    if roll < 0.09 and "cancelled" in stages:
        return "cancelled"
    no_show = 0.04 if confirmed else 0.16
    if roll < 0.09 + no_show and "no_show" in stages:
        return "no_show"
    return "visited"


# -- the snapshot ---------------------------------------------------------------------


def _snapshot(month: _Month) -> dict[str, Any]:
    salon = month.salon
    snapshot: dict[str, Any] = {
        "settings": {"crm_mode": "simple"},
        "users": _users(salon),
        "contacts": [_contact_row(month, client) for client in month.clients],
        "deals": [_deal_row(month, deal) for deal in month.deals],
        "stagehistory": _history(month),
        "activities": _activities(month),
        "userfields": _userfields(salon),
        "statuses": _statuses(salon),
    }
    if salon.pipeline != 0:
        snapshot["categories"] = _categories(salon)
    return snapshot


def _user(
    user_id: int,
    name: tuple[str, str],
    position: str,
    zone: ZoneInfo,
    *,
    kind: str = "employee",
) -> dict[str, Any]:
    registered = portal_time(datetime(2024, 3, 1, 10, tzinfo=zone), zone)
    return {
        "ID": str(user_id),
        "ACTIVE": True,
        "NAME": name[0],
        "LAST_NAME": name[1],
        "SECOND_NAME": "",
        "EMAIL": f"user{user_id}@salon.example",
        "LAST_LOGIN": registered,
        "DATE_REGISTER": registered,
        "TIME_ZONE": "",
        "IS_ONLINE": "N",
        "TIMESTAMP_X": {},
        "LAST_ACTIVITY_DATE": {},
        "PERSONAL_GENDER": "F" if position != "Интеграция" else "",
        "PERSONAL_WWW": "",
        "PERSONAL_BIRTHDAY": "",
        "PERSONAL_MOBILE": "",
        "PERSONAL_CITY": "",
        "WORK_PHONE": "",
        "WORK_POSITION": position,
        "UF_EMPLOYMENT_DATE": "",
        "UF_DEPARTMENT": [1],
        "USER_TYPE": kind,
    }


def _users(salon: _Salon) -> list[dict[str, Any]]:
    zone = salon.zone
    people = [_user(OWNER_ID, ("Анастасия", "Белова"), "Владелец", zone)]
    for index, manager in enumerate(salon.managers):
        name = MANAGER_NAMES[index % len(MANAGER_NAMES)]
        people.append(_user(manager, name, "Администратор", zone))
    kind = "employee" if salon.bot_is_employee else "bot"
    for bot in salon.bots:
        name = ("Чат-бот", "leadloop")
        people.append(_user(bot, name, "Интеграция", zone, kind=kind))
    return sorted(people, key=lambda user: int(user["ID"]))


def _contact_row(month: _Month, client: _Client) -> dict[str, Any]:
    zone = month.salon.zone
    deals = [deal for deal in month.deals if deal.client is client]
    modified = max(move[0] for deal in deals for move in deal.moves)
    created = portal_time(client.created, zone)
    return {
        "ID": str(client.id),
        "HONORIFIC": None,
        "NAME": client.first_name,
        "SECOND_NAME": None,
        "LAST_NAME": client.last_name,
        "PHOTO": None,
        "BIRTHDATE": "",
        "TYPE_ID": "CLIENT",
        "SOURCE_ID": client.source,
        "SOURCE_DESCRIPTION": None,
        "POST": None,
        "ADDRESS": None,
        "COMMENTS": None,
        "OPENED": "Y",
        "EXPORT": "Y",
        "HAS_PHONE": "Y",
        "HAS_EMAIL": "N",
        "HAS_IMOL": "N",
        "ASSIGNED_BY_ID": str(client.manager),
        "CREATED_BY_ID": str(client.manager),
        "MODIFY_BY_ID": str(client.manager),
        "DATE_CREATE": created,
        "DATE_MODIFY": portal_time(modified, zone),
        "COMPANY_ID": None,
        "LEAD_ID": None,
        "ORIGINATOR_ID": None,
        "ORIGIN_ID": None,
        "LAST_ACTIVITY_TIME": portal_time(modified, zone),
        "LAST_ACTIVITY_BY": str(client.manager),
        "PHONE": [
            {
                "ID": str(client.id),
                "VALUE_TYPE": "MOBILE",
                "VALUE": client.phone,
                "TYPE_ID": "PHONE",
            }
        ],
    }


def _deal_row(month: _Month, deal: _Deal) -> dict[str, Any]:
    salon, zone = month.salon, month.salon.zone
    roles = {stage: role for role, stage in salon.stages.items()}
    moved, stage = deal.moves[-1]
    role = roles[stage]
    manager = str(deal.manager)
    created = portal_time(deal.created, zone)
    row: dict[str, Any] = {
        "ID": str(deal.id),
        "TITLE": f"{deal.offer.title} — {deal.client.first_name}",
        "TYPE_ID": "SERVICE",
        "STAGE_ID": stage,
        "PROBABILITY": None,
        "CURRENCY_ID": salon.rules.money.currency,
        "OPPORTUNITY": f"{deal.amount:.2f}",
        "IS_MANUAL_OPPORTUNITY": "Y",
        "TAX_VALUE": "0.00",
        "LEAD_ID": None,
        "COMPANY_ID": None,
        "CONTACT_ID": str(deal.client.id),
        "QUOTE_ID": None,
        "BEGINDATE": portal_time(_midnight(deal.created, zone), zone),
        "CLOSEDATE": portal_time(_midnight(deal.visit or deal.created, zone), zone),
        "ASSIGNED_BY_ID": manager,
        "CREATED_BY_ID": manager,
        "MODIFY_BY_ID": manager,
        "DATE_CREATE": created,
        "DATE_MODIFY": portal_time(moved, zone),
        "OPENED": "Y",
        "CLOSED": "Y" if role in FINAL_ROLES else "N",
        "COMMENTS": f"Услуга: {deal.offer.title}. Мастер: {deal.offer.master}.",
        "ADDITIONAL_INFO": None,
        "LOCATION_ID": None,
        "CATEGORY_ID": str(salon.pipeline),
        "STAGE_SEMANTIC_ID": SEMANTICS.get(role, "P"),
        "IS_NEW": "Y" if role == "new" else "N",
        "IS_RECURRING": "N",
        "IS_RETURN_CUSTOMER": "Y" if deal.client.created < deal.created else "N",
        "IS_REPEATED_APPROACH": "N",
        "SOURCE_ID": salon.sources[deal.channel],
        "SOURCE_DESCRIPTION": CHANNEL_TITLES[deal.channel],
        "ORIGINATOR_ID": None,
        "ORIGIN_ID": None,
        "MOVED_BY_ID": manager,
        "MOVED_TIME": portal_time(moved, zone),
        "LAST_ACTIVITY_TIME": portal_time(moved, zone),
        "LAST_ACTIVITY_BY": manager,
        "CONTACT_IDS": [deal.client.id],
    }
    visit_field = salon.rules.crm.visit_field
    if visit_field is not None:
        row[visit_field] = portal_time(deal.visit, zone) if deal.visit else ""
    return row


def _midnight(moment: datetime, zone: ZoneInfo) -> datetime:
    return datetime.combine(moment.astimezone(zone).date(), time(0), zone)


def _history(month: _Month) -> list[dict[str, Any]]:
    salon, zone = month.salon, month.salon.zone
    roles = {stage: role for role, stage in salon.stages.items()}
    moves = [
        (moment, deal.id, index, stage)
        for deal in month.deals
        for index, (moment, stage) in enumerate(sorted(deal.moves))
    ]
    moves.sort()
    rows = []
    for number, (moment, deal_id, index, stage) in enumerate(moves, start=1):
        role = roles[stage]
        rows.append(
            {
                "ID": number,
                "TYPE_ID": 1 if index == 0 else 3 if role in FINAL_ROLES else 2,
                "OWNER_ID": deal_id,
                "CREATED_TIME": portal_time(moment, zone),
                "CATEGORY_ID": salon.pipeline,
                "STAGE_SEMANTIC_ID": SEMANTICS.get(role, "P"),
                "STAGE_ID": stage,
                "ENTITY_TYPE_ID": DEAL_TYPE,
            }
        )
    return rows


def _activities(month: _Month) -> list[dict[str, Any]]:
    zone = month.salon.zone
    touches = sorted(month.touches, key=lambda touch: (touch.start, touch.deal.id))
    return [
        _activity_row(number, touch, zone)
        for number, touch in enumerate(touches, start=1)
    ]


def _activity_row(number: int, touch: _Touch, zone: ZoneInfo) -> dict[str, Any]:
    type_id, direction = touch.kind
    call = type_id == CALL
    start = portal_time(touch.start, zone)
    end = portal_time(touch.start + timedelta(minutes=touch.minutes), zone)
    client = touch.deal.client
    author = str(touch.author)
    return {
        "ID": str(number),
        "OWNER_ID": str(touch.deal.id),
        "OWNER_TYPE_ID": str(DEAL_TYPE),
        "TYPE_ID": str(type_id),
        "PROVIDER_ID": "VOXIMPLANT_CALL" if call else "IMOPENLINES_SESSION",
        "PROVIDER_TYPE_ID": "CALL" if call else "IMOPENLINES_SESSION",
        "PROVIDER_GROUP_ID": None,
        "ASSOCIATED_ENTITY_ID": "0",
        "SUBJECT": _subject(touch),
        "CREATED": start,
        "LAST_UPDATED": end,
        "START_TIME": start,
        "END_TIME": end,
        "DEADLINE": start,
        "COMPLETED": "Y" if touch.completed else "N",
        "STATUS": "2" if touch.completed else "1",
        "RESPONSIBLE_ID": str(touch.deal.manager),
        "PRIORITY": "2",
        "NOTIFY_TYPE": "0",
        "NOTIFY_VALUE": "0",
        "DESCRIPTION": "",
        "DESCRIPTION_TYPE": "1",
        "DIRECTION": str(direction),
        "LOCATION": "",
        "SETTINGS": [],
        "ORIGINATOR_ID": None,
        "ORIGIN_ID": None,
        "AUTHOR_ID": author,
        "EDITOR_ID": author,
        "PROVIDER_PARAMS": [],
        "PROVIDER_DATA": None,
        "RESULT_MARK": "0",
        "RESULT_VALUE": None,
        "RESULT_SUM": None,
        "RESULT_CURRENCY_ID": None,
        "RESULT_STATUS": "0",
        "RESULT_STREAM": "0",
        "RESULT_SOURCE_ID": None,
        "AUTOCOMPLETE_RULE": "0",
        "FILES": [],
        "IS_INCOMING_CHANNEL": "Y" if direction == INCOMING else "N",
        "COMMUNICATIONS": [
            {
                "ID": str(number),
                "TYPE": "PHONE" if call else "IM",
                "VALUE": client.phone if call else f"imol|{touch.deal.channel}",
                "ENTITY_ID": str(client.id),
                "ENTITY_TYPE_ID": str(CONTACT_TYPE),
                "ENTITY_SETTINGS": {
                    "HONORIFIC": "",
                    "NAME": client.first_name,
                    "SECOND_NAME": "",
                    "LAST_NAME": client.last_name,
                    "COMPANY_TITLE": "",
                    "COMPANY_ID": "",
                },
            }
        ],
    }


def _subject(touch: _Touch) -> str:
    type_id, direction = touch.kind
    if type_id != CALL:
        channel = CHANNEL_TITLES[touch.deal.channel]
        if touch.bot:
            return f"Сообщение бота ({channel})"
        return f"Ответ менеджера ({channel})"
    if direction == INCOMING:
        return "Входящий звонок" if touch.completed else "Пропущенный звонок"
    return "Исходящий звонок"


def _userfields(salon: _Salon) -> list[dict[str, Any]]:
    """The visit-time field and the qualification fields `[intake.fields]` names."""
    fields = [
        ("string", code, ITEM_LABELS[item])
        for item, code in salon.rules.intake.fields.items()
    ]
    visit_field = salon.rules.crm.visit_field
    if visit_field is not None:
        fields.insert(0, ("datetime", visit_field, "Дата и время визита"))
    return [_userfield(number, *field) for number, field in enumerate(fields, start=1)]


def _userfield(number: int, kind: str, code: str, label: str) -> dict[str, Any]:
    return {
        "ID": str(number),
        "ENTITY_ID": "CRM_DEAL",
        "FIELD_NAME": code,
        "USER_TYPE_ID": kind,
        "XML_ID": None,
        "SORT": "100",
        "MULTIPLE": "N",
        "MANDATORY": "N",
        "SHOW_FILTER": "N",
        "SHOW_IN_LIST": "Y",
        "EDIT_IN_LIST": "Y",
        "IS_SEARCHABLE": "N",
        "SETTINGS": copy.deepcopy(USERFIELD_SETTINGS[kind]),
        "EDIT_FORM_LABEL": label,
        "LIST_COLUMN_LABEL": label,
        "LIST_FILTER_LABEL": label,
        "ERROR_MESSAGE": None,
        "HELP_MESSAGE": None,
    }


def _stage_templates(salon: _Salon) -> list[StatusTemplate]:
    """The pipeline's stages named for a salon, with any custom stage of a role."""
    prefix = "" if salon.pipeline == 0 else f"C{salon.pipeline}:"
    roles = {stage: role for role, stage in salon.stages.items()}
    templates = [
        replace(template, status_id=prefix + template.status_id)
        for template in DEAL_STAGES
    ]
    known = {template.status_id for template in templates}
    for role, stage in salon.stages.items():
        if stage not in known:
            extra = {"visited": "success", "lost": "failure"}.get(role, "process")
            semantics = SEMANTICS.get(role)
            templates.append(
                StatusTemplate(
                    stage, stage, 90 + len(templates), None, semantics, False, extra
                )
            )
    return [
        replace(template, name=STAGE_NAMES[roles[template.status_id]])
        if template.status_id in roles
        else template
        for template in templates
    ]


def _statuses(salon: _Salon) -> list[dict[str, Any]]:
    """The fresh portal's directories, the salon's stage names and channel sources."""
    directories = dict(DIRECTORIES)
    sources = list(directories["SOURCE"])
    listed = {source.status_id for source in sources}
    for channel, source_id in sorted(salon.sources.items()):
        if source_id not in listed:
            sources.append(
                StatusTemplate(source_id, CHANNEL_TITLES[channel], 100 + len(sources))
            )
            listed.add(source_id)
    directories["SOURCE"] = tuple(sources)
    if salon.pipeline == 0:
        directories["DEAL_STAGE"] = tuple(_stage_templates(salon))
    rows: list[dict[str, Any]] = []
    for entity_id, templates in directories.items():
        for template in templates:
            rows.append(status_row(len(rows) + 1, entity_id, template))
    if salon.pipeline != 0:
        entity_id = f"DEAL_STAGE_{salon.pipeline}"
        for template in _stage_templates(salon):
            rows.append(
                status_row(
                    len(rows) + 1, entity_id, template, category_id=salon.pipeline
                )
            )
    return rows


def _categories(salon: _Salon) -> list[dict[str, Any]]:
    return [
        {"id": 0, "name": "General", "sort": 300, "entityTypeId": 2, "isDefault": "Y"},
        {
            "id": salon.pipeline,
            "name": "Салон",
            "sort": 100,
            "entityTypeId": 2,
            "isDefault": "N",
        },
    ]
