"""`event.bind`, `event.get`, `event.unbind`: who receives the portal's events.

The whole query is upper-cased (`event`, `EVENT` and `Event` all work). Two
deliberate departures from the portal, so local development works: loopback and
dot-less handler hosts (`http://127.0.0.1:9000/hook`, `http://localhost/hook`) are
accepted, and webhooks may bind as well as apps (the portal answers
`WRONG_AUTH_TYPE` and wants the "Outgoing webhook" UI instead).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sandbox.events import BINDINGS_TABLE, EVENT_SCOPES, bindings
from sandbox.methods.users import ADMIN_USER_ID
from sandbox.phpform import intval
from sandbox.protocol import MethodResult, RestError, argument_error, core_error
from sandbox.registry import Call, method


def event_not_found() -> RestError:
    return RestError("ERROR_EVENT_NOT_FOUND", "Event not found", 400)


def wrong_handler_url() -> RestError:
    return RestError("ERROR_WRONG_HANDLER_URL", "Wrong handler URL", 400)


def unsupported_protocol() -> RestError:
    return RestError(
        "ERROR_UNSUPPORTED_PROTOCOL", "Unsupported event handler protocol", 400
    )


@method("event.bind", scope=None, upper_query=True)
def event_bind(call: Call) -> MethodResult:
    event = _event_name(call)
    offline = _is_offline(call.params)
    handler = "" if offline else _handler_url(call.params.get("HANDLER"))
    auth_type = str(intval(call.params.get("AUTH_TYPE")))
    if offline and call.user_id != ADMIN_USER_ID:
        raise RestError("ACCESS_DENIED", "Access denied! Admin rights required", 403)

    table = call.portal.table(BINDINGS_TABLE)
    for bound in bindings(call.portal):
        same = (
            bound["EVENT"],
            bound["HANDLER"],
            bound["AUTH_TYPE"],
            bound["CLIENT_ID"],
        )
        if same == (event, handler, auth_type, call.auth.client_id):
            raise core_error("Unable to set event handler: Handler already binded")

    row_id = table.allocate_id()
    row: dict[str, Any] = {
        "ID": str(row_id),
        "EVENT": event,
        "HANDLER": handler,
        "AUTH_TYPE": auth_type,
        "OFFLINE": 1 if offline else 0,
        "CLIENT_ID": call.auth.client_id,
        "USER_ID": str(call.user_id),
        "AUTH_KIND": call.auth.kind,
        "SCOPE": ",".join(sorted(call.auth.scopes)),
    }
    table.insert(row, row_id)
    return MethodResult(True)


@method("event.get", scope=None, upper_query=True)
def event_get(call: Call) -> MethodResult:
    own = [
        row for row in bindings(call.portal) if row["CLIENT_ID"] == call.auth.client_id
    ]
    return MethodResult(
        [
            {
                "event": row["EVENT"],
                "handler": row["HANDLER"],
                "auth_type": row["AUTH_TYPE"],
                "offline": row["OFFLINE"],
            }
            for row in own
        ]
    )


@method("event.unbind", scope=None, upper_query=True)
def event_unbind(call: Call) -> MethodResult:
    event = str(call.params.get("EVENT") or "").upper()
    if not event:
        raise argument_error("Argument 'EVENT' is null or empty", "EVENT")
    offline = _is_offline(call.params)
    handler = call.params.get("HANDLER")
    if not offline and not handler:
        raise argument_error("Argument 'HANDLER' is null or empty", "HANDLER")

    matches = []
    for row in bindings(call.portal):
        if row["CLIENT_ID"] != call.auth.client_id or row["EVENT"] != event:
            continue
        if bool(row["OFFLINE"]) != offline:
            continue
        if not offline and row["HANDLER"] != handler:
            continue
        if "AUTH_TYPE" in call.params and row["AUTH_TYPE"] != str(
            intval(call.params["AUTH_TYPE"])
        ):
            continue
        matches.append(int(row["ID"]))

    table = call.portal.table(BINDINGS_TABLE)
    for row_id in matches:
        table.delete(row_id)
    return MethodResult({"count": len(matches)})


def _event_name(call: Call) -> str:
    event = str(call.params.get("EVENT") or "").upper()
    if event not in EVENT_SCOPES:
        raise event_not_found()
    scope = EVENT_SCOPES[event]
    # An event belongs to a scope: an app without it cannot see the event at all.
    if scope is not None and scope not in call.auth.scopes:
        raise event_not_found()
    return event


def _is_offline(params: dict[str, Any]) -> bool:
    return str(params.get("EVENT_TYPE") or "online").lower() == "offline"


def _handler_url(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise wrong_handler_url()
    handler = raw.strip()
    parts = urlsplit(handler)
    if parts.scheme.lower() not in ("http", "https"):
        if parts.scheme and parts.netloc:
            raise unsupported_protocol()
        raise wrong_handler_url()
    if not parts.hostname or not _handler_host_allowed(parts.hostname):
        raise wrong_handler_url()
    return handler


def _handler_host_allowed(host: str) -> bool:
    # The portal wants a host with a dot; unlike it, the sandbox also allows loopback
    # (`localhost`, 127.x, ::1) so local services can receive events.
    return "." in host or host in ("localhost", "::1")
