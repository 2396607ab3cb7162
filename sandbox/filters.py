"""The legacy filter grammar (reference §8), compiled to fast predicates over rows.

Semantics follow the server code (`CSqlUtil::GetFilterOperation` and `PrepareWhere`,
`CCrmRestProxyBase::internalizeFilterFields`), including its surprises:

- A key is `[!][+]<op><FIELD>`; `!` negates, `+` adds "or NULL (or 0 / empty)"; the
  operators are `>= > <= < @ =% %= % ? =` (none means `=`), so `!=X`, `!@X`, `!%X`
  are `!` plus an operator. Keys whose field is unknown, miscased or not filterable
  are dropped silently: the filter widens.
- Numbers: `intval`/`floatval` of the value (doubles accept `,` as the decimal mark);
  `0` with an operator containing `=` means `IS NULL OR = 0`; negation matches NULL
  (`!ASSIGNED_BY_ID: 5` finds rows without a responsible too). LIKE on numbers is `=`.
- Strings compare case-insensitively (MySQL collation). `""` with `=` means `IS NULL
  OR empty`. `%` is a substring match, `=%`/`%=` take the caller's own `%`/`_`
  wildcards, `?` is a small search syntax (`&`/space AND, `|` OR, `~` NOT). The server
  ignores `!` on LIKE and search keys (`!%TITLE` equals `%TITLE`); engine callers can
  pass `strict_negation=True` to negate them as the ORM does.
- `crm_status`, company and contact fields turn LIKE into `=` (and lose `!`/`+`).
- Datetimes and dates accept only `= < > <= >=` (others become `=`); values are read
  with `parse_moment` (naive strings are portal-local); an unparsable or empty value
  means `IS NULL`. Date fields compare the date only.
- `@` takes a list; an empty list adds no condition at all; `!@` does not match NULL.
  A list given to any other operator means "any of" (all of, when negated).
- `PHONE`, `EMAIL`, `WEB`, `IM` work only as bare keys: the value (the first one of a
  list, trimmed) is compared exactly unless it contains `%` (a LIKE pattern).
- Boolean user fields match `Y`, `1`, `true`/`1` JSON and `N`, `0`, `false`; any other
  text (`True`, `yes`) matches nothing, as the portal answers fast-bitrix24's batched
  `filter[UF_CRM_IS_HOT]=True` with empty pages (known fault B24-1). A bare user-field
  key with an empty value is dropped.

API (the `crm.item.list` helper reuses it with camelCase names mapped to UPPER ones):

    parse_key(key) -> KeyParts(field, op, negative, or_null)
    Condition(field, op, value, negative=False, or_null=False)   # op in OPERATORS
    Group(items, logic="AND" | "OR")                            # nests freely
    legacy_filter(raw_filter, fields) -> Group      # the legacy REST layer's rules
    compile_filter(node, fields, zone, strict_negation=False) -> CompiledFilter
    CompiledFilter.select(table, ids) -> list[int]  # column-wise, keeps id order
    CompiledFilter.matcher(table) -> (row_id) -> bool    # lazy, for early stops
    CompiledFilter.candidates(table) -> ids (bisected above a `>ID` bound)

`fields` maps UPPER names to `sandbox.fields.FieldInfo`; a Condition naming a field not
in it is ignored. Parsed values are cached per row in the table (`Table.cache`), so a
second filter over the same column costs one dict lookup per row.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple
from zoneinfo import ZoneInfo

from sandbox.fields import (
    FieldInfo,
    parse_input_date,
    parse_moment,
    php_floatval,
    php_string,
    stored_parser,
)
from sandbox.phpform import intval
from sandbox.state import Table

OPERATORS: Final = ("=", ">=", ">", "<=", "<", "IN", "LIKE", "RLIKE", "LLIKE", "QUERY")
_LIKES = frozenset({"LIKE", "RLIKE", "LLIKE", "QUERY"})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
# Checked in this order, as GetFilterOperation does; full-text forms read as search.
_PREFIXES: Final = (
    (">=", ">="), (">", ">"), ("<=", "<="), ("<", "<"), ("@", "IN"),
    ("=%", "RLIKE"), ("%=", "LLIKE"), ("%", "LIKE"), ("?", "QUERY"),
    ("*=", "QUERY"), ("*%", "QUERY"), ("*", "QUERY"), ("=", "="),
)  # fmt: skip
_BARE_MULTIFIELDS = frozenset({"PHONE", "EMAIL", "WEB", "IM"})
_LIKE_AS_EQUAL_TYPES = frozenset({"crm_status", "crm_company", "crm_contact"})
_ZERO = {"int": 0, "double": 0.0, "bool": 0, "string": "", "char": ""}

Predicate = Callable[[Any], bool]


class KeyParts(NamedTuple):
    field: str
    op: str
    negative: bool
    or_null: bool


def parse_key(key: str) -> KeyParts:
    """Split a filter key into field, operator, `!` and `+`, as the server does."""
    negative = key.startswith("!")
    if negative:
        key = key[1:]
    or_null = key.startswith("+")
    if or_null:
        key = key[1:]
    for prefix, op in _PREFIXES:
        if key.startswith(prefix):
            return KeyParts(key[len(prefix) :], op, negative, or_null)
    return KeyParts(key, "=", negative, or_null)


@dataclass(frozen=True)
class Condition:
    """One comparison: `field` (UPPER name), an operator of OPERATORS, a value."""

    field: str
    op: str
    value: Any
    negative: bool = False
    or_null: bool = False


@dataclass(frozen=True)
class Group:
    """Conditions and groups joined by AND (the default) or OR."""

    items: tuple[Condition | Group, ...] = ()
    logic: str = "AND"


Node = Condition | Group


# -- the legacy REST layer ------------------------------------------------------------


def legacy_filter(raw: Any, fields: Mapping[str, FieldInfo]) -> Group:
    """Conditions of a legacy `filter`, after the REST layer drops and rewrites keys."""
    if not isinstance(raw, dict):
        return Group()
    conditions: list[Node] = []
    for raw_key, value in raw.items():
        key = str(raw_key)
        parts = parse_key(key)
        info = fields.get(parts.field)
        if info is None or info.kind == "none":
            continue
        condition = _legacy_condition(key, parts, info, value)
        if condition is not None:
            conditions.append(condition)
    return Group(tuple(conditions))


def _legacy_condition(
    key: str, parts: KeyParts, info: FieldInfo, value: Any
) -> Condition | None:
    if info.kind == "multifield":
        return _multifield_condition(key, info, value)
    if info.kind == "bindings":
        return Condition(info.name, "=", value) if key == info.name else None
    op, negative, or_null = parts.op, parts.negative, parts.or_null
    if info.type in _LIKE_AS_EQUAL_TYPES and op in ("LIKE", "RLIKE", "LLIKE"):
        # The server rewrites the key to `={FIELD}`: prefixes are lost.
        op, negative, or_null = "=", False, False
    if info.dynamic and key == info.name:
        if value is None or value == "":
            return None
        if info.kind == "string" and info.show_filter == "E":
            op = "LIKE"
    return Condition(info.name, op, value, negative, or_null)


def _multifield_condition(key: str, info: FieldInfo, value: Any) -> Condition | None:
    if key != info.name or key not in _BARE_MULTIFIELDS:
        return None
    if isinstance(value, list):
        value = value[0] if value else ""
    elif isinstance(value, dict):
        value = next(iter(value.values()), "")
    text = php_string(value).strip()
    return Condition(info.name, "RLIKE", text) if text else None


# -- compiling ------------------------------------------------------------------------


class _Leaf(NamedTuple):
    key: str
    parse: Callable[[dict[str, Any]], Any]
    test: Predicate


@dataclass
class _Branch:
    logic: str
    children: list[_Leaf | _Branch] = field(default_factory=list)


@dataclass
class CompiledFilter:
    """A filter ready to run against a table; `root` None matches every row."""

    root: _Leaf | _Branch | None
    id_floor: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.root is None

    def candidates(self, table: Table) -> list[int]:
        """Row ids worth testing: all, or only those above a `>ID` bound (bisect)."""
        if self.id_floor is None:
            return table.ids()
        return table.ids_above(self.id_floor)

    def select(self, table: Table, ids: Sequence[int]) -> list[int]:
        """The ids that match, in the order given; evaluated column by column."""
        if self.root is None:
            return list(ids)
        return _select(self.root, table, list(ids))

    def matcher(self, table: Table) -> Callable[[int], bool]:
        """A per-row test that parses (and caches) only the rows it is asked about."""
        if self.root is None:
            return lambda row_id: True
        return _matcher(self.root, table)


def compile_filter(
    node: Node,
    fields: Mapping[str, FieldInfo],
    zone: ZoneInfo,
    *,
    strict_negation: bool = False,
) -> CompiledFilter:
    compiler = _Compiler(fields, zone, strict_negation)
    root = compiler.node(node)
    return CompiledFilter(root, _id_floor(node))


def _id_floor(node: Node) -> int | None:
    """The largest `ID > n` bound among the top-level AND conditions."""
    if isinstance(node, Condition):
        node = Group((node,))
    if node.logic.upper() != "AND":
        return None
    floor: int | None = None
    for item in node.items:
        if not isinstance(item, Condition) or item.field != "ID":
            continue
        if item.negative or item.or_null or isinstance(item.value, list | dict):
            continue
        if item.op == ">":
            bound = intval(item.value)
        elif item.op == ">=":
            bound = intval(item.value) - 1
        else:
            continue
        floor = bound if floor is None else max(floor, bound)
    return floor


@dataclass
class _Compiler:
    fields: Mapping[str, FieldInfo]
    zone: ZoneInfo
    strict_negation: bool

    def node(self, node: Node) -> _Leaf | _Branch | None:
        if isinstance(node, Condition):
            return self.leaf(node)
        children = [child for item in node.items if (child := self.node(item))]
        if not children:
            return None
        logic = "OR" if node.logic.upper() == "OR" else "AND"
        if len(children) == 1:
            return children[0]
        return _Branch(logic, children)

    def leaf(self, condition: Condition) -> _Leaf | None:
        info = self.fields.get(condition.field)
        if info is None or info.kind == "none":
            return None
        test = self.test(info, condition)
        if test is None:
            return None
        key, parse = column_source(info)
        return _Leaf(key, parse, test)

    def test(self, info: FieldInfo, condition: Condition) -> Predicate | None:
        if info.kind == "multifield":
            pattern = like_pattern(php_string(condition.value))
            return lambda values: any(pattern(value) for value in values)
        if info.kind == "bindings":
            pairs = binding_pairs(condition.value)
            return lambda bound: not bound.isdisjoint(pairs)
        test = self.scalar_test(info, condition)
        if test is None or not info.multiple:
            return test
        return _any_element(test)

    def scalar_test(self, info: FieldInfo, condition: Condition) -> Predicate | None:
        kind = info.kind
        negative = condition.negative
        values = _as_values(condition.value)
        if condition.op == "IN":
            tests = [self.in_test(kind, values, negative)] if values else []
        else:
            tests = [self.value_test(kind, condition.op, v, negative) for v in values]
        combined = _combine(tests, negative)
        if not condition.or_null:
            return combined
        return _with_null(combined, _ZERO.get(kind), negative)

    def value_test(self, kind: str, op: str, value: Any, negative: bool) -> Predicate:
        if kind in ("int", "double", "bool"):
            return self.number_test(kind, op, value, negative)
        if kind in ("string", "char"):
            return self.text_test(op, value, negative)
        return self.time_test(kind, op, value, negative)

    def number_test(self, kind: str, op: str, value: Any, negative: bool) -> Predicate:
        if op in _LIKES:
            op = "="
        number: float | None
        if kind == "bool":
            number = boolean_filter_value(value)
            if number is None:
                return (lambda v: True) if negative else (lambda v: False)
        elif kind == "int":
            number = intval(value)
        else:
            number = php_floatval(php_string(value).replace(",", "."))
        compare = _COMPARE[op]
        if number == 0 and "=" in op:
            if negative:
                return lambda v: v is not None and not compare(v, 0)
            return lambda v: v is None or compare(v, 0)
        return _compare_test(compare, number, negative)

    def text_test(self, op: str, value: Any, negative: bool) -> Predicate:
        text = php_string(value)
        if op in _LIKES:
            test = _like_test(op, text)
            if negative and self.strict_negation:
                return lambda v: not test(v)
            return test
        compare = _COMPARE[op]
        if text == "" and "=" in op:
            if negative:
                return lambda v: v is not None and v != "" and not compare(v, "")
            return lambda v: v is None or v == "" or compare(v, "")
        return _compare_test(compare, text.casefold(), negative)

    def time_test(self, kind: str, op: str, value: Any, negative: bool) -> Predicate:
        compare = _COMPARE.get(op, operator.eq)
        point = self.time_point(kind, value)
        if point is None:
            # Unparsable or empty: the server compares with IS NULL.
            return (lambda v: v is not None) if negative else (lambda v: v is None)
        return _compare_test(compare, point, negative)

    def time_point(self, kind: str, value: Any) -> float | None:
        if kind == "datetime":
            moment = parse_moment(value, self.zone)
            return None if moment is None else moment.timestamp()
        if kind == "date":
            day = parse_input_date(value, self.zone)
            return None if day is None else day.toordinal()
        return None

    def in_test(self, kind: str, values: list[Any], negative: bool) -> Predicate:
        members: set[Any]
        if kind == "int":
            members = {intval(v) for v in values}
        elif kind == "bool":
            members = {n for v in values if (n := boolean_filter_value(v)) is not None}
        elif kind == "double":
            members = {php_floatval(php_string(v).replace(",", ".")) for v in values}
        elif kind in ("string", "char"):
            members = {php_string(v).casefold() for v in values}
        else:
            points = (self.time_point(kind, v) for v in values)
            members = {point for point in points if point is not None}
        if negative:
            # NOT (F IN (...)) is NULL for a NULL F: such rows do not match.
            return lambda v: v is not None and v not in members
        return lambda v: v in members


def _as_values(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _combine(tests: list[Predicate], negative: bool) -> Predicate | None:
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if negative:
        return lambda v: all(test(v) for test in tests)
    return lambda v: any(test(v) for test in tests)


def _with_null(test: Predicate | None, zero: Any, negative: bool) -> Predicate:
    if negative:

        def present(v: Any) -> bool:
            return v is not None and (zero is None or v != zero)

        if test is None:
            return present
        return lambda v: test(v) and present(v)

    def empty(v: Any) -> bool:
        return v is None or (zero is not None and v == zero)

    if test is None:
        return empty
    return lambda v: test(v) or empty(v)


def _compare_test(
    compare: Callable[[Any, Any], bool], operand: Any, negative: bool
) -> Predicate:
    if negative:
        return lambda v: v is None or not compare(v, operand)
    if compare is operator.eq:
        return lambda v: v == operand
    return lambda v: v is not None and compare(v, operand)


def _any_element(test: Predicate) -> Predicate:
    def any_element(values: Any) -> bool:
        if not values:
            return test(None)
        return any(test(value) for value in values)

    return any_element


def _like_test(op: str, text: str) -> Predicate:
    if text == "":
        return lambda v: v is None or v == ""
    if op == "LIKE":
        needle = text.casefold()
        return lambda v: v is not None and needle in v
    if op == "QUERY":
        return search_query(text)
    pattern = like_pattern(text)
    return lambda v: v is not None and pattern(v)


def like_pattern(pattern: str) -> Callable[[str], bool]:
    """SQL LIKE (`%` any run, `_` one character), case-insensitive, whole value."""
    parts = []
    for char in pattern.casefold():
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    compiled = re.compile("".join(parts), re.DOTALL)
    return lambda value: compiled.fullmatch(value) is not None


def search_query(text: str) -> Predicate:
    """The `?` operator: `|` separates alternatives, `&` or spaces join terms, `~`
    negates a term; each term is a case-insensitive substring."""
    alternatives: list[list[tuple[bool, str]]] = []
    for alternative in text.casefold().split("|"):
        terms = []
        for word in re.split(r"[&\s]+", alternative):
            word = word.strip("*%()")
            negated = word.startswith(("~", "!"))
            word = word.lstrip("~!")
            if word:
                terms.append((negated, word))
        if terms:
            alternatives.append(terms)
    if not alternatives:
        return lambda v: True

    def matches(v: Any) -> bool:
        if v is None:
            return False
        return any(
            all((word in v) != negated for negated, word in terms)
            for terms in alternatives
        )

    return matches


def boolean_filter_value(value: Any) -> int | None:
    """A boolean user field's filter value: 1, 0, or None when it matches nothing."""
    if value is True or value is False:
        return int(value)
    if isinstance(value, int | float):
        return 1 if value > 0 else 0
    text = php_string(value).strip()
    if text in ("Y", "y", "1"):
        return 1
    if text in ("N", "n", "0", ""):
        return 0
    return None


def binding_pairs(value: Any) -> frozenset[tuple[int, int]]:
    """`[{"OWNER_TYPE_ID": 2, "OWNER_ID": 5}, …]` (or one such dict) as pairs."""
    items = [value] if isinstance(value, dict) and "OWNER_ID" in value else value
    pairs = set()
    for item in _as_values(items):
        if isinstance(item, dict):
            pairs.add((intval(item.get("OWNER_TYPE_ID")), intval(item.get("OWNER_ID"))))
    return frozenset(pairs)


def row_bindings(row: Mapping[str, Any]) -> frozenset[tuple[int, int]]:
    """The (owner type, owner id) pairs an activity row is bound to: its `BINDINGS`
    when stored, its owner and the entities of its communications."""
    pairs = set()
    for item in row.get("BINDINGS") or ():
        if isinstance(item, dict):
            pairs.add((intval(item.get("OWNER_TYPE_ID")), intval(item.get("OWNER_ID"))))
    for item in row.get("COMMUNICATIONS") or ():
        if isinstance(item, dict):
            pairs.add(
                (intval(item.get("ENTITY_TYPE_ID")), intval(item.get("ENTITY_ID")))
            )
    owner = (intval(row.get("OWNER_TYPE_ID")), intval(row.get("OWNER_ID")))
    pairs.add(owner)
    return frozenset(pair for pair in pairs if pair[0] > 0 and pair[1] > 0)


# -- running --------------------------------------------------------------------------

_MISSING: Final = object()


def column_source(info: FieldInfo) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    """The cache key and the row parser of a field's comparison values."""
    if info.kind == "bindings":
        return "\x00bindings", row_bindings
    parse = stored_parser(info)
    name = info.name
    suffix = "*" if info.multiple else ""
    return f"\x00{info.kind}{suffix}:{name}", lambda row: parse(row.get(name))


def full_column(
    table: Table, key: str, parse: Callable[[dict[str, Any]], Any]
) -> dict[int, Any]:
    """The parsed values of every row (filled where rows changed since last time)."""
    cache = table.cache(key)
    if not cache:
        cache.update({row_id: parse(row) for row_id, row in table.rows.items()})
    elif len(cache) != len(table.rows):
        for row_id, row in table.rows.items():
            if row_id not in cache:
                cache[row_id] = parse(row)
    return cache


def _select(node: _Leaf | _Branch, table: Table, ids: list[int]) -> list[int]:
    if isinstance(node, _Leaf):
        column = full_column(table, node.key, node.parse)
        test = node.test
        return [row_id for row_id in ids if test(column[row_id])]
    if node.logic == "AND":
        for child in node.children:
            ids = _select(child, table, ids)
            if not ids:
                break
        return ids
    kept: set[int] = set()
    for child in node.children:
        kept.update(_select(child, table, ids))
    return [row_id for row_id in ids if row_id in kept]


def _matcher(node: _Leaf | _Branch, table: Table) -> Callable[[int], bool]:
    if isinstance(node, _Leaf):
        cache = table.cache(node.key)
        rows = table.rows
        parse, test = node.parse, node.test

        def leaf(row_id: int) -> bool:
            value = cache.get(row_id, _MISSING)
            if value is _MISSING:
                value = cache[row_id] = parse(rows[row_id])
            return test(value)

        return leaf
    children = [_matcher(child, table) for child in node.children]
    if node.logic == "AND":
        return lambda row_id: all(child(row_id) for child in children)
    return lambda row_id: any(child(row_id) for child in children)


def first_matches(
    compiled: CompiledFilter, table: Table, ids: Iterable[int], limit: int
) -> list[int]:
    """Up to `limit` matching ids in the order given, stopping early."""
    matches = compiled.matcher(table)
    found: list[int] = []
    for row_id in ids:
        if matches(row_id):
            found.append(row_id)
            if len(found) >= limit:
                break
    return found
