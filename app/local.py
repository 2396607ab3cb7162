"""Everything in one process for development and demos: sandbox, API and worker.

Where no Telegram or WhatsApp credentials are set, the bots are the sandbox's: the
service sends to the sandbox's Bot API and Graph API, and the sandbox delivers what
a person types at `/_sandbox/telegram/deliver` or `/_sandbox/whatsapp/deliver` to
the service's webhooks, so a whole conversation can be watched on one machine. Where
the sandbox is the portal, its deal events go to the API, as a portal's outgoing
webhook sends them. What is played on top (app/demo.py) is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import structlog
import uvicorn
from pydantic import SecretStr
from starlette.types import ASGIApp

from app.api import create_app
from app.clients import (
    REDIS_AUTH_FIX,
    REDIS_AUTH_REFUSED,
    ping_redis,
    redact_url,
    redis_client,
)
from app.config import BusinessRules
from app.settings import Settings
from app.worker import build_worker
from connectors.messengers.base import MessengerError, messenger_client
from connectors.messengers.telegram import ALLOWED_UPDATES, TelegramSender
from sandbox.telegram import SANDBOX_BOT_TOKEN
from sandbox.whatsapp import (
    SANDBOX_APP_SECRET,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)

log = structlog.stdlib.get_logger(__name__)

SANDBOX_WEBHOOK_PATH = "/rest/1/sandbox/"
SANDBOX_GRAPH_VERSION = "v22.0"
# Open connections get this long to finish after Ctrl-C before they are dropped.
GRACEFUL_SHUTDOWN_S = 5
DEFAULT_REDIS_PORT = 6379
# The rules `run` uses when LEADLOOP_CONFIG is unset, in a checkout of the repository:
# a salon with managers, services, stages and a visit field, which the demo needs.
EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "deploy/leadloop.example.toml"
# Deal events the sandbox portal sends to the API, as `leadloop setup` binds them on
# a real portal: bookings reach the reminders at once, not at the next reconcile.
DEAL_EVENTS = ("ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE")

T = TypeVar("T")


class LocalRunError(Exception):
    """Something `run` needs is missing; the message says how to fix it."""


@dataclass(frozen=True)
class Listening:
    """Where each part of the local system can be reached."""

    sandbox: str
    webhook: str
    api: str
    docs: str
    redis: str
    # The sandbox bots' chats, when the service talks to them (empty otherwise).
    telegram: str = ""
    whatsapp: str = ""

    @property
    def dashboard(self) -> str:
        return f"{self.api}/dashboard"

    @property
    def events(self) -> str:
        """The sandbox portal's log of the events it sent."""
        return f"{self.sandbox}/_sandbox/events"


@dataclass(frozen=True)
class Sockets:
    """The two listening sockets, bound before anything is built around them."""

    sandbox: socket.socket
    api: socket.socket

    def close(self) -> None:
        self.sandbox.close()
        self.api.close()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to `run_local`, which owns two of them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def sandbox_base_url(host: str, port: int) -> str:
    return f"http://{_reachable(host)}:{port}"


def rules_file(settings: Settings) -> tuple[Settings, str]:
    """Settings naming the rules file `run` uses, and how to say which one it is.

    LEADLOOP_CONFIG wins; without it, the example salon of the repository; without
    that (an installed package), the built-in defaults.
    """
    if settings.config is not None:
        return settings, f"{settings.config} (LEADLOOP_CONFIG)"
    if EXAMPLE_RULES.is_file():
        shown = shown_path(EXAMPLE_RULES)
        update = {"config": EXAMPLE_RULES}
        return settings.model_copy(update=update), f"{shown} (LEADLOOP_CONFIG unset)"
    return settings, "built-in defaults (LEADLOOP_CONFIG unset)"


def shown_path(path: Path) -> str:
    """`path` relative to the working directory where it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def listen(settings: Settings, *, any_free: bool = False) -> tuple[Settings, Sockets]:
    """Bind the sandbox's and the API's ports now; settings name the ports bound.

    With `any_free`, ports not set in the environment are whatever the system
    hands out, so that a run can start beside another one.
    """
    explicit = settings.model_fields_set
    sandbox_port = settings.sandbox_port
    api_port = settings.api_port
    if any_free:
        sandbox_port = sandbox_port if "sandbox_port" in explicit else 0
        api_port = api_port if "api_port" in explicit else 0
    sandbox = _bind(settings.sandbox_host, sandbox_port, "sandbox")
    try:
        api = _bind(settings.api_host, api_port, "API")
    except LocalRunError:
        sandbox.close()
        raise
    bound = {
        "sandbox_port": sandbox.getsockname()[1],
        "api_port": api.getsockname()[1],
    }
    return settings.model_copy(update=bound), Sockets(sandbox, api)


def local_settings(settings: Settings) -> tuple[Settings, str]:
    """Settings wired to the sandbox where nothing else is configured.

    Also returns the application token the sandbox signs its outbound events with,
    the same one the API will check.
    """
    token = settings.bitrix24_application_token
    if token is None:
        token = SecretStr(secrets.token_urlsafe(16))
    base = sandbox_base_url(settings.sandbox_host, settings.sandbox_port)
    update: dict[str, object] = {"bitrix24_application_token": token}
    if settings.bitrix24_webhook_url is None:
        update["bitrix24_webhook_url"] = SecretStr(base + SANDBOX_WEBHOOK_PATH)
    update |= _sandbox_messengers(settings, base)
    return settings.model_copy(update=update), token.get_secret_value()


def _sandbox_messengers(settings: Settings, base: str) -> dict[str, object]:
    """The sandbox's bots for each channel that has no credentials of its own."""
    update: dict[str, object] = {}
    if settings.telegram_bot_token is None:
        update |= {
            "telegram_bot_token": SecretStr(SANDBOX_BOT_TOKEN),
            "telegram_api_base": base,
            "telegram_webhook_secret": settings.telegram_webhook_secret
            or SecretStr(secrets.token_urlsafe(24)),
        }
    if settings.whatsapp_access_token is None:
        update |= {
            "whatsapp_access_token": SecretStr(SANDBOX_WHATSAPP_ACCESS_TOKEN),
            "whatsapp_phone_number_id": SANDBOX_PHONE_NUMBER_ID,
            "whatsapp_app_secret": SecretStr(SANDBOX_APP_SECRET),
            "whatsapp_api_base": f"{base}/{SANDBOX_GRAPH_VERSION}",
            "whatsapp_verify_token": settings.whatsapp_verify_token
            or SecretStr(secrets.token_urlsafe(24)),
        }
    return update


async def connect_sandbox_messengers(
    settings: Settings, sandbox: str, api: str, http: httpx.AsyncClient
) -> tuple[bool, bool]:
    """Point the sandbox bots' webhooks at the API; which of (telegram, whatsapp)
    now deliver to it.

    Only bots that live in the sandbox are touched: a real bot's webhook is set
    where the real service runs, never at a local address. A sandbox that does not
    answer for a bot leaves it unconnected, with a warning.
    """
    telegram = whatsapp = False
    try:
        if settings.telegram_api_base.rstrip("/") == sandbox:
            await _set_telegram_webhook(settings, sandbox, api, http)
            telegram = True
        if settings.whatsapp_api_base.startswith(f"{sandbox}/"):
            await _subscribe_whatsapp(settings, sandbox, api, http)
            whatsapp = True
    except (MessengerError, httpx.HTTPError) as error:
        log.warning("run.messenger_not_connected", error=type(error).__name__)
    log.info("run.messengers_connected", telegram=telegram, whatsapp=whatsapp)
    return telegram, whatsapp


async def _set_telegram_webhook(
    settings: Settings, sandbox: str, api: str, http: httpx.AsyncClient
) -> None:
    token, secret = settings.telegram_bot_token, settings.telegram_webhook_secret
    if token is None or secret is None:
        raise LocalRunError("the sandbox bot needs LEADLOOP_TELEGRAM_WEBHOOK_SECRET")
    bot = TelegramSender(http, token, sandbox)
    await bot.call(
        "setWebhook",
        {
            "url": f"{api}/webhooks/telegram",
            "secret_token": secret.get_secret_value(),
            "allowed_updates": list(ALLOWED_UPDATES),
            "drop_pending_updates": True,
        },
    )


async def _subscribe_whatsapp(
    settings: Settings, sandbox: str, api: str, http: httpx.AsyncClient
) -> None:
    def plain(secret: SecretStr | None) -> str:
        return secret.get_secret_value() if secret is not None else ""

    # The sandbox checks the callback with Meta's GET handshake before it saves it.
    answer = await http.post(
        f"{sandbox}/_sandbox/whatsapp/settings",
        json={
            "webhook_url": f"{api}/webhooks/whatsapp",
            "verify_token": plain(settings.whatsapp_verify_token),
            "app_secret": plain(settings.whatsapp_app_secret),
        },
    )
    answer.raise_for_status()


async def run_local(
    settings: Settings,
    rules: BusinessRules,
    sandbox_app: ASGIApp,
    *,
    on_ready: Callable[[Listening], None],
    stop: asyncio.Event | None = None,
    sockets: Sockets | None = None,
    play: Callable[[Listening], Coroutine[Any, Any, T]] | None = None,
) -> T | None:
    """Serve until `stop` is set, SIGINT or SIGTERM; raise `LocalRunError` early.

    Once everything is wired, `play` runs (the demo) before `on_ready` announces
    the addresses; its result is returned. A `play` that sets `stop` makes the run
    end as soon as it is done.
    """
    try:
        await _require_redis(settings.redis_url)
    except LocalRunError:
        if sockets is not None:
            sockets.close()
        raise
    stop = stop or asyncio.Event()
    if sockets is None:
        settings, sockets = listen(settings)

    with sockets.sandbox, sockets.api, _stop_on_signals(stop):
        sandbox = _Server(_server_config(sandbox_app))
        api = _Server(_server_config(create_app(settings)))
        worker = build_worker(settings, rules, handle_signals=False)

        tasks = [
            _start("sandbox", sandbox.serve([sockets.sandbox])),
            _start("api", api.serve([sockets.api])),
            _start("worker", worker.async_run()),
        ]
        try:
            await _until_started(sandbox, api, tasks)
            listening = await _wire(settings, sockets)
            played = None
            if play is not None:
                played = await _alongside(play(listening), stop, tasks)
            if not stop.is_set():
                on_ready(listening)
                log.info("run.ready")
            await _until_stopped(stop, tasks)
        finally:
            log.info("run.stopping")
            sandbox.should_exit = api.should_exit = True
            await worker.close()
            await asyncio.gather(*tasks, return_exceptions=True)
    log.info("run.stopped")
    return played


async def _wire(settings: Settings, sockets: Sockets) -> Listening:
    """Point the sandbox's bots and deal events at the API; where everything is."""
    listening = _listening(settings, sockets.sandbox, sockets.api)
    async with messenger_client() as http:
        wired = await connect_sandbox_messengers(
            settings, listening.sandbox, listening.api, http
        )
        if listening.webhook.startswith(listening.sandbox):
            await bind_deal_events(listening.webhook, listening.api, http)
    return _with_chats(listening, *wired)


async def bind_deal_events(webhook: str, api: str, http: httpx.AsyncClient) -> None:
    """Have the sandbox portal POST deal events to the API's Bitrix24 route."""
    handler = f"{api}/webhooks/bitrix24"
    try:
        for event in DEAL_EVENTS:
            answer = await http.post(
                f"{webhook}event.bind", json={"event": event, "handler": handler}
            )
            answer.raise_for_status()
    except httpx.HTTPError as error:
        # Reminders still follow bookings through the reconcile job, only later.
        log.warning("run.events_not_bound", error=type(error).__name__)
        return
    log.info("run.events_bound", events=len(DEAL_EVENTS))


async def _alongside(
    work: Coroutine[Any, Any, T],
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
) -> T | None:
    """`work`'s result; None when a stop came first. A part that stops is an error."""
    context = contextvars.copy_context()
    context.run(structlog.contextvars.bind_contextvars, part="demo")
    playing = asyncio.create_task(work, name="demo", context=context)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            [playing, stopping, *tasks], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stopping.cancel()
    if playing.done():
        return playing.result()
    playing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await playing
    _raise_if_stopped(tasks)
    return None


async def _require_redis(redis_url: str) -> None:
    redis = redis_client(redis_url)
    try:
        problem = await ping_redis(redis)
    finally:
        await redis.aclose()

    if problem == REDIS_AUTH_REFUSED:
        log.error("run.redis_unavailable", redis=redact_url(redis_url), problem=problem)
        raise LocalRunError(
            f"Redis at {redact_url(redis_url)} answers, but {problem}.\n"
            f"To fix, {REDIS_AUTH_FIX}."
        )
    if problem is not None:
        log.error("run.redis_unavailable", redis=redact_url(redis_url), problem=problem)
        raise LocalRunError(
            f"Redis does not answer at {redact_url(redis_url)}: {problem}.\n"
            "leadloop keeps its job queue and dialog state in Redis. To fix, either\n"
            "  - start it: redis-server --daemonize yes --bind 127.0.0.1 --port "
            f"{urlsplit(redis_url).port or DEFAULT_REDIS_PORT}"
            " (`make run` does this when redis-server is installed),\n"
            "  - install it: apt-get install redis-server, or brew install redis,\n"
            "  - or point LEADLOOP_REDIS_URL at a Redis that answers."
        )


def _bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("run.port_unavailable", part=what, host=host, port=port)
        raise LocalRunError(
            f"The {what} cannot listen on {host}:{port}: {exc.strerror}.\n"
            "Stop whatever holds the port, or choose another one with "
            f"LEADLOOP_{'SANDBOX' if what == 'sandbox' else 'API'}_PORT."
        ) from None
    return sock


def _start(part: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run one part in its own context, so that each of its log lines names it."""
    context = contextvars.copy_context()
    context.run(structlog.contextvars.bind_contextvars, part=part)
    return asyncio.create_task(work, name=part, context=context)


def _server_config(app: ASGIApp) -> uvicorn.Config:
    # Both servers share uvicorn's loggers: access logs stay on for both, and the
    # `part` bound by `_start` tells their lines apart.
    return uvicorn.Config(
        app, log_config=None, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


async def _until_started(
    sandbox: uvicorn.Server, api: uvicorn.Server, tasks: list[asyncio.Task[None]]
) -> None:
    while not (sandbox.started and api.started):
        failed = next((task for task in tasks if task.done()), None)
        if failed is not None:
            raise LocalRunError(f"the {failed.get_name()} stopped while starting")
        await asyncio.sleep(0.05)


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        [stopping, *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    stopping.cancel()
    _raise_if_stopped([task for task in tasks if task in done])


def _raise_if_stopped(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            log.error("run.part_stopped", part=task.get_name())
            raise LocalRunError(f"the {task.get_name()} stopped unexpectedly")


def _listening(
    settings: Settings, sandbox_socket: socket.socket, api_socket: socket.socket
) -> Listening:
    sandbox = sandbox_base_url(settings.sandbox_host, sandbox_socket.getsockname()[1])
    api = f"http://{_reachable(settings.api_host)}:{api_socket.getsockname()[1]}"
    webhook = (
        settings.bitrix24_webhook_url.get_secret_value()
        if settings.bitrix24_webhook_url is not None
        else ""
    )
    if not webhook.startswith(sandbox):
        webhook = "from LEADLOOP_BITRIX24_WEBHOOK_URL (not shown: it holds a secret)"
    return Listening(
        sandbox=sandbox,
        webhook=webhook,
        api=api,
        docs=f"{api}/docs",
        redis=redact_url(settings.redis_url),
    )


def _with_chats(listening: Listening, telegram: bool, whatsapp: bool) -> Listening:
    base = f"{listening.sandbox}/_sandbox"
    return replace(
        listening,
        telegram=f"{base}/telegram/deliver, replies at {base}/telegram/messages"
        if telegram
        else "",
        whatsapp=f"{base}/whatsapp/deliver, replies at {base}/whatsapp/messages"
        if whatsapp
        else "",
    )


def _reachable(host: str) -> str:
    """The address to connect to a server that listens on `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
