"""Outbound events: form-encoded POSTs to bound handlers, sent once, never re-sent.

A method that changes something calls `Portal.emit`, which appends to the portal's
outbox. After each request the server calls `EventDispatcher.pump()`, which turns the
outbox into one delivery per bound handler and hands them to a delivery task. That
task POSTs `application/x-www-form-urlencoded` bodies with PHP brackets and string
values, as Bitrix24's queue server does (reference/bitrix24.md §11.2), logs the
outcome and forgets the delivery: a failed or slow handler loses the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.oauth import APP_STATUS, mint_pair
from sandbox.state import OAuthToken, PendingEvent, Portal

logger = logging.getLogger(__name__)

BINDINGS_TABLE = "eventhandler"
DELIVERY_TIMEOUT_S = 3.0  # short: a slow handler loses the event, as on the portal
MAX_PARALLEL_DELIVERIES = 8
TOKEN_REUSE_MARGIN_S = 300  # hand out a token with at least five minutes left
# Events whose `auth` also carries the refresh token (§11.2).
REFRESH_TOKEN_EVENTS = frozenset({"ONAPPINSTALL", "ONAPPUPDATE", "ONAPPTEST"})

# The events `event.bind` knows, with the scope an app needs to bind each one
# (None: any app). Names are stored and sent upper-case, whatever the docs print.
EVENT_SCOPES: dict[str, str | None] = {
    **{
        f"ONCRM{entity}{action}": "crm"
        for entity in ("LEAD", "DEAL", "CONTACT", "COMPANY", "ACTIVITY", "QUOTE")
        for action in ("ADD", "UPDATE", "DELETE")
    },
    "ONCRMDEALMOVETOCATEGORY": "crm",
    "ONCRMTIMELINECOMMENTADD": "crm",
    "ONCRMTIMELINECOMMENTUPDATE": "crm",
    "ONCRMTIMELINECOMMENTDELETE": "crm",
    "ONTASKADD": "task",
    "ONTASKUPDATE": "task",
    "ONTASKDELETE": "task",
    "ONTASKCOMMENTADD": "task",
    "ONTASKCOMMENTUPDATE": "task",
    "ONTASKCOMMENTDELETE": "task",
    "ONVOXIMPLANTCALLINIT": "telephony",
    "ONVOXIMPLANTCALLSTART": "telephony",
    "ONVOXIMPLANTCALLEND": "telephony",
    "ONEXTERNALCALLSTART": "telephony",
    "ONIMCONNECTORMESSAGEADD": "imconnector",
    "ONIMCONNECTORMESSAGEUPDATE": "imconnector",
    "ONIMCONNECTORMESSAGEDELETE": "imconnector",
    "ONIMCONNECTORSTATUSDELETE": "imconnector",
    "ONIMCONNECTORLINEDELETE": "imconnector",
    "ONLIVEFEEDPOSTADD": "log",
    "ONLIVEFEEDPOSTUPDATE": "log",
    "ONLIVEFEEDPOSTDELETE": "log",
    "ONUSERADD": "user",
    "ONAPPINSTALL": None,
    "ONAPPUNINSTALL": None,
    "ONAPPUPDATE": None,
    "ONAPPTEST": None,
    "ONAPPPAYMENT": None,
    "ONAPPMETHODCONFIRM": None,
}


# -- bindings -----------------------------------------------------------------------


def bindings(portal: Portal) -> Iterator[dict[str, Any]]:
    """Every handler bound on the portal, in binding order."""
    return iter(portal.table(BINDINGS_TABLE))


def bindings_for(portal: Portal, event: str) -> list[dict[str, Any]]:
    return [row for row in bindings(portal) if row["EVENT"] == event]


# -- the wire format ----------------------------------------------------------------


def php_form_pairs(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Flatten a value the way PHP `http_build_query` does: brackets, strings only.

    Nulls and empty arrays send nothing; booleans become "1" and "0".
    """
    if isinstance(value, dict):
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            pairs += php_form_pairs(f"{prefix}[{key}]", item)
        return pairs
    if isinstance(value, list):
        pairs = []
        for index, item in enumerate(value):
            pairs += php_form_pairs(f"{prefix}[{index}]", item)
        return pairs
    if value is None:
        return []
    if isinstance(value, bool):
        return [(prefix, "1" if value else "0")]
    return [(prefix, str(value))]


@dataclass
class Delivery:
    """One POST of one event to one handler, and what became of it."""

    id: int
    event: str
    handler: str
    handler_id: str
    data: dict[str, Any]
    form: list[tuple[str, str]]
    raised_at: float
    status: str = "queued"  # queued, sending, delivered, failed, timeout
    http_status: int | None = None
    error: str | None = None
    sent_at: float | None = None
    duration_ms: float | None = None

    def describe(self) -> dict[str, Any]:
        """The log entry: ids, outcome and data, never the tokens sent."""
        return {
            "id": self.id,
            "event": self.event,
            "handler": self.handler,
            "event_handler_id": self.handler_id,
            "data": self.data,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "raised_at": self.raised_at,
            "sent_at": self.sent_at,
            "duration_ms": self.duration_ms,
        }


class EventDispatcher:
    """Delivers the portal's outbox to the handlers bound with `event.bind`."""

    def __init__(
        self,
        portal: Portal,
        *,
        public_url: str | None = None,
        timeout_s: float = DELIVERY_TIMEOUT_S,
    ) -> None:
        self.portal = portal
        self.public_url = public_url.rstrip("/") if public_url else None
        self.timeout_s = timeout_s
        self._log: list[Delivery] = []
        self._next_id = 1
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending = 0  # accepted and not yet finished, held ones included
        self._app_tokens: dict[tuple[str, int, frozenset[str]], OAuthToken] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the interface server.py uses -------------------------------------------------

    def pump(self) -> None:
        """Hand the events raised since the last pump to the delivery task.

        Called once per request, so the same event, handler and data raised twice
        within one request go out once, as the portal's event buffer does.
        """
        raised = list(self.portal.outbox)
        self.portal.outbox.clear()
        seen: set[tuple[str, str, str]] = set()
        for pending in raised:
            for binding in bindings_for(self.portal, pending.event):
                if binding.get("OFFLINE"):
                    continue
                key = (pending.event, binding["ID"], _canonical(pending.data))
                if key in seen:
                    continue
                seen.add(key)
                self._enqueue(self._delivery(pending, binding))

    def reset(self) -> None:
        """Forget the log and every delivery not yet sent."""
        self._log = []
        self._next_id = 1
        while not self._queue.empty():
            self._queue.get_nowait()
            self._settle()
        self.portal.outbox.clear()
        self._app_tokens.clear()

    def log(self) -> list[dict[str, Any]]:
        return [delivery.describe() for delivery in self._log]

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_sandbox/events", self._clear_log, methods=["DELETE"]),
            Route("/_sandbox/events/wait", self._wait_route, methods=["POST"]),
            Route("/_sandbox/events/settings", self._settings_route, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the delivery task with one HTTP client for the app's lifetime."""
        self._loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=MAX_PARALLEL_DELIVERIES * 2)
        async with httpx.AsyncClient(
            timeout=self.timeout_s, limits=limits, follow_redirects=False
        ) as client:
            self._client = client
            worker = asyncio.create_task(self._deliver_forever())
            try:
                yield
            finally:
                worker.cancel()
                for task in list(self._in_flight):
                    task.cancel()
                await asyncio.gather(worker, *self._in_flight, return_exceptions=True)
                self._client = None
                self._loop = None

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued delivery has been sent or has failed."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- building deliveries ----------------------------------------------------------

    def _delivery(self, pending: PendingEvent, binding: dict[str, Any]) -> Delivery:
        form = [
            ("event", pending.event),
            ("event_handler_id", str(binding["ID"])),
            *php_form_pairs("data", pending.data),
            ("ts", str(int(pending.raised_at))),
            *php_form_pairs("auth", self._auth_block(pending.event, binding)),
        ]
        delivery = Delivery(
            id=self._next_id,
            event=pending.event,
            handler=binding["HANDLER"],
            handler_id=str(binding["ID"]),
            data=pending.data,
            form=form,
            raised_at=pending.raised_at,
        )
        self._next_id += 1
        self._log.append(delivery)
        return delivery

    def _auth_block(self, event: str, binding: dict[str, Any]) -> dict[str, str]:
        """`auth[...]`: endpoints and the application token; app bindings add tokens.

        An outgoing webhook gets only the five portal keys (fixture
        event.ONCRMDEALADD.outgoing-webhook.body.json); an app binding gets a fresh
        token pair of the bound user (`auth_type` if set) with the app's scopes.
        """
        base = self.public_url or f"https://{self.portal.domain}"
        endpoints = {
            "domain": self.portal.domain,
            "client_endpoint": f"{base}/rest/",
            "server_endpoint": f"{base}/rest/",
            "member_id": self.portal.member_id,
            "application_token": self.portal.application_token,
        }
        if binding.get("AUTH_KIND") != "oauth":
            return endpoints
        user_id = int(binding.get("AUTH_TYPE") or 0) or int(binding["USER_ID"])
        scopes = frozenset(filter(None, str(binding.get("SCOPE", "")).split(",")))
        token = self._app_token(binding["CLIENT_ID"], user_id, scopes)
        block = {
            "access_token": token.access_token,
            "expires": str(int(token.expires_at)),
            "expires_in": str(max(0, round(token.expires_at - time.time()))),
            "scope": ",".join(sorted(scopes)),
            "domain": endpoints["domain"],
            "server_endpoint": endpoints["server_endpoint"],
            "status": APP_STATUS,
            "client_endpoint": endpoints["client_endpoint"],
            "member_id": endpoints["member_id"],
            "user_id": str(user_id),
        }
        if event in REFRESH_TOKEN_EVENTS:
            block["refresh_token"] = token.refresh_token
        block["application_token"] = endpoints["application_token"]
        return block

    def _app_token(
        self, client_id: str, user_id: int, scopes: frozenset[str]
    ) -> OAuthToken:
        """The app's current token for the user, a new pair once it nears expiry.

        Reused so a mass change does not mint one token per event.
        """
        key = (client_id, user_id, scopes)
        token = self._app_tokens.get(key)
        fresh_enough = token is not None and (
            token.expires_at - time.time() > TOKEN_REUSE_MARGIN_S
            and self.portal.oauth_tokens.get(token.access_token) is token
        )
        if token is None or not fresh_enough:
            token = mint_pair(
                self.portal, user_id=user_id, scopes=scopes, client_id=client_id
            )
            self._app_tokens[key] = token
        return token

    def _enqueue(self, delivery: Delivery) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._accept(delivery)
        else:
            # pump() called from another thread (an in-process test): hand over safely.
            loop.call_soon_threadsafe(self._accept, delivery)

    def _accept(self, delivery: Delivery) -> None:
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait(delivery)

    def _settle(self) -> None:
        self._pending = max(0, self._pending - 1)
        if self._pending == 0:
            self._idle.set()

    # -- sending ----------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        slots = asyncio.Semaphore(MAX_PARALLEL_DELIVERIES)
        while True:
            delivery = await self._queue.get()
            await slots.acquire()
            task = asyncio.create_task(self._send(delivery))
            self._in_flight.add(task)
            task.add_done_callback(lambda done: self._finish(done, slots))

    def _finish(self, task: asyncio.Task[None], slots: asyncio.Semaphore) -> None:
        self._in_flight.discard(task)
        slots.release()
        self._settle()

    async def _send(self, delivery: Delivery) -> None:
        client = self._client
        if client is None:
            return
        delivery.status = "sending"
        delivery.sent_at = time.time()
        clock = time.perf_counter()
        try:
            response = await client.post(
                delivery.handler,
                content=urlencode(delivery.form).encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=self.timeout_s,
            )
        except httpx.TimeoutException:
            delivery.status = "timeout"
            delivery.error = f"no answer within {self.timeout_s:g} s"
        except httpx.HTTPError as error:
            delivery.status = "failed"
            delivery.error = type(error).__name__
        else:
            delivery.http_status = response.status_code
            delivery.status = "delivered" if response.is_success else "failed"
        delivery.duration_ms = round((time.perf_counter() - clock) * 1000, 1)
        logger.info(
            "sandbox.event.%s event=%s handler_id=%s delivery_id=%s",
            delivery.status,
            delivery.event,
            delivery.handler_id,
            delivery.id,
        )

    # -- controls ---------------------------------------------------------------------

    async def _clear_log(self, request: Request) -> Response:
        self._log = []
        return JSONResponse({"deliveries": []})

    async def _wait_route(self, request: Request) -> Response:
        """Wait (up to `timeout_s`, default 5) until every delivery has finished."""
        body = await _json_body(request)
        timeout_s = body.get("timeout_s", 5.0)
        if not isinstance(timeout_s, int | float) or timeout_s < 0:
            return JSONResponse({"error": "timeout_s must be a number >= 0"}, 400)
        idle = await self.wait_idle(float(timeout_s))
        return JSONResponse({"idle": idle, "deliveries": self.log()})

    async def _settings_route(self, request: Request) -> Response:
        body = await _json_body(request)
        timeout_s = body.get("timeout_s", self.timeout_s)
        if not isinstance(timeout_s, int | float) or timeout_s <= 0:
            return JSONResponse({"error": "timeout_s must be a number > 0"}, 400)
        self.timeout_s = float(timeout_s)
        return JSONResponse({"timeout_s": self.timeout_s})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    with contextlib.suppress(ValueError):
        body = json.loads(raw) if raw else {}
        if isinstance(body, dict):
            return body
    return {}


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
