"""What a reminder or check does when its job runs: read the deal again, then act.

Nothing is trusted from the time the job was planned. A message goes out only while
the deal is still booked (not yet confirmed) for the same visit and the client has
not answered; a call task only while the visit is still unconfirmed and ahead; an
outcome task only while the deal is neither visited, a no-show, cancelled nor lost.
Each job ends with a `done` mark, so a planner that runs later never queues it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from arq.connections import ArqRedis

from app.config import BusinessRules
from connectors.messengers.base import SlowDown, Unavailable
from reminders.booking import Booking, booking_of, reminders_off_because
from reminders.crm import PRIORITY_HIGH, PRIORITY_MEDIUM, Crm, TaskRequest
from reminders.delivery import Courier, Delivery, Reminder
from reminders.keys import ReminderKeys, px
from reminders.links import ChatLink, Links
from reminders.schedule import (
    CALL,
    OUTCOME,
    Decision,
    is_message,
    quiet_hours,
    superseded,
    when_to_send,
)
from reminders.texts import manager_fields
from webhooks.keys import chat_key

log = structlog.stdlib.get_logger(__name__)

Clock = Callable[[], datetime]

# Two reminders of one visit within this span read as one too many: a job that
# ran late (after a worker outage) gives way to the one that ran on time.
MIN_GAP = timedelta(hours=1)
# An open reminder invites an answer until a little after the visit.
ANSWER_WINDOW_AFTER_VISIT = timedelta(hours=2)
# Marks about one visit outlive it by this much.
MARK_LIFETIME_AFTER_VISIT = timedelta(days=30)
# Retries of a send that surely never left: 30 s, 1, 2, 4 … minutes, at most 15.
FIRST_RETRY = timedelta(seconds=30)
LONGEST_RETRY = timedelta(minutes=15)
# Contact IM entries that name a chat a bot can write to.
TELEGRAM_IM = "TELEGRAM"
WHATSAPP_IM = "WHATSAPP"
UNREACHABLE = "unreachable"


class Later(Exception):
    """The job should run again after `delay` (quiet hours, a rate limit)."""

    def __init__(self, delay: timedelta, reason: str) -> None:
        super().__init__(f"{reason}: again in {delay}")
        self.delay = max(delay, timedelta(seconds=1))
        self.reason = reason


def retry_delay(job_try: int) -> timedelta:
    """The wait after try `job_try` of a send that never left."""
    return min(LONGEST_RETRY, FIRST_RETRY * (1 << max(job_try - 1, 0)))


@dataclass(frozen=True)
class Fired:
    """How one reminder or check ended (`sent`, `task`, or why it stood down)."""

    outcome: str


class Firing:
    """Runs reminder and check jobs against the deal as it is now."""

    def __init__(
        self,
        redis: ArqRedis,
        crm: Crm,
        courier: Courier,
        rules: BusinessRules,
        clock: Clock,
        *,
        keys: ReminderKeys | None = None,
    ) -> None:
        self._redis = redis
        self._crm = crm
        self._courier = courier
        self._rules = rules
        self._clock = clock
        self._keys = keys or ReminderKeys()
        self._links = Links(redis, keys=self._keys)

    async def fire(
        self, deal_id: int, stamp: str, kind: str, *, job_try: int = 1
    ) -> Fired:
        """Run one reminder or check; `Later` when it must run again."""
        done = self._keys.done(deal_id, stamp, kind)
        if await self._redis.exists(done):
            log.info("reminders.fire_skipped", reason="done")
            return Fired("done")

        outcome, booking = await self._run(deal_id, stamp, kind, job_try)

        await self._mark(done, outcome, booking)
        log.info("reminders.fired", outcome=outcome)
        return Fired(outcome)

    async def _run(
        self, deal_id: int, stamp: str, kind: str, job_try: int
    ) -> tuple[str, Booking | None]:
        off = reminders_off_because(self._rules)
        if off is not None:
            # Turned off after the job was queued: nothing goes out any more.
            return f"off_{off}", None
        deal = await self._crm.deal(deal_id)
        if deal is None:
            return "deal_deleted", None
        booking = booking_of(deal, self._rules)
        if booking is None or booking.stamp != stamp:
            return "visit_changed", booking
        return await self._act(booking, kind, job_try), booking

    async def _act(self, booking: Booking, kind: str, job_try: int) -> str:
        if is_message(kind):
            return await self._remind(booking, kind, job_try)
        if kind == CALL:
            return await self._call_check(booking)
        if kind == OUTCOME:
            return await self._outcome_check(booking)
        return "unknown_kind"

    async def _remind(self, booking: Booking, kind: str, job_try: int) -> str:
        now = self._clock()
        if booking.role != "booked":
            return f"role_{booking.role or 'none'}"
        if await self._redis.exists(
            self._keys.answered(booking.deal_id, booking.stamp)
        ):
            return "answered"
        timing = when_to_send(now, booking.visit, quiet_hours(self._rules))
        if timing.decision is Decision.SKIP:
            return timing.reason
        if timing.decision is Decision.DEFER and timing.until is not None:
            raise Later(timing.until - now, "quiet_hours")
        if superseded(kind, booking.visit, self._rules, now):
            return "superseded"
        if await self._redis.exists(self._keys.recent(booking.deal_id, booking.stamp)):
            return "another_just_sent"

        chat = await self._chat(booking)
        if chat is None:
            return "no_channel"
        if not self._courier.can_send(chat.channel):
            return "no_sender"
        if not await self._courier.reachable(chat):
            await self.unreachable_task(booking, chat)
            return "unreachable"
        return await self._send(Reminder(booking, kind, chat), now, job_try)

    async def _send(self, reminder: Reminder, now: datetime, job_try: int) -> str:
        try:
            sent = await self._courier.send(reminder, now)
        except SlowDown as error:
            raise Later(timedelta(seconds=error.retry_after_s), "slow_down") from None
        except Unavailable:
            raise Later(retry_delay(job_try), "unavailable") from None

        if sent.delivery in (Delivery.SENT, Delivery.UNCERTAIN):
            await self.opened(reminder, now)
            log.info(
                "reminders.sent",
                channel=reminder.chat.channel,
                via=sent.via or None,
                delivery=sent.delivery.value,
            )
            return "sent"
        if sent.delivery is Delivery.UNREACHABLE:
            await self.unreachable_task(reminder.booking, reminder.chat)
        return str(sent.delivery)

    async def opened(self, reminder: Reminder, now: datetime) -> None:
        """Note that the client now has a reminder of this visit to answer."""
        booking, chat = reminder.booking, reminder.chat
        await self._redis.set(
            self._keys.recent(booking.deal_id, booking.stamp),
            reminder.kind,
            px=px(MIN_GAP),
        )
        until = booking.visit + ANSWER_WINDOW_AFTER_VISIT - now
        if until <= timedelta(0):
            return
        recipients = self._keys.recipients(booking.deal_id, booking.stamp)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self._keys.open_reminder(chat.channel, chat.chat_id),
                f"{booking.deal_id}:{booking.stamp}",
                px=px(until),
            )
            pipe.sadd(recipients, recipient(chat))
            pipe.pexpire(recipients, px(until))
            await pipe.execute()

    async def _chat(self, booking: Booking) -> ChatLink | None:
        linked = await self._links.chat_for(booking.deal_id)
        if linked is not None:
            return linked
        if booking.contact_id is None:
            return None
        contact = await self._crm.contact(booking.contact_id)
        if contact is None:
            return None
        for im in contact.ims:
            chat = _chat_from_im(im.value_type, im.value)
            if chat is not None and self._courier.can_send(chat.channel):
                return chat
        return None

    async def _call_check(self, booking: Booking) -> str:
        if booking.role != "booked":
            return f"role_{booking.role or 'none'}"
        if self._clock() >= booking.visit:
            return "visit_passed"
        title = self._rules.reminders.texts.task_call
        await self._task(booking, CALL, title, booking.visit, priority=PRIORITY_HIGH)
        return "task"

    async def _outcome_check(self, booking: Booking) -> str:
        if not booking.active:
            return f"role_{booking.role or 'none'}"
        now = self._clock().astimezone(self._rules.zone)
        closing = datetime.combine(
            now.date(), self._rules.calendar.hours[1], tzinfo=self._rules.zone
        )
        title = self._rules.reminders.texts.task_outcome
        await self._task(booking, OUTCOME, title, max(closing, now))
        return "task"

    async def unreachable_task(self, booking: Booking, chat: ChatLink) -> None:
        """A call task instead of the reminder that could not reach the client."""
        log.info("reminders.unreachable", channel=chat.channel)
        title = self._rules.reminders.texts.task_unreachable
        await self._task(
            booking,
            UNREACHABLE,
            title,
            booking.visit,
            priority=PRIORITY_HIGH,
            chat=chat,
        )

    async def _task(
        self,
        booking: Booking,
        kind: str,
        title: str,
        deadline: datetime,
        *,
        priority: int = PRIORITY_MEDIUM,
        chat: ChatLink | None = None,
    ) -> None:
        channel = chat.channel if chat is not None else None
        text = title.format(**manager_fields(booking.visit, self._rules.zone, channel))
        await self._crm.task(booking, TaskRequest(kind, text, deadline, priority))

    async def _mark(self, key: str, outcome: str, booking: Booking | None) -> None:
        lifetime = MARK_LIFETIME_AFTER_VISIT
        if booking is not None:
            lifetime += max(booking.visit - self._clock(), timedelta(0))
        await self._redis.set(key, outcome, px=px(lifetime))


def recipient(chat: ChatLink) -> str:
    """A chat as the recipients set holds it: no phone in it."""
    return f"{chat.channel}:{chat_key(chat.channel, chat.chat_id)}"


def _chat_from_im(value_type: str, value: str) -> ChatLink | None:
    """A contact's IM entry as a chat: a numeric Telegram id, a WhatsApp number."""
    kind, text = value_type.strip().upper(), value.strip()
    if kind == TELEGRAM_IM and text.lstrip("-").isdigit():
        return ChatLink("telegram", text)
    digits = "".join(char for char in text if char.isdigit())
    if kind == WHATSAPP_IM and 10 <= len(digits) <= 15:
        return ChatLink("whatsapp", digits)
    return None
