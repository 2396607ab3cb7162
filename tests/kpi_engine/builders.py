"""Keyword-only builders of Bitrix24 rows, shaped as the portal sends them.

Legacy lists send every value as a string and date-times in ISO 8601 with the portal
offset; `crm.stagehistory.list` sends ints. Each builder validates such a dict with the
production model, so tests exercise the same parsing as a real pull.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from app.config import BusinessRules, parse_rules
from connectors.bitrix24.models import Activity, Deal, Lead, StageHistory, User
from kpi_engine.data import ClosedMonth, KpiData, KpiQuery
from kpi_engine.metrics import compute
from kpi_engine.report import to_json

VISIT_FIELD = "UF_CRM_VISIT_AT"
BOT = 900  # listed in [kpi] non_human_users by RULES

RULES = """
timezone = "Europe/Moscow"

[crm]
mode = "simple"
pipelines = [0]
visit_field = "UF_CRM_VISIT_AT"

[crm.stages]
new = ["NEW"]
booked = ["BOOKED"]
confirmed = ["CONFIRMED"]
visited = ["WON"]
no_show = ["NO_SHOW"]
cancelled = ["CANCELLED"]
lost = ["LOSE"]

[kpi]
sla_minutes = 15
non_human_users = ["900"]
"""


def rules(extra: str = "") -> BusinessRules:
    """The test rules, with more TOML appended (new tables only)."""
    return parse_rules(RULES + extra)


def user(*, id: int, name: str = "Анна", last_name: str = "Иванова") -> User:
    return User.model_validate(
        {"ID": str(id), "ACTIVE": True, "NAME": name, "LAST_NAME": last_name}
    )


def users(*ids: int) -> dict[int, User]:
    return {user_id: user(id=user_id, last_name=f"М{user_id}") for user_id in ids}


def deal(
    *,
    id: int,
    created: str,
    manager: int | None = 17,
    contact: int | None = None,
    category: int = 0,
    opportunity: str = "0.00",
    currency: str = "RUB",
    lead: int | None = None,
    visit: str | None = None,
    stage: str = "NEW",
) -> Deal:
    return Deal.model_validate(
        {
            "ID": str(id),
            "TITLE": f"Запись {id}",
            "DATE_CREATE": created,
            "ASSIGNED_BY_ID": "" if manager is None else str(manager),
            "CONTACT_ID": "" if contact is None else str(contact),
            "CATEGORY_ID": str(category),
            "STAGE_ID": stage,
            "OPPORTUNITY": opportunity,
            "CURRENCY_ID": currency,
            "LEAD_ID": "" if lead is None else str(lead),
            VISIT_FIELD: visit or "",
        }
    )


def lead(
    *,
    id: int,
    created: str,
    manager: int | None = 17,
    contact: int | None = None,
    status: str = "NEW",
) -> Lead:
    return Lead.model_validate(
        {
            "ID": str(id),
            "TITLE": f"Заявка {id}",
            "DATE_CREATE": created,
            "ASSIGNED_BY_ID": "" if manager is None else str(manager),
            "CONTACT_ID": "" if contact is None else str(contact),
            "STATUS_ID": status,
        }
    )


def row(*, id: int, deal: int, stage: str, at: str, type_id: int = 2) -> StageHistory:
    """A deal's stage-history row; ids are ints, as crm.stagehistory.list sends."""
    return StageHistory.model_validate(
        {
            "ID": id,
            "TYPE_ID": type_id,
            "OWNER_ID": deal,
            "CREATED_TIME": at,
            "CATEGORY_ID": 0,
            "STAGE_SEMANTIC_ID": "P",
            "STAGE_ID": stage,
        }
    )


def path(
    deal: int, *steps: tuple[str, str], first_id: int | None = None
) -> list[StageHistory]:
    """History rows of one deal: (stage, time) steps, the first a creation row."""
    base = first_id if first_id is not None else deal * 100
    return [
        row(
            id=base + index,
            deal=deal,
            stage=stage,
            at=at,
            type_id=1 if index == 0 else 2,
        )
        for index, (stage, at) in enumerate(steps)
    ]


def activity(
    *,
    id: int,
    type_id: int,
    direction: int,
    start: str,
    end: str | None = None,
    completed: bool = True,
    responsible: int = 17,
    author: int | None = None,
    owner: tuple[int, int] | None = None,
    bindings: Sequence[tuple[int, int]] = (),
    provider: str = "",
) -> Activity:
    raw: dict[str, Any] = {
        "ID": str(id),
        "TYPE_ID": str(type_id),
        "DIRECTION": str(direction),
        "COMPLETED": "Y" if completed else "N",
        "START_TIME": start,
        "END_TIME": end or start,
        "RESPONSIBLE_ID": str(responsible),
        "AUTHOR_ID": "" if author is None else str(author),
        "PROVIDER_ID": provider,
        "BINDINGS": [
            {"OWNER_TYPE_ID": str(kind), "OWNER_ID": str(owner_id)}
            for kind, owner_id in bindings
        ],
    }
    if owner is not None:
        raw["OWNER_TYPE_ID"], raw["OWNER_ID"] = str(owner[0]), str(owner[1])
    return Activity.model_validate(raw)


def call_out(
    *, id: int, start: str, on: tuple[int, int] | None = None, **kw: Any
) -> Activity:
    """A completed outgoing call."""
    kw.setdefault("provider", "VOXIMPLANT_CALL")
    return activity(id=id, type_id=2, direction=2, start=start, owner=on, **kw)


def call_in(
    *, id: int, start: str, end: str, on: tuple[int, int] | None = None, **kw: Any
) -> Activity:
    """An incoming call; completed means a person answered it."""
    kw.setdefault("provider", "VOXIMPLANT_CALL")
    return activity(id=id, type_id=2, direction=1, start=start, end=end, owner=on, **kw)


def message_out(*, id: int, start: str, on: tuple[int, int], **kw: Any) -> Activity:
    """A provider message sent to the client (SMS, messenger, open-line reply)."""
    kw.setdefault("provider", "CRM_SMS")
    return activity(id=id, type_id=6, direction=2, start=start, owner=on, **kw)


def email_out(*, id: int, start: str, on: tuple[int, int], **kw: Any) -> Activity:
    kw.setdefault("provider", "CRM_EMAIL")
    return activity(id=id, type_id=4, direction=2, start=start, owner=on, **kw)


def data(
    *,
    deals: Sequence[Deal] = (),
    history: Sequence[StageHistory] = (),
    activities: Sequence[Activity] = (),
    leads: Sequence[Lead] = (),
    lead_history: Sequence[StageHistory] = (),
    staff: Sequence[int] = (17, 18),
    mode: str = "simple",
) -> KpiData:
    assert mode in ("simple", "classic")
    return KpiData(
        mode="simple" if mode == "simple" else "classic",
        users=users(*staff),
        deals=deals,
        leads=leads,
        deal_history=history,
        lead_history=lead_history,
        activities=activities,
    )


def query(start: str, end: str, as_of: str, manager: int | None = None) -> KpiQuery:
    return KpiQuery(
        start=date.fromisoformat(start),
        end=date.fromisoformat(end),
        as_of=datetime.fromisoformat(as_of),
        manager=manager,
    )


def kpi(
    kpi_data: KpiData,
    start: str,
    end: str,
    as_of: str,
    *,
    manager: int | None = None,
    business: BusinessRules | None = None,
    closed: ClosedMonth | None = None,
) -> dict[str, Any]:
    """The JSON report of one query."""
    result = compute(
        kpi_data,
        query(start, end, as_of, manager),
        business or rules(),
        closed=closed,
    )
    return to_json(result)


def manager(report: dict[str, Any], user_id: int) -> dict[str, Any]:
    """The row of one manager in a JSON report."""
    rows: list[dict[str, Any]] = [
        row for row in report["managers"] if row["id"] == str(user_id)
    ]
    assert len(rows) == 1, f"manager {user_id} is not listed once"
    return rows[0]


def warning(report: dict[str, Any], code: str) -> dict[str, Any]:
    """The one warning with `code`."""
    found: list[dict[str, Any]] = [w for w in report["warnings"] if w["code"] == code]
    assert len(found) == 1, f"{code}: {len(found)} warnings"
    return found[0]
