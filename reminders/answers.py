"""The client's side of a reminder: button taps, free-text replies, failed deliveries.

The inbound handler chain offers every message here before the dialog sees it,
either in one call (`offer`, which also records the client's message time for the
WhatsApp window) or step by step:

    await links.touch(redis, message.channel, message.chat_id, message.received_at)
    if await answers.handle_answer(message):   # a reminder's confirm/cancel button
        return
    if await answers.handle_status(message):   # a WhatsApp status of a reminder
        return
    if await answers.forward_text(message):    # text while a reminder awaits an answer
        return

Each returns True when the message was the reminders' to handle (the chain stops).

A Telegram tap is acknowledged once, by the webhook route in its own answer, before
any job runs (the client's spinner stops; known fault TG-3: one answer per callback
id, so it is not answered again here). A WhatsApp reply is marked read first, before
any Bitrix24 call. The answer is then claimed once per visit and answer: a second
tap, a tap on an older reminder of the same visit, or a repeated delivery finds the
claim and does nothing more. A retry of the same event (the handler failed half way)
takes the claim back and skips the steps that had already succeeded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol, cast, runtime_checkable

import structlog
from arq.connections import ArqRedis

from app.config import BusinessRules
from app.metrics import REMINDER_ANSWERS
from connectors.messengers.base import MessengerError, Sender
from reminders.booking import (
    Answer,
    Booking,
    ButtonPress,
    booking_of,
    parse_callback,
    stage_for,
    visit_of,
)
from reminders.crm import Crm, TaskRequest
from reminders.delivery import Courier, Delivery, Reminder
from reminders.firing import Firing, recipient
from reminders.keys import ReminderKeys, px
from reminders.links import ChatLink, Links
from reminders.texts import client_fields, manager_fields
from webhooks.inbound import InboundKind, InboundMessage

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]
Step = Callable[[], Awaitable[object]]

# A claim held by a handler that died is free again after this (the drainer retries
# an event after 5 and 30 s, and the same event takes its own claim back at once).
CLAIM_LEASE = timedelta(minutes=10)
ANSWER_MEMORY = timedelta(days=30)
FORWARD_MEMORY = timedelta(days=8)
# Bitrix24 shows long comments folded; a client's essay is cut, not refused.
COMMENT_TEXT_LIMIT = 4000
REBOOK_WITHIN = timedelta(hours=2)
# WhatsApp errors after which a reminder cannot reach the client (reference §2.7).
UNDELIVERABLE_CODES = frozenset({131026, 130472})
OUTSIDE_WINDOW_CODE = 131047


@runtime_checkable
class ButtonRemover(Protocol):
    """A channel that can take the buttons off a sent message (Telegram)."""

    async def remove_buttons(self, chat_id: str, message_id: str) -> None:
        """Remove the message's inline keyboard."""
        ...


class ReminderAnswers:
    """Handles answers to reminders; each entry point returns True when it did."""

    def __init__(
        self,
        redis: ArqRedis,
        crm: Crm,
        senders: Mapping[str, Sender],
        courier: Courier,
        firing: Firing,
        rules: BusinessRules,
        clock: Clock,
        *,
        keys: ReminderKeys | None = None,
    ) -> None:
        self._redis = redis
        self._crm = crm
        self._senders = senders
        self._courier = courier
        self._firing = firing
        self._rules = rules
        self._clock = clock
        self._keys = keys or ReminderKeys()
        self._links = Links(redis, keys=self._keys)

    async def offer(self, message: InboundMessage) -> bool:
        """The reminders' whole part of the inbound chain; True when it was theirs.

        Records the client's message time (the WhatsApp window), then tries a
        button tap, a delivery status and a free-text reply, in that order.
        """
        if message.kind not in (InboundKind.STATUS, InboundKind.BLOCKED):
            await self._links.touch(
                message.channel, message.chat_id, message.received_at
            )
        return (
            await self.handle_answer(message)
            or await self.handle_status(message)
            or await self.forward_text(message)
        )

    # -- button taps ------------------------------------------------------------------

    async def handle_answer(self, message: InboundMessage) -> bool:
        """A confirm or cancel tap on a reminder: True when it was one."""
        if message.kind is not InboundKind.CALLBACK:
            return False
        press = parse_callback(message.callback_data)
        if press is None:
            press = await self._template_press(message)
        if press is None:
            return False
        press = self._as_labelled(press, message)

        await self._acknowledge(message)
        bound = structlog.contextvars.bound_contextvars(
            deal_id=press.deal_id, answer=press.answer, channel=message.channel
        )
        with bound:
            if not await self._sent_here(press, message):
                # Button data is only what a client sends: a tap that names a visit
                # this chat was never reminded of changes nothing.
                log.warning("reminders.answer_foreign")
                return True
            claim = self._keys.answer_claim(press.deal_id, press.stamp, press.answer)
            if not await self._claim(claim, message.event_id):
                log.info("reminders.answer_repeated")
                return True
            await self._apply(press, message, claim)
            await self._redis.set(claim, "done", px=px(ANSWER_MEMORY))
        return True

    async def _template_press(self, message: InboundMessage) -> ButtonPress | None:
        """A quick reply of a template sent without payloads: its payload is the
        button's text, no visit, so the tap answers the visit this chat was last
        reminded of."""
        answer = self._answer_labelled(message.callback_data or message.text)
        if answer is None:
            return None
        opened = await self._open_reminder(message)
        if opened is None:
            return None
        deal_id, stamp = opened
        return ButtonPress(deal_id, stamp, answer)

    def _as_labelled(self, press: ButtonPress, message: InboundMessage) -> ButtonPress:
        """The answer on the button the client tapped. A template approved with its
        quick replies in the other order sends the other button's payload, and what
        the client read is what the client meant."""
        labelled = self._answer_labelled(message.text)
        if labelled is None or labelled == press.answer:
            return press
        log.error("reminders.template_buttons_swapped", deal_id=press.deal_id)
        return replace(press, answer=labelled)

    def _answer_labelled(self, label: str | None) -> Answer | None:
        texts = self._rules.reminders.texts
        answers: dict[str, Answer] = {
            texts.confirm_button: "confirm",
            texts.cancel_button: "cancel",
        }
        return answers.get((label or "").strip())

    async def _acknowledge(self, message: InboundMessage) -> None:
        if message.callback_id is not None:
            # Answered in the webhook's own response (webhooks.endpoints); a second
            # answerCallbackQuery only fails as "query is too old".
            return
        # WhatsApp has no callback id: the reply's own id marks it read.
        sender = self._senders.get(message.channel)
        if sender is None or message.provider_message_id is None:
            return
        try:
            await sender.answer_callback(message.provider_message_id)
        except MessengerError as error:
            log.warning("reminders.ack_failed", error=type(error).__name__)

    async def _sent_here(self, press: ButtonPress, message: InboundMessage) -> bool:
        chat = recipient(ChatLink(message.channel, message.chat_id))
        key = self._keys.recipients(press.deal_id, press.stamp)
        return bool(await cast(Awaitable[int], self._redis.sismember(key, chat)))

    async def _claim(self, key: str, event_id: str) -> bool:
        if await self._redis.set(key, event_id, nx=True, px=px(CLAIM_LEASE)):
            return True
        holder = await self._redis.get(key)
        # The same event again: a retry after the handler failed part way.
        return holder is not None and holder.decode() == event_id

    async def _apply(
        self, press: ButtonPress, message: InboundMessage, claim: str
    ) -> None:
        deal = await self._crm.deal(press.deal_id)
        booking = None if deal is None else booking_of(deal, self._rules)
        chat = ChatLink(message.channel, message.chat_id)
        if booking is None or booking.stamp != press.stamp or not booking.active:
            log.info("reminders.answer_stale")
            REMINDER_ANSWERS.labels("stale").inc()
            if deal is not None:
                await self._step(claim, "comment", self._stale_comment(press, chat))
            return

        await self._redis.set(
            self._keys.answered(press.deal_id, press.stamp),
            press.answer,
            px=px(booking.visit - self._clock() + ANSWER_MEMORY),
        )
        if press.answer == "confirm":
            await self._confirm(booking, chat, claim)
        else:
            await self._cancel(booking, chat, claim)
        await self._step(claim, "buttons", self._remove_buttons(message))
        log.info("reminders.answered")
        REMINDER_ANSWERS.labels(press.answer).inc()

    async def _confirm(self, booking: Booking, chat: ChatLink, claim: str) -> None:
        texts = self._rules.reminders.texts
        if booking.role == "booked":
            await self._step(claim, "stage", self._move(booking, "confirmed"))
        comment = texts.comment_confirmed.format(**self._manager_fields(booking, chat))
        await self._step(
            claim, "comment", lambda: self._crm.comment(booking.deal_id, comment)
        )
        reply = texts.confirmed.format(**self._client_fields(booking))
        await self._step(claim, "reply", self._reply(chat, reply))

    async def _cancel(self, booking: Booking, chat: ChatLink, claim: str) -> None:
        texts = self._rules.reminders.texts
        fields = self._manager_fields(booking, chat)
        await self._step(claim, "stage", self._move(booking, "cancelled"))
        comment = texts.comment_cancelled.format(**fields)
        await self._step(
            claim, "comment", lambda: self._crm.comment(booking.deal_id, comment)
        )
        task = TaskRequest(
            "rebook", texts.task_rebook.format(**fields), self._clock() + REBOOK_WITHIN
        )
        await self._step(claim, "task", lambda: self._crm.task(booking, task))
        await self._redis.delete(self._keys.open_reminder(chat.channel, chat.chat_id))
        reply = texts.cancelled.format(**self._client_fields(booking))
        await self._step(claim, "reply", self._reply(chat, reply))

    def _move(self, booking: Booking, role: str) -> Step:
        async def move() -> None:
            stage = stage_for(role, booking.category_id, self._rules)
            if stage is None:
                # The comment and task still tell the manager; the stage is theirs.
                log.error("reminders.no_stage_for_role", role=role)
                return
            await self._crm.move(booking.deal_id, stage)

        return move

    def _stale_comment(self, press: ButtonPress, chat: ChatLink) -> Step:
        texts = self._rules.reminders.texts
        label = (
            texts.confirm_button if press.answer == "confirm" else texts.cancel_button
        )
        fields = manager_fields(visit_of(press.stamp), self._rules.zone, chat.channel)
        text = texts.comment_stale_answer.format(answer=label, **fields)
        return lambda: self._crm.comment(press.deal_id, text)

    def _reply(self, chat: ChatLink, text: str) -> Step:
        async def reply() -> None:
            sender = self._senders.get(chat.channel)
            if sender is None:
                return
            try:
                await sender.send_text(chat.chat_id, text)
            except MessengerError as error:
                # The answer is in the CRM; a lost thank-you is not worth a retry.
                log.warning("reminders.reply_failed", error=type(error).__name__)

        return reply

    def _remove_buttons(self, message: InboundMessage) -> Step:
        async def remove() -> None:
            sender = self._senders.get(message.channel)
            message_id = message.provider_message_id
            if sender is None or message_id is None:
                return
            if not isinstance(sender, ButtonRemover):
                return
            try:
                await sender.remove_buttons(message.chat_id, message_id)
            except MessengerError as error:
                log.warning("reminders.buttons_kept", error=type(error).__name__)

        return remove

    async def _step(self, claim: str, name: str, step: Step) -> None:
        """Run `step` once per claim: a retried event skips what already succeeded."""
        steps = f"{claim}:steps"
        if await cast(Awaitable[bool], self._redis.hexists(steps, name)):
            return
        await step()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps, name, "1")
            pipe.pexpire(steps, px(ANSWER_MEMORY))
            await pipe.execute()

    # -- free text --------------------------------------------------------------------

    async def forward_text(self, message: InboundMessage) -> bool:
        """Text while a reminder awaits an answer: to the timeline and the manager."""
        if message.kind is not InboundKind.TEXT or not (message.text or "").strip():
            return False
        opened = await self._open_reminder(message)
        if opened is None:
            return False
        deal_id, stamp = opened
        deal = await self._crm.deal(deal_id)
        booking = None if deal is None else booking_of(deal, self._rules)
        if booking is None or booking.stamp != stamp:
            await self._redis.delete(
                self._keys.open_reminder(message.channel, message.chat_id)
            )
            return False

        with structlog.contextvars.bound_contextvars(deal_id=deal_id):
            claim = self._keys.forwarded(message.channel, message.event_id)
            if not await self._claim(claim, message.event_id):
                return True
            await self._forward(booking, message, claim)
            await self._redis.set(claim, "done", px=px(FORWARD_MEMORY))
        return True

    async def _forward(
        self, booking: Booking, message: InboundMessage, claim: str
    ) -> None:
        texts = self._rules.reminders.texts
        chat = ChatLink(message.channel, message.chat_id)
        fields = self._manager_fields(booking, chat)
        text = (message.text or "").strip()[:COMMENT_TEXT_LIMIT]
        comment = texts.comment_message.format(**fields, text=text)
        await self._step(
            claim, "comment", lambda: self._crm.comment(booking.deal_id, comment)
        )
        if booking.manager_id is not None:
            note = texts.notify_message.format(**fields, deal=booking.deal_id)
            tag = f"leadloop:reminder:{booking.deal_id}:{booking.stamp}"
            manager = booking.manager_id
            await self._step(
                claim, "notify", lambda: self._crm.notify(manager, note, tag=tag)
            )
        reply = texts.forwarded.format(**self._client_fields(booking))
        await self._step(claim, "reply", self._reply(chat, reply))
        log.info("reminders.text_forwarded")

    # -- delivery statuses ------------------------------------------------------------

    async def handle_status(self, message: InboundMessage) -> bool:
        """A WhatsApp status of a reminder: True when the message was a reminder.

        131047 (the window had closed) sends the template once; 131026 (the number
        cannot receive) gives the manager a call task. The drainer has already
        marked the chat unreachable.
        """
        if message.kind is not InboundKind.STATUS or not message.provider_message_id:
            return False
        key = self._keys.sent_message(message.channel, message.provider_message_id)
        raw = await self._redis.get(key)
        if raw is None:
            return False
        if message.status != "failed":
            return True

        deal_id, stamp, kind = raw.decode().split(":", 2)
        with structlog.contextvars.bound_contextvars(deal_id=deal_id, kind=kind):
            await self._failed(int(deal_id), stamp, kind, message)
        return True

    async def _failed(
        self, deal_id: int, stamp: str, kind: str, message: InboundMessage
    ) -> None:
        deal = await self._crm.deal(deal_id)
        booking = None if deal is None else booking_of(deal, self._rules)
        if booking is None or booking.stamp != stamp:
            log.info("reminders.failed_status_stale")
            return
        chat = ChatLink(message.channel, message.chat_id)
        if message.error_code in UNDELIVERABLE_CODES:
            await self._firing.unreachable_task(booking, chat)
            return
        if message.error_code != OUTSIDE_WINDOW_CODE:
            log.warning("reminders.delivery_failed", code=message.error_code)
            return
        fallback = self._keys.fallback(deal_id, stamp, kind)
        if not await self._redis.set(fallback, "1", nx=True, px=px(ANSWER_MEMORY)):
            return
        reminder = Reminder(booking, kind, chat)
        sent = await self._courier.send_template(reminder, self._clock())
        log.info("reminders.template_fallback", delivery=str(sent.delivery))
        if sent.delivery is Delivery.SENT:
            await self._firing.opened(reminder, self._clock())
        elif sent.delivery is Delivery.UNREACHABLE:
            await self._firing.unreachable_task(booking, chat)

    # -- shared -----------------------------------------------------------------------

    async def _open_reminder(self, message: InboundMessage) -> tuple[int, str] | None:
        key = self._keys.open_reminder(message.channel, message.chat_id)
        raw = await self._redis.get(key)
        if raw is None:
            return None
        deal_id, _, stamp = raw.decode().partition(":")
        return int(deal_id), stamp

    def _manager_fields(self, booking: Booking, chat: ChatLink) -> dict[str, str]:
        return manager_fields(booking.visit, self._rules.zone, chat.channel)

    def _client_fields(self, booking: Booking) -> dict[str, str]:
        return client_fields(booking.visit, self._clock(), self._rules.zone)
