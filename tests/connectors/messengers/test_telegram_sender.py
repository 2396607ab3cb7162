"""TelegramSender: what crosses the wire, and every Bot API error mapped."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors.messengers.base import (
    MESSENGER_TIMEOUT,
    AuthFailed,
    Button,
    ChatMigrated,
    MessengerError,
    Rejected,
    SentMessage,
    SlowDown,
    Unavailable,
    Unreachable,
    messenger_client,
)
from connectors.messengers.telegram import (
    ALLOWED_UPDATES,
    PHONE_BUTTON_TEXT,
    TelegramSender,
    map_telegram_error,
)
from sandbox.telegram import SANDBOX_BOT_TOKEN
from tests.connectors.bitrix24.conftest import Wire
from tests.connectors.messengers.conftest import add_fault
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox, free_port

CHAT = "100000001"
OTHER_CHAT = "100000002"
THIRD_CHAT = "100000003"


@pytest.fixture
def tg(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox with three chats that have written to the bot."""
    chats = [{"id": int(chat)} for chat in (CHAT, OTHER_CHAT, THIRD_CHAT)]
    sandbox.http.post("/_sandbox/telegram/chats", json=chats).raise_for_status()
    sandbox.http.post(f"/bot{SANDBOX_BOT_TOKEN}/deleteWebhook").raise_for_status()
    return sandbox


@pytest.fixture
def sender(tg: RunningSandbox, http: httpx.AsyncClient) -> TelegramSender:
    return TelegramSender(http, SecretStr(SANDBOX_BOT_TOKEN), tg.base_url)


def sent_bodies(wire: Wire, method: str) -> list[Any]:
    return wire.bodies(f"/{method}")


def recorded(sandbox: RunningSandbox) -> dict[str, Any]:
    body: dict[str, Any] = sandbox.http.get("/_sandbox/telegram/messages").json()
    return body


def deliver_callback(sandbox: RunningSandbox, chat: str, data: str) -> str:
    """A button press on the newest inline message; the query id the bot got."""
    sandbox.http.post(
        "/_sandbox/telegram/deliver", json={"chat_id": int(chat), "callback_data": data}
    ).raise_for_status()
    updates = sandbox.http.post(f"/bot{SANDBOX_BOT_TOKEN}/getUpdates").json()
    query_id: str = updates["result"][-1]["callback_query"]["id"]
    return query_id


class TestSendText:
    async def test_a_text_goes_to_send_message_with_a_numeric_chat_id(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        sent = await sender.send_text(CHAT, "Здравствуйте! Чем помочь?")

        [request] = wire.requests
        assert request.url.path == f"/bot{SANDBOX_BOT_TOKEN}/sendMessage"
        assert request.method == "POST"
        assert json.loads(request.content) == {
            "chat_id": 100000001,
            "text": "Здравствуйте! Чем помочь?",
        }
        [message] = recorded(tg)["messages"]
        assert sent == SentMessage(str(message["message_id"]))
        assert message["text"] == "Здравствуйте! Чем помочь?"

    async def test_buttons_become_an_inline_keyboard_one_per_row(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        buttons = [Button("До 5 000 ₽", "budget:5k"), Button("Больше", "budget:more")]

        await sender.send_text(CHAT, "Ваш бюджет?", buttons=buttons)

        [body] = sent_bodies(wire, "sendMessage")
        assert body["reply_markup"] == {
            "inline_keyboard": [
                [{"text": "До 5 000 ₽", "callback_data": "budget:5k"}],
                [{"text": "Больше", "callback_data": "budget:more"}],
            ]
        }
        assert (
            recorded(tg)["messages"][0]["buttons"]
            == body["reply_markup"]["inline_keyboard"]
        )

    async def test_a_phone_request_is_a_one_time_contact_keyboard(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        await sender.send_text(CHAT, "Оставьте номер", request_phone=True)

        [body] = sent_bodies(wire, "sendMessage")
        assert body["reply_markup"] == {
            "keyboard": [[{"text": PHONE_BUTTON_TEXT, "request_contact": True}]],
            "resize_keyboard": True,
            "one_time_keyboard": True,
        }
        assert recorded(tg)["messages"][0]["request_contact"] is True

    async def test_buttons_and_a_phone_request_together_send_nothing(
        self, sender: TelegramSender, wire: Wire
    ) -> None:
        with pytest.raises(ValueError, match="not both"):
            await sender.send_text(
                CHAT, "?", buttons=[Button("Да", "y")], request_phone=True
            )

        assert wire.requests == []

    async def test_one_blocked_chat_does_not_stop_the_others(
        self, sender: TelegramSender, tg: RunningSandbox
    ) -> None:
        """TG-4: a 403 from one blocked chat does not stop the other sends."""
        add_fault(tg, "telegram", kind="blocked", recipient=OTHER_CHAT)
        outcomes: list[str] = []

        for chat in (CHAT, OTHER_CHAT, THIRD_CHAT):
            try:
                await sender.send_text(chat, "Напоминаем о записи завтра в 10:00")
                outcomes.append("sent")
            except Unreachable:
                outcomes.append("unreachable")

        assert outcomes == ["sent", "unreachable", "sent"]
        assert [m["chat_id"] for m in recorded(tg)["messages"]] == [
            100000001,
            100000003,
        ]


class TestLogLines:
    async def test_sending_and_removing_buttons_log_no_chat_id(
        self, sender: TelegramSender
    ) -> None:
        with capture_logs() as logs:
            sent = await sender.send_text(CHAT, "Придёте?", buttons=[Button("Да", "c")])
            await sender.remove_buttons(CHAT, sent.provider_message_id)

        events = [line["event"] for line in logs]
        assert events == ["telegram.sent", "telegram.buttons_removed"]
        # A private chat's id is the person's Telegram id: personal data.
        assert not any(CHAT in str(value) for line in logs for value in line.values())


class TestAnswerCallback:
    async def test_a_fresh_callback_is_answered(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        await sender.send_text(CHAT, "Придёте?", buttons=[Button("Да", "confirm:42")])
        query_id = deliver_callback(tg, CHAT, "confirm:42")

        answered = await sender.answer_callback(query_id, "Записали")

        assert answered is True
        assert sent_bodies(wire, "answerCallbackQuery") == [
            {"callback_query_id": query_id, "text": "Записали"}
        ]
        assert recorded(tg)["callback_answers"][0]["callback_query_id"] == query_id

    async def test_a_query_too_old_is_a_warning_and_false(
        self, sender: TelegramSender
    ) -> None:
        """TG-3: 'query is too old' is logged as a warning and swallowed."""
        with capture_logs() as logs:
            answered = await sender.answer_callback("4382000000000000001")

        assert answered is False
        assert {
            "event": "telegram.callback_expired",
            "log_level": "warning",
            "callback_id": "4382000000000000001",
        } in logs

    async def test_other_errors_of_answer_callback_still_raise(
        self, sender: TelegramSender, tg: RunningSandbox
    ) -> None:
        add_fault(tg, "telegram", kind="server_error", method="answerCallbackQuery")

        with pytest.raises(Unavailable):
            await sender.answer_callback("4382000000000000001")


class TestOtherCalls:
    async def test_buttons_are_removed_and_a_second_removal_is_quiet(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        sent = await sender.send_text(CHAT, "?", buttons=[Button("Да", "y")])

        await sender.remove_buttons(CHAT, sent.provider_message_id)
        await sender.remove_buttons(CHAT, sent.provider_message_id)

        bodies = sent_bodies(wire, "editMessageReplyMarkup")
        assert bodies[0] == {
            "chat_id": 100000001,
            "message_id": int(sent.provider_message_id),
        }
        assert len(recorded(tg)["edits"]) == 1

    async def test_set_webhook_sends_the_secret_and_the_handled_kinds(
        self, sender: TelegramSender, tg: RunningSandbox, wire: Wire
    ) -> None:
        url = "http://127.0.0.1:8000/webhooks/telegram"

        await sender.set_webhook(url, SecretStr("tg_secret-1"))

        [body] = sent_bodies(wire, "setWebhook")
        assert body == {
            "url": url,
            "secret_token": "tg_secret-1",
            "allowed_updates": list(ALLOWED_UPDATES),
        }
        info = tg.http.get(f"/bot{SANDBOX_BOT_TOKEN}/getWebhookInfo").json()["result"]
        assert info["url"] == url
        assert info["allowed_updates"] == list(ALLOWED_UPDATES)


class TestErrorsFromTheSandbox:
    @pytest.mark.parametrize(
        ("fault", "error_class"),
        [
            ({"kind": "blocked"}, Unreachable),
            ({"kind": "deactivated"}, Unreachable),
            ({"kind": "kicked"}, Unreachable),
            ({"kind": "cannot_initiate"}, Unreachable),
            ({"kind": "chat_not_found"}, Rejected),
            ({"kind": "unauthorized"}, AuthFailed),
            ({"kind": "server_error"}, Unavailable),
            ({"kind": "bad_gateway"}, Unavailable),
        ],
    )
    async def test_each_fault_arrives_as_its_class(
        self,
        sender: TelegramSender,
        tg: RunningSandbox,
        fault: dict[str, Any],
        error_class: type[MessengerError],
    ) -> None:
        add_fault(tg, "telegram", **fault)

        with pytest.raises(error_class) as caught:
            await sender.send_text(CHAT, "x")

        assert type(caught.value) is error_class
        assert caught.value.method == "sendMessage"

    async def test_retry_after_becomes_slow_down_with_its_seconds(
        self, sender: TelegramSender, tg: RunningSandbox
    ) -> None:
        add_fault(tg, "telegram", kind="retry_after", retry_after=7)

        with pytest.raises(SlowDown) as caught:
            await sender.send_text(CHAT, "x")

        assert caught.value.retry_after_s == 7.0

    async def test_a_wrong_token_is_auth_failed(
        self, tg: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        sender = TelegramSender(http, "123456:AAwrong-token", tg.base_url)

        with pytest.raises(AuthFailed):
            await sender.send_text(CHAT, "x")

    async def test_a_chat_that_never_wrote_is_rejected(
        self, sender: TelegramSender
    ) -> None:
        with pytest.raises(Rejected, match="chat not found"):
            await sender.send_text("100000999", "x")

    async def test_a_slow_api_is_unavailable_and_maybe_sent(
        self, tg: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        add_fault(tg, "telegram", kind="latency", seconds=1.0)
        sender = TelegramSender(
            http, SANDBOX_BOT_TOKEN, tg.base_url, timeout=httpx.Timeout(0.2)
        )

        with pytest.raises(Unavailable) as caught:
            await sender.send_text(CHAT, "x")

        assert caught.value.sent is True

    async def test_a_refused_connection_is_unavailable_and_surely_not_sent(
        self, http: httpx.AsyncClient
    ) -> None:
        sender = TelegramSender(
            http, SANDBOX_BOT_TOKEN, f"http://127.0.0.1:{free_port()}"
        )

        with pytest.raises(Unavailable) as caught:
            await sender.send_text(CHAT, "x")

        assert caught.value.sent is False


class TestTokenNeverLeaks:
    async def test_no_log_line_or_error_carries_the_token(
        self, tg: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        add_fault(tg, "telegram", kind="blocked", recipient=OTHER_CHAT)
        dead = TelegramSender(
            http, SANDBOX_BOT_TOKEN, f"http://127.0.0.1:{free_port()}"
        )
        live = TelegramSender(http, SANDBOX_BOT_TOKEN, tg.base_url)
        errors: list[BaseException] = []

        with capture_logs() as logs:
            await live.send_text(CHAT, "x")
            await live.answer_callback("1")
            for sender, chat in ((live, OTHER_CHAT), (dead, CHAT)):
                try:
                    await sender.send_text(chat, "x")
                except MessengerError as error:
                    errors.append(error)

        seen = repr(logs) + "".join(_chain(error) for error in errors)
        assert len(errors) == 2
        assert SANDBOX_BOT_TOKEN not in seen
        assert SANDBOX_BOT_TOKEN.split(":")[1] not in seen
        assert {entry["event"] for entry in logs} >= {
            "telegram.sent",
            "telegram.callback_expired",
            "telegram.call_failed",
            "telegram.unavailable",
        }

    async def test_the_senders_state_shows_no_token(
        self, http: httpx.AsyncClient
    ) -> None:
        sender = TelegramSender(http, SANDBOX_BOT_TOKEN)

        assert SANDBOX_BOT_TOKEN not in repr(vars(sender))


def _chain(error: BaseException | None) -> str:
    text = ""
    while error is not None:
        text += f"{type(error).__name__}: {error!s} {error!r}\n"
        error = error.__cause__ or error.__context__
    return text


# Reference §1.7 and the recorded fixtures: every Bot API answer leadloop can get.
REFERENCE_ERRORS: list[tuple[int, dict[str, Any] | None, type[MessengerError]]] = [
    (403, load_fixture("telegram/api_error_403_blocked.json"), Unreachable),
    (429, load_fixture("telegram/api_error_429_retry_after.json"), SlowDown),
    (
        403,
        {
            "ok": False,
            "error_code": 403,
            "description": "Forbidden: user is deactivated",
        },
        Unreachable,
    ),
    (
        403,
        {
            "ok": False,
            "error_code": 403,
            "description": "Forbidden: bot was kicked from the group chat",
        },
        Unreachable,
    ),
    (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: query is too old and response timeout "
            "expired or query ID is invalid",
        },
        Rejected,
    ),
    (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -1001000000001},
        },
        ChatMigrated,
    ),
    (
        500,
        {"ok": False, "error_code": 500, "description": "Internal Server Error"},
        Unavailable,
    ),
    (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, AuthFailed),
    (404, {"ok": False, "error_code": 404, "description": "Not Found"}, AuthFailed),
    (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found: method not found"},
        Rejected,
    ),
    (
        400,
        {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
        Rejected,
    ),
    (502, None, Unavailable),
]


class TestErrorMapping:
    @pytest.mark.parametrize(("status", "body", "error_class"), REFERENCE_ERRORS)
    def test_every_reference_and_fixture_error_is_mapped(
        self, status: int, body: Any, error_class: type[MessengerError]
    ) -> None:
        error = map_telegram_error("sendMessage", status, body)

        assert type(error) is error_class
        assert error.channel == "telegram"
        assert error.status == status

    def test_the_recorded_429_waits_its_retry_after(self) -> None:
        body = load_fixture("telegram/api_error_429_retry_after.json")

        error = map_telegram_error("sendMessage", 429, body)

        assert isinstance(error, SlowDown)
        assert error.retry_after_s == 5.0

    def test_a_429_without_parameters_reads_the_header_then_the_text(self) -> None:
        bare = {"ok": False, "error_code": 429, "description": "Too Many Requests"}
        texted = {**bare, "description": "Too Many Requests: retry after 9"}

        by_header = map_telegram_error("sendMessage", 429, bare, "12")
        by_text = map_telegram_error("sendMessage", 429, texted)

        assert isinstance(by_header, SlowDown)
        assert by_header.retry_after_s == 12.0
        assert isinstance(by_text, SlowDown)
        assert by_text.retry_after_s == 9.0

    @respx.mock
    async def test_a_migrated_group_reports_its_new_chat_id(self) -> None:
        # The sandbox serves private chats only; a supergroup upgrade is replayed.
        route = respx.post(
            f"https://api.telegram.org/bot{SANDBOX_BOT_TOKEN}/sendMessage"
        )
        route.respond(400, json=REFERENCE_ERRORS[5][1])

        async with httpx.AsyncClient() as http:
            sender = TelegramSender(http, SANDBOX_BOT_TOKEN)
            with pytest.raises(ChatMigrated) as caught:
                await sender.send_text("-100000001", "x")

        assert caught.value.new_chat_id == -1001000000001
        assert json.loads(route.calls.last.request.content)["chat_id"] == -100000001

    @respx.mock
    async def test_an_ok_answer_without_a_message_is_unavailable(self) -> None:
        respx.post(
            f"https://api.telegram.org/bot{SANDBOX_BOT_TOKEN}/sendMessage"
        ).respond(200, json={"ok": True, "result": True})

        async with httpx.AsyncClient() as http:
            sender = TelegramSender(http, SANDBOX_BOT_TOKEN)
            with pytest.raises(Unavailable, match="no message_id"):
                await sender.send_text(CHAT, "x")


class TestMessengerClient:
    async def test_the_shared_client_has_explicit_timeouts_and_no_redirects(
        self,
    ) -> None:
        async with messenger_client() as client:
            assert client.timeout == MESSENGER_TIMEOUT
            assert client.timeout.connect == 5.0
            assert client.follow_redirects is False
