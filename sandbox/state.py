"""The portal's state: tables of rows kept in the shape the list methods return."""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

# Snapshot sections and the table each fills. Rows are stored exactly as the list
# methods return them, so a snapshot is a dump of list answers.
SNAPSHOT_SECTIONS: dict[str, str] = {
    "users": "user",
    "departments": "department",
    "contacts": "contact",
    "companies": "company",
    "leads": "lead",
    "deals": "deal",
    "activities": "activity",
    "stagehistory": "stagehistory",
    "statuses": "status",
    "categories": "category",
    "userfields": "userfield",
    "tasks": "task",
    "comments": "comment",
    "blogposts": "blogpost",
}

# Tables whose id key is not "ID".
ID_FIELDS: dict[str, str] = {"category": "id", "task": "id"}


class Table:
    """Rows by integer id, kept in id order, with a cache of parsed field values."""

    def __init__(self, name: str, id_field: str = "ID") -> None:
        self.name = name
        self.id_field = id_field
        self.rows: dict[int, dict[str, Any]] = {}
        self._order: list[int] = []
        self._typed: dict[str, dict[int, Any]] = {}
        self.next_id = 1

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row_id: object) -> bool:
        return row_id in self.rows

    def allocate_id(self) -> int:
        row_id = self.next_id
        self.next_id += 1
        return row_id

    def insert(self, row: dict[str, Any], row_id: int | None = None) -> int:
        if row_id is None:
            row_id = self.allocate_id()
        else:
            self.next_id = max(self.next_id, row_id + 1)
        if row_id not in self.rows:
            bisect.insort(self._order, row_id)
        self.rows[row_id] = row
        self._forget(row_id)
        return row_id

    def update(self, row_id: int, changes: dict[str, Any]) -> None:
        self.rows[row_id].update(changes)
        self._forget(row_id)

    def delete(self, row_id: int) -> dict[str, Any] | None:
        row = self.rows.pop(row_id, None)
        if row is not None:
            index = bisect.bisect_left(self._order, row_id)
            del self._order[index]
            self._forget(row_id)
        return row

    def get(self, row_id: int) -> dict[str, Any] | None:
        return self.rows.get(row_id)

    def ids(self) -> list[int]:
        """Ids in ascending order (a copy is not made: do not mutate)."""
        return self._order

    def ids_above(self, floor: int) -> list[int]:
        return self._order[bisect.bisect_right(self._order, floor) :]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row_id in self._order:
            yield self.rows[row_id]

    def typed(self, row_id: int, name: str, parse: Callable[[Any], Any]) -> Any:
        """The parsed value of a field, cached until the row changes."""
        column = self._typed.setdefault(name, {})
        try:
            return column[row_id]
        except KeyError:
            value = parse(self.rows[row_id].get(name))
            column[row_id] = value
            return value

    def cache(self, key: str) -> dict[int, Any]:
        """The per-row cache under `key` (row id -> value), dropped per row on change.

        For derived values that `typed()` cannot name (a parse of several fields, or a
        second parse of one field); keys should not collide with field names.
        """
        return self._typed.setdefault(key, {})

    def clear(self) -> None:
        self.rows.clear()
        self._order.clear()
        self._typed.clear()
        self.next_id = 1

    def _forget(self, row_id: int) -> None:
        for column in self._typed.values():
            column.pop(row_id, None)


@dataclass
class Webhook:
    user_id: int
    token: str
    scopes: frozenset[str]


@dataclass
class OAuthToken:
    access_token: str
    refresh_token: str
    user_id: int
    expires_at: float
    scopes: frozenset[str]
    client_id: str


ALL_SCOPES = frozenset(
    {"crm", "task", "tasks", "log", "im", "user", "user_basic", "user_brief",
     "department", "telephony", "imopenlines", "imconnector", "placement", "booking"}
)  # fmt: skip


@dataclass
class PendingEvent:
    """An outbound event waiting to be delivered to the handlers bound to it."""

    event: str
    data: dict[str, Any]
    raised_at: float


@dataclass
class Portal:
    """One emulated portal: its zone, tables, credentials and outbound events."""

    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Moscow"))
    domain: str = "sandbox.bitrix24.test"
    member_id: str = field(default_factory=lambda: secrets.token_hex(16))
    application_token: str = field(default_factory=lambda: secrets.token_hex(16))
    crm_mode: str = "classic"
    tables: dict[str, Table] = field(default_factory=dict)
    webhooks: dict[tuple[int, str], Webhook] = field(default_factory=dict)
    oauth_tokens: dict[str, OAuthToken] = field(default_factory=dict)
    refresh_tokens: dict[str, OAuthToken] = field(default_factory=dict)
    outbox: list[PendingEvent] = field(default_factory=list)
    multifield_next_id: int = 1
    extras: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        table = self.tables.get(name)
        if table is None:
            table = Table(name, ID_FIELDS.get(name, "ID"))
            self.tables[name] = table
        return table

    def allocate_multifield_id(self) -> int:
        value = self.multifield_next_id
        self.multifield_next_id += 1
        return value

    def add_webhook(self, user_id: int, token: str, scopes: frozenset[str]) -> None:
        self.webhooks[(user_id, token)] = Webhook(user_id, token, scopes)

    def emit(self, event: str, data: dict[str, Any], raised_at: float) -> None:
        """Queue an outbound event (`ONCRMDEALADD`, …) for the bound handlers."""
        self.outbox.append(PendingEvent(event.upper(), data, raised_at))
