"""Scripted faults: make a method fail, slow down or time out for its next calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass
class FaultBook:
    faults: list[Fault] = field(default_factory=list)

    def add(self, fault: Fault) -> None:
        self.faults.append(fault)

    def take(self, method: str, *, in_batch: bool = False) -> Fault | None:
        """The first fault that applies to this call, spending one of its uses."""
        for fault in self.faults:
            if not fault.matches(method) or (in_batch and not fault.applies_in_batch()):
                continue
            fault.times -= 1
            if fault.times <= 0:
                self.faults.remove(fault)
            return fault
        return None

    def take_for_batch(self, methods: list[str]) -> Fault | None:
        """A whole-request fault on any method a batch names, spending one use."""
        for fault in self.faults:
            if not fault.in_batch or not fault.rejects_whole_request():
                continue
            if any(fault.matches(name) for name in methods):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def describe(self) -> list[dict[str, Any]]:
        return [vars(fault).copy() for fault in self.faults]

    def clear(self) -> None:
        self.faults.clear()


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
