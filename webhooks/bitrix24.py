"""`POST /webhooks/bitrix24`: outbound events of the portal, verified and queued.

Bitrix24 posts events form-encoded with PHP bracket keys and string values
(`data[FIELDS][ID]=4521`), not JSON (known fault B24-7, docs-ru#234); a JSON body of
the same shape is taken too. `auth[application_token]` is compared in constant time
with `LEADLOOP_BITRIX24_APPLICATION_TOKEN`; without a configured token every event is
refused. A CRM event carries the record's id only, so the route queues a job with
the deal id and answers at once; the job reads the deal itself (reference §11.2).

The portal never re-sends an event and sends duplicates now and then (§11.3). The
job id is the deal and the event's `ts`, queued a moment later: repeats of the same
event, and other events of the deal in the same second, fold into one job, which
reads the deal after all of them. Anything it misses, the reconcile job finds.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl

import structlog
from arq.connections import ArqRedis
from fastapi import APIRouter, Depends, Request
from pydantic import SecretStr
from redis.exceptions import RedisError

from app.settings import Settings
from reminders.jobs import WATCH_DEAL
from reminders.keys import ReminderKeys
from webhooks.body import JSON, decode_json, media_type, read_body
from webhooks.errors import (
    BadSignature,
    MalformedBody,
    NotAccepted,
    NotAuthenticated,
    WrongContentType,
)

log = structlog.stdlib.get_logger(__name__)
unsupported_log = structlog.stdlib.get_logger("leadloop.webhooks.unsupported")

PREFIX = "/webhooks"
FORM = "application/x-www-form-urlencoded"
# An event is a few hundred bytes (§11.2); 64 KiB leaves room and keeps a hostile
# body out of memory.
MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 200
MAX_DEPTH = 8
# Repeats of an event arrive within a second or so; the job waits this long, so
# that they fold into it before it reads the deal.
DEBOUNCE = timedelta(seconds=2)
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_ID = re.compile(r"[1-9]\d{0,17}")


# -- the body ----------------------------------------------------------------------


def parse_form(body: str) -> dict[str, Any]:
    """A PHP-style form as nested dicts: `a[b][c]=1` -> `{"a": {"b": {"c": "1"}}}`.

    `a[]` appends under the next integer key, as PHP does; a key that is not of the
    `name[...]` shape is kept as it is.
    """
    try:
        pairs = parse_qsl(
            body,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:
        raise MalformedBody(f"more than {MAX_FIELDS} form fields") from None
    root: dict[str, Any] = {}
    for key, value in pairs:
        _assign(root, _path(key), value)
    return root


def _path(key: str) -> list[str | None]:
    found = _KEY.fullmatch(key)
    if found is None:
        return [key]
    name, brackets = found.groups()
    path: list[str | None] = [name]
    path += [segment or None for segment in _SEGMENT.findall(brackets)]
    if len(path) > MAX_DEPTH:
        raise MalformedBody(f"form keys nest at most {MAX_DEPTH} deep")
    return path


def _assign(node: dict[str, Any], path: list[str | None], value: str) -> None:
    *parents, last = path
    for part in parents:
        name = _next_index(node) if part is None else part
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[_next_index(node) if last is None else last] = value


def _next_index(node: Mapping[str, Any]) -> str:
    indices = [int(key) for key in node if key.isdigit()]
    return str(max(indices) + 1 if indices else 0)


async def read_event(request: Request) -> dict[str, Any]:
    """The event as nested values, from a form body or a JSON one."""
    kind = media_type(request)
    if kind not in (FORM, JSON):
        raise WrongContentType(f"the body must be {FORM} (or {JSON})")
    raw = await read_body(request, limit=MAX_BODY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("the body is not UTF-8") from None
    event = parse_form(text) if kind == FORM else decode_json(text)
    if not isinstance(event, dict):
        raise MalformedBody("the body is not an event object")
    return event


# -- verification ------------------------------------------------------------------


class ApplicationToken:
    """`auth[application_token]` equals the portal's token for our handler."""

    def __init__(self, token: SecretStr | None) -> None:
        self._token = token

    def check(self, event: Mapping[str, Any]) -> None:
        auth = event.get("auth")
        given = auth.get("application_token") if isinstance(auth, Mapping) else None
        if not isinstance(given, str) or not given:
            raise NotAuthenticated("auth[application_token] is missing")
        expected = self._token.get_secret_value() if self._token else ""
        if not expected:
            log.error("webhooks.bitrix24_token_not_configured")
            raise NotAuthenticated("LEADLOOP_BITRIX24_APPLICATION_TOKEN is not set")
        # Bytes: compare_digest refuses non-ASCII text.
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise BadSignature("auth[application_token] is wrong")


# -- queueing ----------------------------------------------------------------------


@dataclass(frozen=True)
class EventQueue:
    """Queues a deal's re-read; jobs go to the Redis client's default queue."""

    redis: ArqRedis
    keys: ReminderKeys = field(default_factory=ReminderKeys)

    async def watch(self, deal_id: int, ts: str) -> bool:
        """True when a job was queued; False when one for this instant is waiting."""
        job_id = self.keys.watch_job_id(deal_id, ts)
        try:
            job = await self.redis.enqueue_job(
                WATCH_DEAL, deal_id, _job_id=job_id, _defer_by=DEBOUNCE
            )
        except (RedisError, OSError) as exc:
            raise NotAccepted("the event was not queued") from exc
        return job is not None


async def get_event_queue(request: Request) -> EventQueue:
    """The app's Redis as an event queue."""
    return EventQueue(request.app.state.clients.redis)


EventQueueDependency = Annotated[EventQueue, Depends(get_event_queue)]


# -- routing -----------------------------------------------------------------------


@dataclass(frozen=True)
class DealEvent:
    name: str
    deal_id: int
    ts: str


Route = Callable[[Mapping[str, Any]], DealEvent]


def _deal_event(event: Mapping[str, Any]) -> DealEvent:
    data = event.get("data")
    fields = data.get("FIELDS") if isinstance(data, Mapping) else None
    raw_id = fields.get("ID") if isinstance(fields, Mapping) else None
    if not isinstance(raw_id, str | int) or not _ID.fullmatch(str(raw_id)):
        raise MalformedBody("data[FIELDS][ID] is not a deal id")
    ts = str(event.get("ts", ""))
    if not ts.isdigit():
        # Without the event's time, repeats fold by the second they arrive in.
        ts = str(int(datetime.now(UTC).timestamp()))
    return DealEvent(str(event["event"]), int(raw_id), ts)


# Each handled event re-reads its deal: the event says only that something changed.
ROUTES: dict[str, Route] = {
    "ONCRMDEALADD": _deal_event,
    "ONCRMDEALUPDATE": _deal_event,
    "ONCRMDEALDELETE": _deal_event,
    "ONCRMDEALMOVETOCATEGORY": _deal_event,
}
# Events a portal may be bound to send, and why leadloop leaves them alone.
IGNORED: dict[str, str] = {
    "ONCRMLEADADD": "leads have no visit; the intake creates them itself",
    "ONCRMLEADUPDATE": "leads have no visit; the intake creates them itself",
    "ONCRMCONTACTUPDATE": "a contact's chats are read when a reminder goes out",
    "ONCRMACTIVITYADD": "activities are pulled for the KPIs",
    "ONTASKUPDATE": "tasks are pulled for the KPIs",
    "ONVOXIMPLANTCALLEND": "calls are pulled for the KPIs",
    "ONAPPINSTALL": "leadloop talks to the portal through an inbound webhook",
    "ONAPPUNINSTALL": "leadloop talks to the portal through an inbound webhook",
}


def bitrix24_router(settings: Settings) -> APIRouter:
    """`POST /webhooks/bitrix24`, verified by the application token."""
    router = APIRouter(prefix=PREFIX, tags=["webhooks"])
    token = ApplicationToken(settings.bitrix24_application_token)

    @router.post("/bitrix24")
    async def bitrix24_event(
        request: Request, queue: EventQueueDependency
    ) -> dict[str, bool]:
        event = await read_event(request)
        token.check(event)
        name = str(event.get("event", "")).upper()
        route = ROUTES.get(name)
        if route is None:
            reason = IGNORED.get(name, "not an event leadloop subscribes to")
            unsupported_log.info(
                "webhooks.unsupported", channel="bitrix24", kind=name, reason=reason
            )
            return {"ok": True}

        deal = route({**event, "event": name})
        with structlog.contextvars.bound_contextvars(
            channel="bitrix24", kind=name, deal_id=deal.deal_id
        ):
            queued = await queue.watch(deal.deal_id, deal.ts)
            log.info("webhooks.accepted" if queued else "webhooks.duplicate")
        return {"ok": True}

    return router
