"""Activities: `crm.activity.{fields,add,get,list,update,delete}` (legacy family).

After `CCrmActivityRestProxy` (reference §7.5): values are strings, `SETTINGS` and
`PROVIDER_PARAMS` are `[]` when empty, `COMMUNICATIONS` and `FILES` appear in lists
only when selected (and never in `get`), the default order is `START_TIME` ascending,
and the `BINDINGS` filter (`[{"OWNER_TYPE_ID": 2, "OWNER_ID": 5}]`) joins the
bindings, so an activity bound to several listed owners is listed once per owner.

`add` checks what the server checks, with its texts: a subject, a responsible user
(the owner's by default), a type among call, meeting, e-mail and provider, at least
one usable communication (except provider activities), bindings that exist. Files are
accepted and not kept (`FILES` reads `[]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sandbox import protocol
from sandbox.fields import STANDARD_FIELDS, Codec, FieldInfo, now_iso, php_string
from sandbox.filters import binding_pairs, row_bindings
from sandbox.listing import LegacyList, OrderKey, output_value
from sandbox.methods.crm_legacy import (
    OWNER_TABLES,
    accept_fields,
    array_param,
    emit,
    entity_id,
    existing_row,
    legacy_params,
)
from sandbox.phpform import intval
from sandbox.protocol import MethodResult, RestError
from sandbox.registry import Call, method
from sandbox.state import Portal

FIELDS: Final[dict[str, FieldInfo]] = STANDARD_FIELDS["activity"]
# CCrmActivityType
MEETING, CALL, TASK, EMAIL, GENERIC, PROVIDER = 1, 2, 3, 4, 5, 6
_TYPE_NAMES = {MEETING: "Meeting", CALL: "Call", TASK: "Task", EMAIL: "E-mail",
               GENERIC: "Activity", PROVIDER: "Provider"}  # fmt: skip
# The provider and its type id a plain call, meeting or e-mail gets.
_PROVIDERS = {
    CALL: ("VOXIMPLANT_CALL", "CALL"),
    MEETING: ("CRM_MEETING", "MEETING"),
    EMAIL: ("CRM_EMAIL", "EMAIL"),
}
# Providers accepted for TYPE_ID 6 (CCrmActivity::GetActivityProvider).
KNOWN_PROVIDERS: Final = frozenset(
    {"VOXIMPLANT_CALL", "CRM_TODO", "CRM_EMAIL", "CRM_MEETING", "IMOPENLINES_SESSION",
     "CRM_WEBFORM", "CRM_SMS", "CRM_CALL_TRACKER", "TASKS", "TASKS_TASK", "REST_APP",
     "CRM_REQUEST", "CRM_EXTERNAL_CHANNEL", "CRM_VISIT_TRACKER", "CRM_NOTIFICATION"}
)  # fmt: skip
OWNER_NAMES: Final = {1: "LEAD", 2: "DEAL", 3: "CONTACT", 4: "COMPANY"}
ON_REQUEST: Final = frozenset({"COMMUNICATIONS", "FILES", "IS_INCOMING_CHANNEL"})
HIDDEN: Final = frozenset({"BINDINGS", "WEBDAV_ELEMENTS"})
_COMMUNICATION_COUNTER = "activity_communication_next_id"
# The order `crm.activity.get`/`list` print fields in (fixture).
OUTPUT_ORDER: Final = tuple(
    """ID OWNER_ID OWNER_TYPE_ID TYPE_ID PROVIDER_ID PROVIDER_TYPE_ID PROVIDER_GROUP_ID
    ASSOCIATED_ENTITY_ID SUBJECT CREATED LAST_UPDATED START_TIME END_TIME DEADLINE
    COMPLETED STATUS RESPONSIBLE_ID PRIORITY NOTIFY_TYPE NOTIFY_VALUE DESCRIPTION
    DESCRIPTION_TYPE DIRECTION LOCATION SETTINGS ORIGINATOR_ID ORIGIN_ID AUTHOR_ID
    EDITOR_ID PROVIDER_PARAMS PROVIDER_DATA RESULT_MARK RESULT_VALUE RESULT_SUM
    RESULT_CURRENCY_ID RESULT_STATUS RESULT_STREAM RESULT_SOURCE_ID
    AUTOCOMPLETE_RULE""".split()  # noqa: SIM905
)


def _fail(text: str) -> RestError:
    return protocol.legacy_error(text)


# -- communications and bindings ------------------------------------------------------


def _communications(
    portal: Portal, raw: Any, owner: tuple[int, int], type_id: int
) -> list[dict[str, Any]]:
    """The usable communications, with their entity (the owner when omitted)."""
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not isinstance(raw, list):
        return []
    kept: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        value = php_string(item.get("VALUE")).strip()
        kind = php_string(item.get("TYPE")).strip()
        entity = (intval(item.get("ENTITY_TYPE_ID")), intval(item.get("ENTITY_ID")))
        if value and (entity[0] <= 0 or entity[1] <= 0):
            entity = owner
        if entity[0] <= 0 or entity[1] <= 0:
            continue
        if not value and type_id not in (MEETING, TASK):
            continue
        if not kind:
            kind = {CALL: "PHONE", EMAIL: "EMAIL"}.get(type_id, "")
        elif (type_id == CALL and kind != "PHONE") or (
            type_id == EMAIL and kind != "EMAIL"
        ):
            continue
        kept.append(_communication(portal, kind, value, entity))
    return kept


def _communication(
    portal: Portal, kind: str, value: str, entity: tuple[int, int]
) -> dict[str, Any]:
    next_id = int(portal.extras.get(_COMMUNICATION_COUNTER, 1))
    portal.extras[_COMMUNICATION_COUNTER] = next_id + 1
    return {
        "ID": str(next_id),
        "TYPE": kind,
        "VALUE": value,
        "ENTITY_ID": str(entity[1]),
        "ENTITY_TYPE_ID": str(entity[0]),
        "ENTITY_SETTINGS": _entity_settings(portal, entity),
    }


def _entity_settings(
    portal: Portal, entity: tuple[int, int]
) -> dict[str, Any] | list[Any]:
    table = OWNER_TABLES.get(entity[0])
    row = portal.table(table).get(entity[1]) if table else None
    if row is None:
        return []
    if entity[0] == 3:
        names = ("HONORIFIC", "NAME", "SECOND_NAME", "LAST_NAME", "COMPANY_TITLE")
        contact = {key: row.get(key) or "" for key in names}
        contact["COMPANY_ID"] = row.get("COMPANY_ID") or ""
        return contact
    if entity[0] == 1:
        lead = {key: row.get(key) or "" for key in ("NAME", "SECOND_NAME", "LAST_NAME")}
        lead["LEAD_TITLE"] = row.get("TITLE") or ""
        return lead
    if entity[0] == 4:
        return {"COMPANY_TITLE": row.get("TITLE") or ""}
    return []


def _check_bindings(portal: Portal, bindings: list[tuple[int, int]]) -> None:
    for owner_type, owner_id in bindings:
        name = OWNER_NAMES.get(owner_type)
        if name is None:
            raise _fail(
                f"Entity type '[{owner_type}]' is not supported in current context"
            )
        if portal.table(OWNER_TABLES[owner_type]).get(owner_id) is None:
            raise _fail(f"Could not find '{name}' with ID: {owner_id}")


def _owner_responsible(portal: Portal, owner: tuple[int, int]) -> int:
    table = OWNER_TABLES.get(owner[0])
    row = portal.table(table).get(owner[1]) if table else None
    return intval(row.get("ASSIGNED_BY_ID")) if row else 0


# -- add ------------------------------------------------------------------------------


def _type_of(raw: Mapping[str, Any]) -> int:
    if raw.get("PROVIDER_ID") and not raw.get("TYPE_ID"):
        return PROVIDER
    type_id = intval(raw.get("TYPE_ID"))
    if type_id not in _TYPE_NAMES:
        raise _fail("The field TYPE_ID is not defined or invalid.")
    return type_id


def _check_type(call: Call, type_id: int, provider: str) -> None:
    if type_id == PROVIDER:
        if provider not in KNOWN_PROVIDERS:
            raise _fail(
                "The custom activity without provider is not supported "
                "in current context."
            )
        if provider == "REST_APP" and call.auth.kind != "oauth":
            raise _fail("Application context required.")
    if type_id not in (CALL, MEETING, EMAIL, PROVIDER):
        name = _TYPE_NAMES[type_id]
        raise _fail(f'The activity type "{name} is not supported in current context".')


def add_activity(call: Call, raw: Mapping[str, Any]) -> int:
    portal = call.portal
    owner = (intval(raw.get("OWNER_TYPE_ID")), intval(raw.get("OWNER_ID")))
    if not php_string(raw.get("SUBJECT")).strip():
        raise _fail("The field SUBJECT is not defined or empty.")
    responsible = intval(raw.get("RESPONSIBLE_ID"))
    if responsible <= 0 and owner[0] > 0 and owner[1] > 0:
        responsible = _owner_responsible(portal, owner)
    if responsible <= 0:
        responsible = call.user_id
    type_id = _type_of(raw)
    provider = php_string(raw.get("PROVIDER_ID"))
    _check_type(call, type_id, provider)

    communications = _communications(portal, raw.get("COMMUNICATIONS"), owner, type_id)
    if not communications and type_id != PROVIDER:
        raise _fail("The field COMMUNICATIONS is not defined or invalid.")
    if type_id in (CALL, MEETING) and len(communications) > 1:
        raise _fail(
            "The only one communication is allowed for activity of specified type."
        )
    bindings = _bindings(owner, communications)
    if not bindings:
        raise _fail(
            "Could not build binding. Please ensure that owner info and "
            "communications are defined correctly."
        )
    _check_bindings(portal, bindings)

    row = _new_row(call, raw, type_id, responsible, bindings)
    row["COMMUNICATIONS"] = communications
    table = portal.table("activity")
    row_id = table.allocate_id()
    row["ID"] = str(row_id)
    table.insert(row, row_id)
    return row_id


def _bindings(
    owner: tuple[int, int], communications: list[dict[str, Any]]
) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    if owner[0] > 0 and owner[1] > 0:
        pairs.append(owner)
    for item in communications:
        pair = (intval(item["ENTITY_TYPE_ID"]), intval(item["ENTITY_ID"]))
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _new_row(
    call: Call,
    raw: Mapping[str, Any],
    type_id: int,
    responsible: int,
    bindings: list[tuple[int, int]],
) -> dict[str, Any]:
    now = now_iso(call.portal.zone)
    user = str(call.user_id)
    accepted = accept_fields(
        raw, FIELDS, Codec(call.portal.zone), updating=False
    ).values
    provider, provider_type = _PROVIDERS.get(type_id, (None, None))
    completed = accepted.get("COMPLETED") == "Y"
    row: dict[str, Any] = dict.fromkeys(OUTPUT_ORDER)
    row.update(
        OWNER_ID=str(bindings[0][1]),
        OWNER_TYPE_ID=str(bindings[0][0]),
        TYPE_ID=str(type_id),
        PROVIDER_ID=provider,
        PROVIDER_TYPE_ID=provider_type,
        ASSOCIATED_ENTITY_ID="0",
        CREATED=now,
        LAST_UPDATED=now,
        START_TIME=now,
        END_TIME="",
        DEADLINE="",
        COMPLETED="N",
        STATUS="1",
        PRIORITY="2",
        NOTIFY_TYPE="0",
        NOTIFY_VALUE="0",
        DESCRIPTION="",
        DESCRIPTION_TYPE="1",
        DIRECTION="0",
        LOCATION="",
        SETTINGS=[],
        AUTHOR_ID=user,
        EDITOR_ID=user,
        PROVIDER_PARAMS=[],
        RESULT_MARK="0",
        RESULT_STATUS="0",
        RESULT_STREAM="0",
        AUTOCOMPLETE_RULE="0",
        FILES=[],
        IS_INCOMING_CHANNEL="N",
    )
    for key in ("TYPE_ID", "OWNER_ID", "OWNER_TYPE_ID", "COMMUNICATIONS"):
        accepted.pop(key, None)
    row.update({key: value for key, value in accepted.items() if value is not None})
    row["RESPONSIBLE_ID"] = str(responsible)
    if not row["END_TIME"]:
        row["END_TIME"] = row["START_TIME"]
    if not row["DEADLINE"]:
        row["DEADLINE"] = row["START_TIME"]
    row["STATUS"] = "2" if completed else row["STATUS"]
    return row


# -- update ---------------------------------------------------------------------------


def update_activity(call: Call, row_id: int, raw: Mapping[str, Any]) -> None:
    table = call.portal.table("activity")
    row = existing_row(table, row_id)
    changes = accept_fields(raw, FIELDS, Codec(call.portal.zone), updating=True).values
    changes.pop("COMMUNICATIONS", None)
    if "COMMUNICATIONS" in raw:
        owner = (intval(row.get("OWNER_TYPE_ID")), intval(row.get("OWNER_ID")))
        type_id = intval(row.get("TYPE_ID"))
        communications = _communications(
            call.portal, raw.get("COMMUNICATIONS"), owner, type_id
        )
        if not communications:
            raise _fail("The field COMMUNICATIONS is not defined or invalid.")
        _check_bindings(call.portal, _bindings(owner, communications))
        changes["COMMUNICATIONS"] = communications
    if "COMPLETED" in changes:
        changes["STATUS"] = "2" if changes["COMPLETED"] == "Y" else "1"
    changes["LAST_UPDATED"] = now_iso(call.portal.zone)
    changes["EDITOR_ID"] = str(call.user_id)
    table.update(row_id, changes)


# -- reading --------------------------------------------------------------------------


def render_activity(row: Mapping[str, Any]) -> dict[str, Any]:
    """An activity as `get` answers it (no communications, files or bindings)."""
    return {name: output_value(FIELDS[name], row.get(name)) for name in OUTPUT_ORDER}


def _select_with_provider(raw: Any) -> Any:
    """Selecting DESCRIPTION brings PROVIDER_ID and PROVIDER_TYPE_ID (server code)."""
    names = list(raw.values()) if isinstance(raw, dict) else raw
    if not isinstance(names, list) or "DESCRIPTION" not in names or "*" in names:
        return raw
    return [*names, "PROVIDER_ID", "PROVIDER_TYPE_ID"]


def activity_lister(call: Call, raw_filter: Mapping[str, Any]) -> LegacyList:
    table = call.portal.table("activity")
    expand = None
    if "BINDINGS" in raw_filter:
        pairs = binding_pairs(raw_filter["BINDINGS"])

        def expand_ids(ids: list[int]) -> list[int]:
            # One row per matching binding, as the SQL join returns them.
            expanded: list[int] = []
            for row_id in ids:
                count = len(row_bindings(table.rows[row_id]) & pairs)
                expanded.extend([row_id] * max(count, 1))
            return expanded

        expand = expand_ids
    return LegacyList(
        table=table,
        fields=FIELDS,
        zone=call.portal.zone,
        render=lambda row_id, out: out,
        default_order=(OrderKey("START_TIME", descending=False),),
        on_request=ON_REQUEST,
        hidden=HIDDEN,
        standard_order=OUTPUT_ORDER,
        expand=expand,
    )


# -- the methods ----------------------------------------------------------------------


@method("crm.activity.fields", scope="crm")
def activity_fields(call: Call) -> MethodResult:
    return MethodResult({name: info.describe() for name, info in FIELDS.items()})


@method("crm.activity.add", scope="crm")
def activity_add(call: Call) -> MethodResult:
    params = legacy_params(call, "fields", "params")
    raw = array_param(params, "fields")
    row_id = add_activity(call, raw)
    emit(call, "ONCRMACTIVITYADD", row_id)
    return MethodResult(row_id)


@method("crm.activity.get", scope="crm")
def activity_get(call: Call) -> MethodResult:
    row_id = entity_id(call)
    row = existing_row(call.portal.table("activity"), row_id)
    return MethodResult(render_activity(row))


@method("crm.activity.list", scope="crm")
def activity_list(call: Call) -> MethodResult:
    params = legacy_params(call, "order", "filter", "select")
    order = array_param(params, "order")
    filter_ = array_param(params, "filter")
    select = _select_with_provider(params.get("select"))
    return activity_lister(call, filter_).run(order, filter_, select, call.start)


@method("crm.activity.update", scope="crm")
def activity_update(call: Call) -> MethodResult:
    row_id = entity_id(call)
    params = legacy_params(call, "fields", "params")
    raw = array_param(params, "fields")
    update_activity(call, row_id, raw)
    emit(call, "ONCRMACTIVITYUPDATE", row_id)
    return MethodResult(True)


@method("crm.activity.delete", scope="crm")
def activity_delete(call: Call) -> MethodResult:
    row_id = entity_id(call)
    table = call.portal.table("activity")
    existing_row(table, row_id)
    table.delete(row_id)
    emit(call, "ONCRMACTIVITYDELETE", row_id)
    return MethodResult(True)
