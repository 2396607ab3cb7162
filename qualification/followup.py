"""After the hand-off: a client's later messages go to the chat's deal or lead.

The dialog passes every message that comes after the hand-off on as a `FollowUp`;
`FollowUps.add` runs in the chat's job, in order, and is safe to repeat:

1. where the message goes is decided once per event and kept under its event id,
   so a retry repeats the decision: the deal or lead the dialog remembers, while
   it is open; else the hand-off's outcome for the inquiry; a lead still parked
   for the hand-off job takes the message into its transcript; else the client's
   open deal (or lead) found by phone and messenger id, as the hand-off searches.
   Nothing open (closed, converted, deleted, a portal reset): `gone`, and the
   message starts a new inquiry (`DialogEngine.start_over`).
2. the message goes on the record as a timeline comment, once: a step mark per
   event, and a retry that finds no mark looks for the comment by its text first
   (a crash can fall between the comment and the mark);
3. for the first message of a burst the manager is told: a follow-up task when
   the record has no open task of ours (the hand-off's call-back task counts), at
   most one open at a time; otherwise a personal notification tagged per record,
   so that a repeat replaces it instead of piling up.

When the portal is down or refusing (the gateway's unavailable, rate-limited or
lost-answer errors), the message waits in Redis and its job settles it later
(qualification.pending), so the chat's job finishes; while anything of the chat
waits, its later messages queue behind it, so they reach the deal in order.

Message texts go to the CRM only; the log lines carry ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import structlog
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from app.config import BusinessRules
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.errors import (
    Bitrix24Error,
    NotFound,
    RateLimited,
    Unavailable,
    WriteOutcomeUnknown,
)
from connectors.bitrix24.inquiry import RecordKind
from connectors.bitrix24.writes import Writer, hashed_key
from qualification.dialog import FollowUp
from qualification.handoff import (
    CHANNEL_TITLES,
    RECORD_PATHS,
    DeferredHandOffs,
    HandOff,
    Identity,
    OpenRecord,
)
from qualification.managers import ManagerPicker, call_back_by
from qualification.pending import PendingFollowUps
from qualification.schema import TranscriptLine
from webhooks.inbound import Channel, InboundKind, InboundMessage

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]
Outcome = Literal["added", "parked", "gone", "pending"]
# Decisions and step marks answer retries; events are deduplicated for 7 days.
MEMORY = timedelta(days=8)
# Bitrix24 shows long comments folded; a client's essay is cut, not refused.
COMMENT_TEXT_LIMIT = 4000
# A parked lead is handed off by its job; a new line only needs it still queued.
PARKED_DELAY = timedelta(seconds=30)
# tasks.task.get `status`: 4 waits for the creator's approval, 5 is completed,
# 7 declined; the manager has done their part in each.
TASK_DONE = frozenset({"4", "5", "7"})
Step = Callable[[], Awaitable[object]]
# What a later try can get past: the portal down or refusing for load, or a write
# whose answer was lost (a retry looks for the comment before it sends it again).
PASSING = (Unavailable, RateLimited, WriteOutcomeUnknown)


class Placed(BaseModel):
    """Where one follow-up message went; kept per event."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    record: RecordKind | None = None
    record_id: int | None = None
    contact_id: int | None = None
    manager_id: int | None = None


class FollowUps:
    """Puts clients' messages after the hand-off on their open deal or lead."""

    def __init__(
        self,
        handoff: HandOff,
        writer: Writer,
        redis: Redis,
        rules: BusinessRules,
        picker: ManagerPicker,
        deferred: DeferredHandOffs,
        *,
        clock: Clock,
        prefix: str = "leadloop:intake",
        pending: PendingFollowUps | None = None,
    ) -> None:
        if writer.batcher is None:
            raise ValueError("follow-ups need a writer with a batcher")
        self._handoff = handoff
        self._writer = writer
        self._batcher: Batcher = writer.batcher
        self._redis = redis
        self._rules = rules
        self._picker = picker
        self._deferred = deferred
        self._clock = clock
        self._prefix = f"{prefix}:followup"
        self._pending = pending

    async def add(self, message: InboundMessage, follow_up: FollowUp) -> Placed:
        """Put the message where it belongs; `gone` when the inquiry is over.

        `pending` when the portal failed (or an earlier message of the chat is
        still pending): the message waits in Redis for the follow-up job.
        """
        if self._pending is None:
            return await self._settle(message, follow_up)
        if await self._pending.waiting(message):
            await self._pending.park(message, follow_up)
            return Placed(outcome="pending")
        try:
            return await self._settle(message, follow_up)
        except PASSING as error:
            log.warning(
                "followup.portal_failed",
                intake_id=follow_up.intake_id,
                error=type(error).__name__,
            )
            await self._pending.park(message, follow_up)
            return Placed(outcome="pending")

    async def drain(
        self, channel: Channel, chat: str, job_id: str, job_try: int
    ) -> None:
        """The follow-up job's work: the chat's pending messages, oldest first."""
        if self._pending is None:
            raise RuntimeError("follow-ups without a pending queue have no job")
        await self._pending.drain(channel, chat, job_id, job_try, self._settle_late)

    async def _settle_late(
        self, message: InboundMessage, follow_up: FollowUp
    ) -> Placed:
        placed = await self._settle(message, follow_up)
        if placed.outcome == "gone":
            # The deal closed while the portal was away. The client was told the
            # manager has the message, and a new inquiry cannot start outside the
            # chat's order: the chat's next message starts one.
            log.warning("followup.gone_while_pending", intake_id=follow_up.intake_id)
        return placed

    async def _settle(self, message: InboundMessage, follow_up: FollowUp) -> Placed:
        claim = self._claim_key(message)
        raw = await self._redis.get(claim)
        retried = raw is not None
        if raw is None:
            placed = await self._place(message, follow_up)
            await self._redis.set(claim, placed.model_dump_json(), px=_ms(MEMORY))
        else:
            placed = Placed.model_validate_json(raw)

        bound = structlog.contextvars.bound_contextvars(
            intake_id=follow_up.intake_id,
            record=placed.record,
            record_id=placed.record_id,
        )
        with bound:
            if placed.outcome == "added":
                await self._deliver(message, follow_up, placed, claim, retried)
            elif placed.outcome == "parked":
                await self._step(claim, "parked", self._into_parked(message, follow_up))
            log.info(
                "followup.placed",
                outcome=placed.outcome,
                first_in_burst=follow_up.first_in_burst,
                retried=retried,
            )
        return placed

    # -- where it goes -----------------------------------------------------------------

    async def _place(self, message: InboundMessage, follow_up: FollowUp) -> Placed:
        record = None
        if follow_up.record is not None and follow_up.record_id is not None:
            record = await self._open(
                follow_up.record, follow_up.record_id, follow_up.contact_id
            )
        else:
            done = await self._handoff.recall_chat(
                message.channel, message.chat_id, follow_up.intake_id
            )
            if done is not None:
                record = await self._open(done.record, done.record_id, done.contact_id)
            elif await self._deferred.parked(follow_up.intake_id) is not None:
                return Placed(outcome="parked")
        if record is None:
            # A converted lead's deal, or a deal the manager opened by hand.
            identity = Identity.of_chat(
                message.channel, message.chat_id, follow_up.phone
            )
            record = await self._handoff.find_open(identity)
        if record is None:
            return Placed(outcome="gone")
        return Placed(
            outcome="added",
            record=record.kind,
            record_id=record.id,
            contact_id=record.contact_id or None,
            manager_id=record.manager_id,
        )

    async def _open(
        self, kind: RecordKind, record_id: int, contact_id: int | None
    ) -> OpenRecord | None:
        """The record when it exists, is the client's, and is still in progress."""
        try:
            row = await self._batcher.call(f"crm.{kind}.get", {"id": record_id})
        except NotFound:
            return None
        if not isinstance(row, Mapping) or not _in_progress(kind, row):
            return None
        if contact_id and _user(row.get("CONTACT_ID")) not in (contact_id, None):
            # Another client's record under the same id: a sandbox portal that was
            # reset and seeded again reuses ids.
            log.warning("followup.record_not_theirs")
            return None
        return OpenRecord(
            kind,
            record_id,
            _user(row.get("ASSIGNED_BY_ID")),
            _user(row.get("CONTACT_ID")) or 0,
        )

    # -- what it does ------------------------------------------------------------------

    async def _deliver(
        self,
        message: InboundMessage,
        follow_up: FollowUp,
        placed: Placed,
        claim: str,
        retried: bool,
    ) -> None:
        kind, record_id = cast(RecordKind, placed.record), cast(int, placed.record_id)
        text = self._comment_text(message)

        async def comment() -> None:
            await self._comment_once(kind, record_id, text, look_first=retried)

        await self._step(claim, "comment", comment)
        if not follow_up.first_in_burst:
            return
        if placed.manager_id is None:
            log.warning("followup.no_manager")
            return
        manager = placed.manager_id

        async def tell() -> None:
            task_made = await self._task_unless_open(
                message, follow_up, placed, manager
            )
            if not task_made or self._rules.intake.notify:
                await self._notify(message, kind, record_id, manager)

        await self._step(claim, "manager", tell)

    async def _comment_once(
        self, kind: RecordKind, record_id: int, text: str, *, look_first: bool
    ) -> None:
        if look_first:
            rows = await self._batcher.call(
                "crm.timeline.comment.list",
                {
                    "filter": {"ENTITY_ID": record_id, "ENTITY_TYPE": kind},
                    "select": ["ID", "COMMENT"],
                    "order": {"ID": "DESC"},
                },
            )
            # Comments carry no key of ours; the text holds the message and its
            # time, so an equal text is this event's comment.
            for row in rows if isinstance(rows, list) else []:
                if str(row.get("COMMENT") or "").strip() == text.strip():
                    log.info("followup.comment_found", comment_id=row.get("ID"))
                    return
        fields = {"ENTITY_ID": record_id, "ENTITY_TYPE": kind, "COMMENT": text}
        comment_id = await self._batcher.call(
            "crm.timeline.comment.add", {"fields": fields}
        )
        log.info("followup.commented", comment_id=comment_id)

    async def _task_unless_open(
        self,
        message: InboundMessage,
        follow_up: FollowUp,
        placed: Placed,
        manager: int,
    ) -> bool:
        """A task to answer the client, unless one of ours is open on the record."""
        kind, record_id = cast(RecordKind, placed.record), cast(int, placed.record_id)
        pointer = f"{self._prefix}:task:{kind}:{record_id}"
        raw = await self._redis.get(pointer)
        task_id = (
            int(raw)
            if raw is not None
            else await self._handoff_task(message, follow_up, placed)
        )
        if task_id is not None and await self._task_open(task_id):
            log.info("followup.task_open", task_id=task_id)
            return False

        now = self._clock()
        schedule = self._picker.schedule_of(manager)
        deadline = call_back_by(schedule, "hot", self._rules.intake.deadlines, now)
        channel = CHANNEL_TITLES[message.channel]
        binding = {"deal": "D_", "lead": "L_"}[kind]
        fields: dict[str, object] = {
            "TITLE": f"Ответить клиенту: новое сообщение в {channel}",
            "RESPONSIBLE_ID": manager,
            # With its offset: tasks read naive times in the server's zone.
            "DEADLINE": deadline.isoformat(timespec="seconds"),
            "UF_CRM_TASK": [f"{binding}{record_id}"],
            "DESCRIPTION": (
                f"Клиент написал в {channel} после передачи заявки; сообщения — "
                "в комментариях к карточке."
            ),
        }
        key = hashed_key(
            f"followup:{kind}:{record_id}", f"{message.channel}:{message.event_id}"
        )
        created = await self._writer.create("task", fields, key=key)
        await self._redis.set(pointer, str(created.id), px=_ms(MEMORY))
        log.info("followup.task", task_id=created.id, created=created.created)
        return True

    async def _handoff_task(
        self, message: InboundMessage, follow_up: FollowUp, placed: Placed
    ) -> int | None:
        """The call-back task the hand-off of this inquiry set on the record."""
        done = await self._handoff.recall_chat(
            message.channel, message.chat_id, follow_up.intake_id
        )
        if done is None or (done.record, done.record_id) != (
            placed.record,
            placed.record_id,
        ):
            return None
        return done.task_id

    async def _task_open(self, task_id: int) -> bool:
        answer = await self._batcher.call(
            "tasks.task.get", {"taskId": task_id, "select": ["ID", "STATUS"]}
        )
        # A deleted task answers `[]` (the controller swallows the lookup failure).
        task = answer.get("task") if isinstance(answer, Mapping) else None
        if not isinstance(task, Mapping):
            return False
        return str(task.get("status")) not in TASK_DONE

    async def _notify(
        self,
        message: InboundMessage,
        kind: RecordKind,
        record_id: int,
        manager: int,
    ) -> None:
        path = RECORD_PATHS[kind].format(id=record_id)
        word = "сделка" if kind == "deal" else "лид"
        channel = CHANNEL_TITLES[message.channel]
        params = {
            "USER_ID": manager,
            "MESSAGE": (
                f"Клиент снова написал в {channel}: [URL={path}]{word} {record_id}"
                "[/URL]. Ответьте ему в чате."
            ),
            # One notification per record: a repeat replaces it.
            "TAG": f"leadloop:followup:{kind}:{record_id}",
        }
        try:
            await self._batcher.call("im.notify.personal.add", params)
        except Bitrix24Error as error:
            # The comment is on the record; a missing `im` scope holds nothing back.
            log.warning("followup.notify_failed", code=error.code)

    def _into_parked(self, message: InboundMessage, follow_up: FollowUp) -> Step:
        async def append() -> None:
            lead = await self._deferred.parked(follow_up.intake_id)
            if lead is None:
                return
            line = TranscriptLine(
                at=message.received_at, author="client", text=_what(message)
            )
            if line in lead.transcript:
                return
            longer = lead.model_copy(update={"transcript": (*lead.transcript, line)})
            await self._deferred.defer(longer, PARKED_DELAY)

        return append

    # -- pieces ------------------------------------------------------------------------

    def _comment_text(self, message: InboundMessage) -> str:
        channel = CHANNEL_TITLES[message.channel]
        at = message.received_at.astimezone(self._rules.zone)
        return (
            f"Клиент написал в {channel} после передачи заявки.\n"
            f"[{at:%d.%m %H:%M}] Клиент: {_what(message)}"
        )

    async def _step(self, claim: str, name: str, step: Step) -> None:
        """Run `step` once per event: a retry skips what already succeeded."""
        steps = f"{claim}:steps"
        if await cast(Awaitable[bool], self._redis.hexists(steps, name)):
            return
        await step()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps, name, "1")
            pipe.pexpire(steps, _ms(MEMORY))
            await pipe.execute()

    def _claim_key(self, message: InboundMessage) -> str:
        return f"{self._prefix}:{message.channel}:{message.event_id}"


def _what(message: InboundMessage) -> str:
    """The client's message as the manager reads it: the text, or what arrived."""
    text = (message.text or "").strip()[:COMMENT_TEXT_LIMIT]
    if message.kind is InboundKind.EDITED:
        return f"(изменено) {text}"
    if message.kind is InboundKind.MEDIA:
        what = "вложение (фото, голосовое, видео, стикер или файл)"
        return f"[{what}] {text}" if text else f"[{what}]"
    if message.kind is InboundKind.LOCATION:
        if message.latitude is None or message.longitude is None:
            return "[геопозиция]"
        return f"[геопозиция: {message.latitude:.5f}, {message.longitude:.5f}]"
    if message.kind is InboundKind.CONTACT:
        return f"[контакт: {message.phone}]" if message.phone else "[контакт]"
    return text


def _in_progress(kind: RecordKind, row: Mapping[str, Any]) -> bool:
    if kind == "deal":
        closed = row.get("CLOSED") == "Y"
        return not closed and row.get("STAGE_SEMANTIC_ID") not in ("S", "F")
    # A converted lead (S) lives on as a deal, found by the search.
    return row.get("STATUS_SEMANTIC_ID") not in ("S", "F")


def _user(value: object) -> int | None:
    try:
        number = int(str(value))
    except ValueError:
        return None
    return number if number > 0 else None


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
