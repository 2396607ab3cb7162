"""The sandbox's HTTP face: Bitrix24 REST at its real paths, `/_sandbox/` controls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import sandbox.methods  # noqa: F401  (registers every method)
from sandbox import protocol
from sandbox.batch import command_methods, run_batch
from sandbox.engine import Sandbox
from sandbox.events import EventDispatcher
from sandbox.faults import (
    MESSENGER_TARGETS,
    Fault,
    MessengerFault,
    MessengerFaultBook,
    messenger_fault,
)
from sandbox.methods.feed import feed_routes
from sandbox.oauth import oauth_routes
from sandbox.phpform import parse_str
from sandbox.protocol import MethodResult, RestError, Timing
from sandbox.registry import Auth, MethodSpec, lookup
from sandbox.snapshot import dump_snapshot, load_snapshot, reset_portal
from sandbox.state import Portal
from sandbox.telegram import SANDBOX_BOT_TOKEN, TelegramSandbox
from sandbox.whatsapp import SANDBOX_PHONE_NUMBER_ID, WhatsAppSandbox
from sandbox.xml import render_xml

DEFAULT_WEBHOOK_USER = 1
DEFAULT_WEBHOOK_TOKEN = "sandbox"  # noqa: S105  (a public, local-only credential)


@dataclass
class SandboxOptions:
    host: str = "127.0.0.1"
    port: int = 8801
    snapshot: Path | None = None
    rate_limit: str = "standard"
    application_token: str | None = None
    timezone: str = "Europe/Moscow"


BASE_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "X-Content-Type-Options": "nosniff",
}


def _json(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(
        payload,
        status_code=status,
        media_type="application/json; charset=utf-8",
        headers={**BASE_HEADERS, **(headers or {})},
    )


def _error(error: RestError, transport: str = "json") -> Response:
    """An error answer: never a `time` block; XML when the call asked for `.xml`."""
    if transport == "xml":
        return Response(
            render_xml(error.body()),
            status_code=error.status,
            media_type="text/xml; charset=utf-8",
            headers=BASE_HEADERS,
        )
    return _json(error.body(), error.status)


def _control_error(message: str) -> Response:
    return JSONResponse({"error": message}, 400)


async def read_params(request: Request) -> dict[str, Any]:
    """Query first, body merged over it; malformed JSON is ignored, as on a portal."""
    params = parse_str(request.url.query)
    body = await request.body()
    if not body:
        return params
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    parsed: Any = None
    if content_type == "application/json":
        with contextlib.suppress(ValueError):
            parsed = json.loads(body)
    elif content_type == "multipart/form-data":
        # File parts are not read: no method the sandbox implements takes uploads.
        async with request.form() as form:
            pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        parsed = parse_str(urlencode(pairs))
    else:
        parsed = parse_str(body.decode("utf-8", errors="replace"))
    if isinstance(parsed, dict):
        params.update(parsed)
    return params


def _split_transport(raw: str) -> tuple[str, str]:
    """`crm.deal.list.json` -> (`crm.deal.list`, `json`); unknown suffix -> `bad`."""
    name = raw.lower()
    for suffix in ("json", "xml"):
        if name.endswith("." + suffix):
            return name[: -len(suffix) - 1], suffix
    if lookup(name) is None and "." in name and lookup(name.rsplit(".", 1)[0]):
        return name.rsplit(".", 1)[0], "bad"
    return name, "json"


class SandboxApp:
    """Builds the Starlette app around one `Sandbox`."""

    def __init__(self, options: SandboxOptions) -> None:
        portal = Portal(zone=ZoneInfo(options.timezone))
        if options.application_token:
            portal.application_token = options.application_token
        self.options = options
        self.sandbox = Sandbox(portal, options.rate_limit)
        self._initial: dict[str, Any] | None = None
        if options.snapshot is not None:
            self._initial = json.loads(options.snapshot.read_text("utf-8"))
        self._restore_initial_state()
        public_host = "127.0.0.1" if options.host in ("0.0.0.0", "") else options.host
        self.events = EventDispatcher(
            portal, public_url=f"http://{public_host}:{options.port}"
        )
        self.messenger_faults = MessengerFaultBook()
        self.telegram = TelegramSandbox(self.messenger_faults)
        self.whatsapp = WhatsAppSandbox(self.messenger_faults)

    @property
    def portal(self) -> Portal:
        return self.sandbox.portal

    def _install_default_webhook(self) -> None:
        self.portal.add_webhook(
            DEFAULT_WEBHOOK_USER,
            DEFAULT_WEBHOOK_TOKEN,
            protocol_scopes(),
        )

    # -- REST -------------------------------------------------------------------------

    async def rest_webhook(self, request: Request) -> Response:
        params = request.path_params
        return await self._rest(
            request, params["method"], (params["user_id"], params["token"])
        )

    async def rest_oauth(self, request: Request) -> Response:
        return await self._rest(request, request.path_params["method"], None)

    async def _rest(
        self, request: Request, raw_method: str, webhook: tuple[str, str] | None
    ) -> Response:
        source = request.client.host if request.client else "local"
        if not self.sandbox.limiter.admit(source):
            self.sandbox.stats.rejected_rate_limit += 1
            return _error(protocol.query_limit_exceeded())
        name, transport = _split_transport(raw_method)
        if transport == "bad":
            return _error(protocol.wrong_transport())
        spec = lookup(name)
        if spec is None:
            return _error(protocol.method_not_found(), transport)
        self.sandbox.stats.request(spec.name)
        try:
            params = await read_params(request)
            auth = self._authenticate(request, params, webhook)
            response = await self._run(spec, params, auth, transport)
        except RestError as error:
            response = _error(error, transport)
        self.events.pump()
        return response

    def _authenticate(
        self, request: Request, params: dict[str, Any], webhook: tuple[str, str] | None
    ) -> Auth:
        if webhook is not None:
            return self.sandbox.webhook_auth(*webhook)
        token = params.get("auth") or params.get("access_token")
        header = request.headers.get("authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        return self.sandbox.oauth_auth(token if isinstance(token, str) else None)

    async def _run(
        self, spec: MethodSpec, params: dict[str, Any], auth: Auth, transport: str
    ) -> Response:
        fault = self.sandbox.faults.take(spec.name)
        if fault is None and spec.name == "batch":
            # A limit, auth or transport fault on a batched method fails the whole
            # request, as the portal refuses it before running any command.
            fault = self.sandbox.faults.take_for_batch(command_methods(params))
        extra = 0.0
        if fault is not None:
            early = await self._apply_fault_before(fault)
            if early is not None:
                return early
            if fault.kind == "latency":
                extra = fault.seconds

        if spec.name == "batch":
            self.sandbox.check_access(spec, auth, in_batch=False)
            started = time.time()
            result = await run_batch(self.sandbox, params, auth)
            outcome = MethodResult(result)
            timing = Timing(started, time.time())
        else:
            outcome, timing = self.sandbox.invoke(
                spec, params, auth, extra_seconds=extra
            )

        if fault is not None and fault.kind == "timeout_after_write":
            self.events.pump()
            await asyncio.sleep(fault.seconds)
        body = protocol.envelope(outcome, timing, self.portal.zone)
        headers = {"X-Bitrix-Rest-Time": f"{timing.finished - timing.started:.10f}"}
        if transport == "xml":
            return Response(
                render_xml(body),
                media_type="text/xml; charset=utf-8",
                headers={**BASE_HEADERS, **headers},
            )
        return _json(body, headers=headers)

    async def _apply_fault_before(self, fault: Fault) -> Response | None:
        if fault.kind == "latency":
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == "error":
            return _error(RestError(fault.code, fault.description, fault.status))
        if fault.kind == "status":
            return _json(fault.body if fault.body is not None else {}, fault.status)
        if fault.kind == "html":
            if isinstance(fault.body, str):
                return Response(fault.body, fault.status, media_type="text/html")
            return _html_error_page(fault.status)
        if fault.kind == "redirect":
            # A renamed portal: the old host answers with a page, not JSON.
            link = f'<a href="{fault.location}">here</a>'
            page = f"<html><body>Moved to {link}</body></html>"
            return Response(
                page,
                status_code=fault.status,
                media_type="text/html",
                headers={"Location": fault.location},
            )
        return None

    # -- controls ---------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        """What this server is and where its parts are, for a person with a browser."""
        base = str(request.base_url).rstrip("/")
        webhook = f"{base}/rest/{DEFAULT_WEBHOOK_USER}/{DEFAULT_WEBHOOK_TOKEN}/"
        return JSONResponse(
            {
                "service": "leadloop Bitrix24 sandbox",
                "webhook": webhook,
                "oauth_token_endpoint": f"{base}/oauth/token/",
                "controls": f"{base}/_sandbox/",
                "telegram_bot_api": f"{base}/bot{self.telegram.token}/",
                "whatsapp_messages": f"{base}/v22.0/"
                f"{self.whatsapp.settings.phone_number_id}/messages",
                "rate_limit": self.sandbox.limiter.plan,
                "timezone": self.options.timezone,
            }
        )

    async def get_snapshot(self, request: Request) -> Response:
        return _json(dump_snapshot(self.portal))

    async def post_snapshot(self, request: Request) -> Response:
        try:
            snapshot = json.loads(await request.body())
        except ValueError as error:
            return _control_error(f"snapshot is not JSON: {error}")
        try:
            counts = load_snapshot(self.portal, snapshot)
        except ValueError as error:
            return _control_error(str(error))
        self._install_default_webhook()
        return JSONResponse({"loaded": counts})

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse({"faults": self._describe_faults()})

    def _describe_faults(self) -> list[dict[str, Any]]:
        return self.sandbox.faults.describe() + self.messenger_faults.describe()

    async def post_faults(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            entries = body if isinstance(body, list) else [body]
            faults = [_any_fault(entry) for entry in entries]
        except (ValueError, TypeError) as error:
            return _control_error(f"bad fault: {error}")
        for fault in faults:
            if isinstance(fault, MessengerFault):
                self.messenger_faults.add(fault)
            else:
                self.sandbox.faults.add(fault)
        return JSONResponse({"faults": self._describe_faults()})

    async def delete_faults(self, request: Request) -> Response:
        self.sandbox.faults.clear()
        self.messenger_faults.clear()
        return JSONResponse({"faults": []})

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(self.sandbox.stats.as_dict())

    def _restore_initial_state(self) -> None:
        """A fresh portal, then the `--snapshot` file when the sandbox was given one."""
        reset_portal(self.portal)
        if self._initial is not None:
            load_snapshot(self.portal, self._initial)
        self._install_default_webhook()

    async def post_reset(self, request: Request) -> Response:
        self._restore_initial_state()
        self.sandbox.reset_counters()
        self.events.reset()
        self.messenger_faults.clear()
        self.telegram.reset()
        self.whatsapp.reset()
        return JSONResponse({"reset": True})

    async def post_settings(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as error:
            return _control_error(f"settings are not JSON: {error}")
        if not isinstance(body, dict):
            return _control_error("settings must be a JSON object")
        unknown = set(body) - {"rate_limit", "operating_limit_s"}
        if unknown:
            return _control_error(f"unknown settings: {', '.join(sorted(unknown))}")
        limit = body.get("operating_limit_s", self.sandbox.operating.limit_s)
        if isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0:
            return _control_error("operating_limit_s must be a non-negative number")
        if "rate_limit" in body:
            try:
                self.sandbox.limiter.set_plan(str(body["rate_limit"]))
            except ValueError as error:
                return _control_error(str(error))
        self.sandbox.operating.limit_s = float(limit)
        return JSONResponse(
            {
                "rate_limit": self.sandbox.limiter.plan,
                "operating_limit_s": self.sandbox.operating.limit_s,
            }
        )

    async def get_events(self, request: Request) -> Response:
        return JSONResponse({"deliveries": self.events.log()})

    # -- app --------------------------------------------------------------------------

    def build(self) -> Starlette:
        methods = ["GET", "POST"]
        routes = [
            Route(
                "/rest/{user_id}/{token}/{method}", self.rest_webhook, methods=methods
            ),
            Route("/rest/{method}", self.rest_oauth, methods=methods),
            Route("/", self.index, methods=["GET"]),
            Route("/_sandbox/", self.index, methods=["GET"]),
            Route("/_sandbox/snapshot", self.get_snapshot, methods=["GET"]),
            Route("/_sandbox/snapshot", self.post_snapshot, methods=["POST"]),
            Route("/_sandbox/faults", self.get_faults, methods=["GET"]),
            Route("/_sandbox/faults", self.post_faults, methods=["POST"]),
            Route("/_sandbox/faults", self.delete_faults, methods=["DELETE"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
            Route("/_sandbox/reset", self.post_reset, methods=["POST"]),
            Route("/_sandbox/settings", self.post_settings, methods=["POST"]),
            Route("/_sandbox/events", self.get_events, methods=["GET"]),
            *self.events.routes(),
            *oauth_routes(self.portal),
            *feed_routes(self.portal),
            *self.telegram.routes(),
            *self.whatsapp.routes(),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with self.events.running():
                yield

        return Starlette(routes=routes, lifespan=lifespan)


def _any_fault(entry: Any) -> Fault | MessengerFault:
    """A messenger fault when the entry names its `target`, else a Bitrix24 one."""
    if isinstance(entry, dict) and entry.get("target") in MESSENGER_TARGETS:
        return messenger_fault(entry)
    if isinstance(entry, dict) and entry.get("target") == "bitrix24":
        entry = {key: value for key, value in entry.items() if key != "target"}
    return _fault(entry)


def _fault(entry: Any) -> Fault:
    if not isinstance(entry, dict):
        raise ValueError("a fault must be a JSON object")
    known = {item.name for item in dataclasses.fields(Fault)}
    unknown = sorted(set(entry) - known)
    if unknown:
        listed = ", ".join(sorted(known))
        raise ValueError(
            f"unknown fault fields: {', '.join(unknown)} (known: {listed})"
        )
    return Fault(**entry)


def _html_error_page(status: int) -> Response:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    page = (
        f"<html><head><title>{status} {phrase}</title></head>"
        f"<body><center><h1>{status} {phrase}</h1></center><hr>"
        "<center>nginx</center></body></html>"
    )
    return Response(page, status_code=status, media_type="text/html")


def protocol_scopes() -> frozenset[str]:
    from sandbox.state import ALL_SCOPES

    return ALL_SCOPES


def create_app(options: SandboxOptions | None = None) -> Starlette:
    return SandboxApp(options or SandboxOptions()).build()


def serve(options: SandboxOptions) -> None:
    """Run the sandbox until interrupted (the `leadloop sandbox` command)."""
    import uvicorn

    base = f"http://{options.host}:{options.port}"
    webhook = f"{base}/rest/{DEFAULT_WEBHOOK_USER}/{DEFAULT_WEBHOOK_TOKEN}/"
    print(  # noqa: T201  (the command's own output: where it listens)
        f"Bitrix24 sandbox on {base}/\n"
        f"  inbound webhook  {webhook}\n"
        f"  controls         {base}/_sandbox/  (snapshot, faults, stats, reset)\n"
        f"  telegram bot api {base}/bot{SANDBOX_BOT_TOKEN}/\n"
        f"  whatsapp api     {base}/v22.0/{SANDBOX_PHONE_NUMBER_ID}/messages\n"
        f"  rate limit       {options.rate_limit}",
        flush=True,
    )
    uvicorn.run(
        create_app(options),
        host=options.host,
        port=options.port,
        log_level="warning",
    )
