"""`crm.stagehistory.list`: the stage moves of leads and deals (srv stagehistory.php).

Rows live in the `stagehistory` table as the method prints them inside `items` (int
ids, ISO `CREATED_TIME`), each with an `ENTITY_TYPE_ID` saying whose history it is;
that key is never printed. Filter fields are checked against the entity's list
(`INVALID_ARG_VALUE` otherwise) and a key without an operation is strict equality;
order fields it does not know are dropped, and any direction but `DESC` sorts `ASC`.
"""

from __future__ import annotations

from typing import Any

from sandbox import protocol
from sandbox.fields import FieldInfo, parse_datetime
from sandbox.filters import Condition, Group
from sandbox.listing import OrderKey
from sandbox.methods.crm_item import (
    engine_filter,
    engine_list,
    engine_param,
    engine_result,
    entity_not_supported,
    filter_items,
    is_logic_key,
)
from sandbox.phpform import intval
from sandbox.protocol import MethodResult
from sandbox.registry import Call, method

COMMON_FIELDS = ("ID", "TYPE_ID", "OWNER_ID", "CREATED_TIME")
ALLOWED_FIELDS: dict[int, tuple[str, ...]] = {
    1: (*COMMON_FIELDS, "STATUS_SEMANTIC_ID", "STATUS_ID"),
    2: (*COMMON_FIELDS, "CATEGORY_ID", "STAGE_SEMANTIC_ID", "STAGE_ID"),
}


def _field(name: str, kind: Any) -> FieldInfo:
    return FieldInfo(name, kind, name, kind)


# How the rows' values compare: ints, an ISO datetime, case-insensitive strings.
HISTORY_FIELDS: dict[str, FieldInfo] = {
    name: _field(name, "int")
    for name in ("ID", "TYPE_ID", "OWNER_ID", "CATEGORY_ID", "ENTITY_TYPE_ID")
}
HISTORY_FIELDS["CREATED_TIME"] = _field("CREATED_TIME", "datetime")
for _name in ("STAGE_ID", "STAGE_SEMANTIC_ID", "STATUS_ID", "STATUS_SEMANTIC_ID"):
    HISTORY_FIELDS[_name] = _field(_name, "string")
_INT_FIELDS = frozenset(
    name for name, info in HISTORY_FIELDS.items() if info.kind == "int"
)


@method("crm.stagehistory.list", scope="crm")
def stagehistory_list(call: Call) -> MethodResult:
    entity_type_id = intval(engine_param(call, "entityTypeId"))
    allowed = ALLOWED_FIELDS.get(entity_type_id)
    if allowed is None:
        raise entity_not_supported(entity_type_id)

    order = _order(call.params.get("order"), allowed)
    raw_filter = call.params.get("filter")
    wanted = engine_filter(raw_filter, lambda name: name if name in allowed else None)
    _check_datetimes(call, raw_filter)
    own_type = Condition("ENTITY_TYPE_ID", "=", entity_type_id)
    # An AND filter joins the type at the top level, where a `>ID` bound lets the
    # list start at that id instead of testing every row below it.
    if wanted.logic.upper() == "AND":
        node = Group((own_type, *wanted.items))
    else:
        node = Group((own_type, wanted))

    table = call.portal.table("stagehistory")
    page_ids, window = engine_list(
        table, HISTORY_FIELDS, node, order, call.start, call.portal.zone
    )
    select = _selection(call.params.get("select"), allowed)
    items = [_item(table.rows[row_id], select) for row_id in page_ids]
    return engine_result("items", items, window)


def _check_datetimes(call: Call, filter_: Any) -> None:
    """An unreadable `CREATED_TIME` value is the server's `WRONG_DATETIME_FORMAT`."""
    for key, value in filter_items(filter_):
        if is_logic_key(key):
            continue
        if key.isdigit() or isinstance(value, list | dict):
            _check_datetimes(call, value)
            continue
        if not key.endswith("CREATED_TIME"):
            continue
        if parse_datetime(str(value), call.portal.zone) is None:
            raise protocol.engine_error("WRONG_DATETIME_FORMAT", "Wrong date format")


def _order(order: Any, allowed: tuple[str, ...]) -> list[OrderKey]:
    """Known fields only, exact names; DESC or else ASC (the server's compat rule)."""
    if not isinstance(order, dict):
        return []
    return [
        OrderKey(str(name), str(direction).upper() == "DESC")
        for name, direction in order.items()
        if name in allowed
    ]


def _selection(select: Any, allowed: tuple[str, ...]) -> list[str]:
    """The selected known fields in the caller's order; none means all; ID always."""
    names = select if isinstance(select, list) else []
    chosen = [name for name in names if name in allowed]
    if not chosen:
        chosen = list(allowed)
    if "ID" not in chosen:
        chosen.append("ID")
    return list(dict.fromkeys(chosen))


def _item(row: dict[str, Any], select: list[str]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name in select:
        value = row.get(name)
        if name in _INT_FIELDS and value is not None:
            value = intval(value)
        item[name] = value
    return item
