"""Scripted faults: make a method fail, slow down or time out for its next calls.

Bitrix24 methods take `Fault`; the messenger APIs take `MessengerFault`, which names
the platform it targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, Protocol, TypeVar

FaultKind = Literal[
    "error", "status", "html", "latency", "timeout_after_write", "redirect"
]
FAULT_KINDS: frozenset[str] = frozenset(
    {"error", "status", "html", "latency", "timeout_after_write", "redirect"}
)
DEFAULT_STATUS = {"error": 503, "status": 503, "html": 502, "redirect": 302}
# Kinds that shape a whole HTTP answer; a batch command can only fail or be slow.
HTTP_ONLY_KINDS: frozenset[str] = frozenset(
    {"status", "html", "timeout_after_write", "redirect"}
)


@dataclass
class Fault:
    """One scripted fault on a method (`*` matches every method) for `times` calls.

    - error: answer `{"error": code, "error_description": description}` with `status`;
    - status: answer `status` with `body` (JSON) as given;
    - html: answer `status` (default 502) with an HTML page, `text/html`;
    - latency: wait `seconds` before running the method, then answer normally;
    - timeout_after_write: run the method (the write happens), then wait `seconds`
      before answering, so a client with a shorter timeout never sees the result;
    - redirect: answer 302 with `Location` (a renamed portal) and a non-JSON body.

    Inside a batch only `error` (into `result_error`) and `latency` apply, unless
    `in_batch` is false; the other kinds wait for a direct call.
    """

    method: str
    kind: FaultKind
    times: int = 1
    status: int = 0  # 0: the kind's usual status (error 503, html 502, redirect 302)
    code: str = "QUERY_LIMIT_EXCEEDED"
    description: str = "Too many requests"
    seconds: float = 0.0
    body: Any = None
    location: str = ""
    in_batch: bool = True

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            kinds = ", ".join(sorted(FAULT_KINDS))
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {kinds})")
        if not isinstance(self.method, str) or not self.method:
            raise ValueError("fault needs a method name or '*'")
        if not isinstance(self.times, int) or self.times < 1:
            raise ValueError("times must be a positive integer")
        if self.status == 0:
            self.status = DEFAULT_STATUS.get(self.kind, 503)
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if not isinstance(self.seconds, int | float) or self.seconds < 0:
            raise ValueError("seconds must be a non-negative number")
        if self.kind == "redirect" and not self.location:
            raise ValueError("a redirect fault needs a location")
        self.method = self.method.lower()

    def matches(self, method: str) -> bool:
        return self.method in ("*", method)

    def rejects_whole_request(self) -> bool:
        """Faults a portal raises before `batch` runs its commands: the front end's
        limit (503), auth (401), transport pages. Method errors stay per command."""
        if self.kind in HTTP_ONLY_KINDS:
            return True
        return self.kind == "error" and (self.status == 401 or self.status >= 500)

    def applies_in_batch(self) -> bool:
        return self.in_batch and not self.rejects_whole_request()


class _Countdown(Protocol):
    times: int


F = TypeVar("F", bound=_Countdown)


@dataclass
class _Book(Generic[F]):
    """Scripted faults, taken in the order they were added, each for `times` calls."""

    faults: list[F] = field(default_factory=list)

    def add(self, fault: F) -> None:
        self.faults.append(fault)

    def describe(self) -> list[dict[str, Any]]:
        return [vars(fault).copy() for fault in self.faults]

    def clear(self) -> None:
        self.faults.clear()

    def _spend(self, applies: Callable[[F], bool]) -> F | None:
        """The first fault that applies, spending one of its uses."""
        for fault in self.faults:
            if applies(fault):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None


@dataclass
class FaultBook(_Book[Fault]):
    """Scripted faults for the Bitrix24 methods."""

    def take(self, method: str, *, in_batch: bool = False) -> Fault | None:
        """The first fault that applies to this call, spending one of its uses."""
        return self._spend(
            lambda fault: (
                fault.matches(method) and (not in_batch or fault.applies_in_batch())
            )
        )

    def take_for_batch(self, methods: list[str]) -> Fault | None:
        """A whole-request fault on any method a batch names, spending one use."""
        return self._spend(
            lambda fault: (
                fault.in_batch
                and fault.rejects_whole_request()
                and any(fault.matches(name) for name in methods)
            )
        )


@dataclass
class Stats:
    """What the sandbox received: HTTP requests and methods run, direct or batched."""

    http_requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    http_by_method: dict[str, int] = field(default_factory=dict)
    batch_by_method: dict[str, int] = field(default_factory=dict)
    rejected_rate_limit: int = 0

    def request(self, method: str) -> None:
        self.http_requests += 1
        self.http_by_method[method] = self.http_by_method.get(method, 0) + 1
        self.by_method[method] = self.by_method.get(method, 0) + 1

    def batch_command(self, method: str) -> None:
        self.batch_by_method[method] = self.batch_by_method.get(method, 0) + 1
        self.by_method[method] = self.by_method.get(method, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.http_requests,
            "by_method": dict(sorted(self.by_method.items())),
            "http_by_method": dict(sorted(self.http_by_method.items())),
            "batch_by_method": dict(sorted(self.batch_by_method.items())),
            "rejected_rate_limit": self.rejected_rate_limit,
        }

    def reset(self) -> None:
        self.http_requests = 0
        self.by_method.clear()
        self.http_by_method.clear()
        self.batch_by_method.clear()
        self.rejected_rate_limit = 0


# -- messenger faults ------------------------------------------------------------------

MESSENGER_TARGETS: frozenset[str] = frozenset({"telegram", "whatsapp"})
# The real errors each platform answers, by fault kind. Telegram: (HTTP status,
# description) as telegram-bot-api renders them (Client.cpp). WhatsApp: (HTTP
# status, Graph code, title, details) as the Cloud API answers them synchronously;
# Meta answers 400 for every send error except an invalid or expired token (401).
TELEGRAM_ERRORS: dict[str, tuple[int, str]] = {
    "blocked": (403, "Forbidden: bot was blocked by the user"),
    "deactivated": (403, "Forbidden: user is deactivated"),
    "kicked": (403, "Forbidden: bot was kicked from the group chat"),
    "cannot_initiate": (403, "Forbidden: bot can't initiate conversation with a user"),
    "chat_not_found": (400, "Bad Request: chat not found"),
    "query_too_old": (
        400,
        "Bad Request: query is too old and response timeout expired "
        "or query ID is invalid",
    ),
    "unauthorized": (401, "Unauthorized"),
    "server_error": (500, "Internal Server Error"),
}
WHATSAPP_ERRORS: dict[str, tuple[int, int, str, str]] = {
    "outside_window": (
        400,
        131047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the "
        "customer last replied to this number.",
    ),
    "undeliverable": (400, 131026, "Message Undeliverable", "Message Undeliverable."),
    "rate_limit": (
        400,
        130429,
        "Rate limit hit",
        "Cloud API message throughput has been reached.",
    ),
    "pair_rate_limit": (
        400,
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this "
        "phone number to the same phone number in a short period of time.",
    ),
    "spam_rate_limit": (
        400,
        131048,
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages "
        "can be sent from this phone number.",
    ),
    "experiment": (
        400,
        130472,
        "User's number is part of an experiment",
        "Failed to send message because this user's phone number is part of an "
        "experiment",
    ),
    "expired_token": (401, 190, "", ""),
    "server_error": (500, 131000, "Something went wrong", "Something went wrong."),
    "service_unavailable": (
        503,
        131016,
        "Service unavailable",
        "A service is temporarily unavailable.",
    ),
}
# Kinds every messenger target knows beside its own errors.
COMMON_MESSENGER_KINDS = frozenset({"error", "bad_gateway", "latency"})


@dataclass
class MessengerFault:
    """One scripted fault on a messenger API for its next `times` matching calls.

    `method` is a Bot API method (`sendMessage`, any case) or, for WhatsApp,
    `messages`; `recipient` a Telegram chat id or a WhatsApp `to`; `*` matches any.
    Kinds: the platform's named errors (TELEGRAM_ERRORS, WHATSAPP_ERRORS);
    `retry_after` (Telegram 429 with `parameters.retry_after`); `error` (any status,
    with `description`, or for WhatsApp `code`, `description` and `details`);
    `bad_gateway` (the proxy's HTML 502 page); `latency` (wait `seconds`, then answer
    normally). `as_status` (WhatsApp) accepts the send and reports the error later
    as a `failed` status webhook, as Meta mostly does with 131047 and 131026.
    """

    target: str
    kind: str
    method: str = "*"
    recipient: str = "*"
    times: int = 1
    retry_after: int = 5
    seconds: float = 0.0
    status: int = 0
    code: int = 0
    description: str = ""
    details: str = ""
    as_status: bool = False

    def __post_init__(self) -> None:
        if self.target not in MESSENGER_TARGETS:
            raise ValueError(f"unknown fault target {self.target!r}")
        known = COMMON_MESSENGER_KINDS | set(_named_errors(self.target))
        if self.target == "telegram":
            known |= {"retry_after"}
        if self.kind not in known:
            kinds = ", ".join(sorted(known))
            raise ValueError(
                f"unknown {self.target} fault kind {self.kind!r} ({kinds})"
            )
        if not isinstance(self.times, int) or self.times < 1:
            raise ValueError("times must be a positive integer")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise ValueError("retry_after must be a non-negative integer")
        if not isinstance(self.seconds, int | float) or self.seconds < 0:
            raise ValueError("seconds must be a non-negative number")
        if self.status and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.as_status and (self.target != "whatsapp" or self.kind in _NOT_STATUS):
            raise ValueError("as_status applies to WhatsApp send errors only")
        self.method = self.method.lower()
        self.recipient = str(self.recipient)

    def matches(self, target: str, method: str, recipient: str) -> bool:
        return (
            self.target == target
            and self.method in ("*", method.lower())
            and self.recipient in ("*", recipient)
        )


_NOT_STATUS = frozenset({"bad_gateway", "latency", "expired_token"})


def _named_errors(target: str) -> frozenset[str]:
    return frozenset(TELEGRAM_ERRORS if target == "telegram" else WHATSAPP_ERRORS)


def messenger_fault(entry: dict[str, Any]) -> MessengerFault:
    """A fault from its JSON form; unknown fields are refused with the known ones."""
    known = {item.name for item in fields(MessengerFault)}
    unknown = sorted(set(entry) - known)
    if unknown:
        listed = ", ".join(sorted(known))
        raise ValueError(
            f"unknown fault fields: {', '.join(unknown)} (known: {listed})"
        )
    return MessengerFault(**entry)


@dataclass
class MessengerFaultBook(_Book[MessengerFault]):
    """Scripted faults for the messenger APIs."""

    def take(self, target: str, method: str, recipient: str) -> MessengerFault | None:
        """The first fault for this call, spending one of its uses."""
        return self._spend(lambda fault: fault.matches(target, method, recipient))


# What a proxy in front of an API answers when the API behind it is down.
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
