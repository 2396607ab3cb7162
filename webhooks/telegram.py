"""Telegram Bot API updates as InboundMessage: an update holds at most one event."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from webhooks.inbound import (
    InboundKind,
    InboundMessage,
    MalformedPayload,
    Parsed,
    Unsupported,
    from_unix,
)

Update = Mapping[str, Any]

# Update kinds leadloop leaves alone, and why. setWebhook asks only for message,
# edited_message, callback_query and my_chat_member, but a webhook set by hand or an
# older allowed_updates list can deliver anything.
IGNORED_UPDATES = {
    "channel_post": "a channel post, not a client",
    "edited_channel_post": "a channel post, not a client",
    "message_reaction": "a reaction carries no answer",
    "message_reaction_count": "a reaction carries no answer",
    "inline_query": "the bot has no inline mode",
    "chosen_inline_result": "the bot has no inline mode",
    "shipping_query": "the bot sells nothing through Telegram",
    "pre_checkout_query": "the bot sells nothing through Telegram",
    "poll": "the bot sends no polls",
    "poll_answer": "the bot sends no polls",
    "chat_member": "group membership is not a lead",
    "chat_join_request": "group membership is not a lead",
}
# Content that cannot be read as an answer: the client is asked to type instead.
MEDIA_FIELDS = (
    "voice",
    "audio",
    "photo",
    "sticker",
    "video",
    "video_note",
    "document",
    "animation",
)


def parse(update: Any, *, now: datetime) -> Parsed:
    """One update as zero or one message; `now` dates a callback (it has no date)."""
    if not isinstance(update, Mapping) or type(update.get("update_id")) is not int:
        raise MalformedPayload("not a Telegram update: no integer update_id")
    event_id = str(update["update_id"])

    for field, build in _BUILDERS.items():
        if field in update:
            try:
                return build(event_id, update[field], now)
            except (KeyError, TypeError, ValueError, AttributeError):
                return _skip(event_id, field, f"{field} without the fields it needs")

    kind = next((key for key in update if key != "update_id"), "empty")
    return _skip(event_id, kind, IGNORED_UPDATES.get(kind, "an unknown update kind"))


def _message(event_id: str, message: Mapping[str, Any], now: datetime) -> Parsed:
    refusal = _refusal(message)
    if refusal is not None:
        return _skip(event_id, *refusal)

    fields = _common(event_id, message)
    if "text" in message:
        return _one(fields, InboundKind.TEXT, text=message["text"])
    if "contact" in message:
        return _one(fields, InboundKind.CONTACT, **_contact(message))
    if "location" in message or "venue" in message:
        return _one(fields, InboundKind.LOCATION, **_location(message))
    if any(field in message for field in MEDIA_FIELDS):
        return _one(fields, InboundKind.MEDIA, text=message.get("caption"))
    return _skip(event_id, "message.other", "a message with no content leadloop reads")


def _edited(event_id: str, message: Mapping[str, Any], now: datetime) -> Parsed:
    refusal = _refusal(message)
    if refusal is not None:
        return _skip(event_id, f"edited_{refusal[0]}", refusal[1])

    fields = _common(event_id, message)
    # Edits also fire for fields the bot does not use; the dialog decides what
    # an edit means, it is never a new answer.
    fields["received_at"] = from_unix(message.get("edit_date", message["date"]))
    text = message.get("text", message.get("caption"))
    return _one(fields, InboundKind.EDITED, text=text)


def _callback(event_id: str, query: Mapping[str, Any], now: datetime) -> Parsed:
    sender = query["from"]
    message = query.get("message") or {}
    # An inline-mode button has no message; in a private chat the chat is the user.
    chat = message.get("chat") or {"id": sender["id"]}
    message_id = message.get("message_id")
    return _one(
        {
            "event_id": event_id,
            "chat_id": str(chat["id"]),
            "sender_id": str(sender["id"]),
            "received_at": now,
            "sender_name": _name(sender),
            "provider_message_id": None if message_id is None else str(message_id),
        },
        InboundKind.CALLBACK,
        callback_id=str(query["id"]),
        callback_data=query.get("data"),
    )


def _chat_member(event_id: str, update: Mapping[str, Any], now: datetime) -> Parsed:
    status = update["new_chat_member"]["status"]
    if status != "kicked":
        reason = (
            "the chat counts as reachable again when the client writes"
            if status == "member"
            else "a membership change that is not a block"
        )
        return _skip(event_id, f"my_chat_member.{status}", reason)

    sender = update["from"]
    return _one(
        {
            "event_id": event_id,
            "chat_id": str(update["chat"]["id"]),
            "sender_id": str(sender["id"]),
            "received_at": from_unix(update["date"]),
            "sender_name": _name(sender),
        },
        InboundKind.BLOCKED,
    )


_BUILDERS: dict[str, Callable[[str, Any, datetime], Parsed]] = {
    "message": _message,
    "edited_message": _edited,
    "callback_query": _callback,
    "my_chat_member": _chat_member,
}


def _refusal(message: Mapping[str, Any]) -> tuple[str, str] | None:
    if message["chat"]["type"] != "private":
        return "message.group", "leads write to the bot in private chats"
    if "forward_origin" in message or "forward_from" in message:
        return "message.forward", "forwarded content is not the client's answer"
    return None


def _common(event_id: str, message: Mapping[str, Any]) -> dict[str, Any]:
    sender = message.get("from") or message["chat"]
    return {
        "event_id": event_id,
        "chat_id": str(message["chat"]["id"]),
        "sender_id": str(sender["id"]),
        "received_at": from_unix(message["date"]),
        "sender_name": _name(sender),
        "provider_message_id": str(message["message_id"]),
    }


def _contact(message: Mapping[str, Any]) -> dict[str, Any]:
    contact = message["contact"]
    sender = message.get("from") or {}
    # user_id is set only when Telegram knows the account; a forwarded card carries
    # someone else's user_id or none (reference §1.1).
    owner = contact.get("user_id")
    return {
        "phone": str(contact["phone_number"]),
        "phone_is_senders": owner is not None and owner == sender.get("id"),
    }


def _location(message: Mapping[str, Any]) -> dict[str, Any]:
    location = message.get("location") or message["venue"]["location"]
    return {
        "latitude": float(location["latitude"]),
        "longitude": float(location["longitude"]),
    }


def _name(user: Mapping[str, Any]) -> str | None:
    parts = (user.get("first_name"), user.get("last_name"))
    return " ".join(part for part in parts if part) or None


def _one(fields: dict[str, Any], kind: InboundKind, **content: Any) -> Parsed:
    message = InboundMessage(channel="telegram", kind=kind, **fields, **content)
    return Parsed(messages=(message,))


def _skip(event_id: str, kind: str, reason: str) -> Parsed:
    return Parsed(unsupported=(Unsupported("telegram", event_id, kind, reason),))
