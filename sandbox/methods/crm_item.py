"""The universal `crm.item.*` methods over the legacy tables, and engine helpers.

Engine controllers bind parameters by exact name (`entityTypeId`, not `ENTITYTYPEID`),
answer `100` for a missing one, type their values (ints, numbers, `Y`/`N`, ISO dates)
and reject filter or order fields they do not know with `INVALID_ARG_VALUE`
(reference §7.6, srv `crm/lib/controller/item.php`).

Items are read from the same `deal`/`lead`/`contact`/`company` tables the legacy
methods fill: a row's UPPER_SNAKE names map to the item's camelCase ones
(`DATE_CREATE` → `createdTime`, `UF_CRM_123` → `ufCrm_123`) and its strings become
typed values.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

from sandbox import protocol
from sandbox.fields import (
    FieldInfo,
    entity_fields,
    now_iso,
    php_floatval,
)
from sandbox.filters import Condition, Group, compile_filter, first_matches, parse_key
from sandbox.listing import (
    NO_COUNT,
    PAGE_SIZE,
    OrderKey,
    Window,
    engine_window,
    order_ids,
    slice_page,
)
from sandbox.methods.crm_legacy import (
    ENTITIES,
    Directory,
    Writer,
    emit,
    find_stage,
    record_stage,
)
from sandbox.phpform import intval
from sandbox.protocol import MethodResult, RestError
from sandbox.registry import Call, method
from sandbox.state import Portal, Table

# CCrmOwnerType names for the entity types the sandbox knows.
OWNER_TYPE_NAMES: dict[int, str] = {
    1: "LEAD",
    2: "DEAL",
    3: "CONTACT",
    4: "COMPANY",
    5: "INVOICE",
    7: "QUOTE",
    14: "ORDER",
    31: "SMART_INVOICE",
}
_OWNER_TYPE_IDS = {name: type_id for type_id, name in OWNER_TYPE_NAMES.items()}
# CCrmOwnerType::GetDescription, for "… entity is not supported".
OWNER_DESCRIPTIONS: dict[int, str] = {
    1: "Lead",
    2: "Deal",
    3: "Contact",
    4: "Company",
    5: "Invoice",
    7: "Quote",
    14: "Order",
    31: "Invoice",
}

# Where the rows of each owner type live.
OWNER_TABLES: dict[int, str] = {1: "lead", 2: "deal", 3: "contact", 4: "company"}

# Smart-process type ids: such a type may exist on a portal, none does here.
DYNAMIC_TYPES = range(128, 192)


# -- engine plumbing ------------------------------------------------------------------


def engine_param(call: Call, name: str) -> Any:
    """A required engine parameter, by its exact name, or the server's `100` error."""
    value = call.params.get(name)
    if value is None:
        raise protocol.missing_parameter(name)
    return value


def entity_not_supported(entity_type_id: int) -> RestError:
    description = OWNER_DESCRIPTIONS.get(entity_type_id, "")
    return protocol.engine_error(
        "ENTITY_TYPE_NOT_SUPPORTED", f"{description} entity is not supported"
    )


def invalid_filter_field(name: str) -> RestError:
    return protocol.engine_error(
        "INVALID_ARG_VALUE", f"Invalid filter: field '{name}' is not allowed in filter"
    )


def resolve_owner_type(name: str) -> int:
    """`CCrmOwnerType::ResolveID`: a name in any case or a number; 0 if unknown."""
    text = name.strip()
    if text.isdigit():
        type_id = int(text)
        return type_id if type_id in OWNER_TYPE_NAMES else 0
    return _OWNER_TYPE_IDS.get(text.upper(), 0)


def owner_row(
    portal: Portal, owner_type_id: int, owner_id: int
) -> dict[str, Any] | None:
    table = OWNER_TABLES.get(owner_type_id)
    if table is None:
        return None
    return portal.table(table).get(owner_id)


def engine_list(
    table: Table,
    fields: Mapping[str, FieldInfo],
    node: Group,
    order: Sequence[OrderKey],
    start: int,
    zone: ZoneInfo,
) -> tuple[list[int], Window]:
    """The ids of one engine page and its window (reference §3: engine lists).

    `start=-1` in id order stops at the 50th match and counts nothing.
    """
    compiled = compile_filter(node, fields, zone, strict_negation=True)
    by_id = not order or (len(order) == 1 and order[0].field == "ID")
    if start == NO_COUNT and by_id:
        candidates = compiled.candidates(table)
        if order and order[0].descending:
            candidates = candidates[::-1]
        found = first_matches(compiled, table, candidates, PAGE_SIZE)
        return found, engine_window(NO_COUNT, None)

    matched = compiled.select(table, compiled.candidates(table))
    window = engine_window(start, None if start == NO_COUNT else len(matched))
    ordered = order_ids(table, matched, order, fields, limit=window.offset + PAGE_SIZE)
    return slice_page(ordered, window.offset), window


def engine_result(key: str, rows: list[dict[str, Any]], window: Window) -> MethodResult:
    return MethodResult({key: rows}, window.total, window.next)


# -- engine filters -------------------------------------------------------------------


def is_logic_key(key: str) -> bool:
    return key.upper() == "LOGIC"


def filter_items(filter_: Any) -> list[tuple[str, Any]]:
    if isinstance(filter_, dict):
        return [(str(key), value) for key, value in filter_.items()]
    if isinstance(filter_, list):
        return [(str(index), value) for index, value in enumerate(filter_)]
    return []


def engine_filter(
    raw: Any,
    resolve: Callable[[str], str | None],
    shown: Callable[[str], str] = str,
) -> Group:
    """An engine `filter` as conditions on stored field names.

    Keys are `[!]<op>name` with the legacy operators plus `><` (between); numeric
    keys nest groups; `LOGIC` (any case) joins a group with `OR`. A name `resolve`
    does not know is `INVALID_ARG_VALUE`, named as `shown` renders it (the server
    names the field after its own conversion).
    """
    items: list[Condition | Group] = []
    logic = "AND"
    for key, value in filter_items(raw):
        if is_logic_key(key):
            logic = "OR" if str(value).upper() == "OR" else "AND"
            continue
        if key.isdigit():
            items.append(engine_filter(value, resolve, shown))
            continue
        negative = key.startswith("!")
        body = key[1:] if negative else key
        between = body.startswith("><")
        name = body[2:] if between else parse_key(key).field
        field = resolve(name)
        if field is None:
            raise invalid_filter_field(shown(name))
        if between:
            items.append(_between(field, value, negative))
        else:
            parts = parse_key(key)
            items.append(Condition(field, parts.op, value, negative, parts.or_null))
    return Group(tuple(items), logic)


def _between(field: str, value: Any, negative: bool) -> Group:
    bounds = [*_as_list(value), None, None][:2]
    if negative:
        outside = (Condition(field, "<", bounds[0]), Condition(field, ">", bounds[1]))
        return Group(outside, "OR")
    return Group((Condition(field, ">=", bounds[0]), Condition(field, "<=", bounds[1])))


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return value
    return [value]


# -- names ----------------------------------------------------------------------------

# Item names that are not the camelCase of the legacy column.
_ITEM_NAMES = {
    "CREATED_BY_ID": "createdBy",
    "MODIFY_BY_ID": "updatedBy",
    "MOVED_BY_ID": "movedBy",
    "DATE_CREATE": "createdTime",
    "DATE_MODIFY": "updatedTime",
}
_LEAD_ITEM_NAMES = {"STATUS_ID": "stageId", "STATUS_SEMANTIC_ID": "stageSemanticId"}


def camel_name(legacy: str) -> str:
    """`ASSIGNED_BY_ID` -> `assignedById`; `UF_CRM_123` -> `ufCrm_123`."""
    if legacy.startswith("UF_CRM_"):
        return "ufCrm_" + legacy[len("UF_CRM_") :]
    head, *rest = legacy.lower().split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def upper_name(name: str) -> str:
    """The server's camelCase -> UPPER_SNAKE conversion of a parameter name."""
    found = re.match(r"^ufCrm(\d*)_(.+)$", name)
    if found:
        prefix = f"UF_CRM_{found.group(1)}_" if found.group(1) else "UF_CRM_"
        return prefix + found.group(2).upper()
    found = re.match(r"^parentId(\d+)$", name)
    if found:
        return f"PARENT_ID_{found.group(1)}"
    # StringHelper::camel2snake: an underscore before each capital that follows a char.
    return re.sub(r"(.)([A-Z])", r"\1_\2", name).upper()


# -- entity types ---------------------------------------------------------------------


@dataclass(frozen=True)
class ItemType:
    entity_type_id: int
    entity: str  # the fields.py entity and the table name
    renames: dict[str, str]  # legacy -> item name, beyond camelCase
    extras: dict[str, Any]  # item-only keys and the value they carry here


_NO_VALUE_DEAL = [
    "dateCreateShort", "dateModifyShort", "productId", "begindateShort",
    "closedateShort", "eventDate", "eventDateShort", "eventId", "eventDescription",
    "webformId", "searchContent", "orderStage", "isWork", "isWon", "isLose",
    "receivedAmount", "lostAmount", "hasProducts",
]  # fmt: skip
_NO_VALUE_LEAD = [
    "dateCreateShort", "dateModifyShort", "birthdateShort", "productId", "webformId",
    "searchContent", "isWork", "isWon", "isLose",
]  # fmt: skip

ITEM_TYPES: dict[int, ItemType] = {
    1: ItemType(
        1, "lead", {**_ITEM_NAMES, **_LEAD_ITEM_NAMES}, dict.fromkeys(_NO_VALUE_LEAD)
    ),
    2: ItemType(2, "deal", dict(_ITEM_NAMES), dict.fromkeys(_NO_VALUE_DEAL)),
    3: ItemType(3, "contact", dict(_ITEM_NAMES), {}),
    4: ItemType(4, "company", dict(_ITEM_NAMES), {}),
}


class ItemSchema:
    """One entity type's fields on one portal: names, output typing, filter access."""

    def __init__(self, portal: Portal, item_type: ItemType) -> None:
        self.portal = portal
        self.item_type = item_type
        self.table = portal.table(item_type.entity)
        self.fields = {
            name: info
            for name, info in entity_fields(portal, item_type.entity).items()
            if info.kind != "multifield"
        }
        self.item_names = {
            name: item_type.renames.get(name) or camel_name(name)
            for name in self.fields
        }
        self.by_item_name = {item: legacy for legacy, item in self.item_names.items()}
        # Upper names a filter or order may also use: the item's and the columns'.
        self.by_upper: dict[str, str] = {name: name for name in self.fields}
        for legacy, item in self.item_names.items():
            self.by_upper.setdefault(upper_name(item), legacy)
        self.by_upper["OBSERVERS"] = "OBSERVERS"
        # What filters and sorts compare: the link lists as int lists (the legacy
        # lists cannot use them), observers likewise.
        self.compared = dict(self.fields)
        for name in ("CONTACT_IDS", "COMPANY_IDS"):
            if name in self.fields:
                self.compared[name] = replace(self.fields[name], kind="int")
        self.compared["OBSERVERS"] = FieldInfo(
            "OBSERVERS", "user", "Observers", "int", multiple=True
        )

    # -- output -----------------------------------------------------------------------

    def item(self, row: dict[str, Any], wanted: set[str] | None) -> dict[str, Any]:
        """A stored row as `crm.item.*` prints it, limited to `wanted` legacy names."""
        item: dict[str, Any] = {}
        for legacy, info in self.fields.items():
            if wanted is not None and legacy not in wanted:
                continue
            if info.dynamic:
                continue
            item[self.item_names[legacy]] = self._typed(info, row)
        if wanted is None:
            item.update(self.item_type.extras)
        for legacy, info in self.fields.items():
            if info.dynamic and (wanted is None or legacy in wanted):
                item[self.item_names[legacy]] = _user_value(info, row.get(legacy))
        for key, value in row.items():
            if wanted is not None and key not in wanted:
                continue
            if key.startswith("PARENT_ID_"):
                item[camel_name(key)] = _int_or_none(value)
            elif key.startswith("UF_CRM_") and key not in self.fields:
                # A value a snapshot carries without its field registered: as stored.
                item[camel_name(key)] = value
        if wanted is None or "OBSERVERS" in wanted:
            item["observers"] = _int_list(row.get("OBSERVERS"))
        item["id"] = _int_or_none(row.get("ID"))
        if wanted is None:
            item["entityTypeId"] = self.item_type.entity_type_id
        return item

    def _typed(self, info: FieldInfo, row: dict[str, Any]) -> Any:
        value = row.get(info.name)
        if info.name in ("CONTACT_IDS", "COMPANY_IDS"):
            return self._links(row, info.name)
        if info.multiple:
            return _int_list(value) if info.type.startswith("crm_") else value
        if info.kind == "int":
            return _int_or_none(value)
        if info.kind == "double":
            return _number(value)
        if info.kind in ("date", "datetime"):
            return value or None
        return value

    def _links(self, row: dict[str, Any], name: str) -> list[int]:
        links = row.get(name)
        if isinstance(links, list):
            return _int_list(links)
        single = _int_or_none(row.get(name.removesuffix("S")))
        return [single] if single else []

    # -- parameter names --------------------------------------------------------------

    def legacy_name(self, name: str) -> str | None:
        """The column a parameter name means: an item name, or its UPPER form."""
        return self.by_item_name.get(name) or self.by_upper.get(upper_name(name))


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return intval(value)


def _int_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        return []
    return [intval(item) for item in value if intval(item) > 0]


def _number(value: Any) -> int | float | None:
    """A money or double value as a JSON number; whole amounts print without `.0`."""
    if value is None or value == "":
        return None
    number = php_floatval(value)
    return int(number) if number.is_integer() else number


def _user_value(info: FieldInfo, value: Any) -> Any:
    if info.multiple:
        items = value if isinstance(value, list) else []
        return [_user_scalar(info, item) for item in items]
    return _user_scalar(info, value)


def _user_scalar(info: FieldInfo, value: Any) -> Any:
    if value is None or value == "":
        return None if info.kind != "bool" else "N"
    if info.kind == "int":
        return intval(value)
    if info.kind == "double":
        return _number(value)
    if info.kind == "bool":
        return "Y" if intval(value) > 0 or value == "Y" else "N"
    return value


# -- crm.item.fields -----------------------------------------------------------------

# Legacy field types that the engine describes otherwise: Y/N chars are booleans.
_ITEM_FIELD_TYPES = {"char": "boolean"}
OBSERVERS_FIELD = FieldInfo("OBSERVERS", "user", "Observers", "int", multiple=True)


def item_field(info: FieldInfo, item_name: str) -> dict[str, Any]:
    """One entry of `crm.item.fields`: the legacy description, engine-typed, with the
    field's UPPER name (the item name converted, `createdBy` -> `CREATED_BY`)."""
    entry: dict[str, Any] = {
        "type": _ITEM_FIELD_TYPES.get(info.type, info.type),
        "isRequired": info.required,
        "isReadOnly": info.read_only,
        "isImmutable": info.immutable,
        "isMultiple": info.multiple,
        "isDynamic": info.dynamic,
    }
    if info.deprecated:
        entry["isDeprecated"] = True
    entry["title"] = info.title
    if info.settings is not None:
        entry["settings"] = dict(info.settings)
    if info.status_type is not None:
        entry["statusType"] = info.status_type
    entry["upperName"] = upper_name(item_name)
    return entry


@method("crm.item.fields", scope="crm")
def item_fields(call: Call) -> MethodResult:
    """`{"fields": {itemName: {...}}}`; `useOriginalUfNames=Y` keeps `UF_CRM_…` keys."""
    item_type = item_type_of(call)
    schema = ItemSchema(call.portal, item_type)
    original_uf = call.params.get("useOriginalUfNames") == "Y"

    fields: dict[str, Any] = {}
    for legacy, info in schema.fields.items():
        name = legacy if original_uf and info.dynamic else schema.item_names[legacy]
        fields[name] = item_field(info, schema.item_names[legacy])
    fields["observers"] = item_field(OBSERVERS_FIELD, "observers")
    return MethodResult({"fields": fields})


# -- crm.item.list / get --------------------------------------------------------------


def item_type_of(call: Call) -> ItemType:
    entity_type_id = intval(engine_param(call, "entityTypeId"))
    item_type = ITEM_TYPES.get(entity_type_id)
    if item_type is not None:
        return item_type
    if entity_type_id in DYNAMIC_TYPES:
        raise protocol.engine_error("NOT_FOUND", "SPA not found")
    raise entity_not_supported(entity_type_id)


@method("crm.item.get", scope="crm")
def item_get(call: Call) -> MethodResult:
    item_id = intval(engine_param(call, "id"))
    item_type = item_type_of(call)

    schema = ItemSchema(call.portal, item_type)
    row = schema.table.get(item_id)
    if row is None:
        raise protocol.engine_error("NOT_FOUND", "Element not found")
    return MethodResult({"item": schema.item(row, None)})


@method("crm.item.list", scope="crm")
def item_list(call: Call) -> MethodResult:
    item_type = item_type_of(call)
    schema = ItemSchema(call.portal, item_type)

    wanted = _selection(schema, call.params.get("select", ["*"]))
    node = engine_filter(call.params.get("filter"), schema.legacy_name, upper_name)
    order = _order(schema, call.params.get("order"))
    page_ids, window = engine_list(
        schema.table, schema.compared, node, order, call.start, call.portal.zone
    )

    rows = schema.table.rows
    items = [schema.item(rows[row_id], wanted) for row_id in page_ids]
    return engine_result("items", items, window)


def _selection(schema: ItemSchema, select: Any) -> set[str] | None:
    """Legacy names to print, or None for everything (`*`)."""
    names = [str(name) for name in _as_list(select)] if select != [] else ["*"]
    if "*" in names:
        return None
    wanted: set[str] = {"ID"}
    for name in names:
        upper = upper_name(name)
        if upper in ("UF_*", "UF_CRM_*"):
            wanted.update(name for name, info in schema.fields.items() if info.dynamic)
            continue
        legacy = schema.legacy_name(name)
        if legacy is not None:
            wanted.add(legacy)
        elif upper.startswith("PARENT_ID_"):
            wanted.add(upper)
    return wanted


def _order(schema: ItemSchema, order: Any) -> list[OrderKey]:
    """The sort keys; an unknown field or a direction but ASC/DESC is an error."""
    if not isinstance(order, dict):
        return []
    keys: list[OrderKey] = []
    for name, direction in order.items():
        upper = upper_name(str(name))
        legacy = schema.legacy_name(str(name))
        if legacy is None or legacy in ("CONTACT_IDS", "COMPANY_IDS", "OBSERVERS"):
            raise protocol.engine_error(
                "INVALID_ARG_VALUE",
                f"Invalid order: field '{upper}' is not allowed in order",
            )
        way = str(direction).upper()
        if way not in ("ASC", "DESC"):
            raise protocol.engine_error(
                "INVALID_ARG_VALUE",
                "Invalid order: allowed sort directions are ASC, DESC. "
                f"But got '{way}' for field '{upper}'",
            )
        keys.append(OrderKey(legacy, way == "DESC"))
    return keys


# -- crm.item.add / update ------------------------------------------------------------


def _stored_fields(call: Call, schema: ItemSchema, fields: Any) -> dict[str, Any]:
    """`fields` with item names turned into column names; unknown names are ignored.

    With `useOriginalUfNames=Y` user fields keep their `UF_CRM_…` names.
    """
    original_uf = call.params.get("useOriginalUfNames") == "Y"
    stored: dict[str, Any] = {}
    for name, value in filter_items(fields):
        if original_uf and name.startswith("UF_"):
            stored[name] = value
            continue
        legacy = schema.legacy_name(name)
        if legacy is not None and legacy != "OBSERVERS":
            stored[legacy] = value
    return stored


@method("crm.item.add", scope="crm")
def item_add(call: Call) -> MethodResult:
    item_type = item_type_of(call)
    fields = engine_param(call, "fields")

    schema = ItemSchema(call.portal, item_type)
    spec = ENTITIES[item_type.entity]
    row_id = Writer(call, spec).add(_stored_fields(call, schema, fields))
    emit(call, f"{spec.event_stem}ADD", row_id)
    return MethodResult({"item": schema.item(schema.table.rows[row_id], None)})


@method("crm.item.update", scope="crm")
def item_update(call: Call) -> MethodResult:
    item_type = item_type_of(call)
    item_id = intval(engine_param(call, "id"))
    fields = engine_param(call, "fields")

    schema = ItemSchema(call.portal, item_type)
    row = schema.table.get(item_id)
    if row is None:
        raise protocol.engine_error("NOT_FOUND", "Element not found")
    spec = ENTITIES[item_type.entity]
    stored = _stored_fields(call, schema, fields)
    category = stored.pop("CATEGORY_ID", None)
    moving = category is not None and intval(category) != intval(row.get("CATEGORY_ID"))
    if spec.name == "deal" and moving:
        stage = stored.pop("STAGE_ID", None)
        _move_to_category(call, item_id, intval(category), stage)
    Writer(call, spec).update(item_id, stored)
    emit(call, f"{spec.event_stem}UPDATE", item_id)
    return MethodResult({"item": schema.item(schema.table.rows[item_id], None)})


# Stage history TYPE_ID of a pipeline change (reference §7.7).
PIPELINE_CHANGED = 5


def _move_to_category(call: Call, deal_id: int, category: int, stage_code: Any) -> None:
    """What only `crm.item.update` can do to a deal: move it to another pipeline."""
    directory = Directory(call.portal)
    if not directory.deal_category_exists(category):
        raise protocol.engine_error(
            "CRM_FIELD_ERROR_VALUE_NOT_VALID", 'Value of field "Pipeline" is not valid'
        )
    stages = directory.deal_stages(category)
    stage = find_stage(stages, stage_code) or stages[0]
    now = now_iso(call.portal.zone)
    user = str(call.user_id)
    deals = call.portal.table("deal")
    deals.update(
        deal_id,
        {
            "CATEGORY_ID": str(category),
            "STAGE_ID": stage.status_id,
            "STAGE_SEMANTIC_ID": stage.semantic,
            "IS_NEW": "Y" if stage is stages[0] else "N",
            "CLOSED": "N" if stage.semantic == "P" else "Y",
            "MOVED_BY_ID": user,
            "MOVED_TIME": now,
        },
    )
    deal = deals.rows[deal_id]
    record_stage(call.portal, ENTITIES["deal"], deal, created=False, when=now)
    history = call.portal.table("stagehistory")
    history.update(history.next_id - 1, {"TYPE_ID": PIPELINE_CHANGED})
    call.portal.emit(
        "ONCRMDEALMOVETOCATEGORY",
        {
            "FIELDS": {
                "ID": str(deal_id),
                "CATEGORY_ID": str(category),
                "STAGE_ID": stage.status_id,
            }
        },
        time.time(),
    )
