"""The wire envelope and the error codes, as the Bitrix24 server renders them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo


class RestError(Exception):
    """An error answer: `{"error": code, "error_description": text}` with a status."""

    def __init__(
        self,
        code: str,
        description: str,
        status: int = 400,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.description, **self.extra}


# Constructors for the errors the server code raises (reference/bitrix24.md §5).
def method_not_found() -> RestError:
    return RestError("ERROR_METHOD_NOT_FOUND", "Method not found!", 404)


def no_auth_found() -> RestError:
    return RestError("NO_AUTH_FOUND", "Wrong authorization data", 401)


def invalid_credentials() -> RestError:
    return RestError("INVALID_CREDENTIALS", "Invalid request credentials", 401)


def expired_token() -> RestError:
    return RestError("expired_token", "The access token provided has expired", 401)


def invalid_token() -> RestError:
    return RestError("invalid_token", "Unable to get application by token", 401)


def insufficient_scope(webhook: bool, in_batch: bool = False) -> RestError:
    if in_batch:
        return RestError("insufficient_scope", "", 401)
    holder = "webhook token" if webhook else "access token"
    return RestError(
        "insufficient_scope",
        f"The request requires higher privileges than provided by the {holder}",
        401,
    )


def wrong_auth_type() -> RestError:
    return RestError(
        "WRONG_AUTH_TYPE", "Current authorization type is denied for this method", 403
    )


def query_limit_exceeded() -> RestError:
    return RestError("QUERY_LIMIT_EXCEEDED", "Too many requests", 503)


def operation_time_limit() -> RestError:
    return RestError(
        "OPERATION_TIME_LIMIT", "Method is blocked due to operation time limit.", 429
    )


def wrong_transport() -> RestError:
    return RestError("INTERNAL_WRONG_TRANSPORT", "Wrong transport!", 500)


def legacy_error(description: str) -> RestError:
    """Legacy CRM method errors carry an empty code and the text (HTTP 400)."""
    return RestError("", description, 400)


def legacy_not_found() -> RestError:
    return legacy_error("Not found")


def engine_error(code: str, description: str) -> RestError:
    return RestError(code, description, 400)


def missing_parameter(name: str) -> RestError:
    return RestError("100", f"Could not find value for parameter {{{name}}}", 400)


def argument_error(description: str, argument: str) -> RestError:
    return RestError("ERROR_ARGUMENT", description, 400, {"argument": argument})


def core_error(description: str) -> RestError:
    return RestError("ERROR_CORE", description, 400)


@dataclass
class MethodResult:
    """What a method returns: the result and, for lists, `total` and `next`."""

    result: Any
    total: int | None = None
    next: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timing:
    """Wall-clock timing of one call, rendered as the `time` block."""

    started: float
    finished: float
    operating: float = 0.0
    operating_reset_at: int | None = None

    def block(self, zone: ZoneInfo) -> dict[str, Any]:
        duration = self.finished - self.started
        block: dict[str, Any] = {
            "start": int(self.started),
            "finish": self.finished,
            "duration": duration,
            "processing": int(duration),
            "date_start": iso_in_zone(self.started, zone),
            "date_finish": iso_in_zone(self.finished, zone),
        }
        if self.operating_reset_at is not None:
            block["operating_reset_at"] = self.operating_reset_at
        block["operating"] = self.operating
        return block


def now() -> float:
    return time.time()


def iso_in_zone(timestamp: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(int(timestamp), zone).isoformat()


def envelope(outcome: MethodResult, timing: Timing, zone: ZoneInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"result": outcome.result}
    if outcome.total is not None:
        body["total"] = outcome.total
    if outcome.next is not None:
        body["next"] = outcome.next
    body.update(outcome.extra)
    body["time"] = timing.block(zone)
    return body
