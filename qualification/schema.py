"""What the qualifier knows about a client, and the lead handed to the CRM.

Every judgement carries the client's own words behind it (`evidence`): a manager can
see why a lead is "hot", and a model's answer without words from the client is not
believed (see `llm.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from qualification.timeparse import TimeWindow
from webhooks.inbound import Channel

Readiness = Literal["hot", "warm", "cold"]
Urgency = Literal["urgent", "normal"]
Judgement = Literal[
    "service", "preferred_time", "name", "phone", "readiness", "urgency", "budget"
]
# What the dialog asks for, in the order it asks.
Slot = Literal["name", "service", "time", "phone"]
SLOTS: tuple[Slot, ...] = ("name", "service", "time", "phone")

DEFAULT_READINESS: Readiness = "warm"
DEFAULT_URGENCY: Urgency = "normal"
SUMMARY_MAX_LENGTH = 300
READINESS_RU = {"hot": "горячий", "warm": "тёплый", "cold": "холодный"}


def rubles(amount: Decimal, currency: str = "RUB") -> str:
    """`Decimal("1500.00")` → "1 500 ₽", with no-break spaces between groups."""
    whole = amount.quantize(Decimal(1)) if amount == amount.to_integral() else amount
    digits = f"{whole:,}".replace(",", "\u00a0").replace(".", ",")
    return f"{digits}\u00a0₽" if currency == "RUB" else f"{digits}\u00a0{currency}"


class Budget(BaseModel):
    """How much the client means to spend: a range, or one bound of it."""

    model_config = ConfigDict(frozen=True)

    low: Decimal | None = None
    high: Decimal | None = None
    currency: str = "RUB"

    @model_validator(mode="after")
    def _a_bound_in_order(self) -> Budget:
        if self.low is None and self.high is None:
            raise ValueError("a budget needs a low or a high bound")
        if self.low is not None and self.high is not None and self.high < self.low:
            raise ValueError("high is below low")
        return self

    def describe(self) -> str:
        """In Russian: "до 3 000 ₽", "от 3 000 до 5 000 ₽", "от 2 000 ₽"."""
        low, high = self.low, self.high
        if low is not None and high is not None:
            if low == high:
                return f"около {rubles(high, self.currency)}"
            bare_low = rubles(low, self.currency).rsplit("\u00a0", 1)[0]
            return f"от {bare_low} до {rubles(high, self.currency)}"
        if high is not None:
            return f"до {rubles(high, self.currency)}"
        if low is not None:
            return f"от {rubles(low, self.currency)}"
        return ""


class Qualification(BaseModel):
    """What is known about one client, each judgement with the client's words."""

    model_config = ConfigDict(frozen=True)

    service: str | None = Field(default=None, description="a configured service id")
    preferred_time: TimeWindow | None = None
    name: str | None = None
    phone: str | None = Field(default=None, description="E.164")
    phone_extension: str | None = None
    readiness: Readiness = DEFAULT_READINESS
    urgency: Urgency = DEFAULT_URGENCY
    budget: Budget | None = None
    summary: str = Field(default="", max_length=SUMMARY_MAX_LENGTH)
    evidence: dict[Judgement, tuple[str, ...]] = {}
    source: Literal["rules", "llm"] = "rules"
    # A model refused or failed; the rule-based values stand and a person should look.
    needs_review: bool = False

    @model_validator(mode="after")
    def _judgements_have_evidence(self) -> Qualification:
        for judgement in self.judgements():
            if not self.evidence.get(judgement):
                raise ValueError(f"{judgement} has no evidence from the client")
        if "\n" in self.summary:
            raise ValueError("the summary is one line")
        return self

    def judgements(self) -> list[Judgement]:
        """The judgements made: values set, and readiness or urgency moved."""
        made: list[Judgement] = []
        for judgement in ("service", "preferred_time", "name", "phone", "budget"):
            if getattr(self, judgement) is not None:
                made.append(judgement)
        if self.readiness != DEFAULT_READINESS:
            made.append("readiness")
        if self.urgency != DEFAULT_URGENCY:
            made.append("urgency")
        return made

    def unsupported(self, client_text: str) -> list[Judgement]:
        """Judgements whose quoted words do not occur in what the client wrote."""
        haystack = _normal(client_text)
        return [
            judgement
            for judgement, quotes in self.evidence.items()
            if not all(_normal(quote) in haystack for quote in quotes)
        ]


def _normal(text: str) -> str:
    return " ".join(text.casefold().replace("ё", "е").split())


@dataclass(frozen=True)
class ClientMessage:
    """One thing the client wrote, when, and the question it answered."""

    text: str
    at: datetime
    asked: Slot | None = None


class Qualifier(Protocol):
    """Reads everything the client wrote so far into one `Qualification`."""

    async def qualify(self, messages: Sequence[ClientMessage]) -> Qualification: ...


class TranscriptLine(BaseModel):
    """One line of the conversation, for the CRM's timeline comment."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    author: Literal["client", "bot"]
    text: str


class QualifiedLead(BaseModel):
    """A client's inquiry, ready for the CRM: who, what, when, and the transcript."""

    model_config = ConfigDict(frozen=True)

    # Stable for one inquiry: the CRM writes use it as their idempotency key.
    intake_id: str
    channel: Channel
    chat_id: str
    sender_id: str
    profile_name: str | None = None
    name: str | None
    phone: str | None
    phone_extension: str | None = None
    service_id: str | None
    service_title: str | None
    price_from: Decimal | None = None
    price_to: Decimal | None = None
    preferred_time: TimeWindow | None
    qualification: Qualification
    transcript: tuple[TranscriptLine, ...]
    # The client asked for a person before everything was known.
    handover: bool = False
    created_at: AwareDatetime

    @property
    def complete(self) -> bool:
        """Name, phone, service and preferred time are all known."""
        return None not in (self.name, self.phone, self.service_id, self.preferred_time)

    def transcript_text(self, zone: ZoneInfo) -> str:
        """The conversation as plain text lines with local times, for a comment."""
        authors = {"client": "Клиент", "bot": "Бот"}
        return "\n".join(
            f"[{line.at.astimezone(zone):%d.%m %H:%M}] {authors[line.author]}: "
            f"{line.text}"
            for line in self.transcript
        )
