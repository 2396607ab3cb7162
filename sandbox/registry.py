"""The method table: each REST method is a small function registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sandbox.protocol import MethodResult

if TYPE_CHECKING:
    from sandbox.state import Portal

AuthKind = Literal["webhook", "oauth"]


@dataclass
class Auth:
    """Who is calling: the user, how they authenticated and which scopes they hold."""

    user_id: int
    kind: AuthKind
    scopes: frozenset[str]
    client_id: str = "webhook"
    # Which inbound webhook, when it is one: the operating limit counts per webhook.
    password_id: str = ""

    @property
    def limit_key(self) -> str:
        """Whose time the operating limit counts: the app, or else the webhook."""
        return self.password_id or self.client_id


@dataclass
class Call:
    """One method invocation, direct or inside a batch."""

    method: str
    params: dict[str, Any]
    portal: Portal
    auth: Auth
    in_batch: bool = False
    operating_extra: float = field(default=0.0)
    # The REST server takes `start` out of the parameters with intval before the
    # method runs (`CRestServer::processCall`); 0 when absent.
    start: int = 0

    @property
    def user_id(self) -> int:
        return self.auth.user_id


Handler = Callable[[Call], MethodResult]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    handler: Handler
    scope: str | None
    webhook_allowed: bool = True
    upper_query: bool = False


REGISTRY: dict[str, MethodSpec] = {}


def method(
    name: str,
    *,
    scope: str | None,
    webhook_allowed: bool = True,
    upper_query: bool = False,
) -> Callable[[Handler], Handler]:
    """Register a handler under a method name, stored lower-case as the server looks up.

    `upper_query` marks methods whose whole query is upper-cased (`user.get`, `event.*`)
    before they see it.
    """

    def register(handler: Handler) -> Handler:
        key = name.lower()
        if key in REGISTRY:
            raise RuntimeError(f"method {name} registered twice")
        REGISTRY[key] = MethodSpec(key, handler, scope, webhook_allowed, upper_query)
        return handler

    return register


def lookup(name: str) -> MethodSpec | None:
    return REGISTRY.get(name.lower())
