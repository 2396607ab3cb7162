"""Test-only methods that show what the REST layer handed a method.

Registered into the live registry for the length of one test, so the protocol
suite can see the merged, stripped parameters without depending on CRM methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sandbox.phpform import intval
from sandbox.protocol import MethodResult, legacy_not_found
from sandbox.registry import REGISTRY, Call, MethodSpec

ECHO = "test.echo"
ECHO_CRM = "test.echo.crm"
ECHO_APP_ONLY = "test.echo.apponly"
MISSING = "test.missing"
CRASH = "test.crash"


def _echo(call: Call) -> MethodResult:
    """`reply` (with `total`/`next`) is answered as the result; else the call itself."""
    params = call.params
    if "reply" in params:
        return MethodResult(
            params["reply"],
            total=intval(params["total"]) if "total" in params else None,
            next=intval(params["next"]) if "next" in params else None,
        )
    described: dict[str, Any] = {
        "params": params,
        "start": call.start,
        "user_id": call.user_id,
        "auth_kind": call.auth.kind,
        "in_batch": call.in_batch,
    }
    return MethodResult(described)


def _missing(call: Call) -> MethodResult:
    raise legacy_not_found()


def _crash(call: Call) -> MethodResult:
    raise KeyError("NO_SUCH_FIELD")


_SPECS = (
    MethodSpec(ECHO, _echo, None),
    MethodSpec(ECHO_CRM, _echo, "crm"),
    MethodSpec(ECHO_APP_ONLY, _echo, None, webhook_allowed=False),
    MethodSpec(MISSING, _missing, None),
    MethodSpec(CRASH, _crash, None),
)


@contextlib.contextmanager
def echo_methods() -> Iterator[None]:
    """Register the test methods, and remove them again afterwards."""
    for spec in _SPECS:
        REGISTRY[spec.name] = spec
    try:
        yield
    finally:
        for spec in _SPECS:
            REGISTRY.pop(spec.name, None)
