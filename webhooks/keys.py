"""Where inbound events live in Redis, shared by the routes and the jobs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from webhooks.inbound import Channel

DEFAULT_PREFIX = "leadloop:inbound"
# WhatsApp re-sends for up to 7 days (360dialog), Telegram for 24 hours: a dedupe mark
# must outlive both.
REMEMBER = timedelta(days=7, hours=1)


def chat_key(channel: Channel, chat_id: str) -> str:
    """A stable pseudonym of a chat: WhatsApp chat ids are phone numbers, and job
    arguments and Redis key names end up in logs."""
    digest = hashlib.sha256(f"{channel}:{chat_id}".encode()).hexdigest()
    return digest[:24]


@dataclass(frozen=True)
class InboxKeys:
    """Key names under one prefix; tests give each run a prefix of its own."""

    prefix: str = DEFAULT_PREFIX

    def seen(self, channel: Channel, event_id: str) -> str:
        return f"{self.prefix}:seen:{channel}:{event_id}"

    def event(self, channel: Channel, event_id: str) -> str:
        return f"{self.prefix}:event:{channel}:{event_id}"

    def done(self, channel: Channel, event_id: str) -> str:
        return f"{self.prefix}:done:{channel}:{event_id}"

    def attempts(self, channel: Channel, event_id: str) -> str:
        return f"{self.prefix}:attempts:{channel}:{event_id}"

    def inbox(self, channel: Channel, chat: str) -> str:
        return f"{self.prefix}:inbox:{channel}:{chat}"

    def inbox_pattern(self) -> str:
        return f"{self.prefix}:inbox:*"

    def lock(self, channel: Channel, chat: str) -> str:
        return f"{self.prefix}:lock:{channel}:{chat}"

    def unreachable(self, channel: Channel, chat: str) -> str:
        return f"{self.prefix}:unreachable:{channel}:{chat}"

    def sent(self, channel: Channel, provider_message_id: str) -> str:
        return f"{self.prefix}:sent:{channel}:{provider_message_id}"

    def queued(self, channel: Channel, chat: str) -> str:
        """The id of the drain last queued for the chat (by an event or a sweep)."""
        return f"{self.prefix}:queued:{channel}:{chat}"

    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def job_id(self, channel: Channel, scope: str, token: str) -> str:
        """An arq job id: the event or chat it serves, and a token never reused."""
        return f"{self.prefix}:job:{channel}:{scope}:{token}"
