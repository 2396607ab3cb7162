"""The one door to a Bitrix24 portal: `call`, `batch`, retries that never duplicate.

A request is sent again only when the portal surely did not act on it, or when it
only reads:

| failure                                 | read        | write               |
|-----------------------------------------|-------------|---------------------|
| 503 QUERY_LIMIT_EXCEEDED (front end)    | back off    | back off            |
| connection refused / never opened       | back off for up to 60 s           |
| 301/302 of a renamed portal             | follow to the new host (2 hops)   |
| 429 OPERATION_TIME_LIMIT                | wait for the method's reset if known, near |
| 401 expired_token (OAuth)               | refresh once, replay once         |
| timeout, 5xx, HTML page, broken answer  | back off    | WriteOutcomeUnknown |
| anything else                           | raise       | raise               |

Backoff doubles from 0.5 s up to 8 s with up to 50 % jitter, at most 5 attempts that
reached the portal. Attempts that never left (the connection was refused) are bounded
by time instead, measured on the injected clock, so a portal restarting for half a
minute is waited out. Every HTTP request first takes a slot from the portal's shared
rate limiter.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx
import structlog

from app.metrics import (
    BITRIX24_CALL_SECONDS,
    BITRIX24_CALLS,
    BITRIX24_RATE_LIMIT_WAIT_SECONDS,
    error_label,
    method_group,
)
from connectors.bitrix24.auth import Credentials, Endpoint
from connectors.bitrix24.encoding import (
    Encoder,
    Wire,
    batch_command,
    to_json_body,
)
from connectors.bitrix24.errors import (
    Bitrix24Error,
    ExpiredToken,
    OperationTimeLimited,
    RateLimited,
    Unavailable,
    WriteOutcomeUnknown,
    map_error,
)
from connectors.bitrix24.ratelimit import NoRateLimit, RequestLimiter

log = structlog.stdlib.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

_JITTER = secrets.SystemRandom()
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A renamed portal answers these from its old host and runs nothing there (§1.1);
# they are followed. Any other 3xx is no answer of a portal: nothing ran either.
_REDIRECTS = frozenset({301, 302, 307, 308})
MAX_BATCH_COMMANDS = 50  # the 51st and later answer ERROR_BATCH_LENGTH_EXCEEDED

# Methods that only read. Anything not recognised counts as a write, the safe side.
_READ_SUFFIXES = (".list", ".get", ".fields", ".getfields")
_READ_METHODS = frozenset(
    {
        "server.time",
        "user.current",
        "profile",
        "app.info",
        "scope",
        "methods",
        "crm.duplicate.findbycomm",
        "crm.settings.mode.get",
    }
)
# event.offline.get deletes the events it returns (clear=1 by default): a lost answer
# loses them, so it is never sent twice.
_NOT_READS = frozenset({"event.offline.get"})


def is_read(method: str) -> bool:
    """True when sending the method twice cannot change anything on the portal."""
    name = method.lower()
    if name in _NOT_READS:
        return False
    return name in _READ_METHODS or name.endswith(_READ_SUFFIXES)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is sent again."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    # A method blocked by the operating limit is waited for only this long; beyond
    # it the caller gets OperationTimeLimited with `reset_at` and can defer the job.
    operating_wait_max_s: float = 60.0
    # Requests that never left (connection refused or never opened) are sent again
    # until this long after the first such failure, whatever `attempts` says: long
    # enough to ride out a portal or proxy restart of half a minute.
    unavailable_for_s: float = 60.0
    # Redirects of a renamed portal followed for one request.
    redirects: int = 2

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay_s <= 0:
            raise ValueError("a retry policy needs an attempt and a positive delay")
        if self.unavailable_for_s < 0 or self.redirects < 0:
            raise ValueError("unavailable_for_s and redirects cannot be negative")

    def delay(self, retry: int, jitter: float) -> float:
        """Seconds before retry number `retry` (1-based); `jitter` is in [0, 1)."""
        base: float = min(self.max_delay_s, self.first_delay_s * 2.0 ** (retry - 1))
        return base * (1 + jitter / 2)


@dataclass(frozen=True)
class Command:
    """One method call inside a batch."""

    method: str
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Envelope:
    """A successful answer: `result` and what the portal sent beside it."""

    result: Any
    total: int | None = None
    next: int | None = None
    time: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    """Each command's result or error; commands after a halt have neither."""

    results: Mapping[str, Any]
    errors: Mapping[str, Bitrix24Error]
    totals: Mapping[str, int]
    next: Mapping[str, int]
    times: Mapping[str, Mapping[str, Any]]

    def value(self, name: str) -> Any:
        """The command's result; its error is raised."""
        if name in self.errors:
            raise self.errors[name]
        if name in self.results:
            return self.results[name]
        raise Bitrix24Error(f"batch command {name!r} did not run (halted earlier)")


class Bitrix24Client:
    """Async Bitrix24 REST client on an injected httpx client, one per portal."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: Credentials,
        *,
        portal_zone: tzinfo,
        limiter: RequestLimiter | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        jitter: Callable[[], float] = _JITTER.random,
    ) -> None:
        self.http = http
        self.credentials = credentials
        self.encoder = Encoder(portal_zone)
        self.limiter: RequestLimiter = limiter or NoRateLimit()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        # Last `operating_reset_at` seen per method, and methods known to be blocked
        # until a time (reference §6.2); both keyed by the lower-cased method.
        self._reset_at: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}
        self._moved_to: str | None = None

    @property
    def moved_to(self) -> str | None:
        """The portal's new origin (`https://host[:port]`) after it answered with a
        redirect, or None. Requests go there from then on, the path unchanged; the
        configured URL should be updated to it."""
        return self._moved_to

    async def call(
        self, method: str, params: Mapping[str, object] | None = None
    ) -> Any:
        """Run one method; answer its `result`."""
        return (await self.call_envelope(method, params)).result

    async def call_envelope(
        self, method: str, params: Mapping[str, object] | None = None
    ) -> Envelope:
        """Run one method; answer `result` with `total`, `next` and `time`."""
        body = to_json_body(self.encoder.params(params or {}))
        answer = await self._send(method, body, read=is_read(method), charged=[method])
        timing = answer.get("time")
        timing = timing if isinstance(timing, dict) else {}
        self._note_timing(method, timing)
        return Envelope(
            result=answer["result"],
            total=_int_or_none(answer.get("total")),
            next=_int_or_none(answer.get("next")),
            time=timing,
        )

    async def batch(
        self, commands: Mapping[str, Command], *, halt: bool = False
    ) -> BatchResult:
        """Run up to 50 commands in one request; each gets its own result or error.

        With `halt` the portal stops at the first failing command. Without it the
        others, writes included, have run even when one failed.
        """
        if not commands:
            return BatchResult({}, {}, {}, {}, {})
        if len(commands) > MAX_BATCH_COMMANDS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_COMMANDS} commands")
        cmd: dict[str, Wire] = {}
        for name, command in commands.items():
            _check_command_name(name)
            cmd[name] = batch_command(
                command.method, self.encoder.params(command.params)
            )
        body: dict[str, Wire | int] = {"halt": 1 if halt else 0, "cmd": cmd}
        methods = [command.method for command in commands.values()]
        read = all(is_read(method) for method in methods)
        answer = await self._send("batch", body, read=read, charged=methods)
        result = self._batch_result(answer.get("result"), commands)
        for name, timing in result.times.items():
            self._note_timing(commands[name].method, timing)
        for error in result.errors.values():
            if isinstance(error, OperationTimeLimited) and error.method:
                # Commands are charged one by one; the batch itself is free.
                name = error.method.lower()
                error.reset_at = self._reset_at.get(name)
                if error.reset_at is not None:
                    self._blocked_until[name] = error.reset_at
        return result

    # -- sending ----------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        body: Mapping[str, object],
        *,
        read: bool,
        charged: Iterable[str],
    ) -> dict[str, Any]:
        """POST until an answer, a final error, or the attempts run out."""
        charged = list(charged)
        renewed = False
        attempt = 0
        refusals = 0
        refused_since: float | None = None
        while True:
            await self._wait_for_operating_limit(charged)
            endpoint = await self.credentials.endpoint()
            BITRIX24_RATE_LIMIT_WAIT_SECONDS.observe(await self.limiter.acquire())
            attempt += 1
            try:
                return await self._counted_post(endpoint, method, body)
            except ExpiredToken:
                if renewed or not self.credentials.renewable:
                    raise
                renewed = True
                await self.credentials.renew(endpoint)
                continue
            except OperationTimeLimited as error:
                self._blocked(method, error)
                failure: Bitrix24Error = error
            except RateLimited as error:
                failure = error
            except Unavailable as error:
                if _is_redirect(error.status):
                    raise  # a redirect that cannot be followed answers the same again
                if error.sent and not read:
                    raise WriteOutcomeUnknown(
                        f"{method}: sent, but no usable answer ({error}); "
                        "reconcile before writing again",
                        code=error.code,
                        status=error.status,
                        method=method,
                    ) from error
                failure = error

            if isinstance(failure, Unavailable) and not failure.sent:
                attempt -= 1  # it never reached the portal: bounded by time instead
                refusals += 1
                if refused_since is None:
                    refused_since = self._clock()
                delay = self._refused_delay(failure, refusals, refused_since)
            elif attempt >= self.retry.attempts:
                raise failure
            elif isinstance(failure, OperationTimeLimited):
                continue  # the wait happens before the next attempt
            else:
                delay = self.retry.delay(attempt, self._jitter())
            log.warning(
                "bitrix24.retry",
                method=method,
                attempt=attempt + refusals,
                reason=failure.code or type(failure).__name__,
                delay_s=round(delay, 3),
            )
            await self._sleep(delay)

    def _refused_delay(
        self, failure: Unavailable, refusals: int, refused_since: float
    ) -> float:
        """The wait before sending again a request that never left; raises once the
        portal has refused for `unavailable_for_s`."""
        remaining = refused_since + self.retry.unavailable_for_s - self._clock()
        if remaining <= 0:
            raise failure
        return min(self.retry.delay(refusals, self._jitter()), remaining)

    async def _counted_post(
        self, endpoint: Endpoint, method: str, body: Mapping[str, object]
    ) -> dict[str, Any]:
        """`_post`, counted and timed by method group and outcome (app/metrics.py)."""
        group = method_group(method)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._post(endpoint, method, body)
        except Exception as error:
            outcome = error_label(error)
            raise
        finally:
            BITRIX24_CALL_SECONDS.labels(group).observe(time.perf_counter() - started)
            BITRIX24_CALLS.labels(group, outcome).inc()

    async def _post(
        self, endpoint: Endpoint, method: str, body: Mapping[str, object]
    ) -> dict[str, Any]:
        payload = dict(body)
        if endpoint.access_token is not None:
            payload["auth"] = endpoint.access_token
        content = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        base = self._current_base(endpoint.base_url)
        response = await self._http_post(base + method, content, method)
        for _ in range(self.retry.redirects):
            if response.status_code not in _REDIRECTS:
                break
            base = self._follow(response, base, method)
            await self.limiter.acquire()
            response = await self._http_post(base + method, content, method)
        return self._answer(response, method)

    async def _http_post(self, url: str, content: str, method: str) -> httpx.Response:
        try:
            return await self.http.post(
                url,
                content=content.encode("utf-8"),
                headers={"Content-Type": "application/json; charset=utf-8"},
                # httpx would turn a followed 302 into a GET without the body.
                follow_redirects=False,
            )
        except httpx.HTTPError as error:
            # Only the exception's type is shown: its request holds the webhook URL.
            # A connection that never opened means the request never left, so even a
            # write may be sent again.
            never_sent = isinstance(error, _NOT_SENT)
            reason = f"{method}: {type(error).__name__}"
            raise Unavailable(reason, sent=not never_sent, method=method) from error

    def _answer(self, response: httpx.Response, method: str) -> dict[str, Any]:
        answer = _json_or_none(response)
        if (
            response.status_code == 200
            and isinstance(answer, dict)
            and "result" in answer
            and "error" not in answer
        ):
            return answer
        if response.status_code in _REDIRECTS:
            raise _unfollowed(response, method, "too many redirects")
        if _is_redirect(response.status_code):
            raise _unfollowed(response, method, "not a redirect of a renamed portal")
        raise map_error(response.status_code, answer, method=method)

    # -- a renamed portal -------------------------------------------------------------

    def _current_base(self, base_url: str) -> str:
        """The configured base URL, on the new host once the portal moved."""
        if self._moved_to is None:
            return base_url
        return _on_origin(base_url, self._moved_to)

    def _follow(self, response: httpx.Response, base: str, method: str) -> str:
        """The base URL on the host `Location` names; our path and its secret stay."""
        current = urlsplit(base)
        target = urlsplit(urljoin(base, response.headers.get("location", "")))
        if target.scheme not in ("http", "https") or not target.hostname:
            raise _unfollowed(response, method, "no usable Location")
        if current.scheme == "https" and target.scheme != "https":
            raise _unfollowed(response, method, "Location leaves https")
        origin = _origin(target)
        if origin == _origin(current):
            raise _unfollowed(response, method, "Location names the same host")
        self._moved_to = origin
        # Only the host: the path holds the webhook's secret code.
        log.warning(
            "bitrix24.redirect",
            method=method,
            status=response.status_code,
            new_host=urlsplit(origin).netloc,
        )
        return _on_origin(base, origin)

    # -- the operating-time limit -----------------------------------------------------

    def _note_timing(self, method: str, timing: Mapping[str, Any]) -> None:
        reset_at = timing.get("operating_reset_at")
        if isinstance(reset_at, int | float) and not isinstance(reset_at, bool):
            self._reset_at[method.lower()] = float(reset_at)

    def _blocked(self, method: str, error: OperationTimeLimited) -> None:
        """Remember until when the method is blocked; raise when that is unknown or
        further away than the policy waits."""
        name = method.lower()
        reset_at = self._reset_at.get(name)
        wait = None if reset_at is None else reset_at - self._clock()
        if reset_at is not None and wait is not None and wait > 0:
            self._blocked_until[name] = reset_at
        # A reset time already past was not the one that counts: unknown again.
        if wait is None or wait <= 0 or wait > self.retry.operating_wait_max_s:
            raise OperationTimeLimited(
                str(error),
                code=error.code,
                description=error.description,
                status=error.status,
                method=method,
                reset_at=reset_at,
            ) from error

    async def _wait_for_operating_limit(self, methods: list[str]) -> None:
        """Before sending: wait while a method of this request is known blocked.

        Past a reset time the method is free again; a reset too far away raises
        without sending, so a blocked method costs no requests.
        """
        now = self._clock()
        names = [method.lower() for method in methods]
        for name in names:
            if self._blocked_until.get(name, 0.0) <= now:
                self._blocked_until.pop(name, None)
        blocked = [name for name in names if name in self._blocked_until]
        if not blocked:
            return
        until = max(self._blocked_until[name] for name in blocked)
        wait = until - now
        if wait > self.retry.operating_wait_max_s:
            raise OperationTimeLimited(
                f"{blocked[0]}: blocked by the operating limit for {wait:.0f} s more",
                code="OPERATION_TIME_LIMIT",
                method=blocked[0],
                reset_at=until,
            )
        log.warning("bitrix24.operating_wait", method=blocked[0], wait_s=round(wait, 1))
        await self._sleep(wait)
        for name in blocked:
            self._blocked_until.pop(name, None)

    # -- batch answers ----------------------------------------------------------------

    def _batch_result(
        self, raw: object, commands: Mapping[str, Command]
    ) -> BatchResult:
        if not isinstance(raw, dict):
            raise Unavailable("batch: the answer has no result groups", method="batch")
        errors: dict[str, Bitrix24Error] = {}
        for name, body in _group(raw.get("result_error")).items():
            command = commands.get(name)
            errors[name] = map_error(
                None, body, method=command.method if command else None
            )
        times = {
            name: timing
            for name, timing in _group(raw.get("result_time")).items()
            if isinstance(timing, dict)
        }
        return BatchResult(
            results=_group(raw.get("result")),
            errors=errors,
            totals=_int_group(raw.get("result_total")),
            next=_int_group(raw.get("result_next")),
            times=times,
        )


def _is_redirect(status: int | None) -> bool:
    return status is not None and 300 <= status < 400


def _origin(url: SplitResult) -> str:
    """`scheme://host[:port]`, without any user info the URL carried."""
    host = url.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{host}{port}"


def _on_origin(url: str, origin: str) -> str:
    """`url` with the scheme and host of `origin`; path and query unchanged."""
    moved = urlsplit(origin)
    return urlunsplit(urlsplit(url)._replace(scheme=moved.scheme, netloc=moved.netloc))


def _unfollowed(response: httpx.Response, method: str, why: str) -> Unavailable:
    # Nothing ran on the old host; retrying would get the same redirect.
    return Unavailable(
        f"{method}: HTTP {response.status_code} redirect not followed ({why})",
        status=response.status_code,
        method=method,
        sent=False,
    )


def _check_command_name(name: str) -> None:
    if not name or any(char in name for char in "[]&=?$"):
        raise ValueError(f"bad batch command name {name!r}")
    if name.isdigit():
        # All-numeric names turn the answer groups into JSON lists.
        raise ValueError(f"batch command names must not be numbers: {name!r}")


def _group(value: object) -> dict[str, Any]:
    """A result group: the portal sends `[]` when empty and a list for keys 0..n-1."""
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, list):
        return {str(index): item for index, item in enumerate(value)}
    return {}


def _int_group(value: object) -> dict[str, int]:
    numbers = {}
    for name, item in _group(value).items():
        number = _int_or_none(item)
        if number is not None:
            numbers[name] = number
    return numbers


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _json_or_none(response: httpx.Response) -> object:
    try:
        return json.loads(response.content)
    except ValueError:  # includes UnicodeDecodeError
        return None
