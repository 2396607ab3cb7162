"""Methods that need no scope: `server.time`, `profile`, `scope`, `methods`, `app.info`."""

from __future__ import annotations

from datetime import datetime

from sandbox.registry import REGISTRY, Call, method
from sandbox.protocol import MethodResult


@method("server.time", scope=None)
def server_time(call: Call) -> MethodResult:
    return MethodResult(datetime.now(call.portal.zone).replace(microsecond=0).isoformat())


@method("batch", scope=None)
def batch_placeholder(call: Call) -> MethodResult:
    # `batch` is run by the server itself (sandbox.batch); registered so it exists.
    raise RuntimeError("batch is dispatched by the server")


@method("scope", scope=None)
def scope(call: Call) -> MethodResult:
    return MethodResult(sorted(call.auth.scopes))


@method("methods", scope=None)
def methods(call: Call) -> MethodResult:
    return MethodResult(sorted(REGISTRY))
