"""A fresh portal: its administrator, department, pipelines, stages and directories.

Rows are laid down in the shapes the list methods return (`user.get`,
`department.get`, `crm.category.list`, `crm.status.list`), as the fixtures recorded
from real portals show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbox.state import Portal

DEFAULT_CATEGORY_NAME = "General"


@dataclass(frozen=True)
class StatusTemplate:
    """One directory entry of a fresh portal: code, name, sort and semantics."""

    status_id: str
    name: str
    sort: int
    color: str | None = None
    semantics: str | None = None  # None in progress, "S" success, "F" failure
    system: bool = False
    extra: str | None = None  # EXTRA.SEMANTICS: process, success, failure, apology


_SEMANTICS_CODE = {"process": None, "success": "S", "failure": "F", "apology": "F"}


def _stage(
    code: str, name: str, sort: int, color: str, extra: str, system: bool = False
) -> StatusTemplate:
    return StatusTemplate(
        code, name, sort, color, _SEMANTICS_CODE[extra], system, extra
    )


DEAL_STAGES = (
    _stage("NEW", "New", 10, "#39A8EF", "process", system=True),
    _stage("PREPARATION", "Document preparation", 20, "#2FC6F6", "process"),
    _stage("PREPAYMENT_INVOICE", "Prepayment invoice", 30, "#55D0E0", "process"),
    _stage("EXECUTING", "In progress", 40, "#47E4C2", "process"),
    _stage("FINAL_INVOICE", "Final invoice", 50, "#FFA900", "process"),
    _stage("WON", "Deal successful", 60, "#7BD500", "success", system=True),
    _stage("LOSE", "Deal failed", 70, "#FF5752", "failure", system=True),
    _stage("APOLOGY", "Failure reason analysis", 80, "#FF5752", "apology"),
)

LEAD_STATUSES = (
    _stage("NEW", "Unassigned", 10, "#39A8EF", "process", system=True),
    _stage("IN_PROCESS", "In progress", 20, "#2FC6F6", "process"),
    _stage("PROCESSED", "Processed", 30, "#55D0E0", "process"),
    _stage("CONVERTED", "Good lead", 40, "#7BD500", "success", system=True),
    _stage("JUNK", "Junk lead", 50, "#FF5752", "failure", system=True),
)

# The sources of a fresh portal and their sorts (reference/bitrix24.md §7.2).
SOURCES = (
    StatusTemplate("CALL", "Call", 10, system=True),
    StatusTemplate("EMAIL", "E-Mail", 20, system=True),
    StatusTemplate("WEB", "Website", 30, system=True),
    StatusTemplate("ADVERTISING", "Advertising", 40, system=True),
    StatusTemplate("PARTNER", "Existing client", 50, system=True),
    StatusTemplate("RECOMMENDATION", "By recommendation", 60, system=True),
    StatusTemplate("TRADE_SHOW", "Show/Exhibition", 70, system=True),
    StatusTemplate("WEBFORM", "CRM form", 75, system=True),
    StatusTemplate("REPEAT_SALE", "Repeat sales", 76, system=True),
    StatusTemplate("CALLBACK", "Callback", 77, system=True),
    StatusTemplate("RC_GENERATOR", "Sales boost", 78, system=True),
    StatusTemplate("STORE", "Online Store", 79, system=True),
    StatusTemplate("OTHER", "Other", 80, system=True),
    StatusTemplate("BOOKING", "Online booking", 81, system=True),
)

DEAL_TYPES = (
    StatusTemplate("SALE", "Sales", 10, system=True),
    StatusTemplate("COMPLEX", "Integrated sale", 20, system=True),
    StatusTemplate("SERVICE", "Service", 30, system=True),
)

CONTACT_TYPES = (
    StatusTemplate("CLIENT", "Clients", 10, system=True),
    StatusTemplate("SUPPLIER", "Suppliers", 20, system=True),
    StatusTemplate("PARTNER", "Partners", 30, system=True),
    StatusTemplate("OTHER", "Other", 40, system=True),
)

COMPANY_TYPES = (
    StatusTemplate("CUSTOMER", "Client", 10, system=True),
    StatusTemplate("SUPPLIER", "Supplier", 20, system=True),
    StatusTemplate("COMPETITOR", "Competitor", 30, system=True),
    StatusTemplate("PARTNER", "Partner", 40, system=True),
    StatusTemplate("OTHER", "Other", 50, system=True),
)

HONORIFICS = (
    StatusTemplate("HNR_EN_1", "Mr.", 100, system=True),
    StatusTemplate("HNR_EN_2", "Mrs.", 200, system=True),
    StatusTemplate("HNR_EN_3", "Ms.", 300, system=True),
    StatusTemplate("HNR_EN_4", "Dr.", 400, system=True),
)

DIRECTORIES: dict[str, tuple[StatusTemplate, ...]] = {
    "DEAL_STAGE": DEAL_STAGES,
    "STATUS": LEAD_STATUSES,
    "SOURCE": SOURCES,
    "DEAL_TYPE": DEAL_TYPES,
    "CONTACT_TYPE": CONTACT_TYPES,
    "COMPANY_TYPE": COMPANY_TYPES,
    "HONORIFIC": HONORIFICS,
}


def stage_entity_id(category_id: int) -> str:
    """The directory of a deal pipeline's stages: `DEAL_STAGE` or `DEAL_STAGE_{n}`."""
    return "DEAL_STAGE" if category_id == 0 else f"DEAL_STAGE_{category_id}"


def stage_status_id(category_id: int, code: str) -> str:
    """A stage code as deals carry it: `NEW` in pipeline 0, `C{n}:NEW` elsewhere."""
    return code if category_id == 0 else f"C{category_id}:{code}"


def is_semantic_entity(entity_id: str) -> bool:
    """Stage-like directories carry semantics and an `EXTRA` block."""
    return entity_id == "STATUS" or entity_id.startswith("DEAL_STAGE")


def status_row(
    row_id: int,
    entity_id: str,
    template: StatusTemplate,
    *,
    status_id: str | None = None,
    category_id: int | None = None,
) -> dict[str, Any]:
    """A `crm.status.list` row (strings, `CATEGORY_ID` null outside pipelines)."""
    row: dict[str, Any] = {
        "ID": str(row_id),
        "ENTITY_ID": entity_id,
        "STATUS_ID": status_id or template.status_id,
        "NAME": template.name,
        "NAME_INIT": template.name if template.system else "",
        "SORT": str(template.sort),
        "SYSTEM": "Y" if template.system else "N",
        "CATEGORY_ID": None if not category_id else str(category_id),
        "COLOR": template.color,
        "SEMANTICS": template.semantics,
    }
    if is_semantic_entity(entity_id):
        row["EXTRA"] = {
            "SEMANTICS": template.extra or "process",
            "COLOR": template.color,
        }
    return row


def add_pipeline_stages(portal: Portal, category_id: int) -> list[dict[str, Any]]:
    """Create a new deal pipeline's default stages, as the portal does."""
    statuses = portal.table("status")
    entity_id = stage_entity_id(category_id)
    rows = []
    for template in DEAL_STAGES:
        row_id = statuses.allocate_id()
        row = status_row(
            row_id,
            entity_id,
            template,
            status_id=stage_status_id(category_id, template.status_id),
            category_id=category_id,
        )
        statuses.insert(row, row_id)
        rows.append(row)
    return rows


def seed_defaults(portal: Portal) -> None:
    """Lay down what a fresh classic-mode portal holds before anyone touches it."""
    portal.crm_mode = "classic"
    _seed_people(portal)
    portal.table("category").insert(
        {
            "id": 0,
            "name": DEFAULT_CATEGORY_NAME,
            "sort": 300,
            "entityTypeId": 2,
            "isDefault": "Y",
        },
        0,
    )
    statuses = portal.table("status")
    for entity_id, templates in DIRECTORIES.items():
        for template in templates:
            row_id = statuses.allocate_id()
            statuses.insert(status_row(row_id, entity_id, template), row_id)


def _seed_people(portal: Portal) -> None:
    registered = datetime(2024, 1, 1, tzinfo=portal.zone).isoformat()
    portal.table("user").insert(
        {
            "ID": "1",
            "ACTIVE": True,
            "NAME": "Admin",
            "LAST_NAME": "Sandbox",
            "SECOND_NAME": "",
            "EMAIL": "admin@example.com",
            "LAST_LOGIN": registered,
            "DATE_REGISTER": registered,
            "TIME_ZONE": "",
            "IS_ONLINE": "Y",
            "TIMESTAMP_X": {},
            "LAST_ACTIVITY_DATE": {},
            "PERSONAL_GENDER": "",
            "PERSONAL_WWW": "",
            "PERSONAL_BIRTHDAY": "",
            "PERSONAL_MOBILE": "",
            "PERSONAL_CITY": "",
            "WORK_PHONE": "",
            "WORK_POSITION": "Administrator",
            "UF_EMPLOYMENT_DATE": "",
            "UF_DEPARTMENT": [1],
            "USER_TYPE": "employee",
        },
        1,
    )
    portal.table("department").insert(
        {"ID": "1", "NAME": "Sandbox", "SORT": 500, "UF_HEAD": "1"}, 1
    )
