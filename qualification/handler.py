"""The inbound handler chain: what the worker does with each client event.

`webhooks.jobs.process_chat` calls the handler for one event of a chat at a time,
in order, and marks the event done only after the handler returns; a handler that
raises is called again with the same event a few seconds later. So every step here
is safe to repeat:

- the dialog answers a replayed event with the turn it stored for it;
- the hand-off keeps its outcome per lead, and its CRM records carry keys;
- a message after the hand-off goes to the chat's deal once per event id
  (qualification.followup), or starts a new inquiry when that deal is over; while
  the portal fails it waits in Redis for the follow-up job (qualification.pending);
- each reply is marked sent (per event and position) once the messenger took it,
  so a retry after a crash sends only what had not gone out.

Events route through a map by kind: a block needs nothing here (the webhooks layer
marked the chat); a delivery status may be a reminder's; a button press may answer
a reminder, a text may be an answer to one (the reminders decide); everything else
is the intake dialog.

`open_intake(ctx)` builds the chain once per worker from what the worker holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import structlog
from arq.connections import ArqRedis
from arq.worker import Function, Retry, func

from app.clients import Clients
from app.config import BusinessRules, load_rules
from app.metrics import HANDOFFS
from app.settings import Settings
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.writes import Writer
from connectors.messengers.base import (
    OutsideWindow,
    Rejected,
    Sender,
    SentMessage,
    SlowDown,
    Unreachable,
)
from connectors.messengers.telegram import TelegramSender
from connectors.messengers.whatsapp import MAX_LIST_ROWS, WhatsAppSender
from qualification.dialog import DialogEngine, DialogTurn, FollowUp, Reply
from qualification.followup import FollowUps
from qualification.handoff import HAND_OFF_JOB, DeferredHandOffs, HandedOff, HandOff
from qualification.llm import LlmQualifier
from qualification.managers import ManagerPicker
from qualification.pending import CTX_KEY as FOLLOW_UPS_KEY
from qualification.pending import PendingFollowUps
from qualification.rules import RuleQualifier
from qualification.schema import QualifiedLead, Qualifier
from reminders.keys import ReminderKeys
from reminders.links import Links
from reminders.service import CTX_KEY as REMINDERS_KEY
from reminders.service import NotConfigured, build_reminders, portal_client
from webhooks.inbound import Channel, InboundKind, InboundMessage
from webhooks.keys import InboxKeys, chat_key
from webhooks.reachability import Reachability
from webhooks.statuses import SentMessages

log = structlog.stdlib.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Route = Callable[[InboundMessage], Awaitable[None]]
JobContext = dict[str, Any]

# Kinds that need nothing from the intake, and why.
IGNORED: dict[InboundKind, str] = {
    InboundKind.BLOCKED: "the chat is marked unreachable; nothing can be sent",
}
# What a client writes (re)opens WhatsApp's 24-hour window; an edit does not.
OPENS_WINDOW = frozenset(
    {
        InboundKind.TEXT,
        InboundKind.CONTACT,
        InboundKind.LOCATION,
        InboundKind.MEDIA,
        InboundKind.CALLBACK,
    }
)
# Marks of sent replies only matter while the event can still be retried.
SENT_MARK_LIFETIME = timedelta(days=2)
# A hand-off that takes longer than this goes on in the background while the client
# gets the dialog's answer, so that a reply never waits on a busy portal's rate limit
# or on the gateway riding out a refusing portal (up to 60 s). The lead is parked
# first, so a worker that dies meanwhile loses nothing: the retrying job takes over
# after BACKGROUND_GRACE (should the hand-off still be going on then, elsewhere, the
# person lock and the idempotency keys keep the two from writing anything twice).
# A hand-off that fails is parked and retried by that job.
INLINE_HAND_OFF_BUDGET_S = 10.0
BACKGROUND_GRACE = timedelta(minutes=2)
# Beyond this many hand-offs going on in the background in one worker, a slow one is
# stopped and parked instead (memory and portal requests stay bounded).
MAX_BACKGROUND_HAND_OFFS = 500
# A messenger's "slow down" up to this long is waited out in place; a longer one
# sends the event back to the queue (Telegram asks 1-5 s per chat, WhatsApp 6 s for
# one recipient, an hour-long app limit is not worth holding a worker for).
MAX_INLINE_WAIT_S = 10.0
# The deferred hand-off: retried with growing delays for about six hours.
HAND_OFF_MAX_TRIES = 30
HAND_OFF_FIRST_DELAY = timedelta(seconds=30)
HAND_OFF_MAX_DELAY = timedelta(minutes=15)


class ReminderAnswers(Protocol):
    """The reminders' side of a client's answer (reminders.answers)."""

    async def handle_answer(self, message: InboundMessage) -> bool:
        """True when the button press answered a reminder and was handled."""
        ...

    async def handle_status(self, message: InboundMessage) -> bool:
        """True when the delivery status was a reminder's."""
        ...

    async def forward_text(self, message: InboundMessage) -> bool:
        """True when the text answered a reminder and reached the manager."""
        ...


class InboundTimes(Protocol):
    """When each chat last wrote (reminders.links.Links.touch)."""

    async def touch(self, channel: Channel, chat_id: str, at: datetime) -> None: ...


class ReplySender:
    """Sends a turn's replies on the chat's channel, each at most once per event."""

    def __init__(
        self,
        senders: Mapping[Channel, Sender],
        redis: ArqRedis,
        *,
        keys: InboxKeys | None = None,
        prefix: str = "leadloop:intake",
        sleep: Sleep = asyncio.sleep,
        max_inline_wait_s: float = MAX_INLINE_WAIT_S,
    ) -> None:
        self._senders = senders
        self._redis = redis
        self._prefix = prefix
        self._sleep = sleep
        self._max_inline_wait_s = max_inline_wait_s
        self._reachability = Reachability(redis, keys=keys)
        self._sent = SentMessages(redis, keys=keys)

    async def send(self, message: InboundMessage, replies: Sequence[Reply]) -> int:
        """Send what was not sent for this event yet; answer how many went out."""
        if not replies:
            return 0
        sender = self._senders.get(message.channel)
        if sender is None:
            log.error("intake.no_sender", channel=message.channel)
            return 0

        marks = self._marks_key(message)
        done = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(marks))
        sent = 0
        for position, reply in enumerate(replies):
            if str(position).encode() in done:
                continue
            outcome = await self._deliver(sender, message, reply)
            if outcome is None:
                return sent
            await self._mark(marks, position, outcome, message)
            sent += 1
        return sent

    async def _deliver(
        self, sender: Sender, message: InboundMessage, reply: Reply
    ) -> SentMessage | None:
        """The sent message, or None when the chat cannot take more replies now."""
        try:
            return await self._send_waiting(sender, message, reply)
        except Unreachable:
            await self._reachability.mark_unreachable(message.channel, message.chat_id)
            log.warning("intake.reply_unreachable")
        except OutsideWindow:
            # A reply follows the client's own message: only a retry more than a
            # day late meets this, and a template would say nothing useful then.
            log.warning("intake.reply_outside_window")
        except Rejected as error:
            log.error("intake.reply_rejected", code=error.code, status=error.status)
        return None

    async def _send_waiting(
        self, sender: Sender, message: InboundMessage, reply: Reply
    ) -> SentMessage:
        try:
            return await self._send_one(sender, message, reply)
        except SlowDown as slow:
            if slow.retry_after_s > self._max_inline_wait_s:
                log.warning("intake.reply_deferred", retry_after_s=slow.retry_after_s)
                raise Retry(defer=timedelta(seconds=slow.retry_after_s)) from slow
            await self._sleep(slow.retry_after_s)
        try:
            return await self._send_one(sender, message, reply)
        except SlowDown as slow:
            raise Retry(defer=timedelta(seconds=slow.retry_after_s)) from slow

    async def _send_one(
        self, sender: Sender, message: InboundMessage, reply: Reply
    ) -> SentMessage:
        buttons = reply.buttons
        if message.channel == "whatsapp" and len(buttons) > MAX_LIST_ROWS:
            # A WhatsApp list holds ten rows; the dialog's text names the rest.
            buttons = buttons[:MAX_LIST_ROWS]
        return await sender.send_text(
            message.chat_id,
            reply.text,
            buttons=buttons,
            request_phone=reply.request_phone,
        )

    async def _mark(
        self, marks: str, position: int, sent: SentMessage, message: InboundMessage
    ) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(marks, str(position), sent.provider_message_id)
            pipe.pexpire(marks, int(SENT_MARK_LIFETIME.total_seconds() * 1000))
            await pipe.execute()
        if message.channel == "whatsapp":
            # Its delivery statuses are then recorded against it (webhooks layer).
            await self._sent.remember(
                "whatsapp", sent.provider_message_id, message.chat_id
            )

    def _marks_key(self, message: InboundMessage) -> str:
        return f"{self._prefix}:sent:{message.channel}:{message.event_id}"


class InboundHandler:
    """The chain for one event: reminders first, then the dialog and hand-off."""

    def __init__(
        self,
        dialog: DialogEngine,
        replies: ReplySender,
        *,
        handoff: HandOff | None,
        deferred: DeferredHandOffs,
        answers: ReminderAnswers | None,
        times: InboundTimes,
        followups: FollowUps | None = None,
        inline_budget_s: float = INLINE_HAND_OFF_BUDGET_S,
        max_background: int = MAX_BACKGROUND_HAND_OFFS,
    ) -> None:
        self._dialog = dialog
        self._replies = replies
        self._handoff = handoff
        self._followups = followups
        self._deferred = deferred
        self._answers = answers
        self._times = times
        self._inline_budget_s = inline_budget_s
        self._max_background = max_background
        # Hand-offs past their inline budget, by intake id, until they end.
        self._background: dict[str, asyncio.Task[HandedOff]] = {}
        self._releases: set[asyncio.Task[None]] = set()

    async def __call__(self, message: InboundMessage) -> None:
        """Handle one client event; raising makes the chat's job try it again."""
        bound = structlog.contextvars.bound_contextvars(
            channel=message.channel,
            chat=chat_key(message.channel, message.chat_id),
            event_id=message.event_id,
        )
        routes: dict[InboundKind, Route] = {
            InboundKind.STATUS: self._status,
            InboundKind.BLOCKED: self._ignored,
        }
        with bound:
            await routes.get(message.kind, self._client_event)(message)

    async def _client_event(self, message: InboundMessage) -> None:
        if message.kind in OPENS_WINDOW:
            await self._times.touch(
                message.channel, message.chat_id, message.received_at
            )
        if await self._reminder_answered(message):
            return
        turn = await self._dialog.handle(message)
        if turn.follow_up is not None:
            turn = await self._follow_up(message, turn.follow_up, turn)
        replies = await self._hand_off(turn, message)
        sent = await self._replies.send(message, replies)
        log.info("intake.turn_done", replies=len(replies), sent=sent)

    async def _ignored(self, message: InboundMessage) -> None:
        reason = IGNORED[message.kind]
        log.info("intake.ignored", kind=message.kind.value, reason=reason)

    async def _status(self, message: InboundMessage) -> None:
        # The webhooks layer recorded it; only a reminder's status means more.
        taken = self._answers is not None and await self._answers.handle_status(message)
        log.info("intake.status", status=message.status, reminder=taken)

    async def _reminder_answered(self, message: InboundMessage) -> bool:
        if self._answers is None:
            return False
        if message.kind is InboundKind.CALLBACK:
            taken = await self._answers.handle_answer(message)
        elif message.kind is InboundKind.TEXT:
            taken = await self._answers.forward_text(message)
        else:
            return False
        if taken:
            log.info("intake.reminder_answer", kind=message.kind.value)
        return taken

    async def _follow_up(
        self, message: InboundMessage, follow_up: FollowUp, turn: DialogTurn
    ) -> DialogTurn:
        """After the hand-off: onto the chat's open deal, or a new inquiry."""
        if self._followups is None:
            log.error("intake.followup_no_portal", intake_id=follow_up.intake_id)
            return turn
        placed = await self._followups.add(message, follow_up)
        if placed.outcome == "gone":
            return await self._dialog.start_over(message)
        if placed.record is not None and placed.record_id is not None:
            await self._dialog.handed_off(
                message,
                follow_up.intake_id,
                placed.record,
                placed.record_id,
                placed.contact_id,
            )
        return turn

    async def _hand_off(self, turn: DialogTurn, message: InboundMessage) -> list[Reply]:
        lead = turn.lead
        if lead is None:
            return turn.replies
        if self._handoff is None:
            log.error("intake.no_portal", intake_id=lead.intake_id)
            HANDOFFS.labels("deferred").inc()
            await self._deferred.defer(lead, HAND_OFF_FIRST_DELAY)
            return turn.replies
        task = asyncio.create_task(self._handoff.hand_off(lead))
        try:
            done = await asyncio.wait_for(asyncio.shield(task), self._inline_budget_s)
        except TimeoutError:
            await self._go_on_in_background(lead, task)
            return turn.replies
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception:
            # Any failure, ours or the portal's: the client still gets the dialog's
            # answer now, and the lead waits in Redis for the retrying job.
            log.exception("intake.handoff_failed", intake_id=lead.intake_id)
            HANDOFFS.labels("deferred").inc()
            await self._deferred.defer(lead, HAND_OFF_FIRST_DELAY)
            return turn.replies
        await self._dialog.handed_off(
            message, lead.intake_id, done.record, done.record_id, done.contact_id
        )
        return _with_next_step(turn.replies, self._handoff.client_reply(lead, done))

    async def _go_on_in_background(
        self, lead: QualifiedLead, task: asyncio.Task[HandedOff]
    ) -> None:
        """A slow hand-off: parked (in case this worker dies), then left to finish."""
        intake_id = lead.intake_id
        if len(self._background) >= self._max_background:
            task.cancel()
            log.warning("intake.handoff_slow_parked", intake_id=intake_id)
            HANDOFFS.labels("deferred").inc()
            await self._deferred.defer(lead, HAND_OFF_FIRST_DELAY)
            return
        try:
            await self._deferred.defer(lead, BACKGROUND_GRACE)
        except BaseException:
            task.cancel()
            raise
        log.info("intake.handoff_background", intake_id=intake_id)
        self._background[intake_id] = task
        task.add_done_callback(lambda ended: self._background_ended(intake_id, ended))

    def _background_ended(self, intake_id: str, task: asyncio.Task[HandedOff]) -> None:
        if self._background.get(intake_id) is task:
            del self._background[intake_id]
        if task.cancelled():
            return  # the parked job takes it over
        if (error := task.exception()) is not None:
            log.warning(
                "intake.handoff_background_failed",
                intake_id=intake_id,
                error=type(error).__name__,
            )
            HANDOFFS.labels("deferred").inc()
            return  # parked: the job retries after the grace
        # Done: neither the parked copy nor its waiting job is needed.
        release = asyncio.create_task(self._deferred.withdraw(intake_id))
        self._releases.add(release)
        release.add_done_callback(self._release_ended)

    def _release_ended(self, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # The parked job runs after its grace and finds the hand-off done.
            log.warning("intake.handoff_release_failed", error=type(error).__name__)

    @property
    def background_hand_offs(self) -> int:
        """How many hand-offs this worker is finishing in the background."""
        return len(self._background)

    async def aclose(self) -> None:
        """Stop background hand-offs (their leads are parked) and finish releases."""
        for task in list(self._background.values()):
            task.cancel()
        await asyncio.gather(*self._background.values(), return_exceptions=True)
        await asyncio.gather(*self._releases, return_exceptions=True)

    async def hand_off_parked(self, intake_id: str, job_try: int) -> None:
        """The deferred job's work: hand the parked lead off, or retry later."""
        lead = await self._deferred.parked(intake_id)
        if lead is None:
            log.info("intake.parked_gone", intake_id=intake_id)
            return
        if intake_id in self._background:
            # Still going on in this worker: look again once it has had its time.
            raise Retry(defer=HAND_OFF_FIRST_DELAY)
        if self._handoff is None:
            raise Retry(defer=parked_retry_delay(job_try))
        try:
            await self._handoff.hand_off(lead)
        except Exception as error:
            log.warning(
                "intake.parked_retry",
                intake_id=intake_id,
                job_try=job_try,
                error=type(error).__name__,
            )
            if job_try >= HAND_OFF_MAX_TRIES:
                log.error("intake.parked_given_up", intake_id=intake_id)
                HANDOFFS.labels("given_up").inc()
                raise
            raise Retry(defer=parked_retry_delay(job_try)) from error
        await self._deferred.release(intake_id)


def _with_next_step(replies: list[Reply], text: str | None) -> list[Reply]:
    """The dialog's last reply, replaced by the hand-off's words about what's next."""
    if text is None or not replies:
        return replies
    return [*replies[:-1], replace(replies[-1], text=text)]


def parked_retry_delay(job_try: int) -> timedelta:
    """How long a parked hand-off waits before its try number `job_try` + 1."""
    delay = HAND_OFF_FIRST_DELAY * (1 << min(max(job_try - 1, 0), 10))
    return min(delay, HAND_OFF_MAX_DELAY)


# -- the arq side ----------------------------------------------------------------------


async def hand_off_later(ctx: JobContext, intake_id: str) -> None:
    """arq job: the hand-off of a lead parked after an inline failure."""
    handler = cast(InboundHandler | None, ctx.get("intake_handler"))
    if handler is None:
        log.error("intake.no_handler")
        raise Retry(defer=HAND_OFF_FIRST_DELAY)
    await handler.hand_off_parked(intake_id, int(ctx.get("job_try", 1)))


def hand_off_job() -> Function:
    """`hand_off_later` for arq: ids reusable at once (arq #432), bounded tries."""
    return func(
        hand_off_later,
        name=HAND_OFF_JOB,
        keep_result=0,
        max_tries=HAND_OFF_MAX_TRIES,
        timeout=120,
    )


# -- wiring ----------------------------------------------------------------------------


@dataclass
class Intake:
    """The intake's parts one worker process holds, closed at its shutdown."""

    handler: InboundHandler
    batcher: Batcher | None

    async def aclose(self) -> None:
        await self.handler.aclose()
        if self.batcher is not None:
            await self.batcher.aclose()


def open_intake(ctx: JobContext) -> Intake:
    """Build the chain from the worker's settings, rules, clients and Redis.

    Sets `ctx["inbound_handler"]` (what `process_chat` calls) and `ctx["reminders"]`
    (the reminders' parts on the same senders and portal client). Keys live under
    `ctx["key_prefix"]` (default "leadloop"), the inbox under `ctx["inbound_keys"]`.
    """
    settings: Settings = ctx["settings"]
    rules: BusinessRules = ctx.get("rules") or load_rules(settings.config)
    clients: Clients = ctx["clients"]
    redis: ArqRedis = ctx.get("redis") or clients.redis
    root: str = ctx.get("key_prefix", "leadloop")
    keys: InboxKeys = ctx.get("inbound_keys") or InboxKeys(f"{root}:inbound")
    # process_chat reads the inbox under the same keys.
    ctx["inbound_keys"] = keys
    senders = messenger_senders(settings, clients)
    client = _portal_client(settings, rules, clients)
    batcher = Batcher(client) if client is not None else None

    reminders = ctx.get(REMINDERS_KEY)
    if reminders is None and client is not None:
        reminders = build_reminders(
            redis,
            client,
            {str(channel): sender for channel, sender in senders.items()},
            rules,
            keys=ReminderKeys(f"{root}:reminders"),
            inbox_keys=keys,
        )
        ctx[REMINDERS_KEY] = reminders
    links = (
        reminders.links
        if reminders
        else Links(redis, keys=ReminderKeys(f"{root}:reminders"))
    )

    handoff, followups = None, None
    deferred = DeferredHandOffs(redis, prefix=f"{root}:intake")
    if client is not None and batcher is not None:
        picker = ManagerPicker(redis, rules, counter_key=f"{root}:intake:round_robin")
        writer = Writer(client, batcher)
        handoff = HandOff(
            writer,
            redis,
            rules,
            picker,
            links,
            clock=_now,
            prefix=f"{root}:intake",
            contact_locks=ContactLocks(redis, prefix=f"{root}:lock:contact"),
        )
        followups = FollowUps(
            handoff,
            writer,
            redis,
            rules,
            picker,
            deferred,
            clock=_now,
            prefix=f"{root}:intake",
            pending=PendingFollowUps(redis, prefix=f"{root}:intake"),
        )
        # What the follow-up job drains with (qualification.pending).
        ctx[FOLLOW_UPS_KEY] = followups
    handler = InboundHandler(
        DialogEngine(
            redis,
            rules,
            _qualifier(settings, rules, clients),
            _now,
            key_prefix=f"{root}:dialog",
        ),
        ReplySender(senders, redis, keys=keys, prefix=f"{root}:intake"),
        handoff=handoff,
        deferred=deferred,
        answers=reminders.answers if reminders else None,
        times=links,
        followups=followups,
    )
    ctx["inbound_handler"] = ctx["intake_handler"] = handler
    log.info("intake.ready", channels=sorted(senders), portal=client is not None)
    return Intake(handler, batcher)


def messenger_senders(settings: Settings, clients: Clients) -> dict[Channel, Sender]:
    """A sender for every channel whose credentials are set, on its own client."""
    senders: dict[Channel, Sender] = {}
    if settings.telegram_bot_token is not None:
        senders["telegram"] = TelegramSender(
            clients.telegram, settings.telegram_bot_token, settings.telegram_api_base
        )
    token, number = settings.whatsapp_access_token, settings.whatsapp_phone_number_id
    if token is not None and number:
        senders["whatsapp"] = WhatsAppSender(
            clients.whatsapp, token, number, settings.whatsapp_api_base
        )
    return senders


def _portal_client(
    settings: Settings, rules: BusinessRules, clients: Clients
) -> Bitrix24Client | None:
    try:
        return portal_client(settings, rules, clients)
    except NotConfigured:
        log.error("intake.no_portal_configured")
        return None


def _qualifier(settings: Settings, rules: BusinessRules, clients: Clients) -> Qualifier:
    by_rules = RuleQualifier(rules.services, rules.zone)
    model = LlmQualifier.from_settings(settings, clients.http, by_rules)
    return model or by_rules


def _now() -> datetime:
    return datetime.now(UTC)
