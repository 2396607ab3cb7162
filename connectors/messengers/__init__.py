"""Messenger senders: one per channel behind `Sender`, errors in one tree."""

from connectors.messengers.base import (
    AuthFailed,
    Button,
    ChatMigrated,
    MessengerError,
    OutsideWindow,
    Rejected,
    Sender,
    SentMessage,
    SlowDown,
    Template,
    Unavailable,
    Unreachable,
    messenger_client,
)
from connectors.messengers.telegram import TelegramSender
from connectors.messengers.whatsapp import WhatsAppSender

__all__ = [
    "AuthFailed",
    "Button",
    "ChatMigrated",
    "MessengerError",
    "OutsideWindow",
    "Rejected",
    "Sender",
    "SentMessage",
    "SlowDown",
    "TelegramSender",
    "Template",
    "Unavailable",
    "Unreachable",
    "WhatsAppSender",
    "messenger_client",
]
