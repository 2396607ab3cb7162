"""The intake dialog: one small state machine per chat, kept in Redis.

It learns the name, the service, the preferred time and the phone, asks only for
what it does not know yet, takes everything at once when the client writes it all in
one message, and hands the chat to a person whenever the client asks. A button tap
and a shared contact count as the client's words: the service title they chose and
the number they sent join the messages the qualifier reads, so one reading of the
whole conversation decides what is known.

A number the messenger vouches for is the sender's own and is never asked for: every
WhatsApp message carries it (the wa_id), a Telegram contact when the client shared
their own card. The lead's phone is a number the client wrote, if any (the one they
chose to be called on), else this one.

After the hand-off the chat is the manager's, and the dialog passes every later
message on as a `FollowUp` (qualification.followup puts it on the chat's deal or lead
and tells the manager). The bot answers the first message of a burst only, so a
client who writes five lines gets one "передал администратору". When the deal is gone
or closed, `start_over` opens a new inquiry with what is known (name, phone).

Chats are handled one event at a time, in order (webhooks/jobs.py holds a lock per
chat), so a turn reads, decides and writes the state without a lock of its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, TypeAdapter
from redis.asyncio import Redis

from app.config import BusinessRules, Messages, Service
from app.russian import WEEKDAY_ACCUSATIVE
from connectors.messengers.base import Button
from qualification.phones import Phone, normalize_phone
from qualification.rules import fold
from qualification.schema import (
    SLOTS,
    ClientMessage,
    Qualification,
    QualifiedLead,
    Qualifier,
    Slot,
    TranscriptLine,
    rubles,
)
from qualification.timeparse import TimeWindow
from webhooks.inbound import InboundKind, InboundMessage

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Stage = Literal["collecting", "handed_over", "done"]
RecordKind = Literal["deal", "lead"]
SERVICE_BUTTON = "service:"
# Telegram shows up to this many service buttons; more would crowd the chat.
MAX_SERVICE_BUTTONS = 8
# A digit run this long in an answer to the phone question was meant as a number.
_PHONE_ATTEMPT = re.compile(r"\d(?:[\s()\-.+]*\d){4,}")
_HUMAN = re.compile(
    r"(?:позов\w*|позвать|дайте|соедин\w*|переключ\w*|пригласите|нужен|нужна)\s+"
    r"(?:\w+\s+)?(?:с\s+)?(?:менеджер\w*|администратор\w*|админ\w*|оператор\w*|"
    r"человек\w*|сотрудник\w*|живого)"
    r"|(?:поговорить|связаться|общаться|переписываться|говорить)\s+с\s+(?:\w+\s+)?"
    r"(?:менеджер\w*|администратор\w*|админ\w*|оператор\w*|человеком|живым|"
    r"сотрудник\w*)"
    r"|жив(?:ой|ого|ым)\s+(?:человек\w*|менеджер\w*|оператор\w*)"
    r"|(?:с\s+)?ботом\s+не\s+хочу|\bне\s+(?:хочу\s+)?(?:с\s+)?бот(?:ом|а|у|ы)?\b"
)


@dataclass(frozen=True)
class Reply:
    """One message the bot sends: text, buttons, or a request for the phone."""

    text: str
    buttons: tuple[Button, ...] = ()
    request_phone: bool = False


@dataclass(frozen=True)
class FollowUp:
    """A client's message after the hand-off, to be added to the chat's deal or lead.

    `record` and `record_id` are what the hand-off opened or found, with the
    client's contact, once the dialog was told (`handed_off`); `first_in_burst` is
    set on the message the bot answers, the one the manager is told about.
    """

    intake_id: str
    record: RecordKind | None = None
    record_id: int | None = None
    contact_id: int | None = None
    # The lead's phone, for finding the client when the record is not known.
    phone: str | None = None
    first_in_burst: bool = False


@dataclass(frozen=True)
class DialogTurn:
    """What one client event led to.

    `lead` is set once name, phone, service and time are known, and when the client
    asks for a person (then possibly incomplete: `lead.complete` says). `handover`
    means a person should take the chat from here; `follow_up`, that the event came
    after the hand-off and belongs on the chat's deal or lead.
    """

    replies: list[Reply] = field(default_factory=list)
    lead: QualifiedLead | None = None
    handover: bool = False
    follow_up: FollowUp | None = None


_TURN = TypeAdapter(DialogTurn)


class StoredMessage(BaseModel):
    """A client's message as the dialog keeps it; edits replace the text."""

    model_config = ConfigDict(frozen=True)

    text: str
    at: AwareDatetime
    asked: Slot | None = None
    provider_message_id: str | None = None
    origin: Literal["text", "button", "contact"] = "text"


class DialogState(BaseModel):
    """Everything the dialog remembers about one chat."""

    intake_id: str
    stage: Stage = "collecting"
    asked: Slot | None = None
    service: str | None = None
    messages: list[StoredMessage] = []
    transcript: list[TranscriptLine] = []
    bot_spoke: bool = False
    # The sender's own number in E.164, as the messenger gave it (never typed).
    own_phone: str | None = None
    # What the lead said about the client, kept for a next inquiry from this chat.
    name: str | None = None
    phone: str | None = None
    # The deal or lead the hand-off opened or found, and when the bot last said
    # that a later message went to the manager.
    record: RecordKind | None = None
    record_id: int | None = None
    contact_id: int | None = None
    forwarded_at: AwareDatetime | None = None
    last_event_id: str | None = None
    last_turn: str | None = None


class DialogEngine:
    """Turns each client event into replies, a lead when ready, or a hand-over."""

    def __init__(
        self,
        redis: Redis,
        rules: BusinessRules,
        qualifier: Qualifier,
        clock: Clock,
        *,
        key_prefix: str = "leadloop:dialog",
        ttl: timedelta = timedelta(days=3),
        closed_ttl: timedelta = timedelta(days=30),
        reply_every: timedelta | None = None,
    ) -> None:
        self._redis = redis
        self._rules = rules
        self._qualifier = qualifier
        self._clock = clock
        self._prefix = key_prefix
        # A dialog in progress waits days for the client. A finished or handed-over
        # one keeps the chat's deal for a month: later messages go there while it
        # is open (checked in the CRM each time), a new inquiry starts once it is
        # closed, and without the state the hand-off's search finds it again.
        self._ttl = ttl
        self._closed_ttl = closed_ttl
        # After the hand-off the bot answers one message in this long per chat
        # ([intake] followup_reply_every_minutes unless a caller says otherwise).
        self._reply_every = (
            rules.intake.followup_reply_every if reply_every is None else reply_every
        )

    async def handle(self, message: InboundMessage) -> DialogTurn:
        """The dialog's answer to one event; the state is saved before returning."""
        if message.kind in (InboundKind.STATUS, InboundKind.BLOCKED):
            return DialogTurn()
        state = await self._load(message)
        if state is not None and state.last_event_id == message.event_id:
            log.info("dialog.replayed", intake_id=state.intake_id)
            return _TURN.validate_json(state.last_turn or "{}")
        state = state or DialogState(intake_id=str(uuid.uuid4()))
        return await self._run(state, message)

    async def start_over(self, message: InboundMessage) -> DialogTurn:
        """A new inquiry from this event: the chat's deal or lead is gone or closed.

        The new dialog knows what the last one learnt about the client (the name,
        the phone) and asks only for the rest.
        """
        old = await self._load(message)
        state = _fresh(old)
        log.info(
            "dialog.started_over",
            intake_id=state.intake_id,
            previous=old.intake_id if old else None,
        )
        return await self._run(state, message)

    async def handed_off(
        self,
        message: InboundMessage,
        intake_id: str,
        record: RecordKind,
        record_id: int,
        contact_id: int | None,
    ) -> None:
        """Remember the deal or lead that the chat's inquiry went to, and whose."""
        state = await self._load(message)
        if state is None or state.intake_id != intake_id:
            return
        held = (record, record_id, contact_id)
        if (state.record, state.record_id, state.contact_id) == held:
            return
        state.record, state.record_id, state.contact_id = held
        await self._save(message, state)
        log.info("dialog.record", intake_id=intake_id, record=record, id=record_id)

    async def _run(self, state: DialogState, message: InboundMessage) -> DialogTurn:
        turn = await self._turn(state, message)

        state.last_event_id = message.event_id
        state.last_turn = _TURN.dump_json(turn).decode()
        for reply in turn.replies:
            state.transcript.append(_line(self._clock(), "bot", reply.text))
        state.bot_spoke = state.bot_spoke or bool(turn.replies)
        await self._save(message, state)
        log.info(
            "dialog.turn",
            intake_id=state.intake_id,
            kind=message.kind.value,
            stage=state.stage,
            asked=state.asked,
            replies=len(turn.replies),
            lead=turn.lead is not None,
            handover=turn.handover,
            follow_up=turn.follow_up is not None,
        )
        return turn

    # --- one event -----------------------------------------------------------------

    async def _turn(self, state: DialogState, message: InboundMessage) -> DialogTurn:
        handlers = {
            InboundKind.TEXT: self._on_text,
            InboundKind.EDITED: self._on_edited,
            InboundKind.CONTACT: self._on_contact,
            InboundKind.CALLBACK: self._on_callback,
            InboundKind.MEDIA: self._on_media,
            InboundKind.LOCATION: self._on_media,
        }
        own = _senders_phone(message)
        if own is not None:
            state.own_phone = own.e164
        return await handlers[message.kind](state, message)

    async def _on_media(
        self, state: DialogState, message: InboundMessage
    ) -> DialogTurn:
        """Voice, photos, stickers, places: the bot reads text only."""
        state.transcript.append(_line(message.received_at, "client", "[вложение]"))
        if state.stage != "collecting":
            return self._follow_up(state)
        return DialogTurn([Reply(self._texts.media)])

    async def _on_text(self, state: DialogState, message: InboundMessage) -> DialogTurn:
        text = (message.text or "").strip()
        if not text:
            return DialogTurn([Reply(self._texts.media)])
        state.transcript.append(_line(message.received_at, "client", text))
        if state.stage != "collecting":
            return self._follow_up(state)
        if _HUMAN.search(fold(text)):
            return await self._hand_over(state, message, text)
        self._remember(state, message, text, "text")
        return await self._advance(state, message)

    async def _on_edited(
        self, state: DialogState, message: InboundMessage
    ) -> DialogTurn:
        """An edit updates what the client said; it gets no new answer."""
        text = (message.text or "").strip()
        if not text:
            return DialogTurn()
        edited = next(
            (
                index
                for index, stored in enumerate(state.messages)
                if message.provider_message_id is not None
                and stored.provider_message_id == message.provider_message_id
            ),
            None,
        )
        state.transcript.append(
            _line(message.received_at, "client", f"(изменено) {text}")
        )
        if state.stage != "collecting":
            # The manager sees the new wording; the client gets no new answer.
            return self._follow_up(state, answer=False)
        if edited is None:
            self._remember(state, message, text, "text")
        else:
            state.messages[edited] = state.messages[edited].model_copy(
                update={"text": text}
            )
        return DialogTurn()

    async def _on_contact(
        self, state: DialogState, message: InboundMessage
    ) -> DialogTurn:
        phone = (message.phone or "").strip()
        state.transcript.append(_line(message.received_at, "client", "[контакт]"))
        if state.stage != "collecting":
            return self._follow_up(state)
        if not message.phone_is_senders or not phone:
            if state.own_phone is not None:
                # Someone else's card when the client's own number is known: on
                # WhatsApp always, and nothing to ask for.
                return await self._advance(state, message)
            # Someone else's card: the lead's phone must be the client's own.
            return DialogTurn(
                [self._ask_phone_reply(message, self._texts.ask_own_phone)]
            )
        if _senders_phone(message) is None:
            state.asked = "phone"
            return DialogTurn(
                [self._ask_phone_reply(message, self._texts.ask_phone_again)]
            )
        state.asked = "phone"
        self._remember(state, message, phone, "contact")
        return await self._advance(state, message)

    async def _on_callback(
        self, state: DialogState, message: InboundMessage
    ) -> DialogTurn:
        data = message.callback_data or ""
        service_id = data.removeprefix(SERVICE_BUTTON)
        service = (
            self._services.get(service_id) if data.startswith(SERVICE_BUTTON) else None
        )
        # A late or repeated tap, after the dialog moved on, changes nothing (TG-3).
        if service is None or state.stage != "collecting" or state.asked != "service":
            log.info("dialog.callback_ignored", intake_id=state.intake_id)
            return DialogTurn()
        state.transcript.append(_line(message.received_at, "client", service.title))
        self._remember(state, message, service.title, "button")
        return await self._advance(state, message)

    # --- deciding ------------------------------------------------------------------

    async def _advance(self, state: DialogState, message: InboundMessage) -> DialogTurn:
        qualification = await self._qualify(state)
        now = self._clock()
        missing = self._missing(qualification, now, state.own_phone)
        if not missing:
            return self._complete(state, message, qualification, now)

        slot = missing[0]
        text = self._ask(state, slot, qualification, now)
        state.asked, state.service = slot, qualification.service
        reply = Reply(
            text,
            buttons=self._service_buttons(message) if slot == "service" else (),
            request_phone=slot == "phone" and message.channel == "telegram",
        )
        return DialogTurn([reply])

    async def _qualify(self, state: DialogState) -> Qualification:
        messages = [
            ClientMessage(stored.text, stored.at, stored.asked)
            for stored in state.messages
        ]
        return await self._qualifier.qualify(messages)

    def _missing(
        self, qualification: Qualification, now: datetime, own_phone: str | None
    ) -> list[Slot]:
        window = qualification.preferred_time
        known: dict[Slot, bool] = {
            "name": qualification.name is not None,
            "service": qualification.service in self._services,
            "time": window is not None and not window.is_past(now),
            "phone": qualification.phone is not None or own_phone is not None,
        }
        return [slot for slot in SLOTS if not known[slot]]

    def _ask(
        self,
        state: DialogState,
        slot: Slot,
        qualification: Qualification,
        now: datetime,
    ) -> str:
        """The question for `slot`, after a greeting and the price of a new service."""
        price = None
        if qualification.service and qualification.service != state.service:
            price = self._price_line(qualification.service)
        if not state.bot_spoke and slot == "name" and price is None:
            return self._texts.greeting  # it asks for the name itself
        hello = "" if state.bot_spoke else self._texts.greeting_short
        question = self._question(state, slot, qualification, now)
        return " ".join(part for part in (hello, price, question) if part)

    def _question(
        self,
        state: DialogState,
        slot: Slot,
        qualification: Qualification,
        now: datetime,
    ) -> str:
        texts = self._texts
        again = state.asked == slot and state.bot_spoke
        last = state.messages[-1].text if state.messages else ""
        if slot == "name":
            return texts.ask_name
        if slot == "service":
            if again:
                titles = ", ".join(service.title for service in self._services.values())
                return texts.ask_service_again.format(services=titles)
            return texts.ask_service
        if slot == "time":
            window = qualification.preferred_time
            if window is not None and window.is_past(now):
                return texts.time_past
            return texts.ask_time_again if again else texts.ask_time
        if again and _PHONE_ATTEMPT.search(last):
            return texts.ask_phone_again
        return texts.ask_phone

    def _complete(
        self,
        state: DialogState,
        message: InboundMessage,
        qualification: Qualification,
        now: datetime,
    ) -> DialogTurn:
        state.stage = "done"
        state.asked = None
        service = self._services[qualification.service or ""]
        window = qualification.preferred_time
        confirm = self._texts.confirm.format(
            service=service.title,
            time=window.describe(now) if window else "",
            name=qualification.name or "",
        )
        opens = self.opens(now)
        done = (
            self._texts.done
            if opens is None
            else self._texts.done_after_hours.format(opens=opens)
        )
        hello = "" if state.bot_spoke else self._texts.greeting_short
        lead = self._lead(state, message, qualification, now, handover=False)
        state.name, state.phone = lead.name, lead.phone
        log.info("dialog.lead", intake_id=state.intake_id)
        text = " ".join(part for part in (hello, confirm, done) if part)
        return DialogTurn([Reply(text)], lead=lead)

    async def _hand_over(
        self, state: DialogState, message: InboundMessage, text: str
    ) -> DialogTurn:
        self._remember(state, message, text, "text")
        state.stage, state.asked = "handed_over", None
        opens = self.opens(self._clock())
        reply = (
            self._texts.handoff
            if opens is None
            else self._texts.handoff_after_hours.format(opens=opens)
        )
        qualification = await self._qualify(state)
        lead = self._lead(state, message, qualification, self._clock(), handover=True)
        state.name, state.phone = lead.name, lead.phone
        log.info("dialog.handover", intake_id=state.intake_id)
        return DialogTurn([Reply(reply)], lead=lead, handover=True)

    def _follow_up(self, state: DialogState, *, answer: bool = True) -> DialogTurn:
        """After the hand-off: the message goes to the manager, the bot says so once
        a burst (the first message after `reply_every` of quiet)."""
        now = self._clock()
        quiet = state.forwarded_at is None or now - state.forwarded_at >= (
            self._reply_every
        )
        first = answer and quiet
        replies = []
        if first:
            state.forwarded_at = now
            opens = self.opens(now)
            texts = self._texts
            text = (
                texts.forwarded
                if opens is None
                else texts.forwarded_after_hours.format(opens=opens)
            )
            replies.append(Reply(text))
        follow_up = FollowUp(
            state.intake_id,
            state.record,
            state.record_id,
            state.contact_id,
            phone=state.phone or state.own_phone,
            first_in_burst=first,
        )
        return DialogTurn(replies, handover=True, follow_up=follow_up)

    # --- working hours -------------------------------------------------------------

    def opens(self, now: datetime) -> str | None:
        """None while the salon works; otherwise when it opens, in Russian."""
        calendar = self._rules.calendar
        local = now.astimezone(self._zone)
        start, end = calendar.hours
        today = local.date()
        if calendar.is_working_day(today) and start <= local.time() < end:
            return None
        for offset in range(31):
            day = today + timedelta(days=offset)
            if not calendar.is_working_day(day):
                continue
            if offset == 0 and local.time() >= start:
                continue
            return _opening_words(day, start, today)
        return None

    # --- pieces --------------------------------------------------------------------

    def _lead(
        self,
        state: DialogState,
        message: InboundMessage,
        qualification: Qualification,
        now: datetime,
        *,
        handover: bool,
    ) -> QualifiedLead:
        service = self._services.get(qualification.service or "")
        window = qualification.preferred_time
        usable_time: TimeWindow | None = (
            window if window is not None and not window.is_past(now) else None
        )
        written = qualification.phone is not None
        return QualifiedLead(
            intake_id=state.intake_id,
            channel=message.channel,
            chat_id=message.chat_id,
            sender_id=message.sender_id,
            profile_name=message.sender_name,
            name=qualification.name,
            phone=qualification.phone if written else state.own_phone,
            phone_extension=qualification.phone_extension if written else None,
            service_id=qualification.service if service else None,
            service_title=service.title if service else None,
            price_from=service.price_from if service else None,
            price_to=service.price_to if service else None,
            preferred_time=usable_time,
            qualification=qualification,
            transcript=tuple(state.transcript),
            handover=handover,
            created_at=now,
        )

    def _remember(
        self,
        state: DialogState,
        message: InboundMessage,
        text: str,
        origin: Literal["text", "button", "contact"],
    ) -> None:
        state.messages.append(
            StoredMessage(
                text=text,
                at=message.received_at,
                asked=state.asked,
                provider_message_id=message.provider_message_id,
                origin=origin,
            )
        )

    def _price_line(self, service_id: str) -> str | None:
        service = self._services[service_id]
        price = _price(service)
        if price is None:
            return None
        return self._texts.service_price.format(service=service.title, price=price)

    def _service_buttons(self, message: InboundMessage) -> tuple[Button, ...]:
        if message.channel != "telegram":
            return ()
        return tuple(
            Button(service.title, f"{SERVICE_BUTTON}{service_id}")
            for service_id, service in list(self._services.items())[
                :MAX_SERVICE_BUTTONS
            ]
        )

    def _ask_phone_reply(self, message: InboundMessage, text: str) -> Reply:
        return Reply(text, request_phone=message.channel == "telegram")

    @property
    def _texts(self) -> Messages:
        return self._rules.messages

    @property
    def _services(self) -> dict[str, Service]:
        return self._rules.services

    @property
    def _zone(self) -> ZoneInfo:
        return self._rules.zone

    # --- storage -------------------------------------------------------------------

    def _key(self, message: InboundMessage) -> str:
        return f"{self._prefix}:{message.channel}:{message.chat_id}"

    async def _load(self, message: InboundMessage) -> DialogState | None:
        raw = await self._redis.get(self._key(message))
        return None if raw is None else DialogState.model_validate_json(raw)

    async def _save(self, message: InboundMessage, state: DialogState) -> None:
        ttl = self._ttl if state.stage == "collecting" else self._closed_ttl
        await self._redis.set(
            self._key(message),
            state.model_dump_json(),
            px=int(ttl.total_seconds() * 1000),
        )


def _fresh(old: DialogState | None) -> DialogState:
    """A new inquiry's state, told the client's name and phone as if answered."""
    state = DialogState(intake_id=str(uuid.uuid4()))
    if old is None:
        return state
    state.own_phone = old.own_phone
    state.name, state.phone = old.name, old.phone
    known: list[tuple[Slot, str | None]] = [("name", old.name)]
    if old.phone != old.own_phone:
        known.append(("phone", old.phone))
    state.messages = [
        StoredMessage(text=value, at=old.messages[-1].at, asked=slot)
        for slot, value in known
        if value and old.messages
    ]
    return state


def _senders_phone(message: InboundMessage) -> Phone | None:
    """The number the messenger says is the sender's own, when it is a valid one."""
    raw = (message.phone or "").strip()
    if not message.phone_is_senders or not raw:
        return None
    # Messengers give an account's number in international form, often without the
    # plus (a wa_id is bare digits: 79990000001, 380501234567); one valid only
    # without it (89990000001) is read the Russian way.
    digits = raw.removeprefix("+")
    if digits.isdigit():
        international = normalize_phone(f"+{digits}")
        if international is not None:
            return international
    return normalize_phone(raw)


def _price(service: Service) -> str | None:
    low, high = service.price_from, service.price_to
    if low is not None and high is not None:
        bare_low = rubles(low).rsplit("\u00a0", 1)[0]
        return f"от {bare_low} до {rubles(high)}"
    if low is not None:
        return f"от {rubles(low)}"
    if high is not None:
        return f"до {rubles(high)}"
    return None


def _opening_words(day: date, start: time, today: date) -> str:
    offset = (day - today).days
    clock = f"{start:%H:%M}"
    if offset == 0:
        return f"сегодня в {clock}"
    if offset == 1:
        return f"завтра в {clock}"
    if offset < 7:
        return f"{WEEKDAY_ACCUSATIVE[day.weekday()]} в {clock}"
    return f"{day.day:d}.{day.month:02d} в {clock}"


def _line(at: datetime, author: Literal["client", "bot"], text: str) -> TranscriptLine:
    return TranscriptLine(at=at, author=author, text=text)
