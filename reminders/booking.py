"""A deal seen as a booking: its visit, the role of its stage, who manages it.

A visit is named by a stamp of its UTC time (`20261204T070000Z`): the stamp goes
into job ids, Redis keys, idempotency keys and button data, so that everything about
one visit changes name when the visit moves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from app.config import BusinessRules
from connectors.bitrix24.models import Deal

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP = re.compile(r"\d{8}T\d{6}Z")
_PIPELINE_PREFIX = re.compile(r"C(\d+):")
# The roles whose deals still have a visit ahead of them to remind about or check.
ACTIVE_ROLES = ("booked", "confirmed")

Answer = Literal["confirm", "cancel"]
# Button data: `rm:<c|x>:<deal id>:<stamp>`, at most 64 bytes on Telegram.
CALLBACK_PREFIX = "rm:"
_ANSWER_CODES: dict[str, Answer] = {"c": "confirm", "x": "cancel"}
_CALLBACK = re.compile(r"rm:([cx]):(\d{1,12}):(\d{8}T\d{6}Z)")


def stamp_of(visit: datetime) -> str:
    """The visit's name in ids and keys."""
    return visit.astimezone(UTC).strftime(STAMP_FORMAT)


def visit_of(stamp: str) -> datetime:
    """The visit a stamp names; ValueError for anything that is not a stamp."""
    if not _STAMP.fullmatch(stamp):
        raise ValueError(f"not a visit stamp: {stamp!r}")
    return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Booking:
    """What the reminders need of a deal with a visit time."""

    deal_id: int
    visit: datetime
    role: str | None
    category_id: int
    manager_id: int | None
    contact_id: int | None

    @property
    def stamp(self) -> str:
        return stamp_of(self.visit)

    @property
    def active(self) -> bool:
        """Booked or confirmed: the visit is still expected."""
        return self.role in ACTIVE_ROLES


def booking_of(deal: Deal, rules: BusinessRules) -> Booking | None:
    """The deal as a booking; None outside the tracked pipelines or without a visit."""
    field = rules.crm.visit_field
    if field is None or deal.category_id not in rules.crm.pipelines:
        return None
    visit = deal.datetime_field(field)
    if visit is None:
        return None
    return Booking(
        deal_id=deal.id,
        visit=visit,
        role=rules.crm.stages.role_of(deal.stage_id),
        category_id=deal.category_id,
        manager_id=deal.assigned_by_id,
        contact_id=deal.contact_id,
    )


def stage_for(role: str, category_id: int, rules: BusinessRules) -> str | None:
    """The first stage with `role` in the deal's pipeline (`C<n>:` for pipeline n)."""
    for stage in getattr(rules.crm.stages, role):
        prefix = _PIPELINE_PREFIX.match(stage)
        pipeline = int(prefix[1]) if prefix else 0
        if pipeline == category_id:
            return str(stage)
    return None


def watched_stages(rules: BusinessRules) -> list[str]:
    """Stages whose deals the reconcile job reads: booked and confirmed."""
    stages = rules.crm.stages
    return [*stages.booked, *stages.confirmed]


def reminders_off_because(rules: BusinessRules) -> str | None:
    """Why reminders cannot run with these rules, or None when they can."""
    if not rules.reminders.enabled:
        return "disabled"
    if rules.crm.visit_field is None:
        return "no_visit_field"
    if not rules.crm.stages.booked:
        return "no_booked_stage"
    return None


@dataclass(frozen=True)
class ButtonPress:
    """A tap on a reminder's button: which visit, and the client's answer."""

    deal_id: int
    stamp: str
    answer: Answer


def callback_data(answer: Answer, deal_id: int, stamp: str) -> str:
    """The data a reminder's button carries."""
    code = "c" if answer == "confirm" else "x"
    return f"{CALLBACK_PREFIX}{code}:{deal_id}:{stamp}"


def parse_callback(data: str | None) -> ButtonPress | None:
    """The press behind reminder button data; None for any other data."""
    found = _CALLBACK.fullmatch(data or "")
    if found is None:
        return None
    code, deal_id, stamp = found.groups()
    return ButtonPress(int(deal_id), stamp, _ANSWER_CODES[code])
