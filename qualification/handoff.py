"""The hand-off: a qualified lead becomes a contact, a deal (or lead) and a task.

Under a lock per person (by phone, else by messenger id) the hand-off

1. finds the client by every phone it knows and by messenger id (the `IM`
   multifield `TELEGRAM` = the chat id; on WhatsApp the wa_id is the phone), with
   the client's deals and, in classic mode, open leads: two grouped reads;
2. adds the message to an open deal (or lead) of a returning client, as a timeline
   comment and a task for that deal's manager, instead of opening another one;
3. otherwise opens the inquiry (`open_inquiry`): the contact found or created, a
   deal in the first configured pipeline at its `new` stage (a lead in classic
   mode) with the qualification in COMMENTS and configured user fields, the
   transcript as a timeline comment, and a call-back task for the responsible
   manager with a deadline by readiness;
4. adds what the found contact lacks (this chat's messenger id, another phone),
   links the deal to the chat for reminders, and notifies the manager.

Every record carries a key made of the chat's pseudonym and the dialog's intake id
(no phone), so a replay or a crashed run finds what exists and creates nothing twice;
the outcome is kept in Redis, and a replay of a finished hand-off makes no CRM call.
The lock is held across the search and the writes: the same person writing on two
channels at once gets one contact and one deal, the second message a comment on it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from pydantic import TypeAdapter
from redis.asyncio import Redis

from app.config import BusinessRules
from app.metrics import HANDOFFS, LEAD_TO_CRM_SECONDS
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import BatchResult, Command
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.inquiry import (
    NewInquiry,
    RecordKind,
    TaskSpec,
    open_inquiry,
)
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.reads import CrmMode, crm_mode
from connectors.bitrix24.writes import Writer
from qualification.managers import (
    ManagerPicker,
    Schedule,
    call_back_by,
    tier_of,
    when_words,
)
from qualification.phones import normalize_phone
from qualification.schema import (
    READINESS_RU,
    Judgement,
    Qualification,
    QualifiedLead,
    rubles,
)
from webhooks.inbound import Channel
from webhooks.keys import chat_key

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]
CHANNEL_TITLES: dict[Channel, str] = {"telegram": "Telegram", "whatsapp": "WhatsApp"}
URGENCY_RU = {"urgent": "срочно", "normal": "обычная"}
# Where a manager opens a record in the portal; relative links work in notifications.
RECORD_PATHS: dict[RecordKind, str] = {
    "deal": "/crm/deal/details/{id}/",
    "lead": "/crm/lead/details/{id}/",
}
# A hand-off kept this long answers replays; events are deduplicated for 7 days.
MEMO_TTL = timedelta(days=7, hours=1)
_PIPELINE_PREFIX = re.compile(r"C(\d+):")


class ChatLinks(Protocol):
    """Where a deal's reminders go (reminders.links.Links)."""

    async def remember(self, deal_id: int, channel: Channel, chat_id: str) -> None: ...


def inquiry_key(lead: QualifiedLead) -> str:
    """The idempotency key of a lead: its chat's pseudonym and its intake id."""
    return chat_inquiry_key(lead.channel, lead.chat_id, lead.intake_id)


def chat_inquiry_key(channel: Channel, chat_id: str, intake_id: str) -> str:
    """`inquiry_key` from the chat and the dialog's intake id."""
    return f"intake:{chat_key(channel, chat_id)}:{intake_id}"


@dataclass(frozen=True)
class Identity:
    """How the CRM knows a client: phones in E.164, and a messenger id."""

    phones: tuple[str, ...]
    im: tuple[str, str] | None

    @classmethod
    def of(cls, lead: QualifiedLead) -> Identity:
        return cls.of_chat(lead.channel, lead.chat_id, lead.phone)

    @classmethod
    def of_chat(cls, channel: Channel, chat_id: str, phone: str | None) -> Identity:
        phones = [phone] if phone else []
        if channel == "whatsapp":
            # The wa_id is the number the client writes from (digits, no plus).
            own = normalize_phone(f"+{chat_id}") if chat_id.isdigit() else None
            phones += [own.e164] if own else []
            if not phones:
                return cls((), ("OTHER", f"whatsapp:{chat_id}"))
            return cls(tuple(dict.fromkeys(phones)), None)
        return cls(tuple(phones), ("TELEGRAM", chat_id))

    @property
    def phone(self) -> str | None:
        return self.phones[0] if self.phones else None


@dataclass(frozen=True)
class OpenRecord:
    """A returning client's deal or lead that is still in progress."""

    kind: RecordKind
    id: int
    manager_id: int | None
    contact_id: int


@dataclass
class Found:
    """What the CRM holds about a client before anything is written."""

    contacts: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    open_record: OpenRecord | None = None
    previous_manager: int | None = None


@dataclass(frozen=True)
class HandedOff:
    """What one hand-off did; kept per inquiry so that a replay repeats nothing."""

    key: str
    record: RecordKind
    record_id: int
    contact_id: int
    returning: bool
    manager_id: int
    deadline: datetime
    task_id: int | None
    comment_id: int | None
    contact_created: bool = False

    @property
    def deal_id(self) -> int | None:
        return self.record_id if self.record == "deal" else None


_HANDED_OFF = TypeAdapter(HandedOff)


class HandOff:
    """Puts qualified leads into Bitrix24 through the gateway, once each."""

    def __init__(
        self,
        writer: Writer,
        redis: Redis,
        rules: BusinessRules,
        picker: ManagerPicker,
        links: ChatLinks,
        *,
        clock: Clock,
        prefix: str = "leadloop:intake",
        contact_locks: ContactLocks | None = None,
    ) -> None:
        if writer.batcher is None:
            raise ValueError("the hand-off needs a writer with a batcher")
        self._writer = writer
        self._batcher: Batcher = writer.batcher
        self._redis = redis
        self._rules = rules
        self._picker = picker
        self._links = links
        self._clock = clock
        self._prefix = prefix
        self._contact_locks = contact_locks or ContactLocks(redis)
        # A lock of its own, taken before the gateway's contact lock, never inside.
        self._person_locks = ContactLocks(redis, prefix=f"{prefix}:lock:person")
        self._mode: CrmMode | None = None
        # Concurrent hand-offs wait for the first answer instead of each asking.
        self._mode_lock = asyncio.Lock()
        self._integration_user: int | None = None

    async def hand_off(self, lead: QualifiedLead) -> HandedOff:
        """Put the lead into the CRM, or answer what an earlier run already did."""
        key = inquiry_key(lead)
        with structlog.contextvars.bound_contextvars(intake_id=lead.intake_id):
            done = await self.recall(lead)
            if done is not None:
                log.info("intake.handoff_replayed", record_id=done.record_id)
                HANDOFFS.labels("replayed").inc()
                return done

            identity = Identity.of(lead)
            kind = await self._record_kind()
            person = self._person_locks.for_contact(
                phone=identity.phone, im=identity.im
            )
            async with person:
                found = await self._look_up(identity, kind, key)
                if found.open_record is not None:
                    done = await self._add_to_open(lead, key, found.open_record)
                else:
                    done = await self._open_new(lead, key, kind, identity, found)
                await self._complete_contact(done, identity, found)

            if done.deal_id is not None:
                await self._links.remember(done.deal_id, lead.channel, lead.chat_id)
            await self._notify(lead, done)
            await self._redis.set(
                self._memo_key(lead), _HANDED_OFF.dump_json(done), px=_ms(MEMO_TTL)
            )
            HANDOFFS.labels("handed_off").inc()
            # From the dialog completing the lead: inline it is the CRM's writes,
            # parked it includes the wait for the portal to come back.
            waited = self._clock() - lead.created_at
            LEAD_TO_CRM_SECONDS.observe(max(waited.total_seconds(), 0.0))
            log.info(
                "intake.handed_off",
                record=done.record,
                record_id=done.record_id,
                contact_id=done.contact_id,
                returning=done.returning,
                manager_id=done.manager_id,
                task_id=done.task_id,
            )
            return done

    async def recall(self, lead: QualifiedLead) -> HandedOff | None:
        """The finished hand-off of this lead, if there was one."""
        return await self.recall_chat(lead.channel, lead.chat_id, lead.intake_id)

    async def recall_chat(
        self, channel: Channel, chat_id: str, intake_id: str
    ) -> HandedOff | None:
        """The finished hand-off of a chat's inquiry, by the dialog's intake id."""
        key = f"{self._prefix}:handoff:{chat_inquiry_key(channel, chat_id, intake_id)}"
        raw = await self._redis.get(key)
        return None if raw is None else _HANDED_OFF.validate_json(raw)

    async def find_open(self, identity: Identity) -> OpenRecord | None:
        """The client's open deal (or lead) in the CRM, found as the hand-off does."""
        kind = await self._record_kind()
        # Only reads: no key of an inquiry in progress to tell ours from theirs.
        found = await self._look_up(identity, kind, key="")
        return found.open_record

    def client_reply(self, lead: QualifiedLead, done: HandedOff) -> str | None:
        """What the bot tells the client now: the request, and who calls when.

        None for a client who asked for a person: the dialog's hand-over text says
        what happens, and the lead may lack what the request text names.
        """
        if lead.handover or not lead.complete:
            return None
        texts, now = self._rules.messages, self._clock()
        schedule = self._picker.schedule_of(done.manager_id)
        when = when_words(schedule, now, done.deadline)
        step = texts.next_step_returning if done.returning else texts.next_step
        confirm = texts.confirm.format(
            service=lead.service_title or "",
            time=lead.preferred_time.describe(now) if lead.preferred_time else "",
            name=lead.name or "",
        )
        spoke = any(line.author == "bot" for line in lead.transcript)
        hello = "" if spoke else texts.greeting_short
        parts = (hello, confirm, step.format(when=when))
        return " ".join(part for part in parts if part)

    # -- finding the client ------------------------------------------------------------

    async def _look_up(self, identity: Identity, kind: RecordKind, key: str) -> Found:
        contact_ids = await self._contact_ids(identity)
        if not contact_ids:
            return Found()

        ids = sorted(contact_ids)
        reads = {
            "contacts": Command(
                "crm.contact.list",
                {
                    "filter": {"@ID": ids},
                    "select": ["ID", "ASSIGNED_BY_ID", "PHONE", "IM"],
                    "order": {"ID": "ASC"},
                },
            ),
            "deals": _records_of("deal", ids, {}),
        }
        if kind == "lead":
            reads["leads"] = _records_of("lead", ids, {"STATUS_SEMANTIC_ID": "P"})
        answer = await self._batcher.group(reads)
        return self._found(answer, contact_ids, key, with_leads=kind == "lead")

    async def _contact_ids(self, identity: Identity) -> set[int]:
        reads = {
            f"phone{index}": Command(
                "crm.duplicate.findbycomm",
                {"type": "PHONE", "values": [phone], "entity_type": "CONTACT"},
            )
            for index, phone in enumerate(identity.phones)
        }
        if identity.im is not None:
            reads["im"] = Command(
                "crm.contact.list",
                {
                    "filter": {"IM": identity.im[1]},
                    "select": ["ID", "IM"],
                    "order": {"ID": "ASC"},
                },
            )
        answer = await self._batcher.group(reads)
        found: set[int] = set()
        for name in reads:
            rows = answer.value(name)
            found |= _im_holders(rows, identity.im) if name == "im" else _hits(rows)
        return found

    def _found(
        self, answer: BatchResult, contact_ids: set[int], key: str, *, with_leads: bool
    ) -> Found:
        contacts = {
            int(row["ID"]): row
            for row in _rows(answer.value("contacts"))
            if int(row["ID"]) in contact_ids
        }
        deals = _theirs(answer.value("deals"), contact_ids)
        leads = _theirs(answer.value("leads"), contact_ids) if with_leads else []
        open_record = self._open_deal(deals, key) or self._open_lead(leads, key)
        previous = _user(deals[0].get("ASSIGNED_BY_ID")) if deals else None
        if previous is None and contacts:
            previous = _user(contacts[min(contacts)].get("ASSIGNED_BY_ID"))
        return Found(contacts, open_record, previous)

    def _open_deal(
        self, deals: Sequence[Mapping[str, Any]], key: str
    ) -> OpenRecord | None:
        pipelines = {str(pipeline) for pipeline in self._rules.crm.pipelines}
        for deal in deals:
            if str(deal.get("CATEGORY_ID") or "0") not in pipelines:
                continue
            if deal.get("CLOSED") == "Y" or deal.get("STAGE_SEMANTIC_ID") in ("S", "F"):
                continue
            return self._unless_ours("deal", deal, key)
        return None

    def _open_lead(
        self, leads: Sequence[Mapping[str, Any]], key: str
    ) -> OpenRecord | None:
        return self._unless_ours("lead", leads[0], key) if leads else None

    def _unless_ours(
        self, kind: RecordKind, row: Mapping[str, Any], key: str
    ) -> OpenRecord | None:
        # An earlier run of this very inquiry made it: carry on opening it.
        ours = (row.get("ORIGINATOR_ID"), row.get("ORIGIN_ID"))
        if ours == (self._writer.originator, f"{key}:{kind}"):
            return None
        return OpenRecord(
            kind,
            int(row["ID"]),
            _user(row.get("ASSIGNED_BY_ID")),
            _user(row.get("CONTACT_ID")) or 0,
        )

    # -- writing -----------------------------------------------------------------------

    async def _open_new(
        self,
        lead: QualifiedLead,
        key: str,
        kind: RecordKind,
        identity: Identity,
        found: Found,
    ) -> HandedOff:
        now = self._clock()
        manager, schedule = await self._responsible(now, found.previous_manager)
        deadline = call_back_by(
            schedule, tier_of(lead), self._rules.intake.deadlines, now
        )
        summary = self._summary(lead, deadline)
        inquiry = NewInquiry(
            key=key,
            kind=kind,
            phone=identity.phone,
            phone_type=self._rules.crm.phone_type,
            im=identity.im,
            contact=self._contact_fields(lead, manager),
            fields=self._record_fields(lead, kind, manager, summary),
            task=TaskSpec(
                title=self._task_title(lead, returning=False),
                responsible_id=manager,
                deadline=deadline,
                description=summary,
            ),
            comment=self._transcript(lead, returning=False),
        )
        opened = await open_inquiry(self._writer, self._contact_locks, inquiry)
        record_id = opened.deal_id if kind == "deal" else opened.lead_id
        return HandedOff(
            key=key,
            record=kind,
            record_id=cast(int, record_id),
            contact_id=opened.contact_id,
            returning=False,
            manager_id=manager,
            deadline=deadline,
            task_id=opened.task_id,
            comment_id=opened.comment_id,
            contact_created=opened.contact_created,
        )

    async def _add_to_open(
        self, lead: QualifiedLead, key: str, record: OpenRecord
    ) -> HandedOff:
        now = self._clock()
        manager, schedule = await self._responsible(now, record.manager_id)
        deadline = call_back_by(
            schedule, tier_of(lead), self._rules.intake.deadlines, now
        )
        task = TaskSpec(
            title=self._task_title(lead, returning=True),
            responsible_id=manager,
            deadline=deadline,
            description=self._summary(lead, deadline),
        )
        comment_id, task_id = await asyncio.gather(
            self._comment_once(record, self._transcript(lead, returning=True)),
            self._task_once(record, key, task),
        )
        return HandedOff(
            key=key,
            record=record.kind,
            record_id=record.id,
            contact_id=record.contact_id,
            returning=True,
            manager_id=manager,
            deadline=deadline,
            task_id=task_id,
            comment_id=comment_id,
        )

    async def _comment_once(self, record: OpenRecord, text: str) -> int:
        rows = await self._batcher.call(
            "crm.timeline.comment.list",
            {
                "filter": {"ENTITY_ID": record.id, "ENTITY_TYPE": record.kind},
                "select": ["ID", "COMMENT"],
                "order": {"ID": "DESC"},
            },
        )
        # Comments carry no key of ours; the text holds the transcript with its
        # times, so an equal text is this inquiry's comment.
        for row in _rows(rows):
            if str(row.get("COMMENT") or "").strip() == text.strip():
                return int(row["ID"])
        fields = {"ENTITY_ID": record.id, "ENTITY_TYPE": record.kind, "COMMENT": text}
        return int(
            await self._batcher.call("crm.timeline.comment.add", {"fields": fields})
        )

    async def _task_once(self, record: OpenRecord, key: str, task: TaskSpec) -> int:
        binding = {"deal": "D_", "lead": "L_"}[record.kind]
        fields: dict[str, object] = {
            "TITLE": task.title,
            "RESPONSIBLE_ID": task.responsible_id,
            # With its offset: tasks read naive times in the server's zone.
            "DEADLINE": task.deadline.isoformat(timespec="seconds"),
            "UF_CRM_TASK": [f"{binding}{record.id}"],
            "DESCRIPTION": task.description,
        }
        created = await self._writer.create("task", fields, key=f"{key}:task")
        return created.id

    async def _complete_contact(
        self, done: HandedOff, identity: Identity, found: Found
    ) -> None:
        """Give a contact found by one identity the others this chat brings."""
        if done.contact_id <= 0:
            return
        row = found.contacts.get(done.contact_id)
        if row is None and done.contact_created:
            # Made just now with the first phone and the messenger id (inquiry.py).
            row = _holding(identity.phones[:1], identity.im)
        elif row is None:
            row = await self._batcher.call("crm.contact.get", {"id": done.contact_id})
        fields = _missing_multifields(row, identity, self._rules.crm.phone_type)
        if not fields:
            return
        await self._batcher.call(
            "crm.contact.update", {"id": done.contact_id, "fields": fields}
        )
        log.info(
            "intake.contact_completed", contact_id=done.contact_id, added=sorted(fields)
        )

    async def _notify(self, lead: QualifiedLead, done: HandedOff) -> None:
        if not self._rules.intake.notify:
            return
        path = RECORD_PATHS[done.record].format(id=done.record_id)
        word = "сделка" if done.record == "deal" else "лид"
        by = f"{done.deadline.astimezone(self._rules.zone):%d.%m %H:%M}"
        channel = CHANNEL_TITLES[lead.channel]
        what = "Клиент снова написал" if done.returning else "Новая заявка"
        message = (
            f"{what} из {channel}: [URL={path}]{word} {done.record_id}[/URL]. "
            f"Связаться до {by}."
        )
        params = {
            "USER_ID": done.manager_id,
            "MESSAGE": message,
            "TAG": f"leadloop:{done.key}",
        }
        try:
            # The tag makes a repeat replace the first notification, not add one.
            await self._batcher.call("im.notify.personal.add", params)
        except Bitrix24Error as error:
            # The task notifies the manager too; a missing `im` scope is no reason
            # to hold the lead back.
            log.warning("intake.notify_failed", code=error.code)

    # -- choices -----------------------------------------------------------------------

    async def _record_kind(self) -> RecordKind:
        mode = self._rules.crm.mode
        if mode != "auto":
            return "lead" if mode == "classic" else "deal"
        async with self._mode_lock:
            if self._mode is None:
                self._mode = await crm_mode(self._batcher)
        return "lead" if self._mode is CrmMode.CLASSIC else "deal"

    async def _responsible(
        self, now: datetime, previous: int | None
    ) -> tuple[int, Schedule]:
        assignment = await self._picker.pick(now, previous)
        if assignment is not None:
            return assignment.manager_id, assignment.schedule
        # Nobody configured: the user the integration acts as takes the lead.
        if self._integration_user is None:
            me = await self._batcher.call("user.current", {})
            self._integration_user = int(me["ID"])
        return self._integration_user, self._picker.schedule_of(self._integration_user)

    # -- texts -------------------------------------------------------------------------

    def _record_fields(
        self, lead: QualifiedLead, kind: RecordKind, manager: int, summary: str
    ) -> dict[str, object]:
        intake, crm = self._rules.intake, self._rules.crm
        fields: dict[str, object] = {
            "TITLE": self._title(lead),
            "SOURCE_ID": intake.sources.get(lead.channel, "OTHER"),
            "SOURCE_DESCRIPTION": f"{CHANNEL_TITLES[lead.channel]}, бот leadloop",
            "ASSIGNED_BY_ID": manager,
        }
        if kind == "deal":
            pipeline = crm.pipelines[0]
            fields["CATEGORY_ID"] = pipeline
            stage = _new_stage(crm.stages.new, pipeline)
            if stage is not None:
                fields["STAGE_ID"] = stage
        else:
            fields["STATUS_ID"] = crm.lead_statuses.new[0]
            fields["NAME"] = _who(lead)
        if intake.comments:
            fields["COMMENTS"] = summary
        for item, code in intake.fields.items():
            value = self._item_text(lead, item)
            if value:
                fields[code] = value
        return fields

    def _contact_fields(self, lead: QualifiedLead, manager: int) -> dict[str, object]:
        return {
            "NAME": _who(lead),
            "SOURCE_ID": self._rules.intake.sources.get(lead.channel, "OTHER"),
            "ASSIGNED_BY_ID": manager,
        }

    def _title(self, lead: QualifiedLead) -> str:
        if lead.handover and not lead.complete:
            return f"Клиент просит менеджера — {_who(lead)}"
        return f"{lead.service_title or 'Заявка'} — {_who(lead)}"

    def _task_title(self, lead: QualifiedLead, *, returning: bool) -> str:
        if returning:
            return (
                f"Клиент снова написал ({CHANNEL_TITLES[lead.channel]}) — {_who(lead)}"
            )
        if lead.handover:
            return f"Клиент просит менеджера — {_who(lead)}"
        return f"Перезвонить: {lead.service_title or 'заявка'} — {_who(lead)}"

    def _transcript(self, lead: QualifiedLead, *, returning: bool) -> str:
        channel = CHANNEL_TITLES[lead.channel]
        heading = (
            f"Клиент снова написал в {channel}, пока заявка открыта."
            if returning
            else f"Переписка в {channel}:"
        )
        return f"{heading}\n{lead.transcript_text(self._rules.zone)}"

    def _summary(self, lead: QualifiedLead, deadline: datetime) -> str:
        """The qualification in Russian, one fact a line, with the client's words."""
        q = lead.qualification
        source = "модель" if q.source == "llm" else "правила"
        facts = [
            ("Услуга", self._item_text(lead, "service")),
            ("Удобное время", self._item_text(lead, "preferred_time")),
            ("Имя", lead.name or ""),
            ("Телефон", _phone_text(lead)),
            ("Готовность", READINESS_RU[q.readiness] + _words(q, "readiness")),
            ("Срочность", URGENCY_RU[q.urgency] + _words(q, "urgency")),
            ("Бюджет", q.budget.describe() + _words(q, "budget") if q.budget else ""),
            ("Кратко", q.summary),
        ]
        lines = [f"Заявка из {CHANNEL_TITLES[lead.channel]} (квалификация: {source})"]
        lines += [f"{label}: {value}" for label, value in facts if value]
        if lead.handover:
            lines.append("Клиент попросил менеджера.")
        if q.needs_review:
            lines.append("Проверьте: модель не справилась, значения от правил.")
        due = deadline.astimezone(self._rules.zone)
        lines.append(f"Связаться до: {due:%d.%m.%Y %H:%M}")
        return "\n".join(lines)

    def _item_text(self, lead: QualifiedLead, item: str) -> str:
        q = lead.qualification
        texts: dict[str, Callable[[], str]] = {
            "service": lambda: _service_text(lead),
            "preferred_time": lambda: (
                lead.preferred_time.describe(lead.created_at)
                if lead.preferred_time
                else ""
            ),
            "readiness": lambda: READINESS_RU[q.readiness],
            "urgency": lambda: URGENCY_RU[q.urgency],
            "budget": lambda: q.budget.describe() if q.budget else "",
            "summary": lambda: q.summary,
            "channel": lambda: CHANNEL_TITLES[lead.channel],
        }
        return texts[item]()

    def _memo_key(self, lead: QualifiedLead) -> str:
        return f"{self._prefix}:handoff:{inquiry_key(lead)}"


# -- deferred hand-offs ----------------------------------------------------------------

HAND_OFF_JOB = "intake_hand_off"


class DeferredHandOffs:
    """Leads whose hand-off failed inline, parked in Redis for a retrying job."""

    def __init__(self, redis: ArqRedis, *, prefix: str = "leadloop:intake") -> None:
        self._redis = redis
        self._prefix = prefix

    async def defer(self, lead: QualifiedLead, delay: timedelta) -> None:
        """Park the lead and queue its job; a second call for it changes nothing."""
        await self._redis.set(
            self._key(lead.intake_id), lead.model_dump_json(), px=_ms(MEMO_TTL)
        )
        # keep_result is 0 for this job, so its id frees up once it ends (arq #432);
        # while it is queued, None means "already scheduled", which it is.
        await self._redis.enqueue_job(
            HAND_OFF_JOB,
            lead.intake_id,
            _job_id=self._job_id(lead.intake_id),
            _defer_by=delay,
        )
        log.warning(
            "intake.handoff_deferred", intake_id=lead.intake_id, delay_s=delay.seconds
        )

    async def parked(self, intake_id: str) -> QualifiedLead | None:
        raw = await self._redis.get(self._key(intake_id))
        return None if raw is None else QualifiedLead.model_validate_json(raw)

    async def release(self, intake_id: str) -> None:
        await self._redis.delete(self._key(intake_id))

    async def withdraw(self, intake_id: str) -> None:
        """Release the lead and take its waiting job off the queue, unless it runs.

        For a hand-off that finished after all: its job would only find nothing.
        A worker taking the job at this very moment finds it gone or nothing parked.
        """
        await self.release(intake_id)
        job_id = self._job_id(intake_id)
        if await self._redis.exists(in_progress_key_prefix + job_id):
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._redis.default_queue_name, job_id)
            pipe.delete(job_key_prefix + job_id)
            await pipe.execute()

    def _job_id(self, intake_id: str) -> str:
        return f"{self._prefix}:job:handoff:{intake_id}"

    def _key(self, intake_id: str) -> str:
        return f"{self._prefix}:parked:{intake_id}"


# -- helpers ---------------------------------------------------------------------------


def _records_of(
    kind: RecordKind, contact_ids: list[int], extra: Mapping[str, object]
) -> Command:
    select = ["ID", "CONTACT_ID", "ASSIGNED_BY_ID", "ORIGINATOR_ID", "ORIGIN_ID"]
    if kind == "deal":
        select += ["CATEGORY_ID", "CLOSED", "STAGE_SEMANTIC_ID"]
    return Command(
        f"crm.{kind}.list",
        {
            "filter": {"@CONTACT_ID": contact_ids, **extra},
            "select": select,
            # Newest first: the first page holds the client's latest records.
            "order": {"ID": "DESC"},
        },
    )


def _rows(answer: Any) -> list[Mapping[str, Any]]:
    if not isinstance(answer, list):
        raise Bitrix24Error("a list method answered something other than rows")
    return [row for row in answer if isinstance(row, Mapping)]


def _theirs(answer: Any, contact_ids: set[int]) -> list[Mapping[str, Any]]:
    # A filter the portal dropped would widen the list to everyone's records.
    return [row for row in _rows(answer) if _user(row.get("CONTACT_ID")) in contact_ids]


def _hits(answer: Any) -> set[int]:
    """`crm.duplicate.findbycomm`: `{"CONTACT": [275]}`, or `[]` for no hit."""
    if isinstance(answer, Mapping):
        return {int(contact) for contact in answer.get("CONTACT") or []}
    return set()


def _im_holders(answer: Any, im: tuple[str, str] | None) -> set[int]:
    if im is None:
        return set()
    kind, value = im
    return {
        int(row["ID"])
        for row in _rows(answer)
        if any(
            isinstance(item, Mapping)
            and item.get("VALUE_TYPE") == kind
            and str(item.get("VALUE")) == value
            for item in row.get("IM") or []
        )
    }


def _missing_multifields(
    row: Any, identity: Identity, phone_type: str
) -> dict[str, list[dict[str, str]]]:
    row = row if isinstance(row, Mapping) else {}
    held_phones = set()
    for item in row.get("PHONE") or []:
        phone = (
            normalize_phone(str(item.get("VALUE", "")))
            if isinstance(item, Mapping)
            else None
        )
        if phone is not None:
            held_phones.add(phone.e164)
    held_im = {
        (str(item.get("VALUE_TYPE")), str(item.get("VALUE")))
        for item in row.get("IM") or []
        if isinstance(item, Mapping)
    }
    fields: dict[str, list[dict[str, str]]] = {}
    phones = [p for p in identity.phones if p not in held_phones]
    if phones:
        # Without an ID a multifield value is added; the others stay (reference §7.3).
        fields["PHONE"] = [
            {"VALUE": phone, "VALUE_TYPE": phone_type} for phone in phones
        ]
    if identity.im is not None and identity.im not in held_im:
        fields["IM"] = [{"VALUE": identity.im[1], "VALUE_TYPE": identity.im[0]}]
    return fields


def _holding(phones: Sequence[str], im: tuple[str, str] | None) -> dict[str, Any]:
    """A contact row holding these phones and this messenger id."""
    row: dict[str, Any] = {"PHONE": [{"VALUE": phone} for phone in phones]}
    if im is not None:
        row["IM"] = [{"VALUE_TYPE": im[0], "VALUE": im[1]}]
    return row


def _new_stage(stages: Sequence[str], pipeline: int) -> str | None:
    for stage in stages:
        match = _PIPELINE_PREFIX.match(stage)
        if (int(match[1]) if match else 0) == pipeline:
            return stage
    return None


def _user(value: object) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 else None


def _who(lead: QualifiedLead) -> str:
    return lead.name or lead.profile_name or "клиент"


def _service_text(lead: QualifiedLead) -> str:
    if lead.service_title is None:
        return ""
    low, high = lead.price_from, lead.price_to
    if low is not None and high is not None:
        return f"{lead.service_title} ({rubles(low)} – {rubles(high)})"
    if low is not None:
        return f"{lead.service_title} (от {rubles(low)})"
    return lead.service_title


def _words(qualification: Qualification, judgement: Judgement) -> str:
    """The client's own words behind a judgement: « — «хочу сегодня»»."""
    quotes = qualification.evidence.get(judgement)
    if not quotes:
        return ""
    return " — " + ", ".join(f"«{quote}»" for quote in quotes)


def _phone_text(lead: QualifiedLead) -> str:
    if lead.phone is None:
        return ""
    extension = f" доб. {lead.phone_extension}" if lead.phone_extension else ""
    return lead.phone + extension


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
