"""The one shape every messenger update is normalised into before any work runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, cast, get_args

Channel = Literal["telegram", "whatsapp"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
# Made once: `json.dumps` with options builds an encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class InboundKind(StrEnum):
    """What a client did, independent of the messenger."""

    TEXT = "text"
    CONTACT = "contact"
    LOCATION = "location"
    # voice, photo, sticker, audio, image and kinds the provider marks unsupported
    MEDIA = "media"
    # a button press: Telegram callback_query, WhatsApp interactive or quick reply
    CALLBACK = "callback"
    EDITED = "edited"
    # the client blocked the bot: the channel is unreachable
    BLOCKED = "blocked"
    # a WhatsApp delivery status of a message we sent, never a client's message
    STATUS = "status"


@dataclass(frozen=True)
class InboundMessage:
    """One client event from a messenger, normalised."""

    channel: Channel
    event_id: str
    chat_id: str
    sender_id: str
    kind: InboundKind
    received_at: datetime
    text: str | None = None
    phone: str | None = None
    phone_is_senders: bool = False
    callback_id: str | None = None
    callback_data: str | None = None
    provider_message_id: str | None = None
    status: str | None = None
    sender_name: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    # WhatsApp's error code on a failed delivery status (131026: unreachable)
    error_code: int | None = None

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")

    def to_json(self) -> str:
        """Serialise for storage in Redis under the event id."""
        # Field by field: `dataclasses.asdict` deep-copies every value and cost the
        # webhook route a tenth of its rate (docs/benchmarks.md, "Intake").
        fields = {
            "channel": self.channel,
            "event_id": self.event_id,
            "chat_id": self.chat_id,
            "sender_id": self.sender_id,
            "kind": self.kind.value,
            "received_at": self.received_at.isoformat(),
            "text": self.text,
            "phone": self.phone,
            "phone_is_senders": self.phone_is_senders,
            "callback_id": self.callback_id,
            "callback_data": self.callback_data,
            "provider_message_id": self.provider_message_id,
            "status": self.status,
            "sender_name": self.sender_name,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "error_code": self.error_code,
        }
        return _ENCODER.encode(fields)

    @classmethod
    def from_json(cls, raw: str | bytes) -> InboundMessage:
        """Restore a message stored by `to_json`."""
        fields: dict[str, Any] = json.loads(raw)
        if fields["channel"] not in CHANNELS:
            raise ValueError(f"unknown channel {fields['channel']!r}")
        fields["channel"] = cast(Channel, fields["channel"])
        fields["kind"] = InboundKind(fields["kind"])
        fields["received_at"] = datetime.fromisoformat(fields["received_at"])
        return cls(**fields)


class MalformedPayload(ValueError):
    """The body is JSON but not the provider's envelope at all."""


@dataclass(frozen=True)
class Unsupported:
    """An event acknowledged and left alone, with the reason why."""

    channel: Channel
    event_id: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Parsed:
    """What one webhook body holds: messages to process, events to log and skip."""

    messages: tuple[InboundMessage, ...] = ()
    unsupported: tuple[Unsupported, ...] = ()


def from_unix(seconds: int | str) -> datetime:
    """Provider timestamps are Unix seconds (WhatsApp sends them as strings)."""
    return datetime.fromtimestamp(int(seconds), tz=UTC)
