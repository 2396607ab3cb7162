"""Inbound events a chat's job set aside, to look at and to put back.

A chat's events are handled in order; one that fails every try (or cannot be read)
is set aside so that the chat moves on. The event itself stays stored for as long as
any event (webhooks.keys.REMEMBER), so it can be put back at the end of its chat's
inbox once its cause is fixed: `leadloop jobs failed` lists these beside the failed
jobs and `leadloop jobs retry --event CHANNEL:EVENT_ID` puts one back. Entries name
the chat by its pseudonym, never by phone or name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Literal, cast
from uuid import uuid4

from arq.connections import ArqRedis
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from webhooks.inbound import CHANNELS, Channel
from webhooks.keys import InboxKeys
from webhooks.queue import wake

Reason = Literal["tries", "unreadable", "unknown"]
# The list is for people: the newest this many are kept.
SET_ASIDE_KEPT = 1000


class SetAsideEvent(BaseModel):
    """One set-aside event: where it was, when and why."""

    model_config = ConfigDict(frozen=True)

    channel: Channel
    chat: str
    event_id: str
    at: AwareDatetime | None = None
    reason: Reason = "unknown"

    @property
    def ref(self) -> str:
        """What `leadloop jobs retry --event` takes."""
        return f"{self.channel}:{self.event_id}"


class NotSetAside(Exception):
    """No set-aside event has this reference (or it was put back already)."""


class EventGone(Exception):
    """The event's stored body expired; nothing is left to put back."""


class SetAside:
    """The set-aside list under one inbox key prefix, in Redis."""

    def __init__(
        self, redis: ArqRedis, keys: InboxKeys, *, kept: int = SET_ASIDE_KEPT
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._kept = kept

    async def add(
        self, channel: Channel, chat: str, event_id: str, reason: Reason
    ) -> None:
        entry = SetAsideEvent(
            channel=channel,
            chat=chat,
            event_id=event_id,
            at=datetime.now(UTC),
            reason=reason,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self._keys.dead(), entry.model_dump_json())
            pipe.ltrim(self._keys.dead(), -self._kept, -1)
            await pipe.execute()

    async def latest(self, limit: int | None = None) -> list[SetAsideEvent]:
        """Newest first; all of them without a limit."""
        start = 0 if limit is None else -limit
        raw = await cast(
            Awaitable[list[bytes]], self._redis.lrange(self._keys.dead(), start, -1)
        )
        return [event for item in reversed(raw) if (event := _parse(item)) is not None]

    async def put_back(self, ref: str) -> str:
        """Put the event back at the end of its chat's inbox; the job id that drains it.

        Its done mark and try count are cleared, so the chat's job handles it afresh;
        what it wrote before carries idempotency keys, so nothing is doubled.
        """
        entry, raw = await self._find(ref)
        channel, chat, event_id = entry.channel, entry.chat, entry.event_id
        keys = self._keys
        if not chat:
            raise EventGone(
                f"{ref} was set aside by an older version, without its chat"
            )
        if not await self._redis.exists(keys.event(channel, event_id)):
            raise EventGone(f"{ref}: its stored body has expired")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.done(channel, event_id), keys.attempts(channel, event_id))
            pipe.rpush(keys.inbox(channel, chat), event_id)
            pipe.lrem(keys.dead(), 1, raw.decode())
            await pipe.execute()
        job_id = keys.job_id(channel, chat, f"put-back-{uuid4().hex[:12]}")
        await wake(self._redis, channel, chat, job_id)
        return job_id

    async def put_back_all(self) -> list[tuple[str, str]]:
        """Every set-aside event that can be put back: (reference, job id) pairs."""
        done = []
        for entry in reversed(await self.latest()):
            try:
                done.append((entry.ref, await self.put_back(entry.ref)))
            except (EventGone, NotSetAside):
                continue
        return done

    async def _find(self, ref: str) -> tuple[SetAsideEvent, bytes]:
        raw_list = await cast(
            Awaitable[list[bytes]], self._redis.lrange(self._keys.dead(), 0, -1)
        )
        for raw in raw_list:
            entry = _parse(raw)
            if entry is not None and entry.ref == ref:
                return entry, raw
        raise NotSetAside(ref)


def _parse(raw: bytes) -> SetAsideEvent | None:
    text = raw.decode(errors="replace")
    if text.startswith("{"):
        try:
            return SetAsideEvent.model_validate(json.loads(text))
        except (ValueError, ValidationError):
            return None
    # Entries of earlier versions: "channel:event_id", no chat, time or reason.
    channel, _, event_id = text.partition(":")
    if channel not in CHANNELS or not event_id:
        return None
    return SetAsideEvent(channel=channel, chat="", event_id=event_id)


def set_aside_table(events: list[SetAsideEvent]) -> list[str]:
    """Lines of a plain table for a terminal: reference, chat, when, why."""
    header = ("EVENT", "CHAT", "SET ASIDE AT (UTC)", "WHY")
    rows = [
        (
            event.ref,
            event.chat or "-",
            event.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if event.at else "-",
            event.reason,
        )
        for event in events
    ]
    widths = [max(len(row[n]) for row in (header, *rows)) for n in range(3)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]]
        )
        for row in (header, *rows)
    ]
