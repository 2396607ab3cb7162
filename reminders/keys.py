"""Where the reminders keep their state in Redis, under one prefix.

Key names carry deal ids, visit stamps and chat pseudonyms (`webhooks.keys.chat_key`),
never a phone: WhatsApp chat ids are phone numbers, and key names reach logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from webhooks.inbound import Channel
from webhooks.keys import chat_key

DEFAULT_PREFIX = "leadloop:reminders"


def px(lifetime: timedelta) -> int:
    """A key's lifetime in milliseconds for PX/PEXPIRE; at least 1, which Redis
    accepts where it refuses 0 and below."""
    return max(int(lifetime.total_seconds() * 1000), 1)


@dataclass(frozen=True)
class ReminderKeys:
    """Key names and arq job ids; tests give each run a prefix of its own."""

    prefix: str = DEFAULT_PREFIX

    def job_id(self, deal_id: int, stamp: str, kind: str) -> str:
        """The arq job of one reminder or check: the same for the same visit."""
        return f"{self.prefix}:job:{deal_id}:{stamp}:{kind}"

    def watch_job_id(self, deal_id: int, token: str) -> str:
        return f"{self.prefix}:watch:{deal_id}:{token}"

    def plan(self, deal_id: int) -> str:
        """The set of job ids scheduled for a deal."""
        return f"{self.prefix}:plan:{deal_id}"

    def lock(self, deal_id: int) -> str:
        return f"{self.prefix}:lock:{deal_id}"

    def done(self, deal_id: int, stamp: str, kind: str) -> str:
        """Set once a reminder or check has run to its end, sent or not."""
        return f"{self.prefix}:done:{deal_id}:{stamp}:{kind}"

    def recent(self, deal_id: int, stamp: str) -> str:
        """Lives a while after any reminder of the visit went out."""
        return f"{self.prefix}:recent:{deal_id}:{stamp}"

    def recipients(self, deal_id: int, stamp: str) -> str:
        """The chats (as `channel:pseudonym`) a visit's reminders went to."""
        return f"{self.prefix}:recipients:{deal_id}:{stamp}"

    def answered(self, deal_id: int, stamp: str) -> str:
        """The client's answer to the visit's reminders."""
        return f"{self.prefix}:answered:{deal_id}:{stamp}"

    def answer_claim(self, deal_id: int, stamp: str, answer: str) -> str:
        return f"{self.prefix}:claim:{deal_id}:{stamp}:{answer}"

    def open_reminder(self, channel: Channel, chat_id: str) -> str:
        """The visit a chat was last reminded of, while an answer is expected."""
        return f"{self.prefix}:open:{channel}:{chat_key(channel, chat_id)}"

    def sent_message(self, channel: Channel, provider_message_id: str) -> str:
        """A reminder message by its provider id, for delivery statuses."""
        return f"{self.prefix}:message:{channel}:{provider_message_id}"

    def fallback(self, deal_id: int, stamp: str, kind: str) -> str:
        return f"{self.prefix}:fallback:{deal_id}:{stamp}:{kind}"

    def forwarded(self, channel: Channel, event_id: str) -> str:
        return f"{self.prefix}:forwarded:{channel}:{event_id}"

    def link(self, deal_id: int) -> str:
        """The chat a deal's client used."""
        return f"{self.prefix}:link:{deal_id}"

    def last_inbound(self, channel: Channel, chat_id: str) -> str:
        return f"{self.prefix}:inbound:{channel}:{chat_key(channel, chat_id)}"

    def event_seen(self, digest: str) -> str:
        """A Bitrix24 event already accepted."""
        return f"{self.prefix}:event:{digest}"
