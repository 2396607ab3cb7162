"""List machinery shared by the legacy `crm.*.list` methods.

Pages (reference §3): 50 rows, `page = intval(start / 50) + 1` so a `start` that is not
a multiple of 50 is rounded down; `total` and `next` only while rows remain. Legacy
lists answer a `start` past the end with page 1 again (and its `next`), and `start=-1`
with the first 50 rows, `"total": 0` and no `next` (no count is made). Engine lists use
`engine_window`: `next = offset + count` while below `total`, past the end empty, and
neither `total` nor `next` for `start=-1`.

Order: keys are upper-cased, unknown fields ignored, any direction but `ASC` sorts
`DESC`, NULLs first when ascending (MySQL); ties fall back to ID ascending. Callers
pass `sort_overrides` for keys sorted by something else (`STAGE_ID` by the stage's
`SORT`).

Select: `*` is every standard field (no user fields, no multifields), `UF_*` every
user field, nothing means both; standard names are upper-cased, unknown names are
ignored, multifields (and other `on_request` fields) appear only when named exactly,
and `ID` is always returned.

The keyset scan `{">ID": n}` ordered by ID with `start=-1` never looks at rows below
`n` (bisect) and stops after 50 matches.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

from sandbox.fields import FieldInfo
from sandbox.filters import (
    CompiledFilter,
    Group,
    column_source,
    compile_filter,
    first_matches,
    full_column,
    legacy_filter,
)
from sandbox.phpform import intval
from sandbox.protocol import MethodResult
from sandbox.state import Table

PAGE_SIZE: Final = 50
NO_COUNT: Final = -1

RowRenderer = Callable[[int, dict[str, Any]], dict[str, Any]]
# Maps a field's parsed value to the value it sorts by (STAGE_ID -> stage SORT).
SortOverride = Callable[[Any], Any]


# -- pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Which rows a page holds and what the envelope says about the rest."""

    offset: int
    total: int | None
    next: int | None


def legacy_window(start: int, total: int | None) -> Window:
    """The legacy page for `start` over `total` rows (None: not counted)."""
    if start == NO_COUNT or total is None:
        return Window(0, 0, None)
    page = max(int(start / PAGE_SIZE), 0) + 1
    pages = -(-total // PAGE_SIZE)
    if page > pages:
        page = 1  # past the end: the server hands out page 1 again
    next_start = page * PAGE_SIZE if page < pages else None
    return Window((page - 1) * PAGE_SIZE, total, next_start)


def engine_window(start: int, total: int | None) -> Window:
    """The engine page for `start`: past the end is empty, `-1` emits neither key."""
    if start == NO_COUNT or total is None:
        return Window(0, None, None)
    offset = max(int(start / PAGE_SIZE), 0) * PAGE_SIZE
    count = max(min(PAGE_SIZE, total - offset), 0)
    next_start = offset + count if offset + count < total else None
    return Window(offset, total, next_start)


def slice_page(ids: Sequence[int], offset: int) -> list[int]:
    return list(ids[offset : offset + PAGE_SIZE])


# -- order ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderKey:
    field: str
    descending: bool


def parse_order(
    raw: Any,
    fields: Mapping[str, FieldInfo],
    sortable: Callable[[FieldInfo], bool] | None = None,
) -> list[OrderKey]:
    """Legacy `order`: upper-cased keys, unknown ones dropped, non-ASC means DESC."""
    if not isinstance(raw, dict):
        return []
    keys: list[OrderKey] = []
    for raw_key, direction in raw.items():
        name = str(raw_key).upper()
        info = fields.get(name)
        if info is None or info.kind in ("none", "multifield", "bindings"):
            continue
        if sortable is not None and not sortable(info):
            continue
        descending = not (isinstance(direction, str) and direction.upper() == "ASC")
        if any(key.field == name for key in keys):
            continue
        keys.append(OrderKey(name, descending))
    return keys


_LOWEST: Final = float("-inf")


def _sort_column(
    table: Table, info: FieldInfo, override: SortOverride | None
) -> dict[int, Any]:
    """Row id -> sort value, NULL replaced by a value below every other (MySQL)."""
    key, parse = column_source(info)
    values = full_column(table, key, parse)
    if override is not None:
        return dict(zip(values.keys(), map(override, values.values()), strict=True))
    lowest: Any = "" if info.kind in ("string", "char") else _LOWEST
    cache = table.cache(f"\x00sort{key}")
    if not cache:
        cache.update(
            {row_id: lowest if v is None else v for row_id, v in values.items()}
        )
    elif len(cache) != len(values):
        for row_id, value in values.items():
            if row_id not in cache:
                cache[row_id] = lowest if value is None else value
    return cache


def order_ids(
    table: Table,
    ids: list[int],
    order: Sequence[OrderKey],
    fields: Mapping[str, FieldInfo],
    *,
    limit: int | None = None,
    sort_overrides: Mapping[str, SortOverride] | None = None,
) -> list[int]:
    """Ids sorted by the order keys (ids arrive ascending: ties stay by ID).

    With `limit`, only that many leading ids are guaranteed to be in place: the
    first key picks the candidates (all ties at the boundary kept), the rest sort.
    """
    overrides = sort_overrides or {}
    keys = list(order)
    while keys and keys[-1].field == "ID" and "ID" not in overrides:
        # The trailing ID key is the tie-break the ascending ids already give.
        if keys.pop().descending:
            ids = ids[::-1]
    if not keys:
        return ids
    getters: list[tuple[Callable[[int], Any], bool]] = []
    for key in keys:
        if key.field == "ID" and "ID" not in overrides:
            getters.append((_identity, key.descending))
            continue
        column = _sort_column(table, fields[key.field], overrides.get(key.field))
        getters.append((column.__getitem__, key.descending))
    if limit is not None and limit < len(ids) // 4:
        ids = _leading_candidates(ids, *getters[0], limit)
    ordered = list(ids)
    for getter, descending in reversed(getters):
        ordered.sort(key=getter, reverse=descending)
    return ordered


def _identity(row_id: int) -> int:
    return row_id


def _leading_candidates(
    ids: list[int], getter: Callable[[int], Any], descending: bool, limit: int
) -> list[int]:
    """Ids whose first sort value can reach the first `limit` places."""
    pick = heapq.nlargest if descending else heapq.nsmallest
    boundary = pick(limit, map(getter, ids))[-1]
    if descending:
        return [row_id for row_id in ids if getter(row_id) >= boundary]
    return [row_id for row_id in ids if getter(row_id) <= boundary]


# -- select ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Projection:
    """The fields one list answer carries, in output order."""

    standard: tuple[str, ...]
    user: tuple[str, ...]
    on_request: tuple[str, ...]


def parse_select(
    raw: Any,
    fields: Mapping[str, FieldInfo],
    *,
    on_request: frozenset[str] = frozenset(),
    hidden: frozenset[str] = frozenset(),
    standard_order: Sequence[str] = (),
) -> Projection:
    """Legacy `select` (see the module docstring); `hidden` never appear.

    `standard_order` is the order `*` prints standard fields in (default: `fields`).
    """
    names = _select_names(raw)
    eligible = [
        name
        for name, info in fields.items()
        if not info.dynamic
        and not info.multiple
        and name not in on_request
        and name not in hidden
    ]
    first = [name for name in standard_order if name in eligible]
    all_standard = _unique(first + eligible)
    all_user = tuple(name for name, info in fields.items() if info.dynamic)
    if not names:
        return Projection(all_standard, all_user, ())

    standard: list[str] = []
    user: list[str] = []
    requested: list[str] = []
    for name in names:
        if name == "*":
            standard.extend(all_standard)
        elif name == "UF_*":
            user.extend(all_user)
        elif name in on_request and name in fields:
            requested.append(name)
        else:
            upper = name.upper()
            info = fields.get(upper)
            if info is None or upper in hidden or upper in on_request:
                continue
            if info.dynamic:
                user.append(upper)
            elif not info.multiple:
                standard.append(upper)
    if "ID" not in standard:
        standard.append("ID")
    return Projection(_unique(standard), _unique(user), _unique(requested))


def _select_names(raw: Any) -> list[str]:
    # A select that is not an array is replaced by an empty one: all fields.
    if isinstance(raw, dict):
        raw = list(raw.values())
    if not isinstance(raw, list):
        return []
    return [value for value in raw if isinstance(value, str)]


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# -- one legacy list call -------------------------------------------------------------


@dataclass
class LegacyList:
    """Everything one legacy list call needs besides its raw parameters."""

    table: Table
    fields: Mapping[str, FieldInfo]
    zone: ZoneInfo
    render: RowRenderer
    default_order: tuple[OrderKey, ...] = ()
    sort_overrides: Mapping[str, SortOverride] | None = None
    on_request: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    standard_order: tuple[str, ...] = ()
    # Turns a row-id list into the rows to answer (the activity BINDINGS join
    # repeats rows bound to several listed owners).
    expand: Callable[[list[int]], list[int]] | None = None

    def run(
        self, raw_order: Any, raw_filter: Any, raw_select: Any, start: int
    ) -> MethodResult:
        compiled = self.compile(raw_filter)
        order = parse_order(raw_order, self.fields) or list(self.default_order)
        projection = parse_select(
            raw_select,
            self.fields,
            on_request=self.on_request,
            hidden=self.hidden,
            standard_order=self.standard_order,
        )
        page_ids, window = self.page(compiled, order, start)
        rows = [
            self.render(row_id, self.project(row_id, projection)) for row_id in page_ids
        ]
        return MethodResult(rows, window.total, window.next)

    def compile(self, raw_filter: Any) -> CompiledFilter:
        return compile_filter(
            legacy_filter(raw_filter, self.fields), self.fields, self.zone
        )

    def page(
        self, compiled: CompiledFilter, order: Sequence[OrderKey], start: int
    ) -> tuple[list[int], Window]:
        table = self.table
        by_id = not order or (len(order) == 1 and order[0].field == "ID")
        if start == NO_COUNT and by_id and self.expand is None:
            candidates = compiled.candidates(table)
            if order and order[0].descending:
                candidates = candidates[::-1]
            found = first_matches(compiled, table, candidates, PAGE_SIZE)
            return found, legacy_window(NO_COUNT, None)

        matched = compiled.select(table, compiled.candidates(table))
        if self.expand is not None:
            matched = self.expand(matched)
        total = None if start == NO_COUNT else len(matched)
        window = legacy_window(start, total)
        ordered = order_ids(
            table,
            matched,
            order,
            self.fields,
            limit=window.offset + PAGE_SIZE,
            sort_overrides=self.sort_overrides,
        )
        return slice_page(ordered, window.offset), window

    def project(self, row_id: int, projection: Projection) -> dict[str, Any]:
        row = self.table.rows[row_id]
        out: dict[str, Any] = {}
        for name in projection.standard:
            out[name] = output_value(self.fields[name], row.get(name))
        for name in projection.user:
            out[name] = output_value(self.fields[name], row.get(name))
        for name in projection.on_request:
            value = row.get(name)
            if self.fields[name].kind == "multifield":
                if value:
                    out[name] = value
            else:
                out[name] = value if value is not None else []
        return out


def output_value(info: FieldInfo, value: Any) -> Any:
    """A stored value as the answer carries it (missing dates print as "")."""
    if value is None and info.kind in ("date", "datetime") and not info.multiple:
        return ""
    if value is None and info.multiple:
        return []
    if value is None and info.type == "object":
        return []
    return value


def start_of(params: Mapping[str, Any]) -> int:
    """`start` as the REST server reads it (intval)."""
    return intval(params.get("start"))


__all__ = [
    "NO_COUNT",
    "PAGE_SIZE",
    "Group",
    "LegacyList",
    "OrderKey",
    "Projection",
    "Window",
    "engine_window",
    "legacy_window",
    "order_ids",
    "output_value",
    "parse_order",
    "parse_select",
    "slice_page",
]
