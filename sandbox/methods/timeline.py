"""Timeline writes: `crm.timeline.comment.add/list` and `crm.activity.todo.add`.

The comment methods are a controller that still answers legacy-style lists; the to-do
method is an engine controller: case-sensitive camelCase parameters, `100` for a
missing one, `WRONG_DATETIME_FORMAT` for a deadline `strtotime` cannot read.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox import protocol
from sandbox.fields import now_iso, parse_datetime
from sandbox.listing import PAGE_SIZE, legacy_window
from sandbox.methods.crm_item import (
    OWNER_TYPE_NAMES,
    engine_param,
    owner_row,
    resolve_owner_type,
)
from sandbox.phpform import intval, lower_keys
from sandbox.protocol import MethodResult, RestError
from sandbox.registry import Call, method

# `crm.timeline.comment.list` sorts only on these (docs: timeline/comments).
COMMENT_ORDER_FIELDS = ("ID", "CREATED", "AUTHOR_ID")


def _now_iso(call: Call) -> str:
    return now_iso(call.portal.zone)


# -- crm.timeline.comment.add -------------------------------------------------------


@method("crm.timeline.comment.add", scope="crm")
def comment_add(call: Call) -> MethodResult:
    # crm >= 23.100.0 binds `fields` by its exact lower-case name only.
    fields = engine_param(call, "fields")
    if not isinstance(fields, dict):
        fields = {}

    owner_id = intval(fields.get("ENTITY_ID"))
    owner_type_id = intval(fields.get("ENTITY_TYPE_ID"))
    if owner_type_id == 0 and fields.get("ENTITY_TYPE"):
        owner_type_id = resolve_owner_type(str(fields["ENTITY_TYPE"]))
    if owner_id <= 0 or owner_type_id <= 0:
        raise protocol.engine_error("OWNER_NOT_FOUND", "Owner was not found")

    text = str(fields.get("COMMENT") or "").strip()
    if not text:
        raise protocol.engine_error("INVALID_ARG_VALUE", "Empty comment message")

    author_id = intval(fields.get("AUTHOR_ID"))
    comment = {
        "ID": "",
        "ENTITY_ID": str(owner_id),
        "ENTITY_TYPE": _owner_type_label(owner_type_id),
        "CREATED": _now_iso(call),
        "COMMENT": text,
        "AUTHOR_ID": str(author_id if author_id > 0 else call.user_id),
        "FILES": {},
    }
    comments = call.portal.table("comment")
    comment_id = comments.allocate_id()
    comment["ID"] = str(comment_id)
    comments.insert(comment, comment_id)

    call.portal.emit(
        "ONCRMTIMELINECOMMENTADD", {"FIELDS": {"ID": str(comment_id)}}, time.time()
    )
    return MethodResult(comment_id)


def _owner_type_label(owner_type_id: int) -> str:
    return OWNER_TYPE_NAMES.get(owner_type_id, str(owner_type_id)).lower()


# -- crm.timeline.comment.list ------------------------------------------------------


@method("crm.timeline.comment.list", scope="crm")
def comment_list(call: Call) -> MethodResult:
    params = lower_keys(call.params, "filter", "order", "select")
    filter_ = params.get("filter")
    if not isinstance(filter_, dict):
        filter_ = {}

    owner_id = intval(filter_.get("ENTITY_ID"))
    owner_type_id = resolve_owner_type(str(filter_.get("ENTITY_TYPE") or ""))
    if owner_id <= 0 or owner_type_id <= 0:
        # The server checks read access on the named owner; none named, none granted.
        raise protocol.legacy_error("Access denied.")

    label = _owner_type_label(owner_type_id)
    rows = [
        row
        for row in call.portal.table("comment")
        if row.get("ENTITY_ID") == str(owner_id) and row.get("ENTITY_TYPE") == label
    ]
    rows = _sort_comments(rows, params.get("order"))
    return _legacy_page(call, rows, _selection(params.get("select")))


def _sort_comments(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    if not isinstance(order, dict):
        return rows
    for field, direction in reversed(list(order.items())):
        name = str(field).upper()
        if name not in COMMENT_ORDER_FIELDS:
            continue
        descending = str(direction).upper() != "ASC"
        rows = sorted(
            rows, key=lambda row: _comment_sort_key(row, name), reverse=descending
        )
    return rows


def _comment_sort_key(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    return intval(value) if name != "CREATED" else str(value or "")


def _selection(select: Any) -> list[str] | None:
    if not isinstance(select, list) or not select:
        return None
    return [str(name) for name in select]


def _legacy_page(
    call: Call, rows: list[dict[str, Any]], select: list[str] | None
) -> MethodResult:
    window = legacy_window(call.start, len(rows))
    chunk = rows[window.offset : window.offset + PAGE_SIZE]
    if select is not None:
        chunk = [{k: v for k, v in row.items() if k in select} for row in chunk]
    else:
        chunk = [dict(row) for row in chunk]
    return MethodResult(chunk, window.total, window.next)


# -- crm.activity.todo.add ----------------------------------------------------------


@method("crm.activity.todo.add", scope="crm")
def todo_add(call: Call) -> MethodResult:
    owner_type_id = intval(engine_param(call, "ownerTypeId"))
    owner_id = intval(engine_param(call, "ownerId"))
    deadline_text = str(engine_param(call, "deadline"))

    if owner_id <= 0 or owner_type_id not in _TODO_OWNER_TYPES:
        raise protocol.engine_error("NOT_FOUND", "Element not found")

    deadline = parse_datetime(deadline_text, call.portal.zone)
    if deadline is None:
        raise _wrong_datetime()

    owner = owner_row(call.portal, owner_type_id, owner_id)
    if owner is None:
        raise protocol.engine_error("OWNER_NOT_FOUND", "Owner was not found")

    responsible_id = intval(call.params.get("responsibleId"))
    if responsible_id <= 0:
        responsible_id = intval(owner.get("ASSIGNED_BY_ID")) or call.user_id
    activity = _todo_row(
        call,
        owner_type_id,
        owner_id,
        deadline.isoformat(),
        responsible_id,
    )
    activities = call.portal.table("activity")
    activity_id = activities.allocate_id()
    activity["ID"] = str(activity_id)
    activities.insert(activity, activity_id)

    call.portal.emit(
        "ONCRMACTIVITYADD", {"FIELDS": {"ID": str(activity_id)}}, time.time()
    )
    return MethodResult({"id": activity_id})


# Entity types a to-do can hang on: lead, deal, contact, company, quote, invoices.
_TODO_OWNER_TYPES = frozenset({1, 2, 3, 4, 7, 31})


def _wrong_datetime() -> RestError:
    return protocol.engine_error("WRONG_DATETIME_FORMAT", "Wrong date format")


def _todo_row(
    call: Call,
    owner_type_id: int,
    owner_id: int,
    deadline: str,
    responsible_id: int,
) -> dict[str, Any]:
    """A CRM_TODO activity as `crm.activity.list` returns it (legacy strings)."""
    now = _now_iso(call)
    settings: dict[str, Any] | list[Any] = []
    offsets = _ping_offsets(call.params.get("pingOffsets"))
    if offsets:
        settings = {"PING_OFFSETS": offsets}
    return {
        "ID": "",
        "OWNER_ID": str(owner_id),
        "OWNER_TYPE_ID": str(owner_type_id),
        "TYPE_ID": "6",
        "PROVIDER_ID": "CRM_TODO",
        "PROVIDER_TYPE_ID": "TODO",
        "PROVIDER_GROUP_ID": None,
        "ASSOCIATED_ENTITY_ID": "0",
        "SUBJECT": str(call.params.get("title") or ""),
        "CREATED": now,
        "LAST_UPDATED": now,
        "START_TIME": deadline,
        "END_TIME": deadline,
        "DEADLINE": deadline,
        "COMPLETED": "N",
        "STATUS": "1",
        "RESPONSIBLE_ID": str(responsible_id),
        "PRIORITY": "2",
        "NOTIFY_TYPE": "0",
        "NOTIFY_VALUE": "0",
        "DESCRIPTION": str(call.params.get("description") or ""),
        "DESCRIPTION_TYPE": "1",
        "DIRECTION": "0",
        "LOCATION": "",
        "SETTINGS": settings,
        "ORIGINATOR_ID": None,
        "ORIGIN_ID": None,
        "AUTHOR_ID": str(call.user_id),
        "EDITOR_ID": str(call.user_id),
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
    }


def _ping_offsets(value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    offsets = {
        intval(item) for item in value if str(item).strip().lstrip("-").isdigit()
    }
    return sorted(offset for offset in offsets if offset >= 0)
