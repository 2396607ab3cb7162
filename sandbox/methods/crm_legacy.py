"""Legacy CRM: `crm.{lead,deal,contact,company}.{add,get,list,update,delete,fields}`.

Behaviour follows `CCrmRestProxyBase` and `CCrm{Deal,Lead,Contact,Company}` (reference
§7.1–7.3): top-level `fields`/`filter`/`order`/`select`/`params` in lower, UPPER or
Title case; keys inside `fields` exact UPPER_SNAKE, unknown, read-only and miscased
ones dropped without an error (`CATEGORY_ID` too on update); `add` answers the new id
as a JSON int and `update`/`delete` `true`; an unknown id is 400 `{"error": "",
"error_description": "Not found"}`. Rows are stored exactly as the list methods return
them, so reads are projections.

Stage moves (add, `STAGE_ID`/`STATUS_ID` updates) write `stagehistory` rows in the
shape `crm.stagehistory.list` returns, plus `ENTITY_TYPE_ID`; every write queues its
`ONCRM{ENTITY}{ADD,UPDATE,DELETE}` event with `{"FIELDS": {"ID": "<id>"}}`.

`crm.duplicate.findbycomm` compares phones by their E.164 digits (the `phonenumbers`
parse, region RU, so `8 (999) 000-00-01`, `+7 999 000 00 01` and `79990000001 доб. 12`
meet; an extension never counts) and e-mails trimmed and case-folded.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import phonenumbers

from sandbox import protocol
from sandbox.fields import (
    DROP,
    Codec,
    FieldInfo,
    entity_fields,
    format_date,
    now_iso,
    php_string,
    today,
)
from sandbox.filters import full_column
from sandbox.listing import LegacyList, SortOverride, output_value
from sandbox.phpform import intval, lower_keys
from sandbox.protocol import MethodResult
from sandbox.registry import Call, method
from sandbox.state import Portal, Table

DEFAULT_CURRENCY: Final = "RUB"
# The default close date of a new deal (reference §7.1: today + 7).
CLOSE_DATE_DAYS: Final = 7

# -- the entities ---------------------------------------------------------------------


@dataclass(frozen=True)
class EntitySpec:
    """One legacy entity: its table, owner type, event names and output order."""

    name: str
    owner_type_id: int
    stage_field: str | None
    semantic_field: str | None
    title_field: str
    title_template: str
    output_order: tuple[str, ...]

    @property
    def event_stem(self) -> str:
        return f"ONCRM{self.name.upper()}"

    @property
    def has_multifields(self) -> bool:
        return self.name != "deal"


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# The order `crm.deal.get` and `crm.lead.get` print fields in (fixtures); the other
# entities print their `*.fields` order.
_DEAL_ORDER = _names(
    """ID TITLE TYPE_ID STAGE_ID PROBABILITY CURRENCY_ID OPPORTUNITY
    IS_MANUAL_OPPORTUNITY TAX_VALUE LEAD_ID COMPANY_ID CONTACT_ID QUOTE_ID BEGINDATE
    CLOSEDATE ASSIGNED_BY_ID CREATED_BY_ID MODIFY_BY_ID DATE_CREATE DATE_MODIFY OPENED
    CLOSED COMMENTS ADDITIONAL_INFO LOCATION_ID CATEGORY_ID STAGE_SEMANTIC_ID IS_NEW
    IS_RECURRING IS_RETURN_CUSTOMER IS_REPEATED_APPROACH SOURCE_ID SOURCE_DESCRIPTION
    ORIGINATOR_ID ORIGIN_ID MOVED_BY_ID MOVED_TIME LAST_ACTIVITY_TIME UTM_SOURCE
    UTM_MEDIUM UTM_CAMPAIGN UTM_CONTENT UTM_TERM LAST_ACTIVITY_BY"""
)
_LEAD_ORDER = _names(
    """ID TITLE HONORIFIC NAME SECOND_NAME LAST_NAME COMPANY_TITLE COMPANY_ID
    CONTACT_ID IS_RETURN_CUSTOMER BIRTHDATE SOURCE_ID SOURCE_DESCRIPTION STATUS_ID
    STATUS_DESCRIPTION POST COMMENTS CURRENCY_ID OPPORTUNITY IS_MANUAL_OPPORTUNITY
    HAS_PHONE HAS_EMAIL HAS_IMOL ASSIGNED_BY_ID CREATED_BY_ID MODIFY_BY_ID DATE_CREATE
    DATE_MODIFY DATE_CLOSED STATUS_SEMANTIC_ID OPENED ORIGINATOR_ID ORIGIN_ID
    MOVED_BY_ID MOVED_TIME ADDRESS ADDRESS_2 ADDRESS_CITY ADDRESS_POSTAL_CODE
    ADDRESS_REGION ADDRESS_PROVINCE ADDRESS_COUNTRY ADDRESS_COUNTRY_CODE
    ADDRESS_LOC_ADDR_ID UTM_SOURCE UTM_MEDIUM UTM_CAMPAIGN UTM_CONTENT UTM_TERM
    LAST_ACTIVITY_BY LAST_ACTIVITY_TIME"""
)

ENTITIES: Final[dict[str, EntitySpec]] = {
    "deal": EntitySpec(
        "deal", 2, "STAGE_ID", "STAGE_SEMANTIC_ID", "TITLE", "Deal #{id}", _DEAL_ORDER
    ),
    "lead": EntitySpec(
        "lead", 1, "STATUS_ID", "STATUS_SEMANTIC_ID", "TITLE", "Lead #{id}", _LEAD_ORDER
    ),
    "contact": EntitySpec("contact", 3, None, None, "LAST_NAME", "Contact #{id}", ()),
    "company": EntitySpec("company", 4, None, None, "TITLE", "Company #{id}", ()),
}
OWNER_TABLES: Final = {spec.owner_type_id: spec.name for spec in ENTITIES.values()}
MULTIFIELDS: Final = ("PHONE", "EMAIL", "WEB", "IM", "LINK")


def standard_names(spec: EntitySpec, fields: Mapping[str, FieldInfo]) -> list[str]:
    """The standard fields a row carries, in the order the entity prints them."""
    ordered = [name for name in spec.output_order if name in fields]
    ordered += [
        name
        for name, info in fields.items()
        if not info.dynamic and not info.multiple and name not in ordered
    ]
    return ordered


# -- parameters -----------------------------------------------------------------------


def legacy_params(call: Call, *names: str) -> dict[str, Any]:
    """Top-level parameters by lower, UPPER or Title name (null counts as absent)."""
    found = lower_keys(call.params, *names)
    return {name: value for name, value in found.items() if value is not None}


def array_param(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A parameter that must be a PHP array: a dict, or a list read by index."""
    value = params.get(name, {})
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    raise protocol.legacy_error(f"Parameter '{name}' must be array.")


def entity_id(call: Call) -> int:
    """`ID` or `id`, intval'd; anything but a positive number is refused."""
    raw = call.params.get("ID")
    if raw is None:
        raw = call.params.get("id")
    row_id = intval(raw) if not isinstance(raw, list | dict) else (1 if raw else 0)
    if row_id <= 0:
        raise protocol.legacy_error("ID is not defined or invalid.")
    return row_id


def existing_row(table: Table, row_id: int) -> dict[str, Any]:
    row = table.get(row_id)
    if row is None:
        raise protocol.legacy_not_found()
    return row


def emit(call: Call, event: str, row_id: int) -> None:
    call.portal.emit(event, {"FIELDS": {"ID": str(row_id)}}, time.time())


# -- directories (read from the `status` and `category` tables) -----------------------

_FALLBACK_SEMANTICS = {"WON": "S", "CONVERTED": "S", "LOSE": "F", "APOLOGY": "F"}


@dataclass(frozen=True)
class Stage:
    status_id: str
    sort: int
    semantic: str  # P in progress, S success, F failure


class Directory:
    """The stages, statuses and pipelines of a portal, as its tables hold them now."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal

    def entries(self, entity_id: str) -> list[Stage]:
        stages = [
            Stage(
                str(row.get("STATUS_ID", "")),
                intval(row.get("SORT")),
                str(row.get("SEMANTICS") or "P"),
            )
            for row in self.portal.table("status")
            if row.get("ENTITY_ID") == entity_id
        ]
        stages.sort(key=lambda stage: stage.sort)
        return stages

    def deal_stages(self, category_id: int) -> list[Stage]:
        entity = "DEAL_STAGE" if category_id == 0 else f"DEAL_STAGE_{category_id}"
        stages = self.entries(entity)
        if stages:
            return stages
        prefix = "" if category_id == 0 else f"C{category_id}:"
        codes = _names("NEW PREPARATION PREPAYMENT_INVOICE EXECUTING FINAL_INVOICE")
        codes += ("WON", "LOSE", "APOLOGY")
        return [
            Stage(prefix + code, (index + 1) * 10, _FALLBACK_SEMANTICS.get(code, "P"))
            for index, code in enumerate(codes)
        ]

    def lead_statuses(self) -> list[Stage]:
        stages = self.entries("STATUS")
        if stages:
            return stages
        codes = ("NEW", "IN_PROCESS", "PROCESSED", "CONVERTED", "JUNK")
        semantics = {"CONVERTED": "S", "JUNK": "F"}
        return [
            Stage(code, (index + 1) * 10, semantics.get(code, "P"))
            for index, code in enumerate(codes)
        ]

    def stages_for(self, spec: EntitySpec, category_id: int) -> list[Stage]:
        if spec.name == "deal":
            return self.deal_stages(category_id)
        return self.lead_statuses()

    def first_code(self, entity_id: str, fallback: str) -> str:
        entries = self.entries(entity_id)
        return entries[0].status_id if entries else fallback

    def deal_category_exists(self, category_id: int) -> bool:
        if category_id == 0:
            return True
        row = self.portal.table("category").get(category_id)
        return row is not None and intval(row.get("entityTypeId", 2)) == 2

    def sort_of_stages(self, prefix: str) -> dict[str, int]:
        return {
            str(row.get("STATUS_ID")): intval(row.get("SORT"))
            for row in self.portal.table("status")
            if str(row.get("ENTITY_ID", "")).startswith(prefix)
        }


def find_stage(stages: list[Stage], code: Any) -> Stage | None:
    if not isinstance(code, str):
        return None
    return next((stage for stage in stages if stage.status_id == code), None)


# -- multifields ----------------------------------------------------------------------


def apply_multifield(
    portal: Portal, type_id: str, current: list[dict[str, str]], items: Any
) -> list[dict[str, str]]:
    """Apply a `fields[PHONE]`-style list: no ID appends, ID changes, empty deletes."""
    if isinstance(items, dict):
        items = list(items.values())
    if not isinstance(items, list):
        return current
    result = [dict(item) for item in current]
    default_type = "OTHER" if type_id == "IM" else "WORK"
    for item in items:
        if not isinstance(item, dict):
            continue
        item_id = intval(item.get("ID"))
        value = php_string(item.get("VALUE")).strip()
        if item_id <= 0 and value == "":
            continue
        if item_id > 0 and php_string(item.get("DELETE")).upper() == "Y":
            value = ""
        value_type = php_string(item.get("VALUE_TYPE")).strip() or default_type
        if item_id > 0:
            result = _change_item(result, str(item_id), value, value_type)
        elif not any(
            old["VALUE"] == value and old["VALUE_TYPE"] == value_type for old in result
        ):
            new_id = str(portal.allocate_multifield_id())
            result.append(
                {
                    "ID": new_id,
                    "VALUE_TYPE": value_type,
                    "VALUE": value,
                    "TYPE_ID": type_id,
                }
            )
    return result


def _change_item(
    items: list[dict[str, str]], item_id: str, value: str, value_type: str
) -> list[dict[str, str]]:
    if value == "":
        return [item for item in items if item.get("ID") != item_id]
    for item in items:
        if item.get("ID") == item_id:
            item["VALUE"] = value
            item["VALUE_TYPE"] = value_type
    return items


def contact_flags(row: Mapping[str, Any]) -> dict[str, str]:
    """HAS_PHONE / HAS_EMAIL / HAS_IMOL from the multifields a row holds."""
    ims = row.get("IM") or []
    has_imol = any(str(item.get("VALUE", "")).startswith("imol|") for item in ims)
    return {
        "HAS_PHONE": "Y" if row.get("PHONE") else "N",
        "HAS_EMAIL": "Y" if row.get("EMAIL") else "N",
        "HAS_IMOL": "Y" if has_imol else "N",
    }


# -- writing --------------------------------------------------------------------------


@dataclass
class Write:
    """The accepted part of a `fields` parameter: plain values and multifield lists."""

    values: dict[str, Any]
    multifields: dict[str, Any]


def accept_fields(
    raw: Mapping[str, Any],
    fields: Mapping[str, FieldInfo],
    codec: Codec,
    *,
    updating: bool,
) -> Write:
    """Keep what the server keeps: exact known keys, writable, parsable values."""
    write = Write({}, {})
    for key, value in raw.items():
        info = fields.get(key)
        if info is None or info.read_only or (updating and info.immutable):
            continue
        if info.kind == "multifield":
            write.multifields[key] = value
            continue
        if info.type in ("file", "diskfile"):
            continue
        if info.multiple and not info.dynamic:
            ids = value if isinstance(value, list) else [value]
            write.values[key] = [intval(item) for item in ids if intval(item) > 0]
            continue
        if info.type == "object":
            write.values[key] = value if isinstance(value, dict | list) else []
            continue
        stored = codec.internalize(info, value)
        if stored is not DROP:
            write.values[key] = stored
    return write


class Writer:
    """Creates and changes rows of one entity for one call."""

    def __init__(self, call: Call, spec: EntitySpec) -> None:
        self.call = call
        self.spec = spec
        self.portal = call.portal
        self.zone = call.portal.zone
        self.table = call.portal.table(spec.name)
        self.fields = entity_fields(call.portal, spec.name)
        self.codec = Codec(self.zone)
        self.directory = Directory(call.portal)
        self.now = now_iso(self.zone)
        self.user = str(call.user_id)

    # -- add --------------------------------------------------------------------------

    def add(self, raw: Mapping[str, Any]) -> int:
        write = accept_fields(raw, self.fields, self.codec, updating=False)
        values = write.values
        row_id = self.table.allocate_id()
        row: dict[str, Any] = dict.fromkeys(standard_names(self.spec, self.fields))
        row.update(self._common_defaults())
        # A null is as good as absent on add: the defaults stand.
        row.update({name: value for name, value in values.items() if value is not None})
        row["ID"] = str(row_id)
        self._fill_title(row, row_id)
        assigned = intval(values.get("ASSIGNED_BY_ID"))
        row["ASSIGNED_BY_ID"] = str(assigned) if assigned > 0 else self.user
        if self.spec.name == "deal":
            self._deal_defaults(row, values)
        elif self.spec.name == "lead":
            self._lead_defaults(row, values)
        if "CONTACT_IDS" in self.fields:
            sync_contacts(row, values)
        self._apply_user_field_defaults(row)
        if self.spec.has_multifields:
            for type_id in MULTIFIELDS:
                items = apply_multifield(
                    self.portal, type_id, [], write.multifields.get(type_id)
                )
                if items:
                    row[type_id] = items
            row.update(contact_flags(row))
        self.table.insert(row, row_id)
        if self.spec.stage_field is not None:
            record_stage(self.portal, self.spec, row, created=True, when=self.now)
        return row_id

    def _common_defaults(self) -> dict[str, Any]:
        defaults = {
            "OPENED": "Y",
            "CREATED_BY_ID": self.user,
            "MODIFY_BY_ID": self.user,
            "DATE_CREATE": self.now,
            "DATE_MODIFY": self.now,
        }
        optional = {
            "CURRENCY_ID": DEFAULT_CURRENCY,
            "OPPORTUNITY": "0.00",
            "IS_MANUAL_OPPORTUNITY": "N",
            "IS_RETURN_CUSTOMER": "N",
            "LAST_ACTIVITY_TIME": self.now,
            "LAST_ACTIVITY_BY": self.user,
            "EXPORT": "Y",
            "IS_MY_COMPANY": "N",
            "BIRTHDATE": "",
            "DATE_CLOSED": "",
        }
        defaults.update({k: v for k, v in optional.items() if k in self.fields})
        return defaults

    def _fill_title(self, row: dict[str, Any], row_id: int) -> None:
        title_field = self.spec.title_field
        if self.spec.name == "contact" and (row.get("NAME") or "").strip():
            return
        if not (row.get(title_field) or "").strip():
            row[title_field] = self.spec.title_template.format(id=row_id)

    def _deal_defaults(self, row: dict[str, Any], values: Mapping[str, Any]) -> None:
        category = max(intval(values.get("CATEGORY_ID")), 0)
        if not self.directory.deal_category_exists(category):
            category = 0
        stages = self.directory.deal_stages(category)
        stage = find_stage(stages, values.get("STAGE_ID")) or stages[0]
        day = today(self.zone)
        row.update(
            CATEGORY_ID=str(category),
            STAGE_ID=stage.status_id,
            STAGE_SEMANTIC_ID=stage.semantic,
            IS_NEW="Y" if stage is stages[0] else "N",
            CLOSED="N" if stage.semantic == "P" else "Y",
            TAX_VALUE=row.get("TAX_VALUE") or "0.00",
            IS_RECURRING=row.get("IS_RECURRING") or "N",
            IS_REPEATED_APPROACH=row.get("IS_REPEATED_APPROACH") or "N",
            MOVED_BY_ID=self.user,
            MOVED_TIME=self.now,
        )
        if not row.get("TYPE_ID"):
            row["TYPE_ID"] = self.directory.first_code("DEAL_TYPE", "SALE")
        if not row.get("BEGINDATE"):
            row["BEGINDATE"] = format_date(day, self.zone)
        if stage.semantic != "P":
            row["CLOSEDATE"] = format_date(day, self.zone)
        elif not row.get("CLOSEDATE"):
            later = day + timedelta(days=CLOSE_DATE_DAYS)
            row["CLOSEDATE"] = format_date(later, self.zone)

    def _lead_defaults(self, row: dict[str, Any], values: Mapping[str, Any]) -> None:
        stages = self.directory.lead_statuses()
        status = find_stage(stages, values.get("STATUS_ID")) or stages[0]
        row.update(
            STATUS_ID=status.status_id,
            STATUS_SEMANTIC_ID=status.semantic,
            MOVED_BY_ID=self.user,
            MOVED_TIME=self.now,
            DATE_CLOSED="" if status.semantic == "P" else self.now,
        )

    def _apply_user_field_defaults(self, row: dict[str, Any]) -> None:
        for name, info in self.fields.items():
            if info.dynamic and name not in row and info.default is not None:
                row[name] = info.default

    # -- update -----------------------------------------------------------------------

    def update(self, row_id: int, raw: Mapping[str, Any]) -> None:
        row = existing_row(self.table, row_id)
        write = accept_fields(raw, self.fields, self.codec, updating=True)
        changes = dict(write.values)
        scavenged = ["BEGINDATE", "CLOSEDATE"]
        if self.spec.name != "contact":
            scavenged.append(self.spec.title_field)
        for name in scavenged:
            # Blank titles and dates are dropped before an update (CCrmDeal::Update).
            if name in changes and not str(changes[name] or "").strip():
                del changes[name]
        stage_moved = False
        if self.spec.stage_field is not None:
            stage_moved = self._stage_change(row, changes)
        if "CONTACT_IDS" in self.fields:
            sync_contacts(changes, write.values)
        if self.spec.has_multifields and write.multifields:
            for type_id, items in write.multifields.items():
                updated = apply_multifield(
                    self.portal, type_id, row.get(type_id) or [], items
                )
                changes[type_id] = updated or None
        changes["DATE_MODIFY"] = self.now
        changes["MODIFY_BY_ID"] = self.user
        self.table.update(row_id, changes)
        if self.spec.has_multifields:
            for type_id in MULTIFIELDS:
                if type_id in row and not row[type_id]:
                    del row[type_id]
            self.table.update(row_id, contact_flags(row))
        if stage_moved:
            record_stage(self.portal, self.spec, row, created=False, when=self.now)

    def _stage_change(self, row: Mapping[str, Any], changes: dict[str, Any]) -> bool:
        stage_field, semantic_field = stage_fields(self.spec)
        if stage_field not in changes:
            return False
        category = intval(row.get("CATEGORY_ID"))
        stages = self.directory.stages_for(self.spec, category)
        stage = find_stage(stages, changes[stage_field])
        if stage is None:
            del changes[stage_field]  # an unknown stage is ignored
            return False
        if stage.status_id == row.get(stage_field):
            return False
        changes[semantic_field] = stage.semantic
        changes["MOVED_BY_ID"] = self.user
        changes["MOVED_TIME"] = self.now
        if self.spec.name == "deal":
            changes["IS_NEW"] = "Y" if stage is stages[0] else "N"
            changes["CLOSED"] = "N" if stage.semantic == "P" else "Y"
            if stage.semantic != "P":
                changes["CLOSEDATE"] = format_date(today(self.zone), self.zone)
        else:
            changes["DATE_CLOSED"] = "" if stage.semantic == "P" else self.now
        return True


def sync_contacts(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Keep the deprecated `CONTACT_ID` and the `CONTACT_IDS` list in step."""
    if "CONTACT_IDS" in values:
        ids = values["CONTACT_IDS"]
        target["CONTACT_ID"] = str(ids[0]) if ids else None
    elif "CONTACT_ID" in values:
        contact = intval(values["CONTACT_ID"])
        target["CONTACT_IDS"] = [contact] if contact > 0 else []


# -- stage history --------------------------------------------------------------------


def stage_fields(spec: EntitySpec) -> tuple[str, str]:
    if spec.stage_field is None or spec.semantic_field is None:
        raise RuntimeError(f"{spec.name} has no stages")
    return spec.stage_field, spec.semantic_field


def record_stage(
    portal: Portal,
    spec: EntitySpec,
    row: Mapping[str, Any],
    *,
    created: bool,
    when: str,
) -> None:
    """One `crm.stagehistory.list` row for a creation or a move (srv StageHistory)."""
    stage_field, semantic_field = stage_fields(spec)
    semantic = str(row.get(semantic_field) or "P")
    if semantic != "P":
        type_id = 3  # finalization, also when created in a final stage
    else:
        type_id = 1 if created else 2
    history = portal.table("stagehistory")
    history_id = history.allocate_id()
    entry: dict[str, Any] = {
        "ID": history_id,
        "TYPE_ID": type_id,
        "OWNER_ID": intval(row.get("ID")),
        "CREATED_TIME": when,
    }
    if spec.name == "deal":
        entry["CATEGORY_ID"] = intval(row.get("CATEGORY_ID"))
        entry["STAGE_SEMANTIC_ID"] = semantic
        entry["STAGE_ID"] = row.get(stage_field)
    else:
        entry["STATUS_SEMANTIC_ID"] = semantic
        entry["STATUS_ID"] = row.get(stage_field)
    entry["ENTITY_TYPE_ID"] = spec.owner_type_id
    history.insert(entry, history_id)


def forget_history(portal: Portal, spec: EntitySpec, owner_id: int) -> None:
    history = portal.table("stagehistory")
    doomed = [
        history_id
        for history_id, entry in history.rows.items()
        if entry.get("ENTITY_TYPE_ID") == spec.owner_type_id
        and intval(entry.get("OWNER_ID")) == owner_id
    ]
    for history_id in doomed:
        history.delete(history_id)


# -- reading --------------------------------------------------------------------------


def render_full(
    spec: EntitySpec, fields: Mapping[str, FieldInfo], row: Mapping[str, Any]
) -> dict[str, Any]:
    """A row as `get` answers it: every standard and user field, multifields held."""
    out: dict[str, Any] = {}
    for name in standard_names(spec, fields):
        out[name] = output_value(fields[name], row.get(name))
    for name, info in fields.items():
        if info.dynamic:
            out[name] = output_value(info, row.get(name))
    if spec.has_multifields:
        for type_id in MULTIFIELDS:
            if row.get(type_id):
                out[type_id] = row[type_id]
    return out


def legacy_lister(call: Call, spec: EntitySpec, raw_order: Any) -> LegacyList:
    fields = entity_fields(call.portal, spec.name)
    overrides: dict[str, SortOverride] = {}
    # Only the exact key reaches the server's STAGE_SORT/STATUS_SORT rewrite.
    stage_field = spec.stage_field
    if stage_field and isinstance(raw_order, dict) and stage_field in raw_order:
        overrides[stage_field] = _stage_sorter(Directory(call.portal), spec)
    return LegacyList(
        table=call.portal.table(spec.name),
        fields=fields,
        zone=call.portal.zone,
        render=lambda row_id, out: out,
        sort_overrides=overrides,
        on_request=frozenset(MULTIFIELDS) if spec.has_multifields else frozenset(),
        standard_order=tuple(standard_names(spec, fields)),
    )


def _stage_sorter(directory: Directory, spec: EntitySpec) -> SortOverride:
    """A stage code (as filters parse it: case-folded) -> its directory SORT."""
    if spec.name == "deal":
        sorts = directory.sort_of_stages("DEAL_STAGE")
    else:
        sorts = {stage.status_id: stage.sort for stage in directory.lead_statuses()}
    folded: defaultdict[Any, float] = defaultdict(lambda: float("-inf"))
    folded.update({code.casefold(): float(sort) for code, sort in sorts.items()})
    return folded.__getitem__


# -- the methods ----------------------------------------------------------------------


def _register(spec: EntitySpec) -> None:
    prefix = f"crm.{spec.name}"

    @method(f"{prefix}.fields", scope="crm")
    def fields_method(call: Call) -> MethodResult:
        fields = entity_fields(call.portal, spec.name)
        return MethodResult({name: info.describe() for name, info in fields.items()})

    @method(f"{prefix}.add", scope="crm")
    def add_method(call: Call) -> MethodResult:
        params = legacy_params(call, "fields", "params")
        raw = array_param(params, "fields")
        array_param(params, "params")
        row_id = Writer(call, spec).add(raw)
        emit(call, f"{spec.event_stem}ADD", row_id)
        return MethodResult(row_id)

    @method(f"{prefix}.get", scope="crm")
    def get_method(call: Call) -> MethodResult:
        row_id = entity_id(call)
        row = existing_row(call.portal.table(spec.name), row_id)
        fields = entity_fields(call.portal, spec.name)
        return MethodResult(render_full(spec, fields, row))

    @method(f"{prefix}.list", scope="crm")
    def list_method(call: Call) -> MethodResult:
        params = legacy_params(call, "order", "filter", "select")
        order = array_param(params, "order")
        filter_ = array_param(params, "filter")
        lister = legacy_lister(call, spec, order)
        return lister.run(order, filter_, params.get("select"), call.start)

    @method(f"{prefix}.update", scope="crm")
    def update_method(call: Call) -> MethodResult:
        row_id = entity_id(call)
        params = legacy_params(call, "fields", "params")
        raw = array_param(params, "fields")
        array_param(params, "params")
        Writer(call, spec).update(row_id, raw)
        emit(call, f"{spec.event_stem}UPDATE", row_id)
        return MethodResult(True)

    @method(f"{prefix}.delete", scope="crm")
    def delete_method(call: Call) -> MethodResult:
        row_id = entity_id(call)
        table = call.portal.table(spec.name)
        existing_row(table, row_id)
        table.delete(row_id)
        if spec.stage_field is not None:
            forget_history(call.portal, spec, row_id)
        emit(call, f"{spec.event_stem}DELETE", row_id)
        return MethodResult(True)


for _spec in ENTITIES.values():
    _register(_spec)


# -- crm.duplicate.findbycomm ---------------------------------------------------------

FINDBYCOMM_VALUES: Final = 20  # values read per call, and hits per value and type
_SEARCH_TYPES: Final = ("LEAD", "CONTACT", "COMPANY")


def normalize_phone(value: str) -> str:
    """E.164 digits of a phone (region RU), without its extension; "" if none."""
    try:
        parsed = phonenumbers.parse(value, "RU")
    except phonenumbers.NumberParseException:
        digits = "".join(char for char in value if char.isdigit())
        return digits
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


def normalize_communication(type_id: str, value: str) -> str:
    if type_id == "PHONE":
        return normalize_phone(value)
    return value.strip().casefold()


def _communication_column(table: Table, type_id: str) -> dict[int, frozenset[str]]:
    def parse(row: dict[str, Any]) -> frozenset[str]:
        items = row.get(type_id) or []
        return frozenset(
            normalized
            for item in items
            if isinstance(item, dict)
            and (
                normalized := normalize_communication(
                    type_id, str(item.get("VALUE", ""))
                )
            )
        )

    return full_column(table, f"\x00dup:{type_id}", parse)


@method("crm.duplicate.findbycomm", scope="crm")
def find_by_communication(call: Call) -> MethodResult:
    params = call.params
    type_id = php_string(_any_case(params, "type")).upper()
    if type_id not in ("EMAIL", "PHONE"):
        if type_id == "":
            raise protocol.legacy_error("Communication type is not defined.")
        raise protocol.legacy_error(
            f"Communication type '{type_id}' is not supported in current context."
        )
    values = lower_keys(params, "values").get("values")
    if isinstance(values, dict):
        values = list(values.values())
    if not isinstance(values, list) or not values:
        raise protocol.legacy_error("Communication values is not defined.")
    entity_name = php_string(_entity_type_param(params)).strip().upper()
    if entity_name in ("DEAL", "2"):
        raise protocol.legacy_error("Deal is not supported in current context.")
    searched = [entity_name] if entity_name in _SEARCH_TYPES else list(_SEARCH_TYPES)

    wanted = _distinct_values(type_id, values)
    found: dict[str, list[int]] = {}
    for name in searched:
        column = _communication_column(call.portal.table(name.lower()), type_id)
        for value in wanted:
            hits = sorted(row_id for row_id, held in column.items() if value in held)
            for row_id in hits[:FINDBYCOMM_VALUES]:
                bucket = found.setdefault(name, [])
                if row_id not in bucket:
                    bucket.append(row_id)
    return MethodResult(found if found else [])


def _distinct_values(type_id: str, values: Iterable[Any]) -> list[str]:
    distinct: list[str] = []
    for value in values:
        if not isinstance(value, str) or value == "":
            continue  # the server skips non-strings and empties
        normalized = normalize_communication(type_id, value)
        if normalized and normalized not in distinct:
            distinct.append(normalized)
        if len(distinct) >= FINDBYCOMM_VALUES:
            break
    return distinct


def _any_case(params: Mapping[str, Any], name: str) -> Any:
    for variant in (name, name.lower(), name.upper(), name.capitalize()):
        if variant in params:
            return params[variant]
    return ""


def _entity_type_param(params: Mapping[str, Any]) -> Any:
    for variant in ("ENTITY_TYPE", "entity_type", "EntityType", "arEntityType"):
        if variant in params:
            return params[variant]
    return ""


__all__ = [
    "ENTITIES",
    "OWNER_TABLES",
    "Directory",
    "EntitySpec",
    "Writer",
    "normalize_phone",
]
