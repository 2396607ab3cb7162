"""Idempotent creates: every record we create carries a key of ours, looked up first.

Where the key lives:

- contact, deal, lead, activity: `ORIGINATOR_ID` = our originator, `ORIGIN_ID` = the
  key, the legacy entities' own pair for "made by an external system under this id"
  (reference §7.1, §7.3, §7.5);
- task: no such pair. `XML_ID`, the task's "external identifier" (docs
  `api-reference/tasks/fields.md`: `xmlId`; the tasks module filters `XML_ID` as an
  exact string, srv `CTasks::GetFilter`), holds `<originator>:<key>`. It is a column
  of the task itself, needs no user field to be set up on the portal, and no user
  edits it in the UI; tags would be visible and editable by managers.

`create` looks the key up first, so a job that runs again finds what an earlier
attempt made (known fault Q-2). A create that ends in `WriteOutcomeUnknown` (a
timeout after sending, a 5xx or an HTML page) waits `settle_s` for the portal to
finish, looks the key up again (a read: the client retries it), and sends the create
again only when nothing carries the key; after `attempts` creates it gives up loudly.

Lookups compare keys exactly, in Python: the portal's `=` on a string ignores case
(MySQL collation), and a filter key it does not know is dropped without an error, so
every row comes back (§10). A returned row that does not carry our key (ignoring
case) proves the filter was not applied, and that is an error, never "not found".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
import structlog

from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client, Command
from connectors.bitrix24.errors import Rejected, Unavailable, WriteOutcomeUnknown

log = structlog.stdlib.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

KEY_MAX_LENGTH = 100  # ORIGIN_ID holds 255, a task's XML_ID 200: room for prefixes
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_ORIGINATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# A phone in a key stands alone between separators ("wa:79990000001"); digits glued
# to letters are parts of random ids (hex, base64) and are not read as phones.
_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9])\d{10,15}(?![A-Za-z0-9])")
_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)


@dataclass(frozen=True)
class Created:
    """The record's id, and whether this call created it (False: it was there)."""

    id: int
    created: bool


def check_key(key: str) -> str:
    """The key itself when it is a valid idempotency key without personal data."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(
            "an idempotency key is letters, digits and . _ : - (e.g. 'tg:upd:123')"
        )
    if len(key) > KEY_MAX_LENGTH:
        raise ValueError(f"an idempotency key has at most {KEY_MAX_LENGTH} characters")
    if any(_is_phone(run) for run in _DIGIT_RUN.findall(_UUID.sub("-", key))):
        # Keys reach the portal and our logs; a phone in them is personal data.
        raise ValueError("the idempotency key holds a phone number: use hashed_key()")
    return key


def hashed_key(namespace: str, value: str, *, secret: bytes = b"") -> str:
    """A key for work named by personal data (a phone, an e-mail): `namespace:hash`.

    Pass a `secret` to make the hash unguessable; phones are few enough to enumerate.
    """
    digest = hashlib.blake2b(value.encode(), digest_size=15, key=secret).digest()
    # Base32 digits are 2-7 only and glued to letters: never taken for a phone.
    return check_key(f"{namespace}:{base64.b32encode(digest).decode().lower()}")


def _is_phone(digits: str) -> bool:
    forms: list[tuple[str, str | None]] = [(digits, "RU")]
    if len(digits) > 10:
        # Ten digits read internationally cover too many ids by chance: Telegram
        # update ids from 2000000000 up are Egyptian numbers (+20 …).
        forms.append(("+" + digits, None))
    for text, region in forms:
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


# -- where each entity keeps the key --------------------------------------------------


class KeyedEntity(ABC):
    """How one entity is created with our key and found by it."""

    name: str
    key_fields: frozenset[str]

    @abstractmethod
    def add(self, fields: Mapping[str, object], held: Mapping[str, str]) -> Command:
        """The create command, the key fields set."""

    @abstractmethod
    def lookup(self, held: Mapping[str, str], select: Sequence[str]) -> Command:
        """A list command for the rows carrying the key, oldest first."""

    @abstractmethod
    def held(self, originator: str, key: str) -> dict[str, str]:
        """The key as the entity's fields hold it."""

    @abstractmethod
    def rows(self, answer: Any) -> list[Mapping[str, Any]]:
        """The rows of a lookup answer."""

    @abstractmethod
    def row_id(self, row: Mapping[str, Any]) -> int:
        """A row's id."""

    @abstractmethod
    def row_fields(self, row: Mapping[str, Any]) -> dict[str, str]:
        """What a row holds in the key fields, by input field name."""

    @abstractmethod
    def created_id(self, answer: Any) -> int:
        """The new id in an add answer."""


class _LegacyCrm(KeyedEntity):
    key_fields = frozenset({"ORIGINATOR_ID", "ORIGIN_ID"})

    def __init__(self, name: str) -> None:
        self.name = name

    def add(self, fields: Mapping[str, object], held: Mapping[str, str]) -> Command:
        return Command(f"crm.{self.name}.add", {"fields": {**fields, **held}})

    def lookup(self, held: Mapping[str, str], select: Sequence[str]) -> Command:
        return Command(
            f"crm.{self.name}.list",
            {
                "filter": dict(held),
                "select": ["ID", *sorted(self.key_fields), *select],
                "order": {"ID": "ASC"},
            },
        )

    def held(self, originator: str, key: str) -> dict[str, str]:
        return {"ORIGINATOR_ID": originator, "ORIGIN_ID": key}

    def rows(self, answer: Any) -> list[Mapping[str, Any]]:
        if not isinstance(answer, list):
            raise Unavailable(f"crm.{self.name}.list: not a row list", sent=False)
        return [row for row in answer if isinstance(row, Mapping)]

    def row_id(self, row: Mapping[str, Any]) -> int:
        return int(row["ID"])

    def row_fields(self, row: Mapping[str, Any]) -> dict[str, str]:
        return {name: str(row.get(name) or "") for name in self.key_fields}

    def created_id(self, answer: Any) -> int:
        # Legacy add answers the new id as a JSON int (reference §9).
        return int(answer)


class _Task(KeyedEntity):
    name = "task"
    key_fields = frozenset({"XML_ID"})

    def add(self, fields: Mapping[str, object], held: Mapping[str, str]) -> Command:
        return Command("tasks.task.add", {"fields": {**fields, **held}})

    def lookup(self, held: Mapping[str, str], select: Sequence[str]) -> Command:
        return Command(
            "tasks.task.list",
            {
                "filter": dict(held),
                "select": ["ID", "XML_ID", *select],
                "order": {"ID": "asc"},
            },
        )

    def held(self, originator: str, key: str) -> dict[str, str]:
        return {"XML_ID": f"{originator}:{key}"}

    def rows(self, answer: Any) -> list[Mapping[str, Any]]:
        tasks = answer.get("tasks") if isinstance(answer, Mapping) else None
        if not isinstance(tasks, list):
            raise Unavailable("tasks.task.list: no task list", sent=False)
        return [row for row in tasks if isinstance(row, Mapping)]

    def row_id(self, row: Mapping[str, Any]) -> int:
        return int(row["id"])

    def row_fields(self, row: Mapping[str, Any]) -> dict[str, str]:
        # Tasks take fields in UPPER and answer in camelCase (reference §7.8).
        return {"XML_ID": str(row.get("xmlId") or "")}

    def created_id(self, answer: Any) -> int:
        return int(answer["task"]["id"])


ENTITIES: dict[str, KeyedEntity] = {
    **{name: _LegacyCrm(name) for name in ("contact", "deal", "lead", "activity")},
    "task": _Task(),
}


def keyed_entity(name: str) -> KeyedEntity:
    """The entity by its agreed name: contact, deal, lead, activity or task."""
    try:
        return ENTITIES[name]
    except KeyError:
        known = ", ".join(ENTITIES)
        raise ValueError(f"no keyed entity {name!r} (one of {known})") from None


# -- the writer -----------------------------------------------------------------------


class Writer:
    """Creates records at most once per key, through a batcher when one is given."""

    def __init__(
        self,
        client: Bitrix24Client,
        batcher: Batcher | None = None,
        originator: str = "leadloop",
        *,
        attempts: int = 3,
        settle_s: float = 1.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not _ORIGINATOR.fullmatch(originator):
            raise ValueError("an originator is 1..32 letters, digits and . _ -")
        if attempts < 1 or settle_s < 0:
            raise ValueError("a writer needs an attempt and a non-negative settle time")
        self.client = client
        self.batcher = batcher
        self.originator = originator
        self.attempts = attempts
        self.settle_s = settle_s
        self._sleep = sleep

    async def create(
        self, entity: str, fields: Mapping[str, object], *, key: str
    ) -> Created:
        """The record carrying `key`: found, or created exactly once."""
        command = self.add_command(entity, fields, key=key)
        existing = await self.find_by_key(entity, key)
        if existing is not None:
            log.info("bitrix24.write.found", entity=entity, key=key, id=existing)
            return Created(existing, created=False)

        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._run(command)
            except WriteOutcomeUnknown:
                log.warning(
                    "bitrix24.write.outcome_unknown",
                    entity=entity,
                    key=key,
                    attempt=attempt,
                )
                if attempt >= self.attempts:
                    raise
                found = await self.reconcile(entity, key)
                if found is not None:
                    return Created(found, created=True)
                continue
            created = keyed_entity(entity).created_id(answer)
            log.info("bitrix24.write.created", entity=entity, key=key, id=created)
            return Created(created, created=True)

    async def find_by_key(self, entity: str, key: str) -> int | None:
        """The id of the oldest record carrying `key`, or None."""
        command = self.lookup_command(entity, key)
        row = self.found_row(entity, key, await self._run(command))
        return None if row is None else keyed_entity(entity).row_id(row)

    async def reconcile(self, entity: str, key: str) -> int | None:
        """After an unclear create: let the portal settle, then look the key up."""
        await self.settle()
        found = await self.find_by_key(entity, key)
        log.info("bitrix24.write.reconciled", entity=entity, key=key, id=found)
        return found

    async def settle(self) -> None:
        """Wait for a request the portal may still be running to finish."""
        # A client timeout does not stop the portal: a lookup sent at once could
        # miss a record the request is still writing.
        await self._sleep(self.settle_s)

    # -- building blocks, for chains that batch several creates -----------------------

    def add_command(
        self, entity: str, fields: Mapping[str, object], *, key: str
    ) -> Command:
        """The create command for `entity` with the key fields set."""
        kind = keyed_entity(entity)
        check_key(key)
        taken = kind.key_fields & set(fields)
        if taken:
            raise ValueError(f"{', '.join(sorted(taken))}: set by the writer from key")
        return kind.add(fields, kind.held(self.originator, key))

    def lookup_command(
        self, entity: str, key: str, *, select: Sequence[str] = ()
    ) -> Command:
        """A read for the records carrying `key`, with `select` fields beside ID."""
        kind = keyed_entity(entity)
        return kind.lookup(kind.held(self.originator, check_key(key)), select)

    def found_row(self, entity: str, key: str, answer: Any) -> Mapping[str, Any] | None:
        """The oldest row of a lookup answer that carries `key` exactly."""
        kind = keyed_entity(entity)
        wanted = kind.held(self.originator, key)
        mine = []
        for row in kind.rows(answer):
            held = kind.row_fields(row)
            if any(held[name].casefold() != wanted[name].casefold() for name in wanted):
                raise Rejected(
                    f"{entity} lookup by key: the portal did not apply the filter",
                    method=kind.lookup(wanted, ()).method,
                )
            if held == wanted:
                mine.append(row)
        if len(mine) > 1:
            ids = sorted(kind.row_id(row) for row in mine)
            log.warning("bitrix24.write.duplicate_key", entity=entity, key=key, ids=ids)
        return min(mine, key=kind.row_id, default=None)

    def created_id(self, entity: str, answer: Any) -> int:
        """The new id in the answer to `add_command`."""
        return keyed_entity(entity).created_id(answer)

    async def _run(self, command: Command) -> Any:
        if self.batcher is not None:
            return await self.batcher.call(command.method, command.params)
        return await self.client.call(command.method, command.params)
