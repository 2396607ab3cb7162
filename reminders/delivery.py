"""Sending one reminder on the client's channel, with confirm and cancel buttons.

Telegram gets an inline keyboard. WhatsApp gets reply buttons while the 24-hour
window from the client's last message is open (judged now, with a margin), and the
approved template otherwise, its quick replies carrying the buttons' data; a 131047
in answer to the buttons switches to the template at once (a 131047 that arrives
later as a status is handled in answers).

Errors that mean "never" are settled here (unreachable: the chat is marked;
rejected: logged); errors that mean "later" (`SlowDown`, `Unavailable` before the
request left) reach the job, which defers itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol, runtime_checkable

import structlog
from arq.connections import ArqRedis

from app.config import BusinessRules
from app.metrics import REMINDERS
from connectors.messengers.base import (
    AuthFailed,
    Button,
    OutsideWindow,
    Rejected,
    Sender,
    SentMessage,
    Template,
    Unavailable,
    Unreachable,
)
from reminders.booking import Booking, callback_data
from reminders.keys import ReminderKeys
from reminders.links import WHATSAPP_WINDOW, ChatLink, Links
from reminders.schedule import DAY_BEFORE
from reminders.texts import client_fields
from webhooks.keys import InboxKeys
from webhooks.reachability import Reachability
from webhooks.statuses import SentMessages

log = structlog.stdlib.get_logger(__name__)

# The window is judged when the job runs; a send takes a moment and the client's
# clock is not ours, so a window about to close counts as closed.
WINDOW_MARGIN = timedelta(minutes=15)
# How long a reminder message is remembered by its provider id: statuses come
# within minutes, a read receipt may take a day.
MESSAGE_MEMORY = timedelta(days=3)


@runtime_checkable
class TemplateSender(Protocol):
    """A channel that can send an approved template (WhatsApp)."""

    async def send_template(self, chat_id: str, template: Template) -> SentMessage:
        """Send the template to the chat."""
        ...


class Delivery(StrEnum):
    SENT = "sent"
    # The send may have gone through: sending again could double it.
    UNCERTAIN = "uncertain"
    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    NO_SENDER = "no_sender"


@dataclass(frozen=True)
class Reminder:
    """One reminder of one visit, going to one chat."""

    booking: Booking
    kind: str
    chat: ChatLink


@dataclass(frozen=True)
class Sent:
    delivery: Delivery
    provider_message_id: str | None = None
    via: str = ""


class Courier:
    """Sends reminders through the channel senders and records what went out."""

    def __init__(
        self,
        senders: Mapping[str, Sender],
        redis: ArqRedis,
        rules: BusinessRules,
        *,
        keys: ReminderKeys | None = None,
        inbox_keys: InboxKeys | None = None,
    ) -> None:
        self._senders = senders
        self._redis = redis
        self._rules = rules
        self._keys = keys or ReminderKeys()
        self._links = Links(redis, keys=self._keys)
        self._reachability = Reachability(redis, keys=inbox_keys)
        self._sent = SentMessages(redis, keys=inbox_keys)

    def can_send(self, channel: str) -> bool:
        return channel in self._senders

    async def reachable(self, chat: ChatLink) -> bool:
        return await self._reachability.is_reachable(chat.channel, chat.chat_id)

    async def send(self, reminder: Reminder, now: datetime) -> Sent:
        """Send the reminder; the outcome, or SlowDown/Unavailable to retry later."""
        try:
            sent = await self._send_reminder(reminder, now)
        except Exception:
            REMINDERS.labels(reminder.kind, "deferred").inc()
            raise
        REMINDERS.labels(reminder.kind, sent.delivery.value).inc()
        return sent

    async def _send_reminder(self, reminder: Reminder, now: datetime) -> Sent:
        sender = self._senders.get(reminder.chat.channel)
        if sender is None:
            return Sent(Delivery.NO_SENDER)
        try:
            sent, via = await self._send(sender, reminder, now)
        except Unreachable:
            return await self._unreachable(reminder.chat)
        except (Rejected, AuthFailed) as error:
            log.error(
                "reminders.send_refused",
                channel=reminder.chat.channel,
                error=type(error).__name__,
                code=error.code,
            )
            return Sent(Delivery.REJECTED)
        except Unavailable as error:
            if not error.sent:
                raise
            log.warning("reminders.send_uncertain", channel=reminder.chat.channel)
            return Sent(Delivery.UNCERTAIN)
        await self._remember(reminder, sent)
        return Sent(Delivery.SENT, sent.provider_message_id, via)

    async def send_template(self, reminder: Reminder, now: datetime) -> Sent:
        """The template alone: after WhatsApp reported the window closed."""
        sent = await self._send_template(reminder, now)
        REMINDERS.labels(reminder.kind, sent.delivery.value).inc()
        return sent

    async def _send_template(self, reminder: Reminder, now: datetime) -> Sent:
        sender = self._senders.get(reminder.chat.channel)
        if sender is None or not isinstance(sender, TemplateSender):
            return Sent(Delivery.NO_SENDER)
        try:
            sent = await sender.send_template(
                reminder.chat.chat_id, self._template(reminder, now)
            )
        except Unreachable:
            return await self._unreachable(reminder.chat)
        except (Rejected, AuthFailed) as error:
            log.error("reminders.template_refused", code=error.code)
            return Sent(Delivery.REJECTED)
        await self._remember(reminder, sent)
        return Sent(Delivery.SENT, sent.provider_message_id, "template")

    async def _unreachable(self, chat: ChatLink) -> Sent:
        await self._reachability.mark_unreachable(chat.channel, chat.chat_id)
        return Sent(Delivery.UNREACHABLE)

    async def _send(
        self, sender: Sender, reminder: Reminder, now: datetime
    ) -> tuple[SentMessage, str]:
        chat = reminder.chat
        if isinstance(sender, TemplateSender) and not await self._in_window(chat, now):
            template = self._template(reminder, now)
            return await sender.send_template(chat.chat_id, template), "template"
        text, buttons = self._message(reminder, now)
        try:
            sent = await sender.send_text(chat.chat_id, text, buttons=buttons)
        except OutsideWindow:
            if not isinstance(sender, TemplateSender):
                raise
            log.info("reminders.window_closed", channel=chat.channel)
            template = self._template(reminder, now)
            return await sender.send_template(chat.chat_id, template), "template"
        return sent, "buttons"

    async def _in_window(self, chat: ChatLink, now: datetime) -> bool:
        last = await self._links.last_inbound_at(chat.channel, chat.chat_id)
        return last is not None and now < last + WHATSAPP_WINDOW - WINDOW_MARGIN

    def _message(self, reminder: Reminder, now: datetime) -> tuple[str, list[Button]]:
        texts = self._rules.reminders.texts
        fields = client_fields(reminder.booking.visit, now, self._rules.zone)
        text = texts.day_before if reminder.kind == DAY_BEFORE else texts.hours_before
        return text.format(**fields), self._buttons(reminder.booking)

    def _template(self, reminder: Reminder, now: datetime) -> Template:
        rules = self._rules.reminders
        fields = client_fields(reminder.booking.visit, now, self._rules.zone)
        parameters = [
            parameter.format(**fields) for parameter in rules.whatsapp_parameters
        ]
        # The approved template's quick replies are confirm, then cancel; given the
        # buttons' data, a tap names its visit as a reply button's does.
        payloads = [button.data for button in self._buttons(reminder.booking)]
        return Template(
            rules.whatsapp_template, rules.whatsapp_language, parameters, payloads
        )

    def _buttons(self, booking: Booking) -> list[Button]:
        """Confirm, then cancel, each carrying the visit."""
        texts = self._rules.reminders.texts
        deal_id, stamp = booking.deal_id, booking.stamp
        return [
            Button(texts.confirm_button, callback_data("confirm", deal_id, stamp)),
            Button(texts.cancel_button, callback_data("cancel", deal_id, stamp)),
        ]

    async def _remember(self, reminder: Reminder, sent: SentMessage) -> None:
        chat, booking = reminder.chat, reminder.booking
        message_id = sent.provider_message_id
        if chat.channel == "whatsapp":
            # Statuses reach the inbound handler only for messages recorded here.
            await self._sent.remember(chat.channel, message_id, chat.chat_id)
        value = f"{booking.deal_id}:{booking.stamp}:{reminder.kind}"
        await self._redis.set(
            self._keys.sent_message(chat.channel, message_id),
            value,
            px=int(MESSAGE_MEMORY.total_seconds() * 1000),
        )
