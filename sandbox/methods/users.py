"""`user.get`, `user.current`, `department.get`: the portal's people and structure.

`user.get` follows srv `rest/lib/api/user.php`: the whole query is upper-cased, filter
keys sit at the top level or inside `FILTER` (which then replaces the query), keys
outside the allowed list are dropped, `SORT` and `ORDER` apply only together, and
paging is the ORM kind: `start` is an offset taken as is, past the end the answer is
`[]` without `total`. `department.get` follows srv `intranet/classes/general/rest.php`
and pages like a legacy list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sandbox.fields import parse_datetime
from sandbox.phpform import intval
from sandbox.protocol import MethodResult
from sandbox.registry import Call, method
from sandbox.state import Portal

PAGE_SIZE = 50
ADMIN_USER_ID = 1  # a fresh portal's creator is its administrator

# What `user.get` may show with the `user` scope, in the server's order
# (`$allowedUserFields` plus `USER_TYPE` from intranet).
USER_FIELDS = (
    "ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "EMAIL",
    "LAST_LOGIN", "DATE_REGISTER", "TIME_ZONE", "IS_ONLINE", "TIMESTAMP_X",
    "LAST_ACTIVITY_DATE", "PERSONAL_GENDER", "PERSONAL_PROFESSION", "PERSONAL_WWW",
    "PERSONAL_BIRTHDAY", "PERSONAL_PHOTO", "PERSONAL_ICQ", "PERSONAL_PHONE",
    "PERSONAL_FAX", "PERSONAL_MOBILE", "PERSONAL_PAGER", "PERSONAL_STREET",
    "PERSONAL_CITY", "PERSONAL_STATE", "PERSONAL_ZIP", "PERSONAL_COUNTRY",
    "PERSONAL_MAILBOX", "PERSONAL_NOTES", "WORK_PHONE", "WORK_COMPANY",
    "WORK_POSITION", "WORK_DEPARTMENT", "WORK_WWW", "WORK_FAX", "WORK_PAGER",
    "WORK_STREET", "WORK_MAILBOX", "WORK_CITY", "WORK_STATE", "WORK_ZIP",
    "WORK_COUNTRY", "WORK_PROFILE", "WORK_LOGO", "WORK_NOTES", "UF_SKYPE_LINK",
    "UF_ZOOM", "UF_EMPLOYMENT_DATE", "UF_TIMEMAN", "UF_DEPARTMENT", "UF_INTERESTS",
    "UF_SKILLS", "UF_WEB_SITES", "UF_XING", "UF_LINKEDIN", "UF_FACEBOOK",
    "UF_TWITTER", "UF_SKYPE", "UF_DISTRICT", "UF_PHONE_INNER", "USER_TYPE",
)  # fmt: skip

# The narrower scopes: `user_basic` (contacts) and `user_brief` (names only).
USER_BASIC_FIELDS = (
    "ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE", "EMAIL",
    "PERSONAL_PHONE", "WORK_PHONE", "WORK_POSITION", "WORK_COMPANY", "IS_ONLINE",
    "TIME_ZONE", "TIMESTAMP_X", "DATE_REGISTER", "LAST_ACTIVITY_DATE",
    "PERSONAL_PROFESSION", "PERSONAL_GENDER", "PERSONAL_BIRTHDAY", "PERSONAL_PHOTO",
    "PERSONAL_FAX", "PERSONAL_MOBILE", "PERSONAL_PAGER", "PERSONAL_STREET",
    "PERSONAL_MAILBOX", "PERSONAL_CITY", "PERSONAL_STATE", "PERSONAL_ZIP",
    "PERSONAL_COUNTRY", "PERSONAL_NOTES", "WORK_DEPARTMENT", "WORK_WWW", "WORK_FAX",
    "WORK_PAGER", "WORK_STREET", "WORK_MAILBOX", "WORK_CITY", "WORK_STATE",
    "WORK_ZIP", "WORK_COUNTRY", "WORK_PROFILE", "WORK_LOGO", "WORK_NOTES",
    "UF_DEPARTMENT", "UF_DISTRICT", "UF_SKYPE", "UF_SKYPE_LINK", "UF_ZOOM",
    "UF_TWITTER", "UF_FACEBOOK", "UF_LINKEDIN", "UF_XING", "UF_WEB_SITES",
    "UF_PHONE_INNER", "UF_EMPLOYMENT_DATE", "UF_TIMEMAN", "UF_SKILLS",
    "UF_INTERESTS", "USER_TYPE",
)  # fmt: skip
USER_BRIEF_FIELDS = (
    "ID", "XML_ID", "ACTIVE", "NAME", "LAST_NAME", "SECOND_NAME", "TITLE",
    "IS_ONLINE", "TIME_ZONE", "TIMESTAMP_X", "DATE_REGISTER", "PERSONAL_PROFESSION",
    "PERSONAL_GENDER", "PERSONAL_BIRTHDAY", "PERSONAL_PHOTO", "PERSONAL_CITY",
    "PERSONAL_STATE", "PERSONAL_COUNTRY", "WORK_POSITION", "WORK_CITY",
    "WORK_STATE", "WORK_COUNTRY", "LAST_ACTIVITY_DATE", "UF_EMPLOYMENT_DATE",
    "UF_TIMEMAN", "UF_SKILLS", "UF_INTERESTS", "UF_DEPARTMENT", "UF_PHONE_INNER",
    "USER_TYPE",
)  # fmt: skip

# Always in the answer: `ACTIVE` as a JSON boolean, the dates as "" when unset.
ALWAYS_SHOWN_DATES = ("LAST_LOGIN", "DATE_REGISTER", "PERSONAL_BIRTHDAY")
# Filter-only keys the server adds to the allowed list.
FILTER_ONLY_KEYS = ("IS_ONLINE", "HAS_DEPARTAMENT", "NAME_SEARCH", "FIND")
DATE_FIELDS = frozenset(
    {"LAST_LOGIN", "DATE_REGISTER", "TIMESTAMP_X", "LAST_ACTIVITY_DATE",
     "PERSONAL_BIRTHDAY"}
)  # fmt: skip
# `REAL_USER`: bots, connectors and other technical accounts never appear; the
# reference also lists integrators among the excluded.
HIDDEN_USER_TYPES = frozenset(
    {"bot", "email", "imconnector", "replica", "controller", "sale", "shop",
     "integrator"}
)  # fmt: skip
DEFAULT_USER_TYPE = "employee"

# `[\W]{1,2}` as the server matches it: the operator is the leading non-word chars.
_OPERATOR = re.compile(r"^(\W{1,2})(.+)$")


# -- paging helpers shared by the legacy-style lists of this package --------------


def legacy_page(
    rows: list[dict[str, Any]], start: int
) -> tuple[list[dict[str, Any]], int, int | None]:
    """A CDBResult page: 50 rows, `start` rounded down, past the end page 1 again.

    `start=-1` skips the count: the page is the first 50, `total` 0, no `next`.
    """
    if start < 0:
        return rows[:PAGE_SIZE], 0, None
    total = len(rows)
    page = start // PAGE_SIZE
    if page * PAGE_SIZE >= total:
        page = 0
    following = (page + 1) * PAGE_SIZE
    chunk = rows[page * PAGE_SIZE : following]
    return chunk, total, following if following < total else None


# -- rows ---------------------------------------------------------------------------


def allowed_user_fields(scopes: frozenset[str]) -> list[str]:
    if "user" in scopes:
        return list(USER_FIELDS)
    if "user_basic" in scopes:
        return list(USER_BASIC_FIELDS)
    return list(USER_BRIEF_FIELDS)


def user_answer(row: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """A user as `user.get` shows it: allowed keys in order, unset ones left out."""
    answer: dict[str, Any] = {}
    for key in fields:
        if key == "ACTIVE":
            answer[key] = is_active(row)
        elif key in ALWAYS_SHOWN_DATES:
            answer[key] = row.get(key) or ""
        elif key == "USER_TYPE":
            answer[key] = user_type(row)
        elif row.get(key) is not None:
            answer[key] = row[key]
    return answer


def custom_user_fields(row: dict[str, Any]) -> list[str]:
    return [key for key in row if key.startswith("UF_USR_")]


def is_active(row: dict[str, Any]) -> bool:
    return row.get("ACTIVE") in (True, "Y")


def user_type(row: dict[str, Any]) -> str:
    return str(row.get("USER_TYPE") or DEFAULT_USER_TYPE)


def full_name(row: dict[str, Any]) -> str:
    """`#NAME# #LAST_NAME#`, the portal's default name format; the e-mail if empty."""
    parts = [str(row.get(key) or "").strip() for key in ("NAME", "LAST_NAME")]
    name = " ".join(part for part in parts if part)
    return name or str(row.get("EMAIL") or row.get("ID") or "")


def departments_of(row: dict[str, Any]) -> list[int]:
    raw = row.get("UF_DEPARTMENT")
    if raw in (None, "", False):
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [intval(item) for item in items if intval(item) > 0]


# -- user.get filter ----------------------------------------------------------------


def _prepared_value(field: str, value: Any) -> Any:
    """The server's `prepareUserValue`: ids to ints, flags Y/N, departments listed."""
    if field == "ID":
        if isinstance(value, list) and value:
            return [intval(item) for item in value]
        return intval(value)
    if field in ("ACTIVE", "IS_ONLINE"):
        return "Y" if value not in (None, False, "", "0", 0, "N") else "N"
    if field == "UF_DEPARTMENT" and not isinstance(value, list) and value:
        return [value]
    return value


def _field_value(portal: Portal, row: dict[str, Any], field: str) -> Any:
    if field == "ID":
        return intval(row.get("ID"))
    if field == "ACTIVE":
        return "Y" if is_active(row) else "N"
    if field == "IS_ONLINE":
        return row.get("IS_ONLINE") or "N"
    if field == "USER_TYPE":
        return user_type(row)
    if field == "UF_DEPARTMENT":
        return departments_of(row)
    if field in DATE_FIELDS:
        return _timestamp(row.get(field), portal)
    return row.get(field)


def _timestamp(value: Any, portal: Portal) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    moment = parse_datetime(value, portal.zone)
    return moment.timestamp() if moment else None


def _like(pattern: str, text: str) -> bool:
    """SQL LIKE, case-insensitive as the portal's collation: `%` and `_` wildcards."""
    regex = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char)
        for char in pattern
    )
    return re.fullmatch(regex, text, re.IGNORECASE | re.DOTALL) is not None


def _equal(actual: Any, wanted: Any) -> bool:
    if isinstance(actual, list):
        wanted_items = wanted if isinstance(wanted, list) else [wanted]
        return any(_equal(item, one) for item in actual for one in wanted_items)
    if isinstance(wanted, list):
        return any(_equal(actual, one) for one in wanted)
    if wanted in (None, ""):
        return actual in (None, "")
    if isinstance(actual, int | float) and not isinstance(actual, bool):
        right = _number(actual, wanted)
        return right is not None and actual == right
    return str(actual or "").casefold() == str(wanted).casefold()


def _number(actual: float, wanted: Any) -> float | None:
    """The wanted side as a number: ids read with intval, dates already timestamps."""
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        return float(wanted)
    if isinstance(actual, int):
        return float(intval(wanted))
    return None  # a timestamp against text that is not a date


def _compare(actual: Any, wanted: Any, op: str) -> bool:
    left: Any
    right: Any
    if actual is None or isinstance(actual, list):
        return False
    if isinstance(actual, int | float) and not isinstance(actual, bool):
        left, right = actual, _number(actual, wanted)
        if right is None:
            return False
    else:
        left, right = str(actual).casefold(), str(wanted).casefold()
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    if op == "<":
        return bool(left < right)
    return bool(left <= right)


Clause = Callable[[dict[str, Any]], bool]


def _clause(portal: Portal, op: str, field: str, value: Any) -> Clause:
    def actual(row: dict[str, Any]) -> Any:
        return _field_value(portal, row, field)

    if field in DATE_FIELDS and isinstance(value, str) and value:
        moment = parse_datetime(value, portal.zone)
        value = moment.timestamp() if moment else value
    negate = op.startswith("!")
    core = op.lstrip("!")
    if core in (">", ">=", "<", "<="):
        return lambda row: _compare(actual(row), value, core) != negate
    if core in ("%", "?"):
        needle = str(value).casefold()
        return lambda row: (needle in str(actual(row) or "").casefold()) != negate
    if core == "" and isinstance(value, str) and "%" in value:
        return lambda row: _like(value, str(actual(row) or "")) != negate
    # "", "=", "@", "!=", "!@": equality, lists meaning IN
    return lambda row: _equal(actual(row), value) != negate


def _search_clause(text: str) -> Clause:
    words = [word.casefold() for word in str(text).split() if word]

    def matches(row: dict[str, Any]) -> bool:
        haystack = " ".join(
            str(row.get(key) or "")
            for key in ("NAME", "LAST_NAME", "SECOND_NAME", "EMAIL", "WORK_POSITION")
        ).casefold()
        return all(word in haystack for word in words)

    return matches


def user_filter(
    portal: Portal, query: dict[str, Any], allowed: list[str]
) -> list[Clause]:
    """The server's `prepareUserFilter`: allowed keys only, unknown ones dropped."""
    clauses: list[Clause] = []
    for raw_key, value in query.items():
        key = str(raw_key)
        op = ""
        match = _OPERATOR.match(key)
        if match:
            op, key = match.group(1), match.group(2)
        if key not in allowed:
            continue
        if key in ("HAS_DEPARTAMENT", "NAME_SEARCH", "FIND"):
            if key == "HAS_DEPARTAMENT":
                if value == "Y":
                    clauses.append(lambda row: bool(departments_of(row)))
            elif value:
                clauses.append(_search_clause(str(value)))
            continue
        if op == "" and key in ("USER_TYPE", "ACTIVE"):
            op = "="
        clauses.append(_clause(portal, op, key, _prepared_value(key, value)))
    return clauses


def _sort_value(portal: Portal, row: dict[str, Any], field: str) -> tuple[int, Any]:
    value = _field_value(portal, row, field)
    if value is None or value == "":
        return (0, "")
    if isinstance(value, list):
        return (1, tuple(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, value)
    return (1, str(value).casefold())


@method("user.get", scope="user_brief", upper_query=True)
def user_get(call: Call) -> MethodResult:
    portal = call.portal
    query = call.params
    sort, order = query.get("SORT"), query.get("ORDER")
    select = query.get("SELECT")
    if isinstance(query.get("FILTER"), dict):
        # "a mistake kept for backward compatibility": FILTER replaces the query.
        query = query["FILTER"]

    allowed = allowed_user_fields(call.auth.scopes)
    clauses = user_filter(portal, query, [*allowed, *FILTER_ONLY_KEYS])
    rows = [
        row
        for row in portal.table("user")
        if user_type(row) not in HIDDEN_USER_TYPES
        and all(clause(row) for clause in clauses)
    ]
    rows = _ordered(portal, rows, sort, order, allowed)

    offset = max(call.start, 0)
    page = rows[offset : offset + PAGE_SIZE]
    if not page:
        return MethodResult([])
    answers = [user_answer(row, _shown_fields(row, allowed, select)) for row in page]
    if call.start == -1:
        return MethodResult(answers, total=0)
    total = len(rows)
    following = offset + len(page)
    return MethodResult(
        answers, total=total, next=following if following < total else None
    )


def _ordered(
    portal: Portal,
    rows: list[dict[str, Any]],
    sort: Any,
    order: Any,
    allowed: list[str],
) -> list[dict[str, Any]]:
    """`SORT` and `ORDER` together, else by ID ascending (`prepareUserGetOrder`)."""
    by_id = sorted(rows, key=lambda row: intval(row.get("ID")))
    if not (isinstance(sort, str) and sort and isinstance(order, str) and order):
        return by_id
    field = sort.upper()
    if field not in allowed:
        return by_id
    descending = order.upper() == "DESC"
    return sorted(
        by_id, key=lambda row: _sort_value(portal, row, field), reverse=descending
    )


def _shown_fields(row: dict[str, Any], allowed: list[str], select: Any) -> list[str]:
    fields = [*allowed[:-1], *custom_user_fields(row), allowed[-1]]
    if not isinstance(select, list) or not select or "*" in select:
        return fields
    wanted = {str(item) for item in select}
    chosen = [field for field in fields if field in wanted]
    if "UF_*" in wanted:
        chosen += [f for f in fields if f.startswith("UF_") and f not in chosen]
    return chosen


# -- user.fields --------------------------------------------------------------------

# `User::getFields` answers each allowed key with its label from the admin pages' lang
# files; keys without one are their own label. English labels as a portal shows them.
USER_FIELD_LABELS = {
    "ID": "ID", "ACTIVE": "Active", "NAME": "First name", "LAST_NAME": "Last name",
    "SECOND_NAME": "Second name", "TITLE": "Salutation", "EMAIL": "E-mail",
    "LAST_LOGIN": "Last login", "DATE_REGISTER": "Registered on",
    "TIME_ZONE": "Time zone", "IS_ONLINE": "Online", "TIMESTAMP_X": "Modified on",
    "PERSONAL_GENDER": "Gender", "PERSONAL_BIRTHDAY": "Date of birth",
    "PERSONAL_PHOTO": "Photo", "PERSONAL_PHONE": "Phone",
    "PERSONAL_MOBILE": "Mobile", "PERSONAL_CITY": "City",
    "WORK_PHONE": "Work phone", "WORK_COMPANY": "Company",
    "WORK_POSITION": "Position", "WORK_DEPARTMENT": "Department",
    "UF_DEPARTMENT": "Departments", "USER_TYPE": "User type",
}  # fmt: skip


@method("user.fields", scope="user_brief")
def user_fields_method(call: Call) -> MethodResult:
    """`{KEY: label}` for every key `user.get` may show with the caller's scopes."""
    allowed = allowed_user_fields(call.auth.scopes)
    if "user" in call.auth.scopes:
        custom = {key for row in call.portal.table("user") for key in row}
        allowed += sorted(key for key in custom if key.startswith("UF_USR_"))
    return MethodResult({key: USER_FIELD_LABELS.get(key, key) for key in allowed})


@method("user.current", scope="user_brief")
def user_current(call: Call) -> MethodResult:
    row = call.portal.table("user").get(call.user_id)
    if row is None:
        return MethodResult([])
    allowed = allowed_user_fields(call.auth.scopes)
    return MethodResult(user_answer(row, _shown_fields(row, allowed, None)))


# -- department.get -----------------------------------------------------------------

DEPARTMENT_FIELDS = ("ID", "NAME", "SORT", "PARENT", "UF_HEAD")


def department_answer(row: dict[str, Any]) -> dict[str, Any]:
    """`getDeptData`: ID, NAME, SORT as int, PARENT and UF_HEAD only when set."""
    answer: dict[str, Any] = {"ID": str(row.get("ID")), "NAME": row.get("NAME") or ""}
    answer["SORT"] = intval(row.get("SORT"), 500)
    for key in ("PARENT", "UF_HEAD"):
        value = row.get(key)
        if value not in (None, "", 0, "0", False):
            answer[key] = str(value)
    return answer


def _department_clause(field: str, value: Any) -> Clause:
    if field == "NAME":
        wanted = str(value).casefold()
        return lambda row: str(row.get("NAME") or "").casefold() == wanted
    targets = {intval(item) for item in (value if isinstance(value, list) else [value])}
    return lambda row: intval(row.get(field)) in targets


def _tree_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`LEFT_MARGIN` order: a department, then its subtree; siblings by SORT."""
    ids = {intval(row.get("ID")) for row in rows}
    children: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        parent = intval(row.get("PARENT"))
        children.setdefault(parent if parent in ids else 0, []).append(row)
    for siblings in children.values():
        siblings.sort(key=lambda row: (intval(row.get("SORT"), 500), intval(row["ID"])))

    ordered: list[dict[str, Any]] = []
    stack = list(reversed(children.get(0, [])))
    while stack:
        row = stack.pop()
        ordered.append(row)
        stack.extend(reversed(children.get(intval(row.get("ID")), [])))
    return ordered


@method("department.get", scope="department")
def department_get(call: Call) -> MethodResult:
    query = call.params
    if isinstance(query.get("FILTER"), dict):
        query = query["FILTER"]
    # Filter keys are matched exactly (UPPER); `sort`/`order` in any case.
    clauses = [
        _department_clause(key, value)
        for key, value in query.items()
        if key in DEPARTMENT_FIELDS
    ]
    rows = [
        row
        for row in call.portal.table("department")
        if all(clause(row) for clause in clauses)
    ]
    rows = _department_order(rows, {str(k).upper(): v for k, v in query.items()})
    page, total, following = legacy_page(rows, call.start)
    return MethodResult(
        [department_answer(row) for row in page], total=total, next=following
    )


def _department_order(
    rows: list[dict[str, Any]], query: dict[str, Any]
) -> list[dict[str, Any]]:
    sort = query.get("SORT")
    field = sort.upper() if isinstance(sort, str) else ""
    if field not in DEPARTMENT_FIELDS:
        return _tree_order(rows)
    order = query.get("ORDER")
    descending = isinstance(order, str) and order.upper() == "DESC"
    if field == "NAME":
        return sorted(
            rows, key=lambda row: str(row.get("NAME") or "").casefold(),
            reverse=descending,
        )  # fmt: skip
    return sorted(rows, key=lambda row: intval(row.get(field)), reverse=descending)


def iso_now(portal: Portal) -> str:
    return datetime.now(portal.zone).replace(microsecond=0).isoformat()
