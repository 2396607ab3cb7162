"""The WhatsApp Cloud API send endpoint, signed webhook delivery, and a record.

`POST /v{version}/{phone_number_id}/messages` with `Authorization: Bearer <token>`
accepts text, interactive (reply buttons, list) and template messages and answers
as the Graph API does: `{"messaging_product", "contacts": [{"input", "wa_id"}],
"messages": [{"id": "wamid…"}]}`, or `{"error": {"message", "type", "code",
"error_subcode"?, "error_data"?, "fbtrace_id"}}` with 400 (401 for a bad token).
A 200 means accepted; when status webhooks are on, `sent`/`delivered`/… follow as
separate signed deliveries, and a fault with `as_status` turns into a `failed`
status instead of a synchronous error, as Meta mostly reports 131047 and 131026.

Deliveries are serialised the way Meta signs them: compact, non-ASCII as `\\u`
escapes, `/` as `\\/` and `@` as `\\u0040`; `X-Hub-Signature-256` is the HMAC-SHA256 of
exactly those bytes with the app secret (reference/messengers.md §2.3).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.faults import (
    BAD_GATEWAY_PAGE,
    WHATSAPP_ERRORS,
    MessengerFault,
    MessengerFaultBook,
)

logger = logging.getLogger(__name__)

SANDBOX_WHATSAPP_ACCESS_TOKEN = "EAAsandboxLeadloopWhatsAppToken0000"  # noqa: S105
SANDBOX_PHONE_NUMBER_ID = "200000000000002"
SANDBOX_DISPLAY_PHONE_NUMBER = "15550000000"
SANDBOX_WABA_ID = "100000000000001"
SANDBOX_APP_SECRET = "sandbox_app_secret"  # noqa: S105  (local-only)
DELIVERY_TIMEOUT_S = 10.0
WINDOW_S = 24 * 3600  # the customer service window (reference §2.5)
# Limits of the Cloud API's interactive objects (reference §2.6).
MAX_TEXT = 4096
MAX_BUTTON_BODY = 1024
MAX_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_BUTTON_ID = 256
MAX_LIST_BUTTON = 20
MAX_SECTIONS = 10
MAX_ROWS = 10
MAX_ROW_TITLE = 24
MAX_ROW_ID = 200
MAX_ROW_DESCRIPTION = 72
# `conversation` is left out of statuses from Graph v24.0 on (reference §2.2).
CONVERSATION_DROPPED_IN = (24, 0)
STATUS_ORDER = ("sent", "delivered", "read")
_VERSION = re.compile(r"(\d+)\.(\d+)")
_UNSUPPORTED_POST = (
    "Unsupported post request. Object with ID '{}' does not exist, cannot be loaded "
    "due to missing permissions, or does not support this operation. Please read "
    "the Graph API documentation at https://developers.facebook.com/docs/graph-api"
)
_SESSION_EXPIRED = (
    "Error validating access token: Session has expired on Friday, 26-Apr-24 "
    "06:00:00 PDT. The current time is Sunday, 28-Apr-24 03:40:10 PDT."
)


class GraphError(Exception):
    """A Graph API error answer."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        kind: str = "OAuthException",
        subcode: int | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.kind = kind
        self.subcode = subcode
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.details is not None:
            error["error_data"] = {
                "messaging_product": "whatsapp",
                "details": self.details,
            }
        error["fbtrace_id"] = _fbtrace_id()
        return {"error": error}

    def as_status_error(self) -> dict[str, Any]:
        """The same error as a `failed` status webhook carries it."""
        title = re.sub(r"^\(#\d+\) ", "", self.message)
        return {
            "code": self.code,
            "title": title,
            "message": title,
            "error_data": {"details": self.details or title},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/"
            "error-codes/",
        }


def send_error(code: int, title: str, details: str, status: int = 400) -> GraphError:
    return GraphError(status, code, f"(#{code}) {title}", details=details)


def invalid_parameter(details: str) -> GraphError:
    return send_error(131009, "Parameter value is not valid", details)


def missing_parameter(name: str) -> GraphError:
    return GraphError(400, 100, f"(#100) The parameter {name} is required.")


def named_error(kind: str) -> GraphError:
    """One of the real errors of `WHATSAPP_ERRORS`, rendered as Meta renders it."""
    status, code, title, details = WHATSAPP_ERRORS[kind]
    if code == 190:
        return GraphError(status, 190, _SESSION_EXPIRED, subcode=463)
    return send_error(code, title, details, status)


@dataclass
class Outbound:
    """A message the business sent, as the sandbox records it."""

    seq: int
    id: str
    to: str
    wa_id: str
    type: str
    version: str
    payload: dict[str, Any]
    timestamp: int
    status: str = "accepted"
    errors: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "to": self.to,
            "wa_id": self.wa_id,
            "type": self.type,
            "text": _text_of(self.payload),
            "buttons": _buttons_of(self.payload),
            "rows": _rows_of(self.payload),
            "template": self.payload.get("template"),
            "context_message_id": (self.payload.get("context") or {}).get("message_id"),
            "status": self.status,
            "errors": self.errors,
            "timestamp": self.timestamp,
        }


@dataclass
class Settings:
    access_token: str = SANDBOX_WHATSAPP_ACCESS_TOKEN
    phone_number_id: str = SANDBOX_PHONE_NUMBER_ID
    display_phone_number: str = SANDBOX_DISPLAY_PHONE_NUMBER
    waba_id: str = SANDBOX_WABA_ID
    app_secret: str = SANDBOX_APP_SECRET
    webhook_url: str = ""
    verify_token: str = ""
    enforce_window: bool = False
    # Approved templates: name -> number of body parameters. Empty: any name passes.
    templates: dict[str, int] = field(default_factory=dict)
    # Statuses delivered after each accepted send, in order: e.g. ["sent", "delivered"].
    statuses: list[str] = field(default_factory=list)
    delivery_timeout_s: float = DELIVERY_TIMEOUT_S

    def public(self) -> dict[str, Any]:
        return dict(vars(self))


class WhatsAppSandbox:
    """One business phone number: its send API, its webhook, what it sent."""

    def __init__(self, faults: MessengerFaultBook) -> None:
        self.faults = faults
        self.settings = Settings()
        self.reset()

    def reset(self) -> None:
        """Forget messages, calls and windows; keep the settings."""
        self.sent: list[Outbound] = []
        self.reads: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.last_inbound: dict[str, float] = {}
        self._seq = 0

    def routes(self) -> list[BaseRoute]:
        both = ["GET", "POST"]
        return [
            Route(
                "/v{version}/{phone_number_id}/messages",
                self.messages,
                methods=["POST"],
            ),
            Route("/_sandbox/whatsapp/messages", self._messages_route, methods=["GET"]),
            Route("/_sandbox/whatsapp/calls", self._calls_route, methods=["GET"]),
            Route("/_sandbox/whatsapp/deliver", self._deliver_route, methods=["POST"]),
            Route("/_sandbox/whatsapp/settings", self._settings_route, methods=both),
        ]

    # -- the send API -----------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        version = request.path_params["version"]
        phone_number_id = request.path_params["phone_number_id"]
        body: dict[str, Any] = {}
        try:
            self._check_path(version, phone_number_id)
            self._check_token(request)
            body = await _read_body(request)
            answer = await self._send(version, body)
        except GraphError as error:
            self._record_call(body, error.status, error.code)
            return _json(error.body(), error.status)
        except _BadGateway:
            self._record_call(body, 502, None)
            return Response(BAD_GATEWAY_PAGE, status_code=502, media_type="text/html")
        self._record_call(body, 200, None)
        return answer

    def _check_path(self, version: str, phone_number_id: str) -> None:
        if _VERSION.fullmatch(version) is None:
            raise GraphError(
                400, 2500, f"Unknown path components: /v{version}/{phone_number_id}"
            )
        if phone_number_id != self.settings.phone_number_id:
            raise GraphError(
                400,
                100,
                _UNSUPPORTED_POST.format(phone_number_id),
                kind="GraphMethodException",
                subcode=33,
            )

    def _check_token(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        token = request.query_params.get("access_token", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            raise GraphError(
                400, 104, "An access token is required to request this resource."
            )
        if token != self.settings.access_token:
            raise GraphError(
                401, 190, "Invalid OAuth access token - Cannot parse access token"
            )

    async def _send(self, version: str, body: dict[str, Any]) -> Response:
        product = body.get("messaging_product")
        if product is None:
            raise missing_parameter("messaging_product")
        if product != "whatsapp":
            raise GraphError(
                400, 100, '(#100) Param messaging_product must be "whatsapp"'
            )
        if body.get("status") == "read":
            return self._mark_read(body)
        to = _recipient(body)
        kind = str(body.get("type", "text"))
        _CHECKS.get(kind, _unsupported_type)(body)
        if kind == "template":
            problem = template_error(self.settings, body["template"])
            if problem is not None:
                raise problem
        fault = self.faults.take("whatsapp", "messages", to)
        failure = await self._fault_error(fault)
        if failure is not None and not (fault and fault.as_status):
            raise failure
        window = self._window_error(to, kind)
        if window is not None:
            raise window
        message = self._accept(to, kind, version, body)
        statuses = self._planned_statuses(message, failure)
        return _json(
            _accepted_body(message),
            background=BackgroundTask(self._send_statuses, message, statuses)
            if statuses
            else None,
        )

    async def _fault_error(self, fault: MessengerFault | None) -> GraphError | None:
        if fault is None:
            return None
        if fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "bad_gateway":
            raise _BadGateway
        if fault.kind == "error":
            return GraphError(
                fault.status or 400,
                fault.code or 100,
                fault.description or f"(#{fault.code or 100}) Invalid parameter",
                details=fault.details or None,
            )
        error = named_error(fault.kind)
        if fault.status:
            error.status = fault.status
        return error

    def _window_error(self, to: str, kind: str) -> GraphError | None:
        if not self.settings.enforce_window or kind == "template":
            return None
        last = self.last_inbound.get(_digits(to))
        if last is not None and time.time() - last < WINDOW_S:
            return None
        return named_error("outside_window")

    def _accept(
        self, to: str, kind: str, version: str, body: dict[str, Any]
    ) -> Outbound:
        self._seq += 1
        message = Outbound(
            seq=self._seq,
            id=new_wamid(),
            to=to,
            wa_id=_digits(to),
            type=kind,
            version=version,
            payload=body,
            timestamp=int(time.time()),
        )
        self.sent.append(message)
        return message

    def _planned_statuses(
        self, message: Outbound, failure: GraphError | None
    ) -> list[str]:
        if failure is not None:
            message.status = "failed"
            message.errors = [failure.as_status_error()]
            return ["failed"] if self.settings.webhook_url else []
        if not self.settings.webhook_url:
            return []
        return [status for status in STATUS_ORDER if status in self.settings.statuses]

    def _mark_read(self, body: dict[str, Any]) -> Response:
        message_id = body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise missing_parameter("message_id")
        self._seq += 1
        self.reads.append({"seq": self._seq, "message_id": message_id})
        return _json({"success": True})

    def _record_call(self, body: dict[str, Any], status: int, code: int | None) -> None:
        self._seq += 1
        self.calls.append(
            {"seq": self._seq, "body": body, "status": status, "error_code": code}
        )

    # -- webhook deliveries -----------------------------------------------------------

    async def deliver(self, body: dict[str, Any]) -> dict[str, Any]:
        """Build (or take) a webhook payload, sign it and POST it to the webhook."""
        if not self.settings.webhook_url:
            raise ValueError("no webhook_url: set it with /_sandbox/whatsapp/settings")
        if "raw" in body:
            raw = str(body["raw"]).encode("utf-8")
        elif "object" in body:
            raw = meta_json(body)
        else:
            events = body.get("events", [body])
            if not isinstance(events, list) or not events:
                raise ValueError("events must be a non-empty list")
            raw = meta_json(self.payload([self._value(event) for event in events]))
        return await self.post_signed(raw)

    def payload(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        """The webhook envelope around change values."""
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self.settings.waba_id,
                    "changes": [
                        {"value": value, "field": "messages"} for value in values
                    ],
                }
            ],
        }

    def _value(self, event: Any) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise ValueError("each event must be a JSON object")
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": self.settings.display_phone_number,
                "phone_number_id": self.settings.phone_number_id,
            },
        }
        if "status" in event:
            value["statuses"] = [self._status_event(event)]
            return value
        sender = event.get("from")
        if not isinstance(sender, str) or not sender.isdigit():
            raise ValueError("an inbound event needs `from`: the user's wa_id, digits")
        value["contacts"] = [
            {"profile": {"name": str(event.get("name", "Test"))}, "wa_id": sender}
        ]
        value["messages"] = [self._inbound_message(sender, event)]
        self.last_inbound[sender] = time.time()
        return value

    def _inbound_message(self, sender: str, event: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "from": sender,
            "id": str(event.get("id") or new_wamid()),
            "timestamp": str(int(time.time())),
        }
        for key, builder in _INBOUND.items():
            if key in event:
                message |= builder(self, sender, event)
                return message
        raise ValueError(f"an inbound event needs one of: {', '.join(_INBOUND)}")

    def _status_event(self, event: dict[str, Any]) -> dict[str, Any]:
        status = str(event["status"])
        message = self._outbound(event.get("id"))
        if status == "failed" and "error_code" in event:
            error = _error_for_code(int(event["error_code"]))
            message.errors = [error.as_status_error()]
        return status_object(message, status)

    def _outbound(self, message_id: Any) -> Outbound:
        for message in reversed(self.sent):
            if message_id in (None, message.id):
                return message
        raise ValueError("no sent message with that id")

    def last_sent_to(self, wa_id: str, kind: str) -> Outbound | None:
        for message in reversed(self.sent):
            if message.wa_id == wa_id and message.type == kind:
                return message
        return None

    async def _send_statuses(self, message: Outbound, statuses: list[str]) -> None:
        for status in statuses:
            if status != "failed":
                message.status = status
            value = self._value({"status": status, "id": message.id})
            await self.post_signed(meta_json(self.payload([value])))

    async def post_signed(self, raw: bytes) -> dict[str, Any]:
        """POST the exact bytes with Meta's signature headers; record the outcome."""
        secret = self.settings.app_secret.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256="
            + hmac.new(secret, raw, hashlib.sha256).hexdigest(),
            "X-Hub-Signature": "sha1="
            + hmac.new(secret, raw, hashlib.sha1).hexdigest(),
        }
        outcome: dict[str, Any] = {"status": None, "error": None}
        try:
            async with httpx.AsyncClient(
                timeout=self.settings.delivery_timeout_s
            ) as client:
                response = await client.post(
                    self.settings.webhook_url, content=raw, headers=headers
                )
        except httpx.HTTPError as error:
            outcome["error"] = type(error).__name__
        else:
            outcome["status"] = response.status_code
        outcome["signature"] = headers["X-Hub-Signature-256"]
        outcome["body"] = raw.decode("utf-8")
        self.deliveries.append(outcome)
        logger.info("sandbox.whatsapp.delivery status=%s", outcome["status"])
        return outcome

    # -- controls ---------------------------------------------------------------------

    async def _messages_route(self, request: Request) -> Response:
        to = request.query_params.get("to")
        messages = [
            message.describe()
            for message in self.sent
            if to is None or message.wa_id == _digits(to)
        ]
        return JSONResponse({"messages": messages, "reads": self.reads})

    async def _calls_route(self, request: Request) -> Response:
        return JSONResponse({"calls": self.calls, "deliveries": self.deliveries})

    async def _deliver_route(self, request: Request) -> Response:
        body = await _control_body(request)
        if isinstance(body, Response):
            return body
        try:
            outcome = await self.deliver(body)
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": str(error)}, 400)
        return JSONResponse(outcome)

    async def _settings_route(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _control_body(request)
            if isinstance(body, Response):
                return body
            problem = await self.configure(body)
            if problem:
                return JSONResponse({"error": problem}, 400)
        return JSONResponse(self.settings.public())

    async def configure(self, changes: dict[str, Any]) -> str | None:
        """Apply settings; a new webhook URL with a verify token is verified first."""
        current = self.settings.public()
        unknown = set(changes) - set(current)
        if unknown:
            return f"unknown settings: {', '.join(sorted(unknown))}"
        for key, value in changes.items():
            if not isinstance(value, type(current[key])) and not (
                key == "delivery_timeout_s" and isinstance(value, int)
            ):
                return f"{key} must be {type(current[key]).__name__}"
        candidate = Settings(**(current | changes))
        problem = _settings_problem(candidate)
        if problem:
            return problem
        if candidate.webhook_url and candidate.verify_token:
            problem = await _verify_callback(candidate)
            if problem:
                return problem
        self.settings = candidate
        return None


def _settings_problem(settings: Settings) -> str | None:
    if not set(settings.statuses) <= set(STATUS_ORDER):
        return f"statuses must be among {', '.join(STATUS_ORDER)}"
    counts = settings.templates.values()
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        return "templates maps each name to its number of body parameters"
    if settings.delivery_timeout_s <= 0:
        return "delivery_timeout_s must be positive"
    return None


# -- request bodies and checks ---------------------------------------------------------


class _BadGateway(Exception):
    """A fault that answers with the proxy's HTML page instead of JSON."""


async def _read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type.lower() == "application/json":
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise GraphError(400, 100, "(#100) Invalid parameter") from None
        if not isinstance(body, dict):
            raise GraphError(400, 100, "(#100) Invalid parameter")
        return body
    # Graph also takes form fields; nested objects then travel as JSON text.
    return {
        key: _maybe_json(value)
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), True)
    }


def _maybe_json(value: str) -> Any:
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _recipient(body: dict[str, Any]) -> str:
    to = body.get("to") or body.get("recipient")
    if to is None:
        raise missing_parameter("to")
    to = str(to)
    if not _digits(to) or not re.fullmatch(r"\+?[\d\s()-]+", to):
        raise GraphError(
            400,
            100,
            "(#100) Invalid parameter",
            details="Param to must be a valid phone number",
        )
    return to


def _check_text(body: dict[str, Any]) -> None:
    text = body.get("text")
    if not isinstance(text, dict) or not isinstance(text.get("body"), str):
        raise missing_parameter("text['body']")
    if not text["body"].strip():
        raise invalid_parameter("Param text['body'] must be a non-empty string")
    if len(text["body"]) > MAX_TEXT:
        raise invalid_parameter(
            f"Param text['body'] must be at most {MAX_TEXT} characters long."
        )


def _check_interactive(body: dict[str, Any]) -> None:
    interactive = body.get("interactive")
    if not isinstance(interactive, dict):
        raise missing_parameter("interactive")
    kind = interactive.get("type")
    action = interactive.get("action")
    text = (interactive.get("body") or {}).get("text")
    if not isinstance(action, dict) or not isinstance(text, str) or not text:
        raise missing_parameter("interactive['action'] and interactive['body']")
    if kind == "button":
        _check_button_body(text)
        _check_reply_buttons(action.get("buttons"))
    elif kind == "list":
        _check_list(text, action)
    else:
        raise invalid_parameter(f"Interactive type {kind!r} is not supported here")


def _check_button_body(text: str) -> None:
    if len(text) > MAX_BUTTON_BODY:
        raise invalid_parameter(
            f"Param interactive['body']['text'] must be at most {MAX_BUTTON_BODY} "
            "characters long."
        )


def _check_reply_buttons(buttons: Any) -> None:
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        raise invalid_parameter(
            f"Buttons count invalid. Min allowed buttons: 1, Max allowed buttons: "
            f"{MAX_BUTTONS}"
        )
    titles: list[str] = []
    for button in buttons:
        reply = button.get("reply") if isinstance(button, dict) else None
        if not isinstance(reply, dict) or button.get("type") != "reply":
            raise missing_parameter("button['reply']")
        title, reply_id = str(reply.get("title", "")), str(reply.get("id", ""))
        if not 1 <= len(title) <= MAX_BUTTON_TITLE:
            raise invalid_parameter(
                f"Button title length invalid. Min length: 1, Max length: "
                f"{MAX_BUTTON_TITLE}"
            )
        if not 1 <= len(reply_id) <= MAX_BUTTON_ID:
            raise invalid_parameter(
                f"Button id length invalid. Min length: 1, Max length: {MAX_BUTTON_ID}"
            )
        titles.append(title)
    if len(set(titles)) != len(titles):
        raise invalid_parameter("Button title must be unique")


def _check_list(text: str, action: dict[str, Any]) -> None:
    if len(text) > MAX_TEXT:
        raise invalid_parameter(
            f"Param interactive['body']['text'] must be at most {MAX_TEXT} characters"
        )
    label = action.get("button")
    if not isinstance(label, str) or not 1 <= len(label) <= MAX_LIST_BUTTON:
        raise invalid_parameter(
            f"Button text length invalid. Min length: 1, Max length: {MAX_LIST_BUTTON}"
        )
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= MAX_SECTIONS:
        raise invalid_parameter(f"Sections count invalid. Max allowed: {MAX_SECTIONS}")
    rows = [row for section in sections for row in (section or {}).get("rows", [])]
    if not 1 <= len(rows) <= MAX_ROWS:
        raise invalid_parameter(f"Total row count exceed max allowed count: {MAX_ROWS}")
    for row in rows:
        _check_row(row)


def _check_row(row: Any) -> None:
    if not isinstance(row, dict):
        raise missing_parameter("row")
    limits = (
        ("id", MAX_ROW_ID, 1),
        ("title", MAX_ROW_TITLE, 1),
        ("description", MAX_ROW_DESCRIPTION, 0),
    )
    for key, most, least in limits:
        length = len(str(row.get(key, "")))
        if not least <= length <= most:
            raise invalid_parameter(
                f"Row {key} length invalid. Min length: {least}, Max length: {most}"
            )


def _check_template(body: dict[str, Any]) -> None:
    template = body.get("template")
    if not isinstance(template, dict) or not template.get("name"):
        raise missing_parameter("template['name']")
    language = template.get("language")
    if not isinstance(language, dict) or not language.get("code"):
        raise missing_parameter("template['language']")


def _unsupported_type(body: dict[str, Any]) -> None:
    kinds = ", ".join(sorted(_CHECKS))
    raise GraphError(
        400,
        100,
        f'(#100) Param type must be one of {{{kinds}}} - got "{body.get("type")}".',
    )


_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "text": _check_text,
    "interactive": _check_interactive,
    "template": _check_template,
}


def template_error(settings: Settings, template: dict[str, Any]) -> GraphError | None:
    """132001 for a name the account has not approved, 132000 for a count mismatch."""
    if not settings.templates:
        return None
    name, code = str(template["name"]), str(template["language"]["code"])
    if name not in settings.templates:
        return send_error(
            132001,
            "Template name does not exist in the translation",
            f"template name ({name}) does not exist in {code}",
        )
    expected = settings.templates[name]
    given = sum(
        len(component.get("parameters", []))
        for component in template.get("components", [])
        if isinstance(component, dict) and component.get("type") == "body"
    )
    if given != expected:
        return send_error(
            132000,
            "Number of parameters does not match the expected number of params",
            f"body: number of localizable_params ({given}) does not match the "
            f"expected number of params ({expected})",
        )
    return None


# -- answers and payloads --------------------------------------------------------------


def _accepted_body(message: Outbound) -> dict[str, Any]:
    accepted: dict[str, Any] = {"id": message.id}
    if message.type == "template":
        accepted["message_status"] = "accepted"
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": message.to, "wa_id": message.wa_id}],
        "messages": [accepted],
    }


def status_object(message: Outbound, status: str) -> dict[str, Any]:
    """One `statuses[]` item about a message the business sent."""
    item: dict[str, Any] = {
        "id": message.id,
        "status": status,
        "timestamp": str(int(time.time())),
        "recipient_id": message.wa_id,
    }
    if status != "failed":
        if _version(message.version) < CONVERSATION_DROPPED_IN:
            item["conversation"] = {
                "id": secrets.token_hex(15),
                "origin": {"type": _category(message)},
            }
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "category": _category(message),
        }
    if status == "failed":
        item["errors"] = message.errors or [
            named_error("undeliverable").as_status_error()
        ]
    return item


def _category(message: Outbound) -> str:
    return "utility" if message.type == "template" else "service"


def _version(version: str) -> tuple[int, int]:
    match = _VERSION.fullmatch(version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def meta_json(payload: Any) -> bytes:
    """JSON as Meta's webhooks serialise it: compact, ASCII, `/` and `@` escaped."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/").replace("@", "\\u0040").encode("ascii")


def new_wamid() -> str:
    """A message id in the Cloud API's form: `wamid.` and base64 of opaque bytes."""
    return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode("ascii")


def _error_for_code(code: int) -> GraphError:
    for kind, (_status, known, _title, _details) in WHATSAPP_ERRORS.items():
        if known == code:
            return named_error(kind)
    return send_error(code, "Message failed to send", "Message failed to send.")


def _digits(value: str) -> str:
    return "".join(char for char in value if char.isdigit())


def _text_of(payload: dict[str, Any]) -> str | None:
    if isinstance(payload.get("text"), dict):
        return str(payload["text"].get("body"))
    interactive = payload.get("interactive")
    if isinstance(interactive, dict):
        return str((interactive.get("body") or {}).get("text"))
    return None


def _buttons_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    action = (payload.get("interactive") or {}).get("action") or {}
    return [button.get("reply", {}) for button in action.get("buttons", [])]


def _rows_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    action = (payload.get("interactive") or {}).get("action") or {}
    return [row for section in action.get("sections", []) for row in section["rows"]]


def _fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(16)


def _json(
    body: Any, status: int = 200, background: BackgroundTask | None = None
) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(
        content,
        status_code=status,
        media_type="application/json; charset=UTF-8",
        background=background,
    )


async def _verify_callback(settings: Settings) -> str | None:
    """Meta's GET handshake: the callback must echo `hub.challenge` as plain text."""
    challenge = str(secrets.randbelow(10**10))
    params = {
        "hub.mode": "subscribe",
        "hub.challenge": challenge,
        "hub.verify_token": settings.verify_token,
    }
    try:
        async with httpx.AsyncClient(timeout=settings.delivery_timeout_s) as client:
            response = await client.get(settings.webhook_url, params=params)
    except httpx.HTTPError as error:
        return f"The callback URL could not be reached: {type(error).__name__}"
    if response.status_code != 200 or response.text != challenge:
        return (
            "The callback URL or verify token couldn't be validated. Please verify "
            "the provided information or try again later."
        )
    return None


async def _control_body(request: Request) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as error:
        return JSONResponse({"error": f"not JSON: {error}"}, 400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "expected a JSON object"}, 400)
    return body


# -- inbound message builders ----------------------------------------------------------


def _text_in(wa: WhatsAppSandbox, sender: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"text": {"body": str(event["text"])}, "type": "text"}


def _button_reply_in(
    wa: WhatsAppSandbox, sender: str, event: dict[str, Any]
) -> dict[str, Any]:
    return _interactive_in(wa, sender, "button_reply", event["button_reply"])


def _list_reply_in(
    wa: WhatsAppSandbox, sender: str, event: dict[str, Any]
) -> dict[str, Any]:
    return _interactive_in(wa, sender, "list_reply", event["list_reply"])


def _interactive_in(
    wa: WhatsAppSandbox, sender: str, kind: str, reply: Any
) -> dict[str, Any]:
    if not isinstance(reply, dict) or "id" not in reply:
        raise ValueError(f"{kind} must be an object with id and title")
    message: dict[str, Any] = _context(wa, sender, "interactive")
    message |= {"type": "interactive", "interactive": {"type": kind, kind: reply}}
    return message


def _quick_reply_in(
    wa: WhatsAppSandbox, sender: str, event: dict[str, Any]
) -> dict[str, Any]:
    button = event["button"]
    if not isinstance(button, dict) or "payload" not in button:
        raise ValueError("button must be an object with payload and text")
    message: dict[str, Any] = _context(wa, sender, "template")
    message |= {"type": "button", "button": button}
    return message


def _context(wa: WhatsAppSandbox, sender: str, kind: str) -> dict[str, Any]:
    """A reply points at the business message it answers, when there is one."""
    answered = wa.last_sent_to(sender, kind)
    if answered is None:
        return {}
    return {"context": {"from": wa.settings.display_phone_number, "id": answered.id}}


def _location_in(
    wa: WhatsAppSandbox, sender: str, event: dict[str, Any]
) -> dict[str, Any]:
    return {"location": event["location"], "type": "location"}


def _media_in(
    wa: WhatsAppSandbox, sender: str, event: dict[str, Any]
) -> dict[str, Any]:
    kind = str(event["media"])
    media = {
        "id": str(secrets.randbelow(10**15)),
        "sha256": secrets.token_urlsafe(32),
    }
    if kind == "voice":
        return {
            "type": "audio",
            "audio": media | {"mime_type": "audio/ogg; codecs=opus", "voice": True},
        }
    if kind in ("image", "sticker", "audio"):
        mime = {"image": "image/jpeg", "sticker": "image/webp", "audio": "audio/mpeg"}
        return {"type": kind, kind: media | {"mime_type": mime[kind]}}
    if kind == "unsupported":
        return {
            "type": "unsupported",
            "errors": [
                {
                    "code": 131051,
                    "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {
                        "details": "Message type is currently not supported."
                    },
                }
            ],
        }
    raise ValueError("media must be image, audio, voice, sticker or unsupported")


_INBOUND: dict[
    str, Callable[[WhatsAppSandbox, str, dict[str, Any]], dict[str, Any]]
] = {
    "text": _text_in,
    "button_reply": _button_reply_in,
    "list_reply": _list_reply_in,
    "button": _quick_reply_in,
    "location": _location_in,
    "media": _media_in,
}
