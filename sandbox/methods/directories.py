"""Directories and settings: statuses, pipelines, user fields and the CRM mode.

`crm.status.*` and `crm.*.userfield.*` are legacy methods (UPPER keys, string values,
unknown filter keys dropped, `""` error codes); `crm.category.*` is an engine
controller (camelCase, typed values, `{"categories": [...]}`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sandbox import protocol
from sandbox.defaults import (
    DIRECTORIES,
    StatusTemplate,
    add_pipeline_stages,
    is_semantic_entity,
    status_row,
)
from sandbox.listing import PAGE_SIZE, legacy_window
from sandbox.methods.crm_item import (
    OWNER_TYPE_NAMES,
    engine_param,
    entity_not_supported,
)
from sandbox.phpform import intval, lower_keys
from sandbox.protocol import MethodResult, RestError
from sandbox.registry import Call, method
from sandbox.state import Portal

# -- legacy list plumbing -------------------------------------------------------------


def _legacy_params(call: Call, *names: str) -> dict[str, Any]:
    """Top-level legacy parameters in any case; a non-array one is an error."""
    params = lower_keys(call.params, *names)
    for name in ("filter", "order", "fields"):
        if name in params and not isinstance(params[name], dict | list):
            raise protocol.legacy_error(f"Parameter '{name}' must be array.")
    return params


def _as_dict(value: Any) -> dict[str, Any]:
    # A JSON `[]` is an empty PHP array: no conditions.
    return value if isinstance(value, dict) else {}


_OPERATOR = re.compile(r"^(!@|>=|<=|!=|!|@|>|<|=|%)?(.*)$")


def _matches(row: dict[str, Any], filter_: dict[str, Any], allowed: set[str]) -> bool:
    """Exact, `!`, `@`, `%` and comparisons; unknown keys are dropped."""
    for key, expected in filter_.items():
        found = _OPERATOR.match(str(key))
        if found is None:
            continue
        operator, field = found.group(1) or "=", found.group(2)
        if field not in allowed:
            continue
        if not _compare(row.get(field), operator, expected):
            return False
    return True


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    text = "" if actual is None else str(actual)
    if operator in ("@", "!@"):
        values = expected if isinstance(expected, list) else [expected]
        inside = text in {str(v) for v in values}
        return inside if operator == "@" else not inside
    if operator in ("!", "!="):
        return text != str(expected)
    if operator == "%":
        return str(expected).lower() in text.lower()
    if operator in (">", "<", ">=", "<="):
        return _ordered(intval(text), operator, intval(expected))
    return text == ("" if expected is None else str(expected))


def _ordered(left: int, operator: str, right: int) -> bool:
    return {
        ">": left > right,
        "<": left < right,
        ">=": left >= right,
        "<=": left <= right,
    }[operator]


def _sorted(
    rows: list[dict[str, Any]],
    order: dict[str, Any],
    allowed: set[str],
    numeric: set[str],
) -> list[dict[str, Any]]:
    """Legacy order: UPPER names, unknown ones ignored, not ASC means DESC."""
    for field, direction in reversed(list(order.items())):
        name = str(field).upper()
        if name not in allowed:
            continue
        key = _sort_key(name, numeric)
        rows = sorted(rows, key=key, reverse=str(direction).upper() != "ASC")
    return rows


def _sort_key(name: str, numeric: set[str]) -> Callable[[dict[str, Any]], Any]:
    if name in numeric:
        return lambda row: intval(row.get(name))
    return lambda row: str(row.get(name) or "")


def _legacy_page(call: Call, rows: list[dict[str, Any]]) -> MethodResult:
    """50 rows a page; a start past the end answers page 1 again (legacy lists)."""
    window = legacy_window(call.start, len(rows))
    chunk = [dict(row) for row in rows[window.offset : window.offset + PAGE_SIZE]]
    return MethodResult(chunk, window.total, window.next)


# -- crm.status.* -------------------------------------------------------------------

STATUS_FIELDS = {
    "ID",
    "ENTITY_ID",
    "STATUS_ID",
    "NAME",
    "NAME_INIT",
    "SORT",
    "SYSTEM",
    "CATEGORY_ID",
    "COLOR",
    "SEMANTICS",
}
_STATUS_NUMERIC = {"ID", "SORT", "CATEGORY_ID"}

# Directories beyond the seeded ones that a portal also accepts entries for.
_EXTRA_DIRECTORIES = frozenset(
    {
        "INDUSTRY",
        "EMPLOYEES",
        "EVENT_TYPE",
        "QUOTE_STATUS",
        "INVOICE_STATUS",
        "CALL_LIST",
    }
)


@method("crm.status.list", scope="crm")
def status_list(call: Call) -> MethodResult:
    params = _legacy_params(call, "filter", "order", "select")
    filter_ = _as_dict(params.get("filter"))
    order = _as_dict(params.get("order")) or {"SORT": "ASC"}

    rows = [
        row
        for row in call.portal.table("status")
        if _matches(row, filter_, STATUS_FIELDS)
    ]
    rows = _sorted(rows, order, STATUS_FIELDS, _STATUS_NUMERIC)
    return _legacy_page(call, rows)


@method("crm.status.get", scope="crm")
def status_get(call: Call) -> MethodResult:
    status_id = intval(lower_keys(call.params, "id").get("id"))
    if status_id <= 0:
        raise protocol.legacy_error("ID is not defined or invalid.")
    row = call.portal.table("status").get(status_id)
    if row is None:
        raise protocol.legacy_error("CRM Status is not found.")
    return MethodResult(dict(row))


@method("crm.status.fields", scope="crm")
def status_fields(call: Call) -> MethodResult:
    def field(kind: str, title: str, **flags: bool) -> dict[str, Any]:
        return {
            "type": kind,
            "isRequired": flags.get("required", False),
            "isReadOnly": flags.get("read_only", False),
            "isImmutable": flags.get("immutable", False),
            "isMultiple": False,
            "isDynamic": False,
            "title": title,
        }

    return MethodResult(
        {
            "ID": field("integer", "ID", read_only=True),
            "ENTITY_ID": field("string", "Entity ID", required=True, immutable=True),
            "STATUS_ID": field("string", "Status", required=True, immutable=True),
            "SORT": field("integer", "Sort"),
            "NAME": field("string", "Name", required=True),
            "NAME_INIT": field("string", "Default name", read_only=True),
            "SYSTEM": field("char", "System", read_only=True),
            "CATEGORY_ID": field("integer", "Pipeline", read_only=True),
            "COLOR": field("string", "Color"),
            "SEMANTICS": field("string", "Semantics", read_only=True),
        }
    )


@method("crm.status.add", scope="crm")
def status_add(call: Call) -> MethodResult:
    fields = _as_dict(_legacy_params(call, "fields").get("fields"))
    entity_id = str(fields.get("ENTITY_ID") or "")
    code = str(fields.get("STATUS_ID") or "")
    problems = []
    if not entity_id:
        problems.append("The field ENTITY_ID is required.")
    if not code:
        problems.append("The field STATUS_ID is required.")
    if problems:
        raise protocol.legacy_error("\n".join(problems))

    category_id = _directory_category(call.portal, entity_id)
    if category_id is None:
        raise protocol.legacy_error("Specified entity type is not supported.")
    if category_id > 0 and not code.startswith(f"C{category_id}:"):
        # Stages of pipeline n carry its prefix, as the portal names them.
        code = f"C{category_id}:{code}"
    if _find_status(call.portal, entity_id, code) is not None:
        raise protocol.legacy_error(f"The status {code} already exists.")

    name = str(fields.get("NAME") or "")
    if not name:
        raise protocol.legacy_error("The field NAME is required.")
    row = _new_status_row(call.portal, entity_id, code, name, fields, category_id)
    statuses = call.portal.table("status")
    row_id = intval(row["ID"])
    statuses.insert(row, row_id)
    return MethodResult(row_id)


def _directory_category(portal: Portal, entity_id: str) -> int | None:
    """0 for a plain directory or pipeline 0, n for `DEAL_STAGE_n`; None if unknown."""
    if entity_id in DIRECTORIES or entity_id in _EXTRA_DIRECTORIES:
        return 0
    found = re.fullmatch(r"DEAL_STAGE_(\d+)", entity_id)
    if found and int(found.group(1)) in portal.table("category"):
        return int(found.group(1))
    return None


def _find_status(portal: Portal, entity_id: str, code: str) -> dict[str, Any] | None:
    for row in portal.table("status"):
        if row.get("ENTITY_ID") == entity_id and row.get("STATUS_ID") == code:
            return row
    return None


def _new_status_row(
    portal: Portal,
    entity_id: str,
    code: str,
    name: str,
    fields: dict[str, Any],
    category_id: int,
) -> dict[str, Any]:
    sorts = [
        intval(row.get("SORT"))
        for row in portal.table("status")
        if row.get("ENTITY_ID") == entity_id
    ]
    sort = intval(fields.get("SORT")) or (max(sorts, default=0) + 10)
    semantics = str(fields.get("SEMANTICS") or "").upper()
    extra = {"S": "success", "F": "failure"}.get(semantics, "process")
    color = str(fields.get("COLOR") or "") or (
        "#ACE9FB" if is_semantic_entity(entity_id) else None
    )
    template = StatusTemplate(
        code,
        name,
        sort,
        color,
        semantics if semantics in ("S", "F") else None,
        False,
        extra,
    )
    row_id = portal.table("status").allocate_id()
    return status_row(row_id, entity_id, template, category_id=category_id or None)


# -- crm.category.* (engine) --------------------------------------------------------

DEAL_TYPE_ID = 2


def _category_entity(call: Call) -> int:
    entity_type_id = intval(engine_param(call, "entityTypeId"))
    if entity_type_id == DEAL_TYPE_ID:
        return entity_type_id
    if entity_type_id in OWNER_TYPE_NAMES:
        # Leads, invoices and the rest have no pipelines in this sandbox.
        raise entity_not_supported(entity_type_id)
    raise protocol.engine_error("NOT_FOUND", "SPA not found")


def _ordered_categories(portal: Portal) -> list[dict[str, Any]]:
    categories = list(portal.table("category"))
    return sorted(categories, key=lambda row: (intval(row.get("sort")), row["id"]))


@method("crm.category.list", scope="crm")
def category_list(call: Call) -> MethodResult:
    _category_entity(call)
    categories = [dict(row) for row in _ordered_categories(call.portal)]
    return MethodResult({"categories": categories}, total=len(categories))


@method("crm.category.get", scope="crm")
def category_get(call: Call) -> MethodResult:
    _category_entity(call)
    category_id = intval(engine_param(call, "id"))
    row = call.portal.table("category").get(category_id)
    if row is None:
        raise protocol.engine_error("NOT_FOUND", "Element not found")
    return MethodResult({"category": dict(row)})


@method("crm.category.add", scope="crm")
def category_add(call: Call) -> MethodResult:
    entity_type_id = _category_entity(call)
    fields = engine_param(call, "fields")
    if not isinstance(fields, dict):
        fields = {}
    name = str(fields.get("name") or "").strip()
    if not name:
        raise RestError("0", "Field 'NAME' is required")

    sort = intval(fields["sort"]) if "sort" in fields else 500
    categories = call.portal.table("category")
    category_id = categories.allocate_id()
    category = {
        "id": category_id,
        "name": name,
        "sort": sort if sort >= 0 else 500,
        "entityTypeId": entity_type_id,
        # Deals cannot change which pipeline is the default one over REST.
        "isDefault": "N",
        "originId": str(fields.get("originId") or ""),
        "originatorId": str(fields.get("originatorId") or ""),
    }
    categories.insert(category, category_id)
    add_pipeline_stages(call.portal, category_id)
    return MethodResult({"category": dict(category)})


# -- crm.*.userfield.* --------------------------------------------------------------

USERFIELD_ENTITIES = {
    "deal": "CRM_DEAL",
    "lead": "CRM_LEAD",
    "contact": "CRM_CONTACT",
    "company": "CRM_COMPANY",
}
USERFIELD_FILTER_FIELDS = {
    "ID",
    "FIELD_NAME",
    "USER_TYPE_ID",
    "XML_ID",
    "SORT",
    "MULTIPLE",
    "MANDATORY",
    "SHOW_FILTER",
    "SHOW_IN_LIST",
    "EDIT_IN_LIST",
    "IS_SEARCHABLE",
}
USERFIELD_ORDER_FIELDS = {"ID", "FIELD_NAME", "USER_TYPE_ID", "XML_ID", "SORT"}
LABEL_KEYS = (
    "EDIT_FORM_LABEL",
    "LIST_COLUMN_LABEL",
    "LIST_FILTER_LABEL",
    "ERROR_MESSAGE",
    "HELP_MESSAGE",
)

# A fresh field's SETTINGS by type, as the portal fills them in.
_DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "string": {
        "SIZE": 20,
        "ROWS": 1,
        "REGEXP": "",
        "MIN_LENGTH": 0,
        "MAX_LENGTH": 0,
        "DEFAULT_VALUE": "",
    },
    "integer": {"SIZE": 20, "MIN_VALUE": 0, "MAX_VALUE": 0, "DEFAULT_VALUE": None},
    "double": {
        "PRECISION": 2,
        "SIZE": 20,
        "MIN_VALUE": 0,
        "MAX_VALUE": 0,
        "DEFAULT_VALUE": None,
    },
    "boolean": {"DEFAULT_VALUE": 0, "DISPLAY": "CHECKBOX", "LABEL": ["", ""]},
    "date": {"DEFAULT_VALUE": {"VALUE": "", "TYPE": "NONE"}},
    "datetime": {
        "DEFAULT_VALUE": {"VALUE": "", "TYPE": "NONE"},
        "USE_SECOND": "Y",
        "USE_TIMEZONE": "N",
    },
    "enumeration": {
        "DISPLAY": "LIST",
        "LIST_HEIGHT": 1,
        "CAPTION_NO_VALUE": "",
        "SHOW_NO_VALUE": "Y",
    },
    "money": {"DEFAULT_VALUE": ""},
    "url": {"POPUP": "Y", "SIZE": 20, "MIN_LENGTH": 0, "MAX_LENGTH": 0},
    "employee": {},
    "crm": {"LEAD": "Y", "CONTACT": "N", "COMPANY": "N", "DEAL": "N"},
    "crm_status": {"ENTITY_TYPE": ""},
    "file": {"SIZE": 20, "LIST_WIDTH": 0, "LIST_HEIGHT": 0, "EXTENSIONS": []},
    "address": {},
    "iblock_section": {"IBLOCK_TYPE_ID": "", "IBLOCK_ID": 0, "DISPLAY": "LIST"},
    "iblock_element": {"IBLOCK_TYPE_ID": "", "IBLOCK_ID": 0, "DISPLAY": "LIST"},
}
_FIELD_NAME = re.compile(r"^[A-Z0-9_]+$")
# "The system limit on a field's name is 20 characters", UF_CRM_ included
# (crm.deal.userfield.add, Bitrix24 REST documentation).
_FIELD_NAME_MAX = 20


def _userfield_rows(portal: Portal, entity_id: str) -> list[dict[str, Any]]:
    return [
        row for row in portal.table("userfield") if row.get("ENTITY_ID") == entity_id
    ]


def _list_userfields(call: Call, entity_id: str) -> MethodResult:
    params = _legacy_params(call, "filter", "order")
    filter_ = _as_dict(params.get("filter"))
    order = _as_dict(params.get("order")) or {"SORT": "ASC", "ID": "ASC"}
    language = str(filter_.get("LANG") or "")

    rows = [
        row
        for row in _userfield_rows(call.portal, entity_id)
        if _matches(row, filter_, USERFIELD_FILTER_FIELDS)
    ]
    rows = _sorted(rows, order, USERFIELD_ORDER_FIELDS, {"ID", "SORT"})
    rows = [_userfield_view(row, language) for row in rows]
    return MethodResult(rows, total=len(rows))


def _userfield_view(row: dict[str, Any], language: str) -> dict[str, Any]:
    """Labels appear only when the filter names a `LANG`, as the server answers."""
    view = {k: v for k, v in row.items() if k not in LABEL_KEYS}
    if not language:
        return view
    for key in LABEL_KEYS:
        label = row.get(key)
        if isinstance(label, dict):
            label = label.get(language)
        view[key] = label
    return view


def _add_userfield(call: Call, entity_id: str) -> MethodResult:
    fields = _as_dict(_legacy_params(call, "fields").get("fields"))
    field_name = _userfield_name(fields.get("FIELD_NAME"))
    user_type = str(fields.get("USER_TYPE_ID") or "")
    if not user_type:
        raise protocol.legacy_error("The 'USER_TYPE_ID' field is not found.")
    if user_type not in _DEFAULT_SETTINGS:
        raise protocol.legacy_error("Invalid custom type specified.")
    if any(
        row.get("FIELD_NAME") == field_name
        for row in _userfield_rows(call.portal, entity_id)
    ):
        raise protocol.legacy_error(
            f'Error adding user field: a field with code "{field_name}" '
            f'already exists for "{entity_id}".'
        )

    userfields = call.portal.table("userfield")
    row_id = userfields.allocate_id()
    userfields.insert(
        _userfield_row(row_id, entity_id, field_name, user_type, fields), row_id
    )
    return MethodResult(row_id)


def _userfield_name(raw: Any) -> str:
    name = str(raw or "").strip()
    if not name:
        raise protocol.legacy_error("The 'FIELD_NAME' field is not found.")
    if not name.startswith("UF_CRM_"):
        name = "UF_CRM_" + name
    if len(name) > _FIELD_NAME_MAX:
        raise protocol.legacy_error(
            f"Field name is too long (more than {_FIELD_NAME_MAX} characters)."
        )
    if not _FIELD_NAME.match(name):
        raise protocol.legacy_error(
            "Field name contains invalid characters. "
            "Allowed characters are: A-Z, 0-9, and _."
        )
    return name


def _flag(fields: dict[str, Any], key: str, default: str) -> str:
    value = str(fields.get(key) or default).upper()
    return "Y" if value == "Y" else "N"


def _userfield_row(
    row_id: int,
    entity_id: str,
    field_name: str,
    user_type: str,
    fields: dict[str, Any],
) -> dict[str, Any]:
    settings = dict(_DEFAULT_SETTINGS[user_type])
    if isinstance(fields.get("SETTINGS"), dict):
        settings.update(fields["SETTINGS"])
    sort = intval(fields.get("SORT"))
    row: dict[str, Any] = {
        "ID": str(row_id),
        "ENTITY_ID": entity_id,
        "FIELD_NAME": field_name,
        "USER_TYPE_ID": user_type,
        "XML_ID": fields.get("XML_ID") or None,
        "SORT": str(sort if sort > 0 else 100),
        "MULTIPLE": "N" if user_type == "boolean" else _flag(fields, "MULTIPLE", "N"),
        "MANDATORY": _flag(fields, "MANDATORY", "N"),
        "SHOW_FILTER": _flag(fields, "SHOW_FILTER", "N"),
        "SHOW_IN_LIST": _flag(fields, "SHOW_IN_LIST", "N"),
        "EDIT_IN_LIST": _flag(fields, "EDIT_IN_LIST", "Y"),
        "IS_SEARCHABLE": _flag(fields, "IS_SEARCHABLE", "N"),
        "SETTINGS": settings,
    }
    label = fields.get("LABEL")
    for key in LABEL_KEYS:
        value = fields.get(key, label)
        row[key] = value if isinstance(value, dict) else (value or None)
    if user_type == "enumeration":
        row["LIST"] = _enum_items(fields.get("LIST"))
    return row


def _enum_items(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, dict):
        items = list(items.values())
    if not isinstance(items, list):
        return []
    result = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict) or not str(item.get("VALUE") or ""):
            continue
        result.append(
            {
                "ID": str(index),
                "SORT": str(intval(item.get("SORT"))),
                "VALUE": str(item["VALUE"]),
                "DEF": "Y" if str(item.get("DEF", "N")).upper() == "Y" else "N",
                "XML_ID": str(item.get("XML_ID") or f"{index}"),
            }
        )
    return result


def _register_userfield_methods(entity: str, entity_id: str) -> None:
    def list_fields(call: Call) -> MethodResult:
        return _list_userfields(call, entity_id)

    def add_field(call: Call) -> MethodResult:
        return _add_userfield(call, entity_id)

    def get_field(call: Call) -> MethodResult:
        field_id = intval(lower_keys(call.params, "id").get("id"))
        row = call.portal.table("userfield").get(field_id)
        if row is None or row.get("ENTITY_ID") != entity_id:
            raise protocol.legacy_not_found()
        return MethodResult(_userfield_view(row, "en"))

    method(f"crm.{entity}.userfield.list", scope="crm")(list_fields)
    method(f"crm.{entity}.userfield.add", scope="crm")(add_field)
    method(f"crm.{entity}.userfield.get", scope="crm")(get_field)


for _entity, _entity_id in USERFIELD_ENTITIES.items():
    _register_userfield_methods(_entity, _entity_id)


def userfields_of(portal: Portal, entity_id: str) -> dict[str, dict[str, Any]]:
    """The user fields of an entity (`CRM_DEAL`, …) by `FIELD_NAME`."""
    return {row["FIELD_NAME"]: row for row in _userfield_rows(portal, entity_id)}


# -- crm.settings.mode.get ----------------------------------------------------------

# crm.enum.settings.mode: 1 classic (with leads), 2 simple (without).
CRM_MODES = {"classic": 1, "simple": 2}


@method("crm.settings.mode.get", scope="crm")
def settings_mode_get(call: Call) -> MethodResult:
    return MethodResult(CRM_MODES.get(call.portal.crm_mode, 1))


@method("crm.enum.settings.mode", scope="crm")
def enum_settings_mode(call: Call) -> MethodResult:
    names = {1: "Classic CRM", 2: "Simple CRM"}
    return MethodResult(
        [
            {"ID": mode, "NAME": name, "SYMBOL_CODE": None, "SYMBOL_CODE_SHORT": None}
            for mode, name in names.items()
        ]
    )
