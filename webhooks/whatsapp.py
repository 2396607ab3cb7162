"""WhatsApp Cloud API notifications as InboundMessage: one POST, any number of events.

Every level (entry, change, message, status) is a list, and each item is parsed on its
own: one odd item is skipped and logged, the others still count (case WA-2).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from webhooks.inbound import (
    InboundKind,
    InboundMessage,
    MalformedPayload,
    Parsed,
    Unsupported,
    from_unix,
)

Item = Mapping[str, Any]
Event = InboundMessage | Unsupported

SIGNATURE_PREFIX = "sha256="
# Message types leadloop leaves alone, and why.
IGNORED_MESSAGES = {
    "reaction": "a reaction carries no answer",
    "system": "a notice from WhatsApp (number changed), not a client's answer",
    "order": "the bot sells nothing through a catalogue",
    "request_welcome": "the client opened the chat; the first message follows",
}
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


def signature_matches(app_secret: bytes, raw_body: bytes, header: str) -> bool:
    """`X-Hub-Signature-256` against the bytes as received, never re-serialised."""
    if not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = hmac.new(app_secret, raw_body, hashlib.sha256).hexdigest()
    given = header.removeprefix(SIGNATURE_PREFIX).strip().lower()
    return hmac.compare_digest(expected.encode(), given.encode())


def parse(payload: Any) -> Parsed:
    """Every message and status of every change of every entry."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("entry"), list):
        raise MalformedPayload("not a WhatsApp notification: no entry list")
    if payload.get("object") != "whatsapp_business_account":
        kind = f"object.{payload.get('object')}"
        return Parsed(unsupported=(_note("-", kind, "not a WhatsApp account object"),))

    events = list(_events(payload["entry"]))
    return Parsed(
        messages=tuple(e for e in events if isinstance(e, InboundMessage)),
        unsupported=tuple(e for e in events if isinstance(e, Unsupported)),
    )


def _events(entries: list[Any]) -> Iterator[Event]:
    for entry in entries:
        for change in _items(entry, "changes"):
            if change.get("field") != "messages":
                yield _note(
                    "-", f"change.{change.get('field')}", "not a message change"
                )
                continue
            value = change.get("value")
            if not isinstance(value, Mapping):
                yield _note("-", "change.malformed", "a change without a value")
                continue
            yield from _value_events(value)


def _value_events(value: Item) -> Iterator[Event]:
    names = {
        contact.get("wa_id"): (contact.get("profile") or {}).get("name")
        for contact in _items(value, "contacts")
    }
    # Messages first: a status that fails must not cost a client's message (WA-2).
    for message in _items(value, "messages"):
        yield from _guarded(message, "message", lambda m: _message(m, names))
    for status in _items(value, "statuses"):
        yield from _guarded(status, "status", _status)
    for error in _items(value, "errors"):
        yield _note("-", f"error.{error.get('code')}", "an error WhatsApp reported")


def _guarded(
    item: Item, what: str, build: Callable[[Item], Iterator[Event]]
) -> Iterator[Event]:
    try:
        events = list(build(item))
    except (KeyError, TypeError, ValueError, AttributeError):
        events = [
            _note(str(item.get("id", "-")), f"{what}.malformed", "fields missing")
        ]
    yield from events


def _message(message: Item, names: Mapping[Any, Any]) -> Iterator[Event]:
    message_type = message["type"]
    wamid = str(message["id"])
    if message_type in IGNORED_MESSAGES:
        yield _note(wamid, f"message.{message_type}", IGNORED_MESSAGES[message_type])
        return

    sender = str(message["from"])
    fields: dict[str, Any] = {
        "event_id": wamid,
        "chat_id": sender,
        "sender_id": sender,
        "received_at": from_unix(message["timestamp"]),
        "sender_name": names.get(sender),
        "provider_message_id": wamid,
        # wa_id is the sender's own number (digits, no +); a username-only account
        # (2026) has none.
        "phone": sender if sender.isdigit() else None,
        "phone_is_senders": sender.isdigit(),
    }
    builder = _CONTENT.get(message_type)
    if builder is not None:
        content = builder(message)
        if content is not None:
            yield _message_of(fields, *content)
            return

    # Unsupported (131051) and unknown types: the client sent something; ask for
    # text, and say what it was on the unsupported log.
    codes = ",".join(str(error.get("code")) for error in message.get("errors", []))
    reason = f"answered as media (errors {codes or 'none'})"
    yield _note(wamid, f"message.{message_type}", reason)
    yield _message_of(fields, InboundKind.MEDIA, {})


Content = tuple[InboundKind, dict[str, Any]]


def _text(message: Item) -> Content:
    return InboundKind.TEXT, {"text": message["text"]["body"]}


def _interactive(message: Item) -> Content | None:
    interactive = message["interactive"]
    reply = interactive.get(interactive["type"])
    if interactive["type"] not in ("button_reply", "list_reply") or reply is None:
        return None
    return InboundKind.CALLBACK, {"callback_data": reply["id"], "text": reply["title"]}


def _quick_reply(message: Item) -> Content:
    # A template's quick-reply button: the payload is what the template defined.
    button = message["button"]
    return InboundKind.CALLBACK, {
        "callback_data": button.get("payload"),
        "text": button.get("text"),
    }


def _location(message: Item) -> Content:
    location = message["location"]
    return InboundKind.LOCATION, {
        "latitude": float(location["latitude"]),
        "longitude": float(location["longitude"]),
    }


def _contacts(message: Item) -> Content:
    phones = [phone for card in message["contacts"] for phone in card.get("phones", [])]
    if not phones:
        return InboundKind.CONTACT, {"phone": None, "phone_is_senders": False}
    first = phones[0]
    # A card is the sender's own number only when WhatsApp matched it to them.
    own = first.get("wa_id") is not None and first.get("wa_id") == message["from"]
    return InboundKind.CONTACT, {"phone": first["phone"], "phone_is_senders": own}


def _media(message: Item) -> Content:
    return InboundKind.MEDIA, {"text": message[message["type"]].get("caption")}


_CONTENT: dict[str, Callable[[Item], Content | None]] = {
    "text": _text,
    "interactive": _interactive,
    "button": _quick_reply,
    "location": _location,
    "contacts": _contacts,
    **dict.fromkeys(MEDIA_TYPES, _media),
}


def _status(status: Item) -> Iterator[Event]:
    wamid, state = str(status["id"]), str(status["status"])
    recipient = str(status["recipient_id"])
    errors = status.get("errors") or []
    yield InboundMessage(
        channel="whatsapp",
        # The same wamid moves through sent, delivered, read: each is its own event.
        event_id=f"{wamid}:{state}",
        chat_id=recipient,
        sender_id=recipient,
        kind=InboundKind.STATUS,
        received_at=from_unix(status["timestamp"]),
        provider_message_id=wamid,
        status=state,
        error_code=int(errors[0]["code"]) if errors else None,
    )


def _message_of(
    fields: dict[str, Any], kind: InboundKind, content: dict[str, Any]
) -> InboundMessage:
    return InboundMessage(channel="whatsapp", kind=kind, **{**fields, **content})


def _items(container: Any, name: str) -> list[Item]:
    items = container.get(name) if isinstance(container, Mapping) else None
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, Mapping)]


def _note(event_id: str, kind: str, reason: str) -> Unsupported:
    return Unsupported("whatsapp", event_id, kind, reason)
