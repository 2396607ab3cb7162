"""A generated sales history for the sandbox: managers, inquiries, stage moves, touches.

For the KPI benchmark, the loader's tests and demos: a salon whose deals move through
the stages of `deploy/leadloop.example.toml` (PREPARATION booked, PREPAYMENT_INVOICE
confirmed, WON visited, EXECUTING no-show, FINAL_INVOICE cancelled, LOSE lost), with
the awkward cases real portals have: deals that skip the booked stage, visits known
only from the stage, checks in dollars and euros, deals without a contact, clients who
come back, inquiries created at night, calls answered while the lead was created, a
bot's messages, an untracked pipeline. The result is a snapshot for
`POST /_sandbox/snapshot`, rows in the shapes the list methods return; the same seed
gives the same portal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

NEW, BOOKED, CONFIRMED = "NEW", "PREPARATION", "PREPAYMENT_INVOICE"
VISITED, NO_SHOW, CANCELLED, LOST = "WON", "EXECUTING", "FINAL_INVOICE", "LOSE"
SEMANTICS = {VISITED: "S", LOST: "F"}
FINAL_STAGES = frozenset({VISITED, LOST})
VISIT_FIELD = "UF_CRM_LL_VISIT_AT"
FIRST_MANAGER_ID = 10
INTEGRATION_USER_ID = 3  # an employee account a chat integration writes as
BOT_USER_ID = 2  # a chat-bot: user.get never lists it
UNTRACKED_PIPELINE = 1
CALL, MEETING, EMAIL, PROVIDER = 2, 1, 4, 6
INCOMING, OUTGOING = 1, 2
LEAD_TYPE, DEAL_TYPE, CONTACT_TYPE = 1, 2, 3


@dataclass(frozen=True)
class HistoryShape:
    """How big the history is and when it happens; inquiries arrive in [start, end)."""

    start: date
    end: date
    managers: int = 5
    deals: int = 300
    activities: int = 1200
    classic: bool = False
    seed: int = 7
    timezone: str = "Europe/Moscow"
    # Stage moves and touches stop here; visits booked beyond it are still open.
    now: datetime | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def until(self) -> datetime:
        if self.now is not None:
            return self.now
        return datetime.combine(self.end + timedelta(days=30), time(0), self.zone)


@dataclass
class _Deal:
    created: datetime
    manager: int
    pipeline: int
    contact: int | None
    lead: int | None
    moves: list[tuple[datetime, str]] = field(default_factory=list)
    visit_field: datetime | None = None
    amount: str = "0.00"
    currency: str = "RUB"


@dataclass
class _Builder:
    shape: HistoryShape
    rng: random.Random
    deals: list[_Deal] = field(default_factory=list)
    leads: list[dict[str, Any]] = field(default_factory=list)
    lead_moves: list[tuple[datetime, int, str]] = field(default_factory=list)
    activities: list[dict[str, Any]] = field(default_factory=list)

    @property
    def managers(self) -> list[int]:
        return list(range(FIRST_MANAGER_ID, FIRST_MANAGER_ID + self.shape.managers))


def generate(shape: HistoryShape) -> dict[str, Any]:
    """A snapshot of the whole history described by `shape`."""
    # A reproducible portal, not a secret: the same seed gives the same history.
    builder = _Builder(shape, random.Random(shape.seed))  # noqa: S311
    clients = max(1, shape.deals // 3)  # a third of the clients come back
    for _ in range(shape.deals):
        _add_inquiry(builder, clients)
    builder.deals.sort(key=lambda deal: deal.created)
    for number, deal in enumerate(builder.deals, start=1):
        _add_touches(builder, deal, number)
    _fill_activities(builder, clients)
    return _snapshot(builder, clients)


def portal_time(moment: datetime, zone: ZoneInfo) -> str:
    """A date-time as the portal prints it: ISO 8601 with the portal's offset."""
    return moment.astimezone(zone).replace(microsecond=0).isoformat()


# -- inquiries and their stage moves --------------------------------------------------


def _created_at(builder: _Builder) -> datetime:
    shape, rng = builder.shape, builder.rng
    day = shape.start + timedelta(days=rng.randrange((shape.end - shape.start).days))
    if rng.random() < 0.85:
        seconds = rng.randrange(8 * 3600, 22 * 3600)
    else:  # at night, 00:30 included: the previous day in UTC
        seconds = rng.randrange(0, 24 * 3600)
    return datetime.combine(day, time(0), shape.zone) + timedelta(seconds=seconds)


def _add_inquiry(builder: _Builder, clients: int) -> None:
    rng = builder.rng
    created = _created_at(builder)
    manager = rng.choice(builder.managers)
    contact = rng.randrange(1, clients + 1) if rng.random() < 0.95 else None
    lead_id = None
    if builder.shape.classic:
        lead_id = _add_lead(builder, created, manager, contact)
        if lead_id is None:
            return
        created += timedelta(minutes=rng.randrange(5, 2 * 24 * 60))
    deal = _Deal(
        created=created,
        manager=manager,
        pipeline=UNTRACKED_PIPELINE if rng.random() < 0.1 else 0,
        contact=contact,
        lead=lead_id,
        amount=f"{rng.randrange(500, 20000)}.{rng.choice(['00', '00', '50', '35'])}",
        currency=rng.choices(["RUB", "USD", "EUR"], weights=[97, 2, 1])[0],
    )
    deal.moves.append((created, NEW))
    _move_deal(builder, deal)
    builder.deals.append(deal)


def _add_lead(
    builder: _Builder, created: datetime, manager: int, contact: int | None
) -> int | None:
    """A lead; the id of the lead when it is converted into a deal, else None."""
    rng = builder.rng
    lead_id = len(builder.leads) + 1
    converted = rng.random() < 0.7
    status = "CONVERTED" if converted else rng.choice(["IN_PROCESS", "JUNK"])
    builder.leads.append(
        {
            "ID": str(lead_id),
            "TITLE": f"Заявка {lead_id}",
            "STATUS_ID": status,
            "STATUS_SEMANTIC_ID": {"CONVERTED": "S", "JUNK": "F"}.get(status, "P"),
            "ASSIGNED_BY_ID": str(manager),
            "CONTACT_ID": str(contact) if contact else None,
            "OPENED": "Y",
            "DATE_CREATE": portal_time(created, builder.shape.zone),
            "DATE_MODIFY": portal_time(created, builder.shape.zone),
        }
    )
    builder.lead_moves.append((created, lead_id, "NEW"))
    later = created + timedelta(minutes=rng.randrange(5, 600))
    builder.lead_moves.append((later, lead_id, status))
    _add_first_touch(builder, (LEAD_TYPE, lead_id), created, manager, contact)
    return lead_id if converted else None


def _move_deal(builder: _Builder, deal: _Deal) -> None:
    rng, until = builder.rng, builder.shape.until
    if rng.random() < 0.25:
        deal.moves.append((deal.created + timedelta(hours=rng.randrange(1, 96)), LOST))
        return
    booked = deal.created + timedelta(minutes=rng.randrange(5, 3 * 24 * 60))
    visit = _visit_time(builder, booked)
    if rng.random() >= 0.02:  # a few deals skip the booked stage
        deal.moves.append((booked, BOOKED))
    if rng.random() < 0.7:
        confirmed = max(booked, visit - timedelta(minutes=rng.randrange(60, 2 * 1440)))
        deal.moves.append((confirmed + timedelta(seconds=1), CONFIRMED))
    if rng.random() < 0.9:
        deal.visit_field = visit
    outcome = rng.random()
    if outcome < 0.1:
        cancelled = max(booked, visit - timedelta(minutes=rng.randrange(60, 3 * 1440)))
        deal.moves.append((cancelled + timedelta(seconds=2), CANCELLED))
    elif outcome < 0.85:
        deal.moves.append((visit + timedelta(minutes=rng.randrange(30, 180)), VISITED))
    elif outcome < 0.97:
        deal.moves.append((visit + timedelta(minutes=rng.randrange(15, 90)), NO_SHOW))
    deal.moves = sorted(move for move in deal.moves if move[0] <= until)


def _visit_time(builder: _Builder, booked: datetime) -> datetime:
    rng = builder.rng
    day = booked.astimezone(builder.shape.zone).date() + timedelta(
        days=rng.randrange(1, 22)
    )
    clock = time(rng.randrange(10, 20), rng.choice([0, 15, 30, 45]))
    return datetime.combine(day, clock, builder.shape.zone)


# -- touches and other activities -----------------------------------------------------


def _add_touches(builder: _Builder, deal: _Deal, deal_id: int) -> None:
    rng = builder.rng
    if rng.random() < 0.12:  # an answered call that the portal turned into the deal
        _activity(
            builder,
            owner=(DEAL_TYPE, deal_id),
            kind=(CALL, INCOMING),
            start=deal.created - timedelta(seconds=rng.randrange(5, 40)),
            minutes=rng.randrange(1, 10),
            author=deal.manager,
        )
    if deal.lead is None:
        _add_first_touch(
            builder, (DEAL_TYPE, deal_id), deal.created, deal.manager, deal.contact
        )


def _add_first_touch(
    builder: _Builder,
    owner: tuple[int, int],
    created: datetime,
    manager: int,
    contact: int | None,
) -> None:
    rng = builder.rng
    if rng.random() < 0.1:
        return  # never answered
    wait = timedelta(minutes=min(rng.lognormvariate(2.5, 1.4), 3 * 24 * 60))
    if contact is not None and rng.random() < 0.3:
        owner = (CONTACT_TYPE, contact)
    kind = rng.choices(
        [(CALL, OUTGOING), (PROVIDER, OUTGOING), (EMAIL, OUTGOING)],
        weights=[55, 35, 10],
    )[0]
    author = manager
    if kind[0] == PROVIDER and rng.random() < 0.15:
        author = rng.choice([BOT_USER_ID, INTEGRATION_USER_ID])
    _activity(
        builder, owner=owner, kind=kind, start=created + wait, minutes=3, author=author
    )


def _fill_activities(builder: _Builder, clients: int) -> None:
    """Calls, to-dos, meetings and unfinished calls up to the requested count."""
    rng, shape = builder.rng, builder.shape
    span = (shape.until - datetime.combine(shape.start, time(0), shape.zone)).days
    first = datetime.combine(shape.start, time(9), shape.zone)
    while len(builder.activities) < shape.activities:
        start = first + timedelta(
            days=rng.randrange(max(span, 1)), minutes=rng.randrange(0, 12 * 60)
        )
        if start > shape.until:
            continue
        kind, completed = rng.choices(
            [
                ((CALL, OUTGOING), True),
                ((CALL, INCOMING), True),
                ((PROVIDER, 0), True),
                ((MEETING, OUTGOING), True),
                ((CALL, OUTGOING), False),
            ],
            weights=[50, 15, 20, 5, 10],
        )[0]
        if builder.deals and rng.random() < 0.6:
            owner = (DEAL_TYPE, rng.randrange(1, len(builder.deals) + 1))
        else:
            owner = (CONTACT_TYPE, rng.randrange(1, clients + 1))
        _activity(
            builder,
            owner=owner,
            kind=kind,
            start=start,
            minutes=rng.randrange(1, 15),
            author=rng.choice(builder.managers),
            completed=completed,
        )


def _activity(
    builder: _Builder,
    *,
    owner: tuple[int, int],
    kind: tuple[int, int],
    start: datetime,
    minutes: int,
    author: int,
    completed: bool = True,
) -> None:
    if start > builder.shape.until:
        return
    zone = builder.shape.zone
    type_id, direction = kind
    provider = {CALL: "VOXIMPLANT_CALL", EMAIL: "CRM_EMAIL", MEETING: "CRM_MEETING"}
    builder.activities.append(
        {
            "OWNER_ID": str(owner[1]),
            "OWNER_TYPE_ID": str(owner[0]),
            "TYPE_ID": str(type_id),
            "PROVIDER_ID": provider.get(
                type_id, "CRM_TODO" if direction == 0 else "IMOPENLINES_SESSION"
            ),
            "SUBJECT": "Звонок" if type_id == CALL else "Сообщение",
            "CREATED": portal_time(start, zone),
            "START_TIME": portal_time(start, zone),
            "END_TIME": portal_time(start + timedelta(minutes=minutes), zone),
            "COMPLETED": "Y" if completed else "N",
            "STATUS": "2" if completed else "1",
            "DIRECTION": str(direction),
            "RESPONSIBLE_ID": str(author),
            "AUTHOR_ID": str(author),
        }
    )


# -- the snapshot ---------------------------------------------------------------------


def _snapshot(builder: _Builder, clients: int) -> dict[str, Any]:
    shape = builder.shape
    zone = shape.zone
    activities = sorted(builder.activities, key=lambda row: row["START_TIME"])
    for number, row in enumerate(activities, start=1):
        row["ID"] = str(number)
    return {
        "settings": {"crm_mode": "classic" if shape.classic else "simple"},
        "users": _users(builder),
        "contacts": [
            {"ID": str(contact), "NAME": f"Клиент {contact}", "OPENED": "Y"}
            for contact in range(1, clients + 1)
        ],
        "userfields": [
            {
                "ID": "1",
                "ENTITY_ID": "CRM_DEAL",
                "FIELD_NAME": VISIT_FIELD,
                "USER_TYPE_ID": "datetime",
                "MULTIPLE": "N",
                "MANDATORY": "N",
                "SHOW_FILTER": "E",
            }
        ],
        "leads": builder.leads,
        "deals": [_deal_row(deal, n, zone) for n, deal in enumerate(builder.deals, 1)],
        "stagehistory": _history(builder),
        "activities": activities,
    }


def _users(builder: _Builder) -> list[dict[str, Any]]:
    def user(user_id: int, name: str, kind: str = "employee") -> dict[str, Any]:
        return {
            "ID": str(user_id),
            "ACTIVE": True,
            "NAME": name,
            "LAST_NAME": f"#{user_id}",
            "UF_DEPARTMENT": [1],
            "USER_TYPE": kind,
        }

    people = [user(1, "Администратор")]
    people += [user(manager, "Менеджер") for manager in builder.managers]
    people.append(user(INTEGRATION_USER_ID, "Интеграция"))
    people.append(user(BOT_USER_ID, "Бот", "bot"))
    return people


def _stage(pipeline: int, stage: str) -> str:
    return stage if pipeline == 0 else f"C{pipeline}:{stage}"


def _deal_row(deal: _Deal, deal_id: int, zone: ZoneInfo) -> dict[str, Any]:
    last_time, last_stage = deal.moves[-1]
    row: dict[str, Any] = {
        "ID": str(deal_id),
        "TITLE": f"Запись {deal_id}",
        "CATEGORY_ID": str(deal.pipeline),
        "STAGE_ID": _stage(deal.pipeline, last_stage),
        "STAGE_SEMANTIC_ID": SEMANTICS.get(last_stage, "P"),
        "CLOSED": "Y" if last_stage in FINAL_STAGES else "N",
        "OPENED": "Y",
        "OPPORTUNITY": deal.amount,
        "CURRENCY_ID": deal.currency,
        "ASSIGNED_BY_ID": str(deal.manager),
        "CONTACT_ID": str(deal.contact) if deal.contact else None,
        "LEAD_ID": str(deal.lead) if deal.lead else None,
        "DATE_CREATE": portal_time(deal.created, zone),
        "DATE_MODIFY": portal_time(last_time, zone),
        VISIT_FIELD: portal_time(deal.visit_field, zone) if deal.visit_field else "",
    }
    return row


def _history(builder: _Builder) -> list[dict[str, Any]]:
    zone = builder.shape.zone
    moves: list[tuple[datetime, int, int, str, int]] = []
    for deal_id, deal in enumerate(builder.deals, start=1):
        for index, (moment, stage) in enumerate(deal.moves):
            kind = 1 if index == 0 else 3 if stage in FINAL_STAGES else 2
            moves.append((moment, DEAL_TYPE, deal_id, stage, kind))
    for moment, lead_id, status in builder.lead_moves:
        if moment <= builder.shape.until:
            kind = 1 if status == "NEW" else 3
            moves.append((moment, LEAD_TYPE, lead_id, status, kind))
    moves.sort(key=lambda move: (move[0], move[1], move[2]))
    rows = []
    for number, (moment, entity, owner, stage, kind) in enumerate(moves, start=1):
        row: dict[str, Any] = {
            "ID": number,
            "ENTITY_TYPE_ID": entity,
            "TYPE_ID": kind,
            "OWNER_ID": owner,
            "CREATED_TIME": portal_time(moment, zone),
        }
        if entity == DEAL_TYPE:
            pipeline = builder.deals[owner - 1].pipeline
            row |= {
                "CATEGORY_ID": pipeline,
                "STAGE_ID": _stage(pipeline, stage),
                "STAGE_SEMANTIC_ID": SEMANTICS.get(stage, "P"),
            }
        else:
            row |= {"STATUS_ID": stage, "STATUS_SEMANTIC_ID": "P"}
        rows.append(row)
    return rows
