"""Complete pulls: every row a filter matches, in id order, or an error.

Offset pages skip or repeat a row whenever the filtered set changes between pages
(reference §3.1). A pull here pages by id instead (§3.2, §4.1): `start=-1` (no
COUNT), order by id ascending, `>ID` above the last id seen, and up to 50 such pages
chained in one `batch`, each keyed on `$result[previous][49][ID]` of the page before.
The chain ends at the first page shorter than 50; the commands after it filter on a
missing row and their answers are thrown away.

A legacy portal silently drops filter keys it does not know, in any case but its own,
and then returns *more* rows (§10). So filter and select keys are checked against the
entity's `*.fields` before anything is sent, and the pull pages are checked too: ids
must rise strictly from the last one seen, and no page may be longer than 50 rows.

Beyond the legacy CRM lists the same paging serves `crm.item.list`, the stage history
(`stage_history`, no fields method: a fixed field set, §7.7), `user.get` (`USERS`:
the server filters `>ID` and sorts by ID unless told otherwise, srv
`rest/lib/api/user.php`) and `tasks.task.list` (`TASKS`: UPPER names in, camelCase
rows out).

`pull_ids` reads the rows of known ids, or of known owners by another key: a list
command per chunk of ids, 50 commands to a batch, a full page continued by a keyset
pull of that chunk alone.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.bitrix24.client import (
    MAX_BATCH_COMMANDS,
    BatchResult,
    Bitrix24Client,
    Command,
)
from connectors.bitrix24.encoding import BatchRef
from connectors.bitrix24.errors import IncompletePull, UnknownField
from connectors.bitrix24.models import RowModel, validate_row

PAGE_SIZE = 50  # fixed by the portal for every list method
MAX_PAGES_PER_BATCH = 50  # the portal runs at most 50 commands of a batch

# `[!][+]<operator><FIELD>` (reference §8); `!%` is crm.item's NOT LIKE.
_FILTER_KEY = re.compile(
    r"(?P<prefix>!?\+?)(?P<op>>=|<=|=%|%=|!@|!=|!%|>|<|@|%|\?|=|!)?"
    r"(?P<field>[A-Za-z][A-Za-z0-9_]*)"
)
# Keys of nested groups and their combinator in crm.item filters.
_GROUP_KEY = re.compile(r"\d+")
_LOGIC_KEY = "logic"


FieldMap = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ListedEntity:
    """How one entity is listed: its methods, id field and answer shape."""

    name: str
    list_method: str
    fields_method: str
    id_field: str
    # None: the result is the row list (legacy); otherwise the key holding it.
    rows_key: str | None = None
    # crm.item.fields answers {"fields": {...}}; legacy *.fields the map itself.
    fields_key: str | None = None
    fixed_params: Mapping[str, object] = field(default_factory=dict)
    # crm.item accepts nested groups with "logic"; legacy lists do not.
    nested_filters: bool = False
    # The id as rows carry it, where it differs from `id_field` (tasks: "id").
    row_id_field: str | None = None
    # Lists without a fields method (crm.stagehistory.list): their fixed fields.
    fixed_fields: FieldMap | None = None
    # Keys the list filters on although its fields method does not name them.
    filter_only: frozenset[str] = frozenset()
    # What no select asks for, and the wildcards a select may use; () sends none.
    default_select: tuple[str, ...] = ("*", "UF_*")
    # How the list sorts by id ascending; None: {"order": {id_field: "ASC"}}.
    order_params: Mapping[str, object] | None = None

    @property
    def row_id(self) -> str:
        """The id's key in a row."""
        return self.row_id_field or self.id_field

    @property
    def fields_source(self) -> str:
        """Where the known fields come from, for error messages."""
        return self.fields_method or f"the fixed fields of {self.list_method}"

    def ordering(self) -> Mapping[str, object]:
        """The parameters that sort the list by id ascending."""
        if self.order_params is not None:
            return self.order_params
        return {"order": {self.id_field: "ASC"}}

    def last_id_ref(self, command: str) -> BatchRef:
        """The id of the 50th row of `command`'s page."""
        if self.rows_key is None:
            return BatchRef(command, PAGE_SIZE - 1, self.row_id)
        return BatchRef(command, self.rows_key, PAGE_SIZE - 1, self.row_id)


def _legacy(name: str) -> ListedEntity:
    return ListedEntity(name, f"crm.{name}.list", f"crm.{name}.fields", "ID")


LEGACY_ENTITIES: dict[str, ListedEntity] = {
    name: _legacy(name) for name in ("deal", "lead", "contact", "company", "activity")
}


def crm_item(entity_type_id: int) -> ListedEntity:
    """`crm.item.list` for one entity type (2 deals, 1 leads, ≥ 128 smart processes)."""
    return ListedEntity(
        f"crm.item:{entity_type_id}",
        "crm.item.list",
        "crm.item.fields",
        "id",
        rows_key="items",
        fields_key="fields",
        fixed_params={"entityTypeId": entity_type_id},
        nested_filters=True,
        default_select=("*",),
    )


def _fixed(types: Mapping[str, str]) -> FieldMap:
    return {name: {"type": kind} for name, kind in types.items()}


# crm.stagehistory.list has no fields method; its filter refuses any other name with
# INVALID_ARG_VALUE (reference §7.7, srv crm/lib/controller/stagehistory.php).
_HISTORY_COMMON = {
    "ID": "integer",
    "TYPE_ID": "integer",
    "OWNER_ID": "integer",
    "CREATED_TIME": "datetime",
}
LEAD_HISTORY_FIELDS = _fixed(
    {**_HISTORY_COMMON, "STATUS_ID": "crm_status", "STATUS_SEMANTIC_ID": "string"}
)
DEAL_HISTORY_FIELDS = _fixed(
    {
        **_HISTORY_COMMON,
        "CATEGORY_ID": "crm_category",
        "STAGE_ID": "crm_status",
        "STAGE_SEMANTIC_ID": "string",
    }
)
LEAD_TYPE_ID = 1
# Types whose history has stages: deals, smart invoices, smart processes.
_STAGED_TYPES = (2, 31)
_FIRST_SMART_PROCESS = 128


def stage_history(entity_type_id: int) -> ListedEntity:
    """`crm.stagehistory.list` of leads (1, statuses) or deals (2, stages)."""
    if entity_type_id == LEAD_TYPE_ID:
        fields = LEAD_HISTORY_FIELDS
    elif entity_type_id in _STAGED_TYPES or entity_type_id >= _FIRST_SMART_PROCESS:
        fields = DEAL_HISTORY_FIELDS
    else:
        raise ValueError(f"no stage history for entity type {entity_type_id}")
    return ListedEntity(
        f"stagehistory:{entity_type_id}",
        "crm.stagehistory.list",
        "",
        "ID",
        rows_key="items",
        fixed_params={"entityTypeId": entity_type_id},
        fixed_fields=fields,
        default_select=tuple(fields),
    )


# user.get reads its whole query in upper case, sorts only by SORT and ORDER given
# together (ID ascending otherwise) and filters `>ID` like any allowed key. A few
# keys filter without being fields: srv `User::userGet` adds them to the allowed list.
USERS = ListedEntity(
    "user",
    "user.get",
    "user.fields",
    "ID",
    filter_only=frozenset(
        {"IS_ONLINE", "HAS_DEPARTAMENT", "NAME_SEARCH", "EXTERNAL_AUTH_ID"}
    ),
    order_params={"sort": "ID", "order": "ASC"},
)

# tasks.task.list: filter, select and order in UPPER, rows camelCase under "tasks"
# with string ids; without a select it answers its default fields (reference §7.8).
TASKS = ListedEntity(
    "task",
    "tasks.task.list",
    "tasks.task.getFields",
    "ID",
    rows_key="tasks",
    fields_key="fields",
    row_id_field="id",
    # Filters on the real status; STATUS there is the shown one (-1 overdue).
    filter_only=frozenset({"REAL_STATUS"}),
    default_select=(),
)

NAMED_ENTITIES: dict[str, ListedEntity] = {
    **LEGACY_ENTITIES,
    USERS.name: USERS,
    TASKS.name: TASKS,
}


class Puller:
    """Pulls complete lists through one client; remembers each entity's fields."""

    def __init__(
        self, client: Bitrix24Client, *, pages_per_batch: int = MAX_PAGES_PER_BATCH
    ) -> None:
        self.client = client
        self.pages_per_batch = _pages(pages_per_batch)
        self._fields: dict[str, FieldMap] = {}

    async def fields(self, entity: ListedEntity) -> FieldMap:
        """The entity's fields as `*.fields` describes them, fetched once."""
        if entity.fixed_fields is not None:
            return entity.fixed_fields
        known = self._fields.get(entity.name)
        if known is not None:
            return known
        answer = await self.client.call(entity.fields_method, entity.fixed_params)
        if entity.fields_key is not None and isinstance(answer, Mapping):
            answer = answer.get(entity.fields_key)
        if not isinstance(answer, Mapping) or entity.id_field not in answer:
            raise IncompletePull(
                f"{entity.fields_method}: no field list with {entity.id_field}",
                method=entity.fields_method,
            )
        fields: FieldMap = {
            str(name): info if isinstance(info, Mapping) else {}
            for name, info in answer.items()
        }
        self._fields[entity.name] = fields
        return fields

    async def pull(
        self,
        entity: str | ListedEntity,
        filter: Mapping[str, object] | None = None,
        select: Sequence[str] | None = None,
        *,
        after_id: int = 0,
        pages_per_batch: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row matching `filter` with id above `after_id`, in id order.

        `pages_per_batch` overrides the puller's for this pull: a pull that is
        nearly always empty chains few pages, since each chained page costs the
        portal a list query even after the chain has ended.
        """
        pages = self.pages_per_batch if pages_per_batch is None else pages_per_batch
        pages = _pages(pages)
        spec = resolve_entity(entity)
        fields = await self.fields(spec)
        checked_filter = check_filter(spec, fields, filter or {})
        columns = check_select(spec, fields, select)

        last_id = after_id
        while True:
            result = await self.client.batch(
                _chain(spec, checked_filter, columns, last_id, pages), halt=True
            )
            for page in range(pages):
                rows = _page_rows(spec, result, f"p{page}")
                ids = _checked_ids(spec, rows, last_id, f"p{page}")
                for row in rows:
                    yield row
                if len(rows) < PAGE_SIZE:
                    return
                last_id = ids[-1]

    async def pull_ids(
        self,
        entity: str | ListedEntity,
        key: str,
        ids: Sequence[int],
        filter: Mapping[str, object] | None = None,
        select: Sequence[str] | None = None,
        *,
        per_command: int = PAGE_SIZE,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row whose `key` is one of `ids` and that matches `filter`.

        `per_command` ids (at most 50) go to one list command and 50 commands to a
        batch. A page holds 50 rows, so a command that comes back short has
        returned every row of its ids; one that comes back full is continued by a
        keyset pull of its ids alone. Rows come in id order per command, not
        overall.
        """
        if not 1 <= per_command <= PAGE_SIZE:
            raise ValueError(f"per_command must be 1..{PAGE_SIZE}")
        spec = resolve_entity(entity)
        fields = await self.fields(spec)
        checked = check_filter(spec, fields, {**(filter or {}), f"@{key}": []})
        columns = check_select(spec, fields, select)
        chunks = [ids[i : i + per_command] for i in range(0, len(ids), per_command)]

        for first in range(0, len(chunks), MAX_BATCH_COMMANDS):
            group = chunks[first : first + MAX_BATCH_COMMANDS]
            commands = {
                f"c{n}": _list_command(spec, {**checked, f"@{key}": chunk}, columns)
                for n, chunk in enumerate(group)
            }
            result = await self.client.batch(commands, halt=True)
            for name, chunk in zip(commands, group, strict=True):
                rows = _page_rows(spec, result, name)
                _checked_ids(spec, rows, 0, name)
                if key == spec.id_field:
                    _check_asked(spec, rows, chunk)
                for row in rows:
                    yield row
                if len(rows) == PAGE_SIZE and key != spec.id_field:
                    # A full page may hide more rows: the rest of these ids alone.
                    rest = {**(filter or {}), f"@{key}": list(chunk)}
                    after = _row_id(spec, rows[-1])
                    async for row in self.pull(spec, rest, select, after_id=after):
                        yield row

    async def pull_models(
        self,
        entity: str | ListedEntity,
        model: type[RowModel],
        filter: Mapping[str, object] | None = None,
        select: Sequence[str] | None = None,
        *,
        after_id: int = 0,
        pages_per_batch: int | None = None,
    ) -> AsyncIterator[RowModel]:
        """`pull` with every row validated as `model`; a bad row raises InvalidRow."""
        rows = self.pull(
            entity, filter, select, after_id=after_id, pages_per_batch=pages_per_batch
        )
        async for row in rows:
            yield validate_row(model, row)


def _pages(pages_per_batch: int) -> int:
    if not 1 <= pages_per_batch <= MAX_PAGES_PER_BATCH:
        raise ValueError(f"pages_per_batch must be 1..{MAX_PAGES_PER_BATCH}")
    return pages_per_batch


def _chain(
    spec: ListedEntity,
    checked_filter: Mapping[str, object],
    columns: list[str],
    last_id: int,
    pages: int,
) -> dict[str, Command]:
    """`pages` list commands, each above the last id of the page before."""
    commands: dict[str, Command] = {}
    for page in range(pages):
        above: object = last_id if page == 0 else spec.last_id_ref(f"p{page - 1}")
        page_filter = {**checked_filter, f">{spec.id_field}": above}
        commands[f"p{page}"] = _list_command(spec, page_filter, columns)
    return commands


def _list_command(
    spec: ListedEntity, checked_filter: Mapping[str, object], columns: list[str]
) -> Command:
    """One page of the list in id order, without COUNT (`start=-1`)."""
    params: dict[str, object] = {
        **spec.fixed_params,
        **spec.ordering(),
        "filter": dict(checked_filter),
    }
    if columns:
        params["select"] = columns
    params["start"] = -1
    return Command(spec.list_method, params)


def pull(
    client: Bitrix24Client,
    entity: str | ListedEntity,
    filter: Mapping[str, object] | None = None,
    select: Sequence[str] | None = None,
    *,
    after_id: int = 0,
) -> AsyncIterator[dict[str, Any]]:
    """A one-off `Puller(client).pull(...)`."""
    return Puller(client).pull(entity, filter, select, after_id=after_id)


def resolve_entity(entity: str | ListedEntity) -> ListedEntity:
    if isinstance(entity, ListedEntity):
        return entity
    try:
        return NAMED_ENTITIES[entity]
    except KeyError:
        known = ", ".join(sorted(NAMED_ENTITIES))
        raise ValueError(f"unknown entity {entity!r} (known: {known})") from None


def check_filter(
    spec: ListedEntity, fields: FieldMap, raw: Mapping[str, object]
) -> dict[str, object]:
    """The filter with every key checked against the fields, in their exact case.

    A Python bool on a custom boolean field becomes 1/0, the only form those fields
    match (docs-ru#348); elsewhere the encoder's Y/N applies.
    """
    checked: dict[str, object] = {}
    for key, value in raw.items():
        if spec.nested_filters and _GROUP_KEY.fullmatch(key):
            if not isinstance(value, Mapping):
                raise UnknownField(f"{spec.name}: filter group {key!r} is not a dict")
            checked[key] = check_filter(spec, fields, value)
            continue
        if spec.nested_filters and key == _LOGIC_KEY:
            if str(value).upper() not in ("AND", "OR"):
                raise UnknownField(f"{spec.name}: filter logic must be AND or OR")
            checked[key] = value
            continue
        name, operator = _filter_field(spec, fields, key)
        if name == spec.id_field and operator in (">", ">="):
            raise ValueError(
                f"{spec.name}: the pull pages by {spec.id_field} itself; "
                "pass after_id instead of a lower bound"
            )
        checked[key] = _filter_value(fields.get(name, {}), value)
    return checked


def check_select(
    spec: ListedEntity, fields: FieldMap, select: Sequence[str] | None
) -> list[str]:
    """The select list checked against the fields, with the id field always in it."""
    if isinstance(select, str):
        raise TypeError("select is a list of field names, not one string")
    # Without a select the legacy portal returns standard and custom fields; say so
    # explicitly. crm.item's "*" already includes custom fields.
    wildcards = spec.default_select
    if not select:
        return list(wildcards)
    columns = list(select)
    for name in columns:
        if name not in wildcards and name not in fields:
            raise _unknown(spec, fields, "select", name, name)
    if "*" not in columns and spec.id_field not in columns:
        columns.append(spec.id_field)
    return columns


def _filter_field(spec: ListedEntity, fields: FieldMap, key: str) -> tuple[str, str]:
    match = _FILTER_KEY.fullmatch(key)
    if match is None:
        raise UnknownField(f"{spec.name}: filter key {key!r} is not FIELD or opFIELD")
    name = match["field"]
    if name not in fields and name not in spec.filter_only:
        raise _unknown(spec, fields, "filter", key, name)
    return name, match["op"] or "="


def _filter_value(info: Mapping[str, Any], value: object) -> object:
    custom_flag = info.get("type") == "boolean" and info.get("isDynamic")
    if isinstance(value, bool) and custom_flag:
        return "1" if value else "0"
    return value


def _unknown(
    spec: ListedEntity, fields: FieldMap, where: str, key: str, name: str
) -> UnknownField:
    same_letters = [known for known in fields if known.lower() == name.lower()]
    hint = f"; the field is spelled {same_letters[0]!r}" if same_letters else ""
    return UnknownField(
        f"{spec.name}: {where} key {key!r} names no field of {spec.fields_source}"
        f"{hint} (the portal would ignore it or fail)",
        code="UNKNOWN_FIELD",
        method=spec.list_method,
    )


def _page_rows(spec: ListedEntity, result: BatchResult, name: str) -> list[Any]:
    if name not in result.results and name not in result.errors:
        raise IncompletePull(
            f"{spec.list_method}: page {name} did not run although no page failed",
            method=spec.list_method,
        )
    answer = result.value(name)  # raises the command's own error
    rows = (
        answer.get(spec.rows_key)
        if spec.rows_key and isinstance(answer, dict)
        else answer
    )
    if not isinstance(rows, list):
        raise IncompletePull(
            f"{spec.list_method}: page {name} is not a list of rows",
            method=spec.list_method,
        )
    if len(rows) > PAGE_SIZE:
        raise IncompletePull(
            f"{spec.list_method}: page {name} holds {len(rows)} rows, more than "
            f"{PAGE_SIZE}: the chain's row index would skip rows",
            method=spec.list_method,
        )
    return rows


def _checked_ids(
    spec: ListedEntity, rows: list[Any], last_id: int, name: str
) -> list[int]:
    ids: list[int] = []
    previous = last_id
    for row in rows:
        row_id = _row_id(spec, row)
        if row_id <= previous:
            raise IncompletePull(
                f"{spec.list_method}: page {name} has id {row_id} after {previous}; "
                "the portal did not apply the keyset filter, rows may be missing",
                method=spec.list_method,
            )
        ids.append(row_id)
        previous = row_id
    return ids


def _check_asked(spec: ListedEntity, rows: list[Any], asked: Sequence[int]) -> None:
    if not {_row_id(spec, row) for row in rows} <= set(asked):
        raise IncompletePull(
            f"{spec.list_method}: rows by {spec.id_field} that were not asked for "
            "(the portal dropped the filter)",
            method=spec.list_method,
        )


def _row_id(spec: ListedEntity, row: object) -> int:
    value = row.get(spec.row_id) if isinstance(row, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise IncompletePull(
        f"{spec.list_method}: a row without a numeric {spec.row_id}",
        method=spec.list_method,
    )
