"""Runs methods the way `CRestServer` does: auth, scope, operating limit, method."""

from __future__ import annotations

import logging
import time
from typing import Any

from sandbox import protocol
from sandbox.faults import FaultBook, Stats
from sandbox.limits import OPERATING_LIMIT_S, OperatingLimiter, RateLimiter
from sandbox.phpform import intval, lower_keys
from sandbox.protocol import MethodResult, RestError, Timing
from sandbox.registry import Auth, Call, MethodSpec
from sandbox.state import ALL_SCOPES, Portal

logger = logging.getLogger(__name__)

# Parameters the REST server strips before the method sees them (§1.2).
STRIPPED_PARAMS = ("auth", "access_token", "aplogin", "ap", "auth_connector", "state")


class Sandbox:
    """One emulated portal with its limits, faults and counters."""

    def __init__(self, portal: Portal, rate_plan: str = "standard") -> None:
        self.portal = portal
        self.start_plan = rate_plan
        self.limiter = RateLimiter(rate_plan)
        self.operating = OperatingLimiter()
        self.faults = FaultBook()
        self.stats = Stats()

    # -- auth -------------------------------------------------------------------------

    def webhook_auth(self, user_id: str, token: str) -> Auth:
        try:
            key = (int(user_id), token)
        except ValueError:
            raise protocol.invalid_credentials() from None
        hook = self.portal.webhooks.get(key)
        if hook is None:
            raise protocol.invalid_credentials()
        return Auth(
            hook.user_id,
            "webhook",
            hook.scopes,
            f"webhook:{hook.user_id}",
            password_id=f"webhook:{hook.user_id}:{hook.token}",
        )

    def oauth_auth(self, access_token: str | None) -> Auth:
        if not access_token:
            raise protocol.no_auth_found()
        token = self.portal.oauth_tokens.get(access_token)
        if token is None:
            raise protocol.invalid_token()
        if token.expires_at <= time.time():
            raise protocol.expired_token()
        return Auth(token.user_id, "oauth", token.scopes, token.client_id)

    # -- running one method -----------------------------------------------------------

    def prepare_params(
        self, spec: MethodSpec, params: dict[str, Any]
    ) -> dict[str, Any]:
        cleaned = {
            k: v for k, v in params.items() if k not in STRIPPED_PARAMS and k != "start"
        }
        if spec.upper_query:
            cleaned = _upper_keys(cleaned)
        return cleaned

    def check_access(self, spec: MethodSpec, auth: Auth, in_batch: bool) -> None:
        if spec.scope is not None and not _has_scope(auth.scopes, spec.scope):
            raise protocol.insufficient_scope(auth.kind == "webhook", in_batch)
        if not spec.webhook_allowed and auth.kind == "webhook":
            raise protocol.wrong_auth_type()

    def invoke(
        self,
        spec: MethodSpec,
        params: dict[str, Any],
        auth: Auth,
        *,
        in_batch: bool = False,
        extra_seconds: float = 0.0,
    ) -> tuple[MethodResult, Timing]:
        """Check access and the operating limit, run the method, charge its time."""
        self.check_access(spec, auth, in_batch)
        if self.operating.blocked(spec.name, auth.limit_key):
            raise protocol.operation_time_limit()

        started = time.time()
        clock = time.perf_counter()
        call = Call(
            spec.name,
            self.prepare_params(spec, params),
            self.portal,
            auth,
            in_batch=in_batch,
            start=intval(params.get("start")),
        )
        outcome = _run_handler(spec, call)
        seconds = time.perf_counter() - clock + extra_seconds

        self.operating.record(spec.name, auth.limit_key, seconds)
        timing = Timing(
            started=started,
            finished=started + seconds,
            operating=round(self.operating.spent(spec.name, auth.limit_key), 6),
            operating_reset_at=self.operating.reset_at(spec.name, auth.limit_key),
        )
        return outcome, timing

    def reset_counters(self) -> None:
        """Back to the limits the sandbox started with, nothing counted, no faults."""
        self.limiter.set_plan(self.start_plan)
        self.operating.reset()
        self.operating.limit_s = OPERATING_LIMIT_S
        self.faults.clear()
        self.stats.reset()


def _run_handler(spec: MethodSpec, call: Call) -> MethodResult:
    try:
        return spec.handler(call)
    except RestError:
        raise
    except Exception as error:
        # The portal answers ERROR_CORE with the exception text; here it is a sandbox
        # bug, so it is logged with its traceback and answered as a server failure.
        logger.exception("sandbox.method_crashed method=%s", spec.name)
        raise RestError(
            "ERROR_CORE", str(error) or type(error).__name__, 500
        ) from error


def _has_scope(held: frozenset[str], needed: str) -> bool:
    if needed in held:
        return True
    # A webhook with `user` also answers the narrower user scopes.
    return needed in ("user_basic", "user_brief") and "user" in held


def _upper_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).upper(): _upper_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_upper_keys(v) for v in value]
    return value


def default_portal_scopes() -> frozenset[str]:
    return ALL_SCOPES


__all__ = ["RestError", "Sandbox", "lower_keys"]
