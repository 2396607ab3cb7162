"""The Telegram Bot API at `/bot{token}/{method}`, its webhook delivery, a record.

Answers as telegram-bot-api does (tdlib/telegram-bot-api, `Client.cpp`): every body
is `{"ok": true, "result": …}` or `{"ok": false, "error_code", "description",
"parameters"?}` with the same HTTP status; method names in any case; arguments from
the query string, a form, multipart or a JSON object whose non-string values arrive
as JSON text. A chat exists once it has written to the bot (an update delivered
through `/_sandbox/telegram/deliver`) or was registered with `/_sandbox/telegram/
chats`; a chat whose `my_chat_member` update said `kicked` gets 403 until it says
`member` again.

Updates are delivered the way the Bot API's `WebhookActor` does: one queue per
chat (button presses per user, member changes apart), only the head of a queue in
flight, a failed update blocking its queue until it succeeds. Unlike Telegram the
sandbox does not retry on a timer: `POST /_sandbox/telegram/flush` (or the next
delivery to that queue) tries again. A Bot API call in a webhook's 2xx answer
(`{"method": "answerCallbackQuery", …}`) runs as Telegram runs it, unreported.
Update ids rise from a number read off the clock, so a restarted sandbox does not
hand out the ids of an earlier run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.faults import (
    BAD_GATEWAY_PAGE,
    TELEGRAM_ERRORS,
    MessengerFault,
    MessengerFaultBook,
)

logger = logging.getLogger(__name__)

SANDBOX_BOT_ID = 999000001
# Shaped like a real token (bot id, colon, 35 characters) so that log maskers and
# clients written for real tokens treat it like one.
SANDBOX_BOT_TOKEN = "999000001:AAHsandbox-leadloop-bot-token-0000"  # noqa: S105
BOT_FIRST_NAME = "Leadloop Sandbox"
BOT_USERNAME = "leadloop_sandbox_bot"
# Update ids start from the clock: the service remembers the ids it has seen for a
# week, so a sandbox started later must number above the ids an earlier one handed
# out (as one bot's ids keep rising on Telegram), or its first updates are dropped
# as repeats. Ten ids a second since 2026-01-01 stay a realistic 9-10 digit int
# within a signed 32-bit one (update_id carries no "more than 32 bits" note): the
# next start begins higher unless a run handed out more than ten ids a second on
# average. The count wraps every six years or so, onto ids last used years before.
UPDATE_IDS_PER_SECOND = 10
_UPDATE_ID_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
_UPDATE_ID_FLOOR = 100_000_000
_UPDATE_ID_SPAN = 2_000_000_000
DELIVERY_TIMEOUT_S = 10.0  # Telegram waits 60 s; a test should fail sooner
MAX_TEXT_UTF16 = 4096  # "1-4096 characters after entities parsing", in UTF-16 units
MAX_CALLBACK_DATA_BYTES = 64
DEFAULT_MAX_CONNECTIONS = 40
# Left out when `allowed_updates` is empty or was never given (setWebhook docs).
NOT_DELIVERED_BY_DEFAULT = frozenset(
    {"chat_member", "message_reaction", "message_reaction_count"}
)
QUERY_TOO_OLD = TELEGRAM_ERRORS["query_too_old"]
_TOKEN = re.compile(r"[1-9]\d{0,15}:[A-Za-z0-9_-]{1,70}")
_SECRET = re.compile(r"[A-Za-z0-9_-]*")
_PARSE_MODES = frozenset({"html", "markdown", "markdownv2"})
# Calls a webhook answer may not make (reference §1.4).
_IGNORED_IN_REPLY = re.compile(r"setwebhook|deletewebhook|close|logout|get\w*", re.I)
_UPDATE_KINDS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "callback_query",
    "my_chat_member",
    "chat_member",
    "message_reaction",
    "message_reaction_count",
)


class BotApiError(Exception):
    """An answer with `ok: false`, as the Bot API renders it."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.status,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def bad_request(text: str) -> BotApiError:
    return BotApiError(400, f"Bad Request: {text}")


@dataclass
class Ok:
    """A successful answer; webhook methods add a `description`."""

    result: Any
    description: str | None = None


@dataclass
class Chat:
    id: int
    first_name: str = "Test"
    username: str | None = None
    last_name: str | None = None
    type: str = "private"

    def as_json(self) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": self.id, "first_name": self.first_name}
        if self.last_name:
            chat["last_name"] = self.last_name
        if self.username:
            chat["username"] = self.username
        chat["type"] = self.type
        return chat

    def as_user(self) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
        }
        if self.username:
            user["username"] = self.username
        return user


@dataclass
class BotMessage:
    """A message the bot sent, as the sandbox keeps it for edits and the record."""

    seq: int
    message_id: int
    chat: Chat
    text: str
    date: int
    reply_markup: dict[str, Any] | None
    parse_mode: str | None = None
    edit_date: int | None = None

    def as_json(self, bot: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": self.message_id,
            "from": bot,
            "chat": self.chat.as_json(),
            "date": self.date,
        }
        if self.edit_date:
            message["edit_date"] = self.edit_date
        message["text"] = self.text
        # Only an inline keyboard belongs to the message; a reply keyboard is a
        # client-side setting and never comes back (JsonReplyMarkup).
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            message["reply_markup"] = self.reply_markup
        return message

    def describe(self) -> dict[str, Any]:
        markup = self.reply_markup or {}
        keyboard = markup.get("keyboard", [])
        return {
            "seq": self.seq,
            "message_id": self.message_id,
            "chat_id": self.chat.id,
            "text": self.text,
            "parse_mode": self.parse_mode,
            "buttons": markup.get("inline_keyboard", []),
            "keyboard": keyboard,
            "request_contact": any(
                button.get("request_contact") for row in keyboard for button in row
            ),
            "remove_keyboard": bool(markup.get("remove_keyboard")),
            "date": self.date,
            "edit_date": self.edit_date,
        }


@dataclass
class Webhook:
    url: str = ""
    secret_token: str = ""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allowed_updates: list[str] | None = None
    last_error_date: int = 0
    last_error_message: str = ""

    def accepts(self, kind: str) -> bool:
        if not self.allowed_updates:
            return kind not in NOT_DELIVERED_BY_DEFAULT
        return kind in self.allowed_updates


Handler = Callable[[dict[str, str]], Ok]


@dataclass
class _Queues:
    """Undelivered updates, one queue per chat as the Bot API keeps them."""

    by_key: dict[int, deque[dict[str, Any]]] = field(default_factory=dict)
    locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    def push(self, key: int, update: dict[str, Any]) -> None:
        self.by_key.setdefault(key, deque()).append(update)

    def lock(self, key: int) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def pending(self) -> list[dict[str, Any]]:
        updates = [update for queue in self.by_key.values() for update in queue]
        return sorted(updates, key=lambda update: int(update["update_id"]))

    def clear(self) -> None:
        self.by_key.clear()


def first_update_id(now: float) -> int:
    """The update id a sandbox started at `now` (Unix seconds) numbers from."""
    ticks = int((now - _UPDATE_ID_EPOCH) * UPDATE_IDS_PER_SECOND)
    return _UPDATE_ID_FLOOR + ticks % _UPDATE_ID_SPAN


class TelegramSandbox:
    """One bot: its Bot API, its webhook and what it sent."""

    def __init__(self, faults: MessengerFaultBook) -> None:
        self.faults = faults
        self.token = SANDBOX_BOT_TOKEN
        self.delivery_timeout_s = DELIVERY_TIMEOUT_S
        self.webhook = Webhook()
        self._next_update_id = 0
        self._methods: dict[str, tuple[str, Handler]] = {
            name.lower(): (name, handler)
            for name, handler in (
                ("getMe", self._get_me),
                ("sendMessage", self._send_message),
                ("answerCallbackQuery", self._answer_callback_query),
                ("editMessageReplyMarkup", self._edit_message_reply_markup),
                ("setWebhook", self._set_webhook),
                ("deleteWebhook", self._delete_webhook),
                ("getWebhookInfo", self._get_webhook_info),
                ("getUpdates", self._get_updates),
            )
        }
        self.reset()

    def reset(self) -> None:
        """Forget chats, messages, updates and calls; keep the token and webhook."""
        self.chats: dict[int, Chat] = {}
        self.blocked: set[int] = set()
        self.sent: list[BotMessage] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        # An open callback query's id and the chat it came from (None: not known).
        self.open_callbacks: dict[str, int | None] = {}
        self.queues = _Queues()
        self.polled: list[dict[str, Any]] = []
        # Never backwards: a reset keeps the numbering rising, as a restart does.
        self._next_update_id = max(self._next_update_id, first_update_id(time.time()))
        self._next_message_id: dict[int, int] = {}
        self._seq = 0
        self.webhook.last_error_date = 0
        self.webhook.last_error_message = ""

    @property
    def bot_id(self) -> int:
        return int(self.token.split(":", 1)[0])

    def bot_user(self, *, full: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": BOT_FIRST_NAME,
            "username": BOT_USERNAME,
        }
        if full:
            user |= {
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
                "supports_guest_queries": False,
                "can_connect_to_business": False,
                "has_main_web_app": False,
                "has_topics_enabled": False,
                "allows_users_to_create_topics": False,
                "can_manage_bots": False,
            }
        return user

    def routes(self) -> list[BaseRoute]:
        both = ["GET", "POST"]
        return [
            Route("/bot{token}/{method}", self.bot_api, methods=both),
            Route("/_sandbox/telegram/messages", self._messages_route, methods=["GET"]),
            Route("/_sandbox/telegram/calls", self._calls_route, methods=["GET"]),
            Route("/_sandbox/telegram/deliver", self._deliver_route, methods=["POST"]),
            Route("/_sandbox/telegram/flush", self._flush_route, methods=["POST"]),
            Route("/_sandbox/telegram/chats", self._chats_route, methods=["POST"]),
            Route("/_sandbox/telegram/settings", self._settings_route, methods=both),
        ]

    # -- the Bot API ------------------------------------------------------------------

    async def bot_api(self, request: Request) -> Response:
        token = request.path_params["token"]
        raw_method = request.path_params["method"]
        try:
            self._check_token(token)
            args = await read_args(request)
            name, handler = self._handler(raw_method)
        except BotApiError as error:
            self._record_call(raw_method, {}, error.status)
            return _error_response(error)

        answer = await self._run(name, handler, args)

        if isinstance(answer, Response):
            return answer
        body: dict[str, Any] = {"ok": True, "result": answer.result}
        if answer.description:
            body["description"] = answer.description
        return _json(body)

    def _check_token(self, token: str) -> None:
        if _TOKEN.fullmatch(token) is None or int(token.split(":")[0]) >= 1 << 54:
            raise BotApiError(401, "Unauthorized: invalid token specified")
        if token != self.token:
            raise BotApiError(401, "Unauthorized")

    def _handler(self, raw_method: str) -> tuple[str, Handler]:
        found = self._methods.get(raw_method.lower())
        if found is None:
            raise BotApiError(404, "Not Found: method not found")
        return found

    async def _run(
        self, name: str, handler: Handler, args: dict[str, str]
    ) -> Ok | Response:
        fault = self.faults.take("telegram", name, args.get("chat_id", ""))
        early = await _apply_fault(fault) if fault is not None else None
        if isinstance(early, BotApiError):
            outcome: Ok | Response = _error_response(early)
        elif early is not None:
            outcome = early
        else:
            outcome = _invoke(handler, args)
        status = outcome.status_code if isinstance(outcome, Response) else 200
        self._record_call(name, args, status)
        return outcome

    def _record_call(self, method: str, args: dict[str, str], status: int) -> None:
        self._seq += 1
        self.calls.append(
            {"seq": self._seq, "method": method, "args": args, "status": status}
        )

    # -- methods ----------------------------------------------------------------------

    def _get_me(self, args: dict[str, str]) -> Ok:
        return Ok(self.bot_user(full=True))

    def _send_message(self, args: dict[str, str]) -> Ok:
        chat = self._chat(args.get("chat_id", ""))
        text = _message_text(args)
        parse_mode = _parse_mode(args)
        markup = parse_reply_markup(args.get("reply_markup", ""))
        if chat.id in self.blocked:
            raise BotApiError(*TELEGRAM_ERRORS["blocked"])
        message = BotMessage(
            seq=self._next_seq(),
            message_id=self.next_message_id(chat.id),
            chat=chat,
            text=text,
            date=int(time.time()),
            reply_markup=markup,
            parse_mode=parse_mode,
        )
        self.sent.append(message)
        return Ok(message.as_json(self.bot_user()))

    def _answer_callback_query(self, args: dict[str, str]) -> Ok:
        query_id = args.get("callback_query_id", "")
        if query_id not in self.open_callbacks:
            raise BotApiError(*QUERY_TOO_OLD)
        chat_id = self.open_callbacks.pop(query_id)
        self.callback_answers.append(
            {
                "seq": self._next_seq(),
                "callback_query_id": query_id,
                "chat_id": chat_id,
                "text": args.get("text", ""),
                "show_alert": _to_bool(args.get("show_alert", "")),
            }
        )
        return Ok(True)

    def _edit_message_reply_markup(self, args: dict[str, str]) -> Ok:
        message_id = _int_or_zero(args.get("message_id", ""))
        if not args.get("chat_id") and message_id == 0:
            inline_id = args.get("inline_message_id", "")
            raise bad_request(
                "message identifier is not specified"
                if not inline_id
                else "message to edit not found"
            )
        chat = self._chat(args.get("chat_id", ""))
        message = self._bot_message(chat.id, message_id)
        markup = parse_reply_markup(args.get("reply_markup", ""))
        if markup is not None and "inline_keyboard" not in markup:
            raise bad_request("inline keyboard expected")
        if markup == _inline_only(message.reply_markup):
            raise bad_request(
                "message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup "
                "of the message"
            )
        message.reply_markup = markup
        message.edit_date = int(time.time())
        self.edits.append(
            {
                "seq": self._next_seq(),
                "chat_id": chat.id,
                "message_id": message.message_id,
                "buttons": (markup or {}).get("inline_keyboard", []),
            }
        )
        return Ok(message.as_json(self.bot_user()))

    def _set_webhook(self, args: dict[str, str]) -> Ok:
        url = args.get("url", "")
        if not url:
            return self._delete_webhook(args)
        _check_webhook_url(url)
        secret = args.get("secret_token", "")
        if len(secret) > 256:
            raise bad_request("secret token is too long")
        if _SECRET.fullmatch(secret) is None:
            raise bad_request("secret token contains unallowed characters")
        allowed = _allowed_updates(args, self.webhook.allowed_updates)
        max_connections = _max_connections(args)
        if _to_bool(args.get("drop_pending_updates", "")):
            self.queues.clear()
            self.polled.clear()
        unchanged = (url, secret, max_connections) == (
            self.webhook.url,
            self.webhook.secret_token,
            self.webhook.max_connections,
        )
        self.webhook.url, self.webhook.secret_token = url, secret
        self.webhook.max_connections = max_connections
        self.webhook.allowed_updates = allowed
        self._move_polled_to_queues()
        return Ok(True, "Webhook is already set" if unchanged else "Webhook was set")

    def _delete_webhook(self, args: dict[str, str]) -> Ok:
        if _to_bool(args.get("drop_pending_updates", "")):
            self.queues.clear()
            self.polled.clear()
        was_set = bool(self.webhook.url)
        allowed = self.webhook.allowed_updates
        self.webhook = Webhook(allowed_updates=allowed)
        self.polled = sorted(
            self.polled + self.queues.pending(), key=lambda u: int(u["update_id"])
        )
        self.queues.clear()
        return Ok(
            True, "Webhook was deleted" if was_set else "Webhook is already deleted"
        )

    def _get_webhook_info(self, args: dict[str, str]) -> Ok:
        hook = self.webhook
        pending = len(self.queues.pending()) + len(self.polled)
        info: dict[str, Any] = {
            "url": hook.url,
            "has_custom_certificate": False,
            "pending_update_count": pending,
        }
        if hook.last_error_date:
            info["last_error_date"] = hook.last_error_date
            info["last_error_message"] = hook.last_error_message
        if hook.url:
            info["max_connections"] = hook.max_connections
            info["ip_address"] = "127.0.0.1"
        if hook.allowed_updates:
            info["allowed_updates"] = hook.allowed_updates
        return Ok(info)

    def _get_updates(self, args: dict[str, str]) -> Ok:
        if self.webhook.url:
            raise BotApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int_or_zero(args.get("offset", ""))
        limit = min(max(_int_or_zero(args.get("limit", "")) or 100, 1), 100)
        self.polled = [u for u in self.polled if int(u["update_id"]) >= offset]
        return Ok(self.polled[:limit])

    # -- state helpers ----------------------------------------------------------------

    def _chat(self, chat_id: str) -> Chat:
        if not chat_id:
            raise bad_request("chat_id is empty")
        try:
            number = int(chat_id)
        except ValueError:
            raise bad_request("chat not found") from None
        chat = self.chats.get(number)
        if chat is None:
            raise bad_request("chat not found")
        return chat

    def _bot_message(self, chat_id: int, message_id: int) -> BotMessage:
        for message in self.sent:
            if message.chat.id == chat_id and message.message_id == message_id:
                return message
        raise bad_request("message to edit not found")

    def next_message_id(self, chat_id: int) -> int:
        """Message ids count per private chat, shared by both sides of it."""
        number = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = number + 1
        return number

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def register_chat(self, chat: Chat) -> None:
        self.chats[chat.id] = chat

    # -- delivering updates -----------------------------------------------------------

    async def deliver(self, body: dict[str, Any]) -> dict[str, Any]:
        """Accept one update (complete or shorthand) and send what its queue allows."""
        update = self._number(build_update(self, body))
        kind = update_kind(update)
        self._observe(update, kind)
        accepted = {"update_id": update["update_id"], "update": update}
        if self.webhook.url and not self.webhook.accepts(kind):
            return accepted | {"skipped": "allowed_updates"}
        if not self.webhook.url:
            self.polled.append(update)
            return accepted | {"queued": True}
        key = queue_key(update, kind)
        self.queues.push(key, update)
        sent = await self._flush(key)
        return accepted | {
            "deliveries": sent,
            "pending_update_count": len(self.queues.pending()),
        }

    def _number(self, update: dict[str, Any]) -> dict[str, Any]:
        """The update with its id first: the given one, else the next in sequence."""
        given = update.get("update_id")
        if isinstance(given, int) and not isinstance(given, bool):
            self._next_update_id = max(self._next_update_id, given + 1)
        else:
            given = self._next_update_id
            self._next_update_id += 1
        rest = {key: value for key, value in update.items() if key != "update_id"}
        return {"update_id": given, **rest}

    def _observe(self, update: dict[str, Any], kind: str) -> None:
        """What the platform learns from an update: chats, open queries, blocks."""
        body = update.get(kind)
        if not isinstance(body, dict):
            return
        chat = body.get("chat") or (body.get("message") or {}).get("chat")
        if isinstance(chat, dict) and isinstance(chat.get("id"), int):
            self.register_chat(_chat_from_json(chat))
        if kind == "callback_query" and isinstance(body.get("id"), str):
            self.open_callbacks[body["id"]] = _callback_chat(body, chat)
        if kind == "my_chat_member" and isinstance(chat, dict):
            status = (body.get("new_chat_member") or {}).get("status")
            if status == "kicked":
                self.blocked.add(chat["id"])
            elif status == "member":
                self.blocked.discard(chat["id"])

    async def flush_all(self) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        for key in list(self.queues.by_key):
            sent += await self._flush(key)
        return sent

    async def _flush(self, key: int) -> list[dict[str, Any]]:
        """Send the queue's head until one fails: later updates wait behind it."""
        sent: list[dict[str, Any]] = []
        async with self.queues.lock(key):
            queue = self.queues.by_key.get(key, deque())
            while queue and self.webhook.url:
                outcome = await self._post(queue[0])
                sent.append(outcome)
                if outcome["status"] is None or not 200 <= outcome["status"] < 300:
                    break
                queue.popleft()
        return sent

    async def _post(self, update: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.webhook.secret_token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook.secret_token
        content = json.dumps(update, ensure_ascii=False, separators=(",", ":"))
        outcome: dict[str, Any] = {"update_id": update["update_id"], "status": None}
        try:
            async with httpx.AsyncClient(timeout=self.delivery_timeout_s) as client:
                response = await client.post(
                    self.webhook.url, content=content.encode(), headers=headers
                )
        except httpx.TimeoutException:
            self._webhook_failed("Read timeout expired")
        except httpx.HTTPError as error:
            self._webhook_failed(_transport_error_text(error))
        else:
            outcome["status"] = response.status_code
            if response.is_success:
                await self._run_reply(response)
            else:
                phrase = _phrase(response.status_code)
                self._webhook_failed(
                    f"Wrong response from the webhook: {response.status_code} {phrase}"
                )
        outcome["error"] = self.webhook.last_error_message if not _ok(outcome) else None
        logger.info(
            "sandbox.telegram.delivery update_id=%s status=%s",
            update["update_id"],
            outcome["status"],
        )
        return outcome

    async def _run_reply(self, response: httpx.Response) -> None:
        """Run the Bot API call a webhook's answer carries, as Telegram does (reference
        §1.4): its result and errors are never reported, and `setWebhook`,
        `deleteWebhook`, `close`, `logOut` and `get*` are ignored there."""
        args = _reply_args(response)
        method = args.pop("method", "")
        found = self._methods.get(method.lower())
        if found is None or _IGNORED_IN_REPLY.fullmatch(method):
            return
        name, handler = found
        await self._run(name, handler, args)

    def _webhook_failed(self, message: str) -> None:
        self.webhook.last_error_date = int(time.time())
        self.webhook.last_error_message = message

    def _move_polled_to_queues(self) -> None:
        for update in self.polled:
            kind = update_kind(update)
            self.queues.push(queue_key(update, kind), update)
        self.polled = []

    # -- controls ---------------------------------------------------------------------

    async def _messages_route(self, request: Request) -> Response:
        chat_filter = request.query_params.get("chat_id")

        def wanted(chat_id: object) -> bool:
            return chat_filter is None or str(chat_id) == chat_filter

        return JSONResponse(
            {
                "messages": [
                    message.describe()
                    for message in self.sent
                    if wanted(message.chat.id)
                ],
                "callback_answers": [
                    answer
                    for answer in self.callback_answers
                    if wanted(answer["chat_id"])
                ],
                "edits": [edit for edit in self.edits if wanted(edit["chat_id"])],
            }
        )

    async def _calls_route(self, request: Request) -> Response:
        return JSONResponse({"calls": self.calls})

    async def _deliver_route(self, request: Request) -> Response:
        body = await _control_body(request)
        if isinstance(body, Response):
            return body
        try:
            outcome = await self.deliver(body)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, 400)
        return JSONResponse(outcome)

    async def _flush_route(self, request: Request) -> Response:
        sent = await self.flush_all()
        pending = len(self.queues.pending())
        return JSONResponse({"deliveries": sent, "pending_update_count": pending})

    async def _chats_route(self, request: Request) -> Response:
        body = await _control_body(request, allow_list=True)
        if isinstance(body, Response):
            return body
        entries = body if isinstance(body, list) else [body]
        try:
            chats = [_chat_from_json(entry) for entry in entries]
        except (KeyError, TypeError, ValueError) as error:
            return JSONResponse({"error": f"bad chat: {error}"}, 400)
        for chat in chats:
            self.chats[chat.id] = chat
        return JSONResponse({"chats": [chat.as_json() for chat in self.chats.values()]})

    async def _settings_route(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _control_body(request)
            if isinstance(body, Response):
                return body
            problem = self._apply_settings(body)
            if problem:
                return JSONResponse({"error": problem}, 400)
        return JSONResponse(
            {
                "bot_token": self.token,
                "bot": self.bot_user(),
                "webhook_url": self.webhook.url,
                "delivery_timeout_s": self.delivery_timeout_s,
            }
        )

    def _apply_settings(self, body: dict[str, Any]) -> str | None:
        unknown = set(body) - {"bot_token", "delivery_timeout_s"}
        if unknown:
            return f"unknown settings: {', '.join(sorted(unknown))}"
        token = body.get("bot_token", self.token)
        if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
            return "bot_token must look like 123456:ABC-token"
        timeout = body.get("delivery_timeout_s", self.delivery_timeout_s)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            return "delivery_timeout_s must be a number"
        if timeout <= 0:
            return "delivery_timeout_s must be positive"
        self.token = token
        self.delivery_timeout_s = float(timeout)
        return None


# -- requests --------------------------------------------------------------------------


async def read_args(request: Request) -> dict[str, str]:
    """The call's arguments as the Bot API sees them: every value a string."""
    args = dict(parse_qsl(request.url.query, keep_blank_values=True))
    raw = await request.body()
    if not raw:
        return args
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type.lower() == "application/json":
        args.update(_json_args(raw))
    elif content_type.lower() == "multipart/form-data":
        async with request.form() as form:
            args.update((k, v) for k, v in form.multi_items() if isinstance(v, str))
    else:
        text = raw.decode("utf-8", errors="replace")
        args.update(parse_qsl(text, keep_blank_values=True))
    return args


def _reply_args(response: httpx.Response) -> dict[str, str]:
    """The arguments of a webhook answer's call: a JSON object or a form; else none."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type.lower() == "application/x-www-form-urlencoded":
        return dict(parse_qsl(response.text, keep_blank_values=True))
    try:
        return _json_args(response.content)
    except BotApiError:
        return {}


def _json_args(raw: bytes) -> dict[str, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("can't parse JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("can't parse JSON object")
    return {
        key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in body.items()
        if value is not None
    }


def _message_text(args: dict[str, str]) -> str:
    text = args.get("text", "")
    if not text.strip():
        raise bad_request("message text is empty")
    if len(text.encode("utf-16-le")) // 2 > MAX_TEXT_UTF16:
        raise bad_request("message is too long")
    return text


def _parse_mode(args: dict[str, str]) -> str | None:
    mode = args.get("parse_mode", "")
    if not mode or mode.lower() == "none":
        return None
    if mode.lower() not in _PARSE_MODES:
        raise bad_request("unsupported parse_mode")
    return mode


def parse_reply_markup(raw: str) -> dict[str, Any] | None:
    """The markup as given, checked the way the Bot API checks it."""
    if not raw:
        return None
    try:
        markup = json.loads(raw)
    except ValueError:
        raise bad_request("can't parse reply keyboard markup JSON object") from None
    if not isinstance(markup, dict):
        raise bad_request("object expected as reply markup")
    if "keyboard" in markup:
        _check_rows(markup["keyboard"], '"keyboard"', _check_keyboard_button)
        return markup
    if "inline_keyboard" in markup:
        _check_rows(
            markup["inline_keyboard"],
            '"inline_keyboard" of the InlineKeyboardMarkup',
            _check_inline_button,
        )
        return {
            "inline_keyboard": [
                [_inline_json(b) for b in row] for row in markup["inline_keyboard"]
            ]
        }
    return markup


def _check_rows(rows: Any, where: str, check: Callable[[Any], None]) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise bad_request(f"field {where} must be an Array of Arrays")
    for row in rows:
        for button in row:
            check(button)


def _check_keyboard_button(button: Any) -> None:
    if isinstance(button, str):
        return
    if not isinstance(button, dict):
        raise bad_request(
            "can't parse keyboard button: KeyboardButton must be a String or an Object"
        )
    if not isinstance(button.get("text"), str):
        raise bad_request("can't parse keyboard button: Can't find field \"text\"")


def _check_inline_button(button: Any) -> None:
    prefix = "can't parse inline keyboard button: "
    if not isinstance(button, dict):
        raise bad_request(prefix + "InlineKeyboardButton must be an Object")
    if not isinstance(button.get("text"), str):
        raise bad_request(prefix + 'Can\'t find field "text"')
    data = button.get("callback_data")
    if isinstance(data, str) and data:
        if len(data.encode("utf-8")) > MAX_CALLBACK_DATA_BYTES:
            raise bad_request("BUTTON_DATA_INVALID")
        return
    if not any(button.get(key) for key in ("url", "callback_game", "pay", "web_app")):
        raise bad_request(prefix + "Text buttons are unallowed in the inline keyboard")


def _inline_json(button: dict[str, Any]) -> dict[str, Any]:
    """A button as the server prints it back: text first, then its one action."""
    printed: dict[str, Any] = {"text": button["text"]}
    for key in ("url", "callback_data", "callback_game", "pay", "web_app"):
        if button.get(key):
            printed[key] = button[key]
            break
    return printed


def _inline_only(markup: dict[str, Any] | None) -> dict[str, Any] | None:
    if markup and "inline_keyboard" in markup:
        return markup
    return None


def _check_webhook_url(url: str) -> None:
    # A real bot needs HTTPS on port 443, 80, 88 or 8443; the sandbox takes any
    # http(s) URL so that a local service can receive updates.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("invalid webhook URL specified")


def _allowed_updates(
    args: dict[str, str], previous: list[str] | None
) -> list[str] | None:
    raw = args.get("allowed_updates")
    if raw is None:
        return previous
    try:
        value = json.loads(raw)
    except ValueError:
        return previous
    if not isinstance(value, list):
        return previous
    return [kind for kind in value if isinstance(kind, str)]


def _max_connections(args: dict[str, str]) -> int:
    raw = args.get("max_connections", "")
    number = _int_or_zero(raw) if raw else DEFAULT_MAX_CONNECTIONS
    return min(max(number, 1), 100)


def _to_bool(value: str) -> bool:
    return value.lower() in ("true", "1")


def _int_or_zero(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


# -- updates ---------------------------------------------------------------------------


def update_kind(update: dict[str, Any]) -> str:
    for kind in _UPDATE_KINDS:
        if kind in update:
            return kind
    return next((key for key in update if key != "update_id"), "unknown")


def queue_key(update: dict[str, Any], kind: str) -> int:
    """The Bot API's queue id (Client.cpp): chats, users' button presses, members."""
    body = update.get(kind) or {}
    if kind == "callback_query":
        return int((body.get("from") or {}).get("id", 0)) + (3 << 33)
    chat_id = int((body.get("chat") or {}).get("id", 0))
    if kind in ("my_chat_member", "chat_member"):
        return chat_id + (5 << 33)
    return chat_id


def build_update(telegram: TelegramSandbox, body: dict[str, Any]) -> dict[str, Any]:
    """A complete update as given, or one built from a shorthand (see docs)."""
    if any(kind in body for kind in _UPDATE_KINDS) or "update_id" in body:
        return dict(body)
    chat_id = body.get("chat_id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        raise ValueError("a shorthand update needs an integer chat_id")
    chat = telegram.chats.get(chat_id) or Chat(id=chat_id)
    if "first_name" in body or "username" in body:
        chat = Chat(
            id=chat_id,
            first_name=str(body.get("first_name", chat.first_name)),
            username=body.get("username", chat.username),
        )
    for key, builder in _SHORTHANDS.items():
        if key in body:
            return builder(telegram, chat, body)
    known = ", ".join(_SHORTHANDS)
    raise ValueError(f"a shorthand update needs one of: {known}")


def _message(telegram: TelegramSandbox, chat: Chat, **content: Any) -> dict[str, Any]:
    return {
        "message_id": telegram.next_message_id(chat.id),
        "from": chat.as_user(),
        "chat": chat.as_json(),
        "date": int(time.time()),
        **content,
    }


def _text_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    return {"message": _message(t, chat, text=str(body["text"]))}


def _contact_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "phone_number": str(body["contact_phone"]),
        "first_name": chat.first_name,
    }
    # A contact shared with the request-contact button carries the sender's id; a
    # forwarded card carries another id or none.
    owner = body.get("contact_user_id", chat.id)
    if owner is not None:
        contact["user_id"] = owner
    return {"message": _message(t, chat, contact=contact)}


def _location_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    location = body["location"]
    if not isinstance(location, dict):
        raise ValueError("location must be {latitude, longitude}")
    return {"message": _message(t, chat, location=location)}


def _media_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    kind = body["media"]
    files = {
        "voice": {
            "file_id": "AwACAgIAAxk-sandbox",
            "file_unique_id": "AgAD-sb1",
            "duration": 3,
            "mime_type": "audio/ogg",
        },
        "photo": [
            {
                "file_id": "AgACAgIAAxk-sandbox",
                "file_unique_id": "AQAD-sb2",
                "width": 90,
                "height": 90,
                "file_size": 1200,
            }
        ],
        "sticker": {
            "file_id": "CAACAgIAAxk-sandbox",
            "file_unique_id": "AgAD-sb3",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "👍",
        },
    }
    if kind not in files:
        raise ValueError(f"media must be one of: {', '.join(files)}")
    return {"message": _message(t, chat, **{kind: files[kind]})}


def _callback_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    message = _pressed_message(t, chat, body.get("message_id"))
    query_id = body.get("callback_query_id") or f"{chat.id}{t._next_update_id:011d}"
    return {
        "callback_query": {
            "id": str(query_id),
            "from": chat.as_user(),
            "message": message,
            "chat_instance": f"-{chat.id}000",
            "data": str(body["callback_data"]),
        }
    }


def _pressed_message(t: TelegramSandbox, chat: Chat, message_id: Any) -> dict[str, Any]:
    """The bot message carrying the button: the given one, else the newest inline."""
    candidates = [
        m
        for m in t.sent
        if m.chat.id == chat.id and _inline_only(m.reply_markup) is not None
    ]
    if message_id is not None:
        candidates = [m for m in candidates if m.message_id == message_id]
    if not candidates:
        raise ValueError("no bot message with inline buttons in that chat")
    return candidates[-1].as_json(t.bot_user())


def _edited_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    message_id = body.get("message_id")
    if not isinstance(message_id, int):
        raise ValueError("an edit needs the message_id of the client's message")
    now = int(time.time())
    return {
        "edited_message": {
            "message_id": message_id,
            "from": chat.as_user(),
            "chat": chat.as_json(),
            "date": now - 60,
            "edit_date": now,
            "text": str(body["edited_text"]),
        }
    }


def _member_update(
    t: TelegramSandbox, chat: Chat, body: dict[str, Any]
) -> dict[str, Any]:
    blocked = bool(body["blocked"])
    bot = t.bot_user()
    old, new = ("member", "kicked") if blocked else ("kicked", "member")
    new_member: dict[str, Any] = {"user": bot, "status": new}
    if blocked:
        new_member["until_date"] = 0
    return {
        "my_chat_member": {
            "chat": chat.as_json(),
            "from": chat.as_user(),
            "date": int(time.time()),
            "old_chat_member": {"user": bot, "status": old},
            "new_chat_member": new_member,
        }
    }


_SHORTHANDS: dict[
    str, Callable[[TelegramSandbox, Chat, dict[str, Any]], dict[str, Any]]
] = {
    "text": _text_update,
    "contact_phone": _contact_update,
    "location": _location_update,
    "media": _media_update,
    "callback_data": _callback_update,
    "edited_text": _edited_update,
    "blocked": _member_update,
}


def _chat_from_json(raw: dict[str, Any]) -> Chat:
    chat_id = raw["id"]
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        raise ValueError("chat id must be an integer")
    return Chat(
        id=chat_id,
        first_name=str(raw.get("first_name") or raw.get("title") or "Test"),
        username=raw.get("username"),
        last_name=raw.get("last_name"),
        type=str(raw.get("type", "private")),
    )


# -- answers ---------------------------------------------------------------------------


def _invoke(handler: Handler, args: dict[str, str]) -> Ok | Response:
    try:
        return handler(args)
    except BotApiError as error:
        return _error_response(error)


async def _apply_fault(fault: MessengerFault) -> BotApiError | Response | None:
    if fault.kind == "latency":
        await asyncio.sleep(fault.seconds)
        return None
    if fault.kind == "bad_gateway":
        return _bad_gateway_page()
    if fault.kind == "retry_after":
        return BotApiError(
            429,
            f"Too Many Requests: retry after {fault.retry_after}",
            {"retry_after": fault.retry_after},
        )
    if fault.kind == "error":
        return BotApiError(fault.status or 400, fault.description or "Bad Request")
    status, description = TELEGRAM_ERRORS[fault.kind]
    return BotApiError(fault.status or status, fault.description or description)


def _error_response(error: BotApiError) -> Response:
    headers = {}
    retry_after = (error.parameters or {}).get("retry_after")
    if retry_after:
        # HttpConnection::send_response adds the header beside the JSON parameter.
        headers["Retry-After"] = str(retry_after)
    return _json(error.body(), error.status, headers)


def _json(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(
        content, status_code=status, media_type="application/json", headers=headers
    )


def _bad_gateway_page() -> Response:
    return Response(BAD_GATEWAY_PAGE, status_code=502, media_type="text/html")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _ok(outcome: dict[str, Any]) -> bool:
    status = outcome["status"]
    return status is not None and 200 <= status < 300


def _transport_error_text(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "Connection refused"
    return f"Failed to send the request: {type(error).__name__}"


async def _control_body(request: Request, *, allow_list: bool = False) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError as error:
        return JSONResponse({"error": f"not JSON: {error}"}, 400)
    if isinstance(body, dict) or (allow_list and isinstance(body, list)):
        return body
    return JSONResponse({"error": "expected a JSON object"}, 400)


def _callback_chat(body: dict[str, Any], chat: object) -> int | None:
    """The chat a callback query came from: its message's, else (a private chat) the
    user's own id."""
    if isinstance(chat, dict) and isinstance(chat.get("id"), int):
        return int(chat["id"])
    sender = body.get("from")
    if isinstance(sender, dict) and isinstance(sender.get("id"), int):
        return int(sender["id"])
    return None
