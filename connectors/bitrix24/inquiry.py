"""A new lead in the CRM: the contact, a deal (or a lead), a call-back task, a comment.

The chain runs under the person's lock (locks.py, known fault B24-6):

1. One group of reads: the contact by phone (`crm.duplicate.findbycomm`) and by
   messenger id (`crm.contact.list` on `IM`), and each record of this inquiry by its
   key, so a replay or a re-run job finds what already exists.
2. One group of writes with `$result` references, holding only what is missing: the
   contact when none was found, the deal or lead (`CONTACT_IDS` = the new or the
   found contact), the task bound to it (`UF_CRM_TASK` `D_<id>` / `L_<id>`), the
   timeline comment.

The lookup cannot share the create request: a batch does not branch. A reference to a
lookup that found nothing resolves to the whole earlier result, not to "nothing", and
`halt` stops on errors only; the one conditional a batch has would be a deliberate
failure, which halts every other caller's commands in a shared request too. Instead
both steps go through the batcher, so concurrent inquiries share requests: 200
simultaneous new leads used 40-80 requests on the sandbox (0.2-0.4 per lead; the
lookup group holds 5 commands, the create group 4). Alone, an inquiry costs 2.

After `WriteOutcomeUnknown` of the write group each keyed record is looked up by its
key and the comment by its text on the deal; only what is still missing is sent again,
with literal ids for what exists. Nothing is created twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from connectors.bitrix24.batcher import Batcher, RefText
from connectors.bitrix24.client import BatchResult, Command
from connectors.bitrix24.encoding import BatchRef
from connectors.bitrix24.errors import Bitrix24Error, Rejected, WriteOutcomeUnknown
from connectors.bitrix24.locks import ContactLocks, normalise_phone
from connectors.bitrix24.writes import KEY_MAX_LENGTH, Writer, check_key, keyed_entity

log = structlog.stdlib.get_logger(__name__)

RecordKind = Literal["deal", "lead"]

# IM multifield types a portal knows (reference §7.3).
IM_TYPES = frozenset(
    {"TELEGRAM", "VK", "SKYPE", "VIBER", "BITRIX24", "OPENLINE", "IMOL", "ICQ", "MSN"}
    | {"JABBER", "OTHER"}
)
# PHONE multifield types (VALUE_TYPE); WORK is what the portal's own form starts with.
PHONE_TYPES = frozenset({"WORK", "MOBILE", "HOME", "FAX", "PAGER", "MAILING", "OTHER"})
_BINDING_PREFIX = {"deal": "D_", "lead": "L_"}  # UF_CRM_TASK (reference §7.8)
_OURS = frozenset({"ORIGINATOR_ID", "ORIGIN_ID", "XML_ID"})
_LONGEST_SUFFIX = len(":contact")


@dataclass(frozen=True)
class TaskSpec:
    """The call-back task for the responsible manager."""

    title: str = field(repr=False)
    responsible_id: int
    deadline: datetime
    description: str = field(default="", repr=False)
    created_by: int | None = None

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise ValueError("a task needs a title")
        if self.responsible_id <= 0 or (self.created_by or 1) <= 0:
            raise ValueError("task users are positive ids")
        if self.deadline.tzinfo is None or self.deadline.utcoffset() is None:
            raise ValueError("a task deadline must be an aware datetime")


@dataclass(frozen=True)
class NewInquiry:
    """Everything a new lead brings; `key` names it for every retry and replay."""

    key: str
    kind: RecordKind = "deal"
    phone: str | None = field(default=None, repr=False)  # E.164
    phone_type: str = "WORK"  # its VALUE_TYPE on a new contact
    im: tuple[str, str] | None = field(default=None, repr=False)  # ("TELEGRAM", id)
    contact: Mapping[str, object] = field(default_factory=dict, repr=False)
    fields: Mapping[str, object] = field(default_factory=dict, repr=False)
    task: TaskSpec | None = None
    comment: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.key) > KEY_MAX_LENGTH - _LONGEST_SUFFIX:
            raise ValueError("the inquiry key leaves no room for its record suffixes")
        check_key(self.key)
        if self.kind not in _BINDING_PREFIX:
            raise ValueError("an inquiry opens a 'deal' or a 'lead'")
        if self.phone is None and self.im is None:
            raise ValueError("an inquiry needs a phone or a messenger identity")
        if self.phone is not None and normalise_phone(self.phone) != self.phone:
            raise ValueError("the phone must be in E.164 form (+79990000001)")
        if self.phone_type not in PHONE_TYPES:
            raise ValueError(f"phone_type is one of {sorted(PHONE_TYPES)}")
        if self.im is not None and (self.im[0] not in IM_TYPES or not self.im[1]):
            raise ValueError(f"im is (type, id) with a type of {sorted(IM_TYPES)}")
        _refuse(self.contact, _OURS | {"PHONE", "IM"}, "contact")
        _refuse(self.fields, _OURS | {"CONTACT_ID", "CONTACT_IDS"}, self.kind)
        if self.comment is not None and not self.comment.strip():
            raise ValueError("an empty comment: leave it None")


@dataclass(frozen=True)
class OpenedInquiry:
    """The ids of the inquiry's records; `*_created` is True when this call made it."""

    contact_id: int
    contact_created: bool
    deal_id: int | None
    lead_id: int | None
    task_id: int | None
    comment_id: int | None
    # Requests that carried this inquiry's commands; a shared request counts once
    # for each inquiry in it.
    http_requests: int


async def open_inquiry(
    writer: Writer, locks: ContactLocks, inquiry: NewInquiry
) -> OpenedInquiry:
    """Find or create the contact and open the deal or lead, its task and comment."""
    if writer.batcher is None:
        async with Batcher(writer.client) as batcher:
            return await _open(writer, batcher, locks, inquiry)
    return await _open(writer, writer.batcher, locks, inquiry)


async def _open(
    writer: Writer, batcher: Batcher, locks: ContactLocks, inquiry: NewInquiry
) -> OpenedInquiry:
    chain = _Chain(writer, batcher, inquiry)
    with batcher.track() as tally:
        async with locks.for_contact(phone=inquiry.phone, im=inquiry.im):
            await chain.look_up()
            await chain.create_missing()
    opened = chain.opened(tally.requests)
    log.info(
        "bitrix24.inquiry.opened",
        key=inquiry.key,
        kind=inquiry.kind,
        contact_id=opened.contact_id,
        record_id=chain.ids.get("record"),
        task_id=opened.task_id,
        comment_id=opened.comment_id,
        created=sorted(chain.created),
        requests=opened.http_requests,
    )
    return opened


class _Chain:
    """One inquiry's progress: the ids known so far and what this call created."""

    def __init__(self, writer: Writer, batcher: Batcher, inquiry: NewInquiry) -> None:
        self.writer = writer
        self.batcher = batcher
        self.inquiry = inquiry
        self.entities = {"contact": "contact", "record": inquiry.kind, "task": "task"}
        self.keys = {
            "contact": f"{inquiry.key}:contact",
            "record": f"{inquiry.key}:{inquiry.kind}",
            "task": f"{inquiry.key}:task",
        }
        self.ids: dict[str, int] = {}
        self.created: set[str] = set()
        self.record_contact: int | None = None

    # -- step 1: what exists ----------------------------------------------------------

    async def look_up(self) -> None:
        inquiry = self.inquiry
        reads = {name: self._lookup(name) for name in self._keyed()}
        if inquiry.phone is not None:
            reads["phone"] = Command(
                "crm.duplicate.findbycomm",
                {"type": "PHONE", "values": [inquiry.phone], "entity_type": "CONTACT"},
            )
        if inquiry.im is not None:
            reads["im"] = Command(
                "crm.contact.list",
                {
                    "filter": {"IM": inquiry.im[1]},
                    "select": ["ID", "IM"],
                    "order": {"ID": "ASC"},
                },
            )
        found = await self.batcher.group(reads)
        self._take_keyed(found, self._keyed(), created=False)
        if "contact" not in self.ids:
            contact = self.record_contact or _phone_hit(found) or self._im_hit(found)
            if contact is not None:
                self.ids["contact"] = contact
        if "record" in self.ids and inquiry.comment is not None:
            await self._find_comment()

    def _keyed(self) -> list[str]:
        return ["contact", "record"] + (["task"] if self.inquiry.task else [])

    def _lookup(self, name: str) -> Command:
        select = ["CONTACT_ID"] if name == "record" else []
        entity = self.entities[name]
        return self.writer.lookup_command(entity, self.keys[name], select=select)

    def _take_keyed(
        self, found: BatchResult, names: list[str], *, created: bool
    ) -> None:
        for name in names:
            entity = self.entities[name]
            row = self.writer.found_row(entity, self.keys[name], found.value(name))
            if row is None:
                continue
            self.ids[name] = keyed_entity(entity).row_id(row)
            if created:
                self.created.add(name)
            if name == "record" and row.get("CONTACT_ID"):
                self.record_contact = int(row["CONTACT_ID"])

    def _im_hit(self, found: BatchResult) -> int | None:
        if self.inquiry.im is None:
            return None
        kind, value = self.inquiry.im
        hits = []
        for row in found.value("im"):
            items = [item for item in row.get("IM") or [] if isinstance(item, dict)]
            values = {str(item.get("VALUE", "")) for item in items}
            if value.casefold() not in {held.casefold() for held in values}:
                raise Rejected("crm.contact.list: the portal ignored the IM filter")
            if any(
                item.get("VALUE") == value and item.get("VALUE_TYPE") == kind
                for item in items
            ):
                hits.append(int(row["ID"]))
        return min(hits, default=None)

    async def _find_comment(self) -> None:
        """Our comment on the record: the first one with our exact text."""
        rows = await self.batcher.call(
            "crm.timeline.comment.list",
            {
                "filter": {"ENTITY_ID": self.ids["record"], "ENTITY_TYPE": self.kind},
                "select": ["ID", "COMMENT"],
                # It was written right after the record: the first page holds it.
                "order": {"ID": "ASC"},
            },
        )
        text = (self.inquiry.comment or "").strip()
        ids = [
            int(row["ID"]) for row in rows if str(row.get("COMMENT")).strip() == text
        ]
        if ids:
            self.ids["comment"] = min(ids)

    # -- step 2: what is missing ------------------------------------------------------

    async def create_missing(self) -> None:
        attempt = 0
        while plan := self._plan():
            attempt += 1
            try:
                result = await self.batcher.group(plan)
            except WriteOutcomeUnknown:
                log.warning(
                    "bitrix24.inquiry.outcome_unknown",
                    key=self.inquiry.key,
                    attempt=attempt,
                    commands=sorted(plan),
                )
                if attempt >= self.writer.attempts:
                    raise
                await self._reconcile(plan)
                continue
            self._take_created(plan, result)
            return

    def _plan(self) -> dict[str, Command]:
        inquiry = self.inquiry
        plan: dict[str, Command] = {}
        if "contact" not in self.ids:
            plan["contact"] = self._add("contact", self._contact_fields())
        if "record" not in self.ids:
            contact = self._ref_or_id("contact")
            plan["record"] = self._add(
                "record", {**inquiry.fields, "CONTACT_IDS": [contact]}
            )
        if inquiry.task is not None and "task" not in self.ids:
            plan["task"] = self._add("task", self._task_fields(inquiry.task))
        if inquiry.comment is not None and "comment" not in self.ids:
            plan["comment"] = Command(
                "crm.timeline.comment.add",
                {
                    "fields": {
                        "ENTITY_ID": self._ref_or_id("record"),
                        "ENTITY_TYPE": self.kind,
                        "COMMENT": inquiry.comment,
                    }
                },
            )
        return plan

    async def _reconcile(self, plan: Mapping[str, Command]) -> None:
        await self.writer.settle()
        keyed = [name for name in self._keyed() if name in plan]
        found = await self.batcher.group({name: self._lookup(name) for name in keyed})
        self._take_keyed(found, keyed, created=True)
        if "comment" in plan and "record" in self.ids:
            await self._find_comment()
            if "comment" in self.ids:
                self.created.add("comment")
        log.info(
            "bitrix24.inquiry.reconciled",
            key=self.inquiry.key,
            found=sorted(name for name in plan if name in self.ids),
        )

    def _take_created(self, plan: Mapping[str, Command], result: BatchResult) -> None:
        failure: Bitrix24Error | None = None
        for name in plan:
            if name in result.errors:
                failure = failure or result.errors[name]
            elif name in result.results:
                self.ids[name] = self._created_id(name, result.results[name])
                self.created.add(name)
        if failure is not None:
            # What was made before the failure carries its key: a retry finds it.
            log.warning(
                "bitrix24.inquiry.failed",
                key=self.inquiry.key,
                made=sorted(self.created),
                code=failure.code,
            )
            raise failure

    # -- fields -----------------------------------------------------------------------

    @property
    def kind(self) -> RecordKind:
        return self.inquiry.kind

    def _add(self, name: str, fields: Mapping[str, object]) -> Command:
        entity = self.entities[name]
        return self.writer.add_command(entity, fields, key=self.keys[name])

    def _created_id(self, name: str, answer: Any) -> int:
        if name == "comment":
            return int(answer)
        return self.writer.created_id(self.entities[name], answer)

    def _ref_or_id(self, name: str) -> BatchRef | int:
        return self.ids[name] if name in self.ids else BatchRef(name)

    def _contact_fields(self) -> dict[str, object]:
        fields = dict(self.inquiry.contact)
        if self.inquiry.phone is not None:
            fields["PHONE"] = [
                {"VALUE": self.inquiry.phone, "VALUE_TYPE": self.inquiry.phone_type}
            ]
        if self.inquiry.im is not None:
            kind, value = self.inquiry.im
            fields["IM"] = [{"VALUE": value, "VALUE_TYPE": kind}]
        return fields

    def _task_fields(self, task: TaskSpec) -> dict[str, object]:
        prefix = _BINDING_PREFIX[self.kind]
        record = self._ref_or_id("record")
        binding = RefText(prefix, record) if isinstance(record, BatchRef) else None
        fields: dict[str, object] = {
            "TITLE": task.title,
            "RESPONSIBLE_ID": task.responsible_id,
            # With its offset: tasks read naive times in the server's zone (§7.8).
            "DEADLINE": task.deadline.isoformat(timespec="seconds"),
            "UF_CRM_TASK": [binding or f"{prefix}{record}"],
        }
        if task.description:
            fields["DESCRIPTION"] = task.description
        if task.created_by is not None:
            fields["CREATED_BY"] = task.created_by
        return fields

    def opened(self, requests: int) -> OpenedInquiry:
        record = self.ids.get("record")
        return OpenedInquiry(
            contact_id=self.ids["contact"],
            contact_created="contact" in self.created,
            deal_id=record if self.kind == "deal" else None,
            lead_id=record if self.kind == "lead" else None,
            task_id=self.ids.get("task"),
            comment_id=self.ids.get("comment"),
            http_requests=requests,
        )


def _phone_hit(found: BatchResult) -> int | None:
    if "phone" not in found.results and "phone" not in found.errors:
        return None
    answer = found.value("phone")
    # No hit answers `[]`, hits `{"CONTACT": [275, 2297]}` (reference §7.4).
    contacts = answer.get("CONTACT", []) if isinstance(answer, Mapping) else []
    return min((int(contact) for contact in contacts), default=None)


def _refuse(fields: Mapping[str, object], names: frozenset[str], where: str) -> None:
    taken = names & set(fields)
    if taken:
        raise ValueError(f"{where} fields {sorted(taken)} are set by the gateway")
