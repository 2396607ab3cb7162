"""Every way a Bitrix24 call can fail, as one exception tree.

Callers catch these classes, never httpx's or the portal's codes::

    Bitrix24Error
    ├── Unavailable              transport failure, 5xx, HTML or other non-JSON answer
    ├── RateLimited              503 QUERY_LIMIT_EXCEEDED: refused before anything ran
    │   └── OperationTimeLimited 429 OPERATION_TIME_LIMIT: one method, until `reset_at`
    ├── AuthFailed               credentials, rights or the portal's state
    │   ├── ExpiredToken         the OAuth access token expired: refresh, replay once
    │   ├── InvalidCredentials   webhook code, token or app unknown: fix the settings
    │   ├── InsufficientScope    scope or rights missing for this method
    │   ├── PortalBlocked        the portal is blocked, unpaid or deleted: alert
    │   └── ReauthorizationRequired  the refresh token was refused: re-install the app
    ├── Rejected                 the portal refused this request as it stands
    │   └── UnknownField         a key the entity does not have (checked before sending)
    ├── NotFound                 the addressed record does not exist
    ├── WriteOutcomeUnknown      a write may or may not have happened: reconcile first
    └── IncompletePull           a pull could not prove it saw every row

`map_error` turns an HTTP status and a decoded body into one of them. Codes are matched,
never texts: the portal's wording differs between versions.
"""

from __future__ import annotations

from collections.abc import Mapping

# Descriptions reach logs and alerts; the portal's texts are short, but ERROR_CORE may
# carry a whole exception message.
_DESCRIPTION_LIMIT = 300


class Bitrix24Error(Exception):
    """Base of every gateway error: the portal's code, its text and the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        description: str = "",
        status: int | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.description = description
        self.status = status
        self.method = method


class Unavailable(Bitrix24Error):
    """No usable answer: connection failure, timeout, 5xx, an HTML or empty page.

    `sent` is False when the request surely never reached the portal (the connection
    was refused or never opened), so even a write may be sent again.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        description: str = "",
        status: int | None = None,
        method: str | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(
            message, code=code, description=description, status=status, method=method
        )
        self.sent = sent


class RateLimited(Bitrix24Error):
    """The portal's front end refused the request before any method ran."""


class OperationTimeLimited(RateLimited):
    """One method used up its operating time; it is blocked until `reset_at` (Unix s).

    The portal sends no reset time with the error itself: `reset_at` is the last
    `operating_reset_at` seen for the method, or None when none was seen.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        description: str = "",
        status: int | None = None,
        method: str | None = None,
        reset_at: float | None = None,
    ) -> None:
        super().__init__(
            message, code=code, description=description, status=status, method=method
        )
        self.reset_at = reset_at


class AuthFailed(Bitrix24Error):
    """Authentication or authorisation failed before the method ran."""


class ExpiredToken(AuthFailed):
    """The OAuth access token expired; a refresh and one replay may help."""


class InvalidCredentials(AuthFailed):
    """The webhook code, access token, app or user is not accepted."""


class InsufficientScope(AuthFailed):
    """The webhook or app lacks a scope, the right auth type or the user's rights."""


class PortalBlocked(AuthFailed):
    """The portal refuses every REST call: blocked, unpaid, free plan or deleted."""


class ReauthorizationRequired(AuthFailed):
    """The auth server refused the refresh token: re-authorise the app on the portal."""


class Rejected(Bitrix24Error):
    """The portal refused this request; sending it again unchanged cannot help."""


class UnknownField(Rejected):
    """A filter, select or fields key the entity does not have, in this exact case.

    Legacy list methods drop such keys silently and return more rows than asked for,
    so the gateway checks keys against `*.fields` before sending.
    """


class NotFound(Bitrix24Error):
    """The record addressed by the call does not exist (any more)."""


class WriteOutcomeUnknown(Bitrix24Error):
    """A write was sent but no answer proves whether it happened.

    Never retried blindly: the idempotent layer looks the record up by its key first.
    """


class IncompletePull(Bitrix24Error):
    """A keyset pull met pages it cannot trust: rows may be missing."""


AUTH_CODES: dict[str, type[AuthFailed]] = {
    "EXPIRED_TOKEN": ExpiredToken,
    "NO_AUTH_FOUND": InvalidCredentials,
    "INVALID_CREDENTIALS": InvalidCredentials,
    "INVALID_TOKEN": InvalidCredentials,
    "AUTHORIZATION_ERROR": InvalidCredentials,  # the user behind the token is inactive
    "APPLICATION_NOT_FOUND": InvalidCredentials,
    "INVALID_CLIENT": InvalidCredentials,  # auth server: client_id or secret wrong
    "INSUFFICIENT_SCOPE": InsufficientScope,
    "INVALID_SCOPE": InsufficientScope,  # auth server
    "USER_ACCESS_ERROR": InsufficientScope,
    "WRONG_AUTH_TYPE": InsufficientScope,
    "METHOD_CONFIRM_DENIED": InsufficientScope,
    "METHOD_CONFIRM_WAITING": AuthFailed,  # an administrator has to confirm the method
    "INVALID_REQUEST": AuthFailed,  # "Https required." (or a malformed token request)
    "OVERLOAD_LIMIT": PortalBlocked,
    "PAYMENT_REQUIRED": PortalBlocked,
    "PORTAL_DELETED": PortalBlocked,
    "INVALID_GRANT": ReauthorizationRequired,  # auth server: refresh token spent
}

OTHER_CODES: dict[str, type[Bitrix24Error]] = {
    "QUERY_LIMIT_EXCEEDED": RateLimited,
    "OPERATION_TIME_LIMIT": OperationTimeLimited,
    # The docs list these two as 500s; the 2026 server code never raises them.
    "CONNECTION_ERROR": Unavailable,  # the portal could not reach its auth server
    "INTERNAL_SERVER_ERROR": Unavailable,
    "ERROR_UNEXPECTED_ANSWER": Unavailable,
    "NOT_FOUND": NotFound,
    "OWNER_NOT_FOUND": NotFound,
    "ERROR_EVENT_NOT_FOUND": NotFound,
    "ERROR_METHOD_NOT_FOUND": Rejected,  # a method, not a record: no module or a typo
    "ACCESS_DENIED": Rejected,  # 401 means the plan has no REST at all: see map_error
    "WRONG_LICENSE": Rejected,
    "ERROR_CORE": Rejected,  # 5xx ("SQL query error!") is a server failure: map_error
    "ERROR_ARGUMENT": Rejected,
    "INVALID_ARG_VALUE": Rejected,
    "CRM_FIELD_ERROR_VALUE_NOT_VALID": Rejected,
    "WRONG_DATETIME_FORMAT": Rejected,
    "ENTITY_TYPE_NOT_SUPPORTED": Rejected,
    "ERROR_WRONG_HANDLER_URL": Rejected,
    "ERROR_UNSUPPORTED_PROTOCOL": Rejected,
    "ERROR_HANDLER_ALREADY_EXIST": Rejected,
    "ERROR_BATCH_LENGTH_EXCEEDED": Rejected,
    "ERROR_BATCH_METHOD_NOT_ALLOWED": Rejected,
    "INTERNAL_WRONG_TRANSPORT": Rejected,
    "WRONG_ENCODING": Rejected,
}

# Unavailable, yet answered by the auth layer before any method ran: safe to resend.
_REFUSED_BEFORE_RUNNING = frozenset({"CONNECTION_ERROR"})


def map_error(
    status: int | None, body: object, *, method: str | None = None
) -> Bitrix24Error:
    """The gateway error for an answer that is not a success.

    `status` is None for a command inside a batch (its errors carry no status).
    `body` is the decoded JSON, or None (or anything else) when the answer was not a
    JSON object: an HTML page from a proxy, an empty body, a truncated answer.
    """
    if not isinstance(body, Mapping) or "error" not in body:
        return _without_code(status, method)

    code = str(body["error"])
    description = str(body.get("error_description") or "")[:_DESCRIPTION_LIMIT]
    cls = _class_for(code, description, status)
    status_text = f" (HTTP {status})" if status is not None else ""
    message = f"{method or 'call'}: {code or 'error'}{status_text}: {description}"
    if code.upper() in _REFUSED_BEFORE_RUNNING:
        return Unavailable(
            message,
            code=code,
            description=description,
            status=status,
            method=method,
            sent=False,
        )
    return cls(
        message, code=code, description=description, status=status, method=method
    )


def _class_for(code: str, description: str, status: int | None) -> type[Bitrix24Error]:
    key = code.upper()
    if key == "":
        # Legacy CRM methods put their error in the description only.
        if description.strip().rstrip(".").lower() == "not found":
            return NotFound
        return Rejected
    if key == "ACCESS_DENIED" and status == 401:
        return PortalBlocked  # "REST is available only on commercial plans."
    if key == "ERROR_CORE" and status is not None and status >= 500:
        return Unavailable
    if key in AUTH_CODES:
        return AUTH_CODES[key]
    if key in OTHER_CODES:
        return OTHER_CODES[key]
    return _by_status(status)


def _by_status(status: int | None) -> type[Bitrix24Error]:
    if status is None:
        return Rejected
    if status == 401:
        return AuthFailed
    if status == 403:
        return Rejected
    if status == 404:
        return NotFound
    if status == 429:
        return OperationTimeLimited
    if status >= 500:
        return Unavailable
    return Rejected


def _without_code(status: int | None, method: str | None) -> Bitrix24Error:
    where = method or "call"
    if status == 429:
        # fast_bitrix24#216: some portals answer the operating limit with an HTML page.
        return OperationTimeLimited(
            f"{where}: HTTP 429 without a JSON body", status=429, method=method
        )
    shown = f"HTTP {status}" if status is not None else "no status"
    return Unavailable(
        f"{where}: {shown}, not a Bitrix24 JSON answer", status=status, method=method
    )
