"""The Telegram Bot API stand-in answers, records and delivers like the real one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from sandbox.server import SandboxOptions
from sandbox.telegram import (
    SANDBOX_BOT_TOKEN,
    UPDATE_IDS_PER_SECOND,
    first_update_id,
)
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.sandbox.receiver import Receiver, running_receiver
from tests.sandbox.shapes import shape_differences

API = f"/bot{SANDBOX_BOT_TOKEN}"
CHAT = 100000001
OTHER_CHAT = 100000002
SECRET = "s3cret_token-1"


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    receiver_server.clear()
    return receiver_server


@pytest.fixture
def tg(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox with no webhook and two chats that have written to the bot."""
    call(sandbox, "deleteWebhook")
    chats = [
        {"id": CHAT, "first_name": "Иван", "type": "private"},
        {"id": OTHER_CHAT, "first_name": "Пётр", "type": "private"},
    ]
    sandbox.http.post("/_sandbox/telegram/chats", json=chats).raise_for_status()
    return sandbox


def call(sandbox: RunningSandbox, method: str, **params: Any) -> httpx.Response:
    return sandbox.http.post(f"{API}/{method}", json=params)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    return body["result"]


def add_fault(sandbox: RunningSandbox, **fault: Any) -> None:
    response = sandbox.http.post(
        "/_sandbox/faults", json={"target": "telegram", **fault}
    )
    assert response.status_code == 200, response.text


def recorded(sandbox: RunningSandbox) -> dict[str, Any]:
    response = sandbox.http.get("/_sandbox/telegram/messages")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def calls(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    """Every Bot API call the sandbox answered, in order."""
    answered: list[dict[str, Any]] = sandbox.http.get(
        "/_sandbox/telegram/calls"
    ).json()["calls"]
    return answered


def deliver(sandbox: RunningSandbox, **update: Any) -> dict[str, Any]:
    response = sandbox.http.post("/_sandbox/telegram/deliver", json=update)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def set_webhook(sandbox: RunningSandbox, url: str, **params: Any) -> None:
    ok(call(sandbox, "setWebhook", url=url, secret_token=SECRET, **params))


def inline(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"inline_keyboard": [[{"text": t, "callback_data": d}] for t, d in pairs]}


class TestAuthenticationAndRouting:
    def test_get_me_describes_the_bot(self, tg: RunningSandbox) -> None:
        me = ok(tg.http.get(f"{API}/getMe"))

        assert me["id"] == int(SANDBOX_BOT_TOKEN.split(":")[0])
        assert me["is_bot"] is True
        assert {"username", "can_join_groups", "supports_inline_queries"} <= set(me)

    def test_an_unknown_token_gets_401_unauthorized(self, tg: RunningSandbox) -> None:
        response = tg.http.post("/bot123456:AAwrong-token/getMe")

        assert response.status_code == 401
        assert response.json() == {
            "ok": False,
            "error_code": 401,
            "description": "Unauthorized",
        }

    def test_a_token_without_a_bot_id_is_an_invalid_token(
        self, tg: RunningSandbox
    ) -> None:
        response = tg.http.post("/botnot-a-token/getMe")

        assert response.status_code == 401
        assert response.json()["description"] == "Unauthorized: invalid token specified"

    def test_an_unknown_method_is_404(self, tg: RunningSandbox) -> None:
        response = call(tg, "sendTelepathy")

        assert response.status_code == 404
        assert response.json()["description"] == "Not Found: method not found"

    def test_method_names_are_case_insensitive(self, tg: RunningSandbox) -> None:
        assert ok(tg.http.get(f"{API}/GETME"))["is_bot"] is True

    def test_the_bot_token_can_be_changed_in_the_settings(
        self, tg: RunningSandbox
    ) -> None:
        token = "123456789:AAnother-sandbox-token"
        tg.http.post("/_sandbox/telegram/settings", json={"bot_token": token})

        try:
            old = tg.http.get(f"{API}/getMe")
            new = tg.http.get(f"/bot{token}/getMe")
        finally:
            tg.http.post(
                "/_sandbox/telegram/settings", json={"bot_token": SANDBOX_BOT_TOKEN}
            )

        assert old.status_code == 401
        assert new.json()["result"]["id"] == 123456789


class TestSendMessage:
    def test_a_json_send_answers_a_message_shaped_like_a_recorded_one(
        self, tg: RunningSandbox
    ) -> None:
        message = ok(call(tg, "sendMessage", chat_id=CHAT, text="Здравствуйте!"))

        recording = load_fixture("telegram/message_text.json")["message"]
        optional = frozenset({"username", "language_code", "link_preview_options"})
        assert shape_differences(message, recording, allow_missing=optional) == []
        assert message["chat"]["id"] == CHAT
        assert message["from"]["is_bot"] is True
        assert message["text"] == "Здравствуйте!"

    def test_form_and_query_arguments_work_as_json_does(
        self, tg: RunningSandbox
    ) -> None:
        markup = json.dumps(inline(("Да", "yes")))
        form = {"chat_id": str(CHAT), "text": "Форма", "reply_markup": markup}

        by_form = ok(tg.http.post(f"{API}/sendMessage", data=form))
        by_query = ok(tg.http.get(f"{API}/sendMessage", params=form))

        assert by_form["reply_markup"] == inline(("Да", "yes"))
        assert by_query["text"] == "Форма"

    def test_message_ids_count_up_per_chat(self, tg: RunningSandbox) -> None:
        ids = [
            ok(call(tg, "sendMessage", chat_id=chat, text="x"))["message_id"]
            for chat in (CHAT, CHAT, OTHER_CHAT)
        ]

        assert ids == [1, 2, 1]

    def test_a_chat_that_never_wrote_is_not_found(self, tg: RunningSandbox) -> None:
        response = call(tg, "sendMessage", chat_id=100000999, text="Привет")

        assert response.status_code == 400
        assert response.json() == {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: chat not found",
        }

    @pytest.mark.parametrize(
        ("params", "description"),
        [
            ({"text": "x"}, "Bad Request: chat_id is empty"),
            ({"chat_id": CHAT, "text": "  "}, "Bad Request: message text is empty"),
            ({"chat_id": CHAT}, "Bad Request: message text is empty"),
            (
                {"chat_id": CHAT, "text": "x", "parse_mode": "BBCode"},
                "Bad Request: unsupported parse_mode",
            ),
        ],
    )
    def test_missing_or_bad_arguments_are_400_with_the_servers_text(
        self, tg: RunningSandbox, params: dict[str, Any], description: str
    ) -> None:
        response = call(tg, "sendMessage", **params)

        assert response.status_code == 400
        assert response.json()["description"] == description

    def test_text_is_limited_to_4096_utf16_units(self, tg: RunningSandbox) -> None:
        longest = ok(call(tg, "sendMessage", chat_id=CHAT, text="я" * 4096))
        too_long = call(tg, "sendMessage", chat_id=CHAT, text="я" * 4097)
        # An emoji outside the BMP counts as two units, as Telegram counts it.
        emoji_over = call(tg, "sendMessage", chat_id=CHAT, text="😀" * 2049)

        assert len(longest["text"]) == 4096
        assert too_long.json()["description"] == "Bad Request: message is too long"
        assert emoji_over.status_code == 400

    def test_an_inline_keyboard_comes_back_in_the_message(
        self, tg: RunningSandbox
    ) -> None:
        markup = inline(("Да", "confirm:42"), ("Нет", "cancel:42"))

        message = ok(
            call(tg, "sendMessage", chat_id=CHAT, text="Придёте?", reply_markup=markup)
        )

        assert message["reply_markup"] == markup

    def test_a_contact_request_keyboard_is_kept_but_not_returned(
        self, tg: RunningSandbox
    ) -> None:
        markup = {
            "keyboard": [[{"text": "📱 Отправить номер", "request_contact": True}]],
            "resize_keyboard": True,
            "one_time_keyboard": True,
        }

        message = ok(
            call(
                tg, "sendMessage", chat_id=CHAT, text="Ваш номер?", reply_markup=markup
            )
        )

        assert "reply_markup" not in message
        [sent] = recorded(tg)["messages"]
        assert sent["request_contact"] is True
        assert sent["keyboard"] == markup["keyboard"]

    @pytest.mark.parametrize(
        ("markup", "description"),
        [
            (
                inline(("Да", "x" * 65)),
                "Bad Request: BUTTON_DATA_INVALID",
            ),
            (
                {"inline_keyboard": [[{"text": "Да"}]]},
                "Bad Request: can't parse inline keyboard button: "
                "Text buttons are unallowed in the inline keyboard",
            ),
            (
                {"inline_keyboard": [{"text": "Да", "callback_data": "y"}]},
                'Bad Request: field "inline_keyboard" of the InlineKeyboardMarkup '
                "must be an Array of Arrays",
            ),
            ("not json", "Bad Request: can't parse reply keyboard markup JSON object"),
        ],
    )
    def test_a_bad_keyboard_is_refused_like_the_server_refuses_it(
        self, tg: RunningSandbox, markup: Any, description: str
    ) -> None:
        response = call(tg, "sendMessage", chat_id=CHAT, text="?", reply_markup=markup)

        assert response.status_code == 400
        assert response.json()["description"] == description
        assert recorded(tg)["messages"] == []

    def test_a_body_that_is_not_json_is_refused(self, tg: RunningSandbox) -> None:
        response = tg.http.post(
            f"{API}/sendMessage",
            content=b"{",
            headers={"Content-Type": "application/json"},
        )

        assert response.status_code == 400
        assert response.json()["description"] == "Bad Request: can't parse JSON object"


class TestRecording:
    def test_sent_messages_are_listed_in_order_with_chat_text_and_buttons(
        self, tg: RunningSandbox
    ) -> None:
        ok(call(tg, "sendMessage", chat_id=CHAT, text="Первое"))
        ok(
            call(
                tg,
                "sendMessage",
                chat_id=OTHER_CHAT,
                text="Второе",
                reply_markup=inline(("Да", "yes")),
            )
        )

        messages = recorded(tg)["messages"]

        assert [(m["chat_id"], m["text"]) for m in messages] == [
            (CHAT, "Первое"),
            (OTHER_CHAT, "Второе"),
        ]
        assert messages[1]["buttons"] == [[{"text": "Да", "callback_data": "yes"}]]

    def test_the_record_can_be_filtered_by_chat(self, tg: RunningSandbox) -> None:
        ok(call(tg, "sendMessage", chat_id=CHAT, text="a"))
        ok(call(tg, "sendMessage", chat_id=OTHER_CHAT, text="b"))

        response = tg.http.get("/_sandbox/telegram/messages", params={"chat_id": CHAT})

        assert [m["text"] for m in response.json()["messages"]] == ["a"]

    def test_the_filter_applies_to_callback_answers_and_edits_too(
        self, tg: RunningSandbox
    ) -> None:
        for chat in (CHAT, OTHER_CHAT):
            sent = ok(
                call(
                    tg,
                    "sendMessage",
                    chat_id=chat,
                    text="?",
                    reply_markup=inline(("Да", "y")),
                )
            )
            deliver(tg, chat_id=chat, callback_data="y")
            ok(
                call(
                    tg,
                    "editMessageReplyMarkup",
                    chat_id=chat,
                    message_id=sent["message_id"],
                )
            )
        for queued in ok(call(tg, "getUpdates")):
            query_id = queued["callback_query"]["id"]
            ok(call(tg, "answerCallbackQuery", callback_query_id=query_id))

        everything = recorded(tg)
        mine = tg.http.get(
            "/_sandbox/telegram/messages", params={"chat_id": OTHER_CHAT}
        ).json()

        assert [a["chat_id"] for a in everything["callback_answers"]] == [
            CHAT,
            OTHER_CHAT,
        ]
        assert [e["chat_id"] for e in everything["edits"]] == [CHAT, OTHER_CHAT]
        assert [m["chat_id"] for m in mine["messages"]] == [OTHER_CHAT]
        assert [a["chat_id"] for a in mine["callback_answers"]] == [OTHER_CHAT]
        assert [e["chat_id"] for e in mine["edits"]] == [OTHER_CHAT]

    def test_every_call_is_logged_without_the_token(self, tg: RunningSandbox) -> None:
        ok(call(tg, "sendMessage", chat_id=CHAT, text="a"))
        call(tg, "sendMessage", chat_id=100000999, text="b")

        calls = tg.http.get("/_sandbox/telegram/calls").json()["calls"]

        assert [(c["method"], c["status"]) for c in calls][-2:] == [
            ("sendMessage", 200),
            ("sendMessage", 400),
        ]
        assert SANDBOX_BOT_TOKEN not in json.dumps(calls)

    def test_reset_clears_the_record(self, tg: RunningSandbox) -> None:
        ok(call(tg, "sendMessage", chat_id=CHAT, text="a"))

        tg.reset()

        assert recorded(tg)["messages"] == []


class TestCallbackQueries:
    def test_a_delivered_callback_is_answered_once(self, tg: RunningSandbox) -> None:
        ok(
            call(
                tg,
                "sendMessage",
                chat_id=CHAT,
                text="?",
                reply_markup=inline(("Да", "y")),
            )
        )
        update = deliver(tg, chat_id=CHAT, callback_data="y")
        [queued] = ok(call(tg, "getUpdates"))
        query_id = queued["callback_query"]["id"]

        first = call(tg, "answerCallbackQuery", callback_query_id=query_id, text="OK")
        second = call(tg, "answerCallbackQuery", callback_query_id=query_id)

        assert update["queued"] is True
        assert first.json() == {"ok": True, "result": True}
        assert second.status_code == 400
        assert second.json()["description"] == (
            "Bad Request: query is too old and response timeout expired "
            "or query ID is invalid"
        )
        assert recorded(tg)["callback_answers"] == [
            {
                "seq": recorded(tg)["callback_answers"][0]["seq"],
                "callback_query_id": query_id,
                "chat_id": CHAT,
                "text": "OK",
                "show_alert": False,
            }
        ]

    def test_an_unknown_callback_id_is_too_old(self, tg: RunningSandbox) -> None:
        response = call(
            tg, "answerCallbackQuery", callback_query_id="4382000000000000001"
        )

        assert response.status_code == 400

    def test_buttons_can_be_removed_once(self, tg: RunningSandbox) -> None:
        sent = ok(
            call(
                tg,
                "sendMessage",
                chat_id=CHAT,
                text="?",
                reply_markup=inline(("Да", "y")),
            )
        )

        edited = ok(
            call(
                tg,
                "editMessageReplyMarkup",
                chat_id=CHAT,
                message_id=sent["message_id"],
            )
        )
        again = call(
            tg, "editMessageReplyMarkup", chat_id=CHAT, message_id=sent["message_id"]
        )

        assert "reply_markup" not in edited
        assert edited["edit_date"] >= edited["date"]
        assert again.json()["description"].startswith(
            "Bad Request: message is not modified"
        )
        assert recorded(tg)["edits"][0]["buttons"] == []

    def test_editing_a_message_that_is_not_there_fails(
        self, tg: RunningSandbox
    ) -> None:
        response = call(tg, "editMessageReplyMarkup", chat_id=CHAT, message_id=77)
        unspecified = call(tg, "editMessageReplyMarkup")

        assert (
            response.json()["description"] == "Bad Request: message to edit not found"
        )
        assert unspecified.json()["description"] == (
            "Bad Request: message identifier is not specified"
        )


class TestWebhookMethods:
    def test_set_get_and_delete_answer_as_the_bot_api_does(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        allowed = ["message", "edited_message", "callback_query", "my_chat_member"]

        was_set = call(
            tg,
            "setWebhook",
            url=receiver.url,
            secret_token=SECRET,
            allowed_updates=allowed,
        )
        again = call(
            tg,
            "setWebhook",
            url=receiver.url,
            secret_token=SECRET,
            allowed_updates=allowed,
        )
        info = ok(call(tg, "getWebhookInfo"))
        deleted = call(tg, "deleteWebhook")
        deleted_again = call(tg, "deleteWebhook")

        assert was_set.json() == {
            "ok": True,
            "result": True,
            "description": "Webhook was set",
        }
        assert again.json()["description"] == "Webhook is already set"
        assert info == {
            "url": receiver.url,
            "has_custom_certificate": False,
            "pending_update_count": 0,
            "max_connections": 40,
            "ip_address": "127.0.0.1",
            "allowed_updates": allowed,
        }
        assert deleted.json()["description"] == "Webhook was deleted"
        assert deleted_again.json()["description"] == "Webhook is already deleted"

    @pytest.mark.parametrize(
        ("params", "description"),
        [
            ({"url": "ftp://x"}, "Bad Request: invalid webhook URL specified"),
            (
                {"url": "http://127.0.0.1:9/hook", "secret_token": "no spaces"},
                "Bad Request: secret token contains unallowed characters",
            ),
            (
                {"url": "http://127.0.0.1:9/hook", "secret_token": "a" * 257},
                "Bad Request: secret token is too long",
            ),
        ],
    )
    def test_a_bad_webhook_is_refused(
        self, tg: RunningSandbox, params: dict[str, Any], description: str
    ) -> None:
        response = call(tg, "setWebhook", **params)

        assert response.status_code == 400
        assert response.json()["description"] == description

    def test_get_updates_conflicts_with_an_active_webhook(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)

        response = call(tg, "getUpdates")

        assert response.status_code == 409
        assert response.json()["description"].startswith(
            "Conflict: can't use getUpdates method while webhook is active"
        )

    def test_without_a_webhook_updates_wait_for_get_updates(
        self, tg: RunningSandbox
    ) -> None:
        deliver(tg, chat_id=CHAT, text="один")
        deliver(tg, chat_id=CHAT, text="два")

        updates = ok(call(tg, "getUpdates"))
        after_offset = ok(call(tg, "getUpdates", offset=updates[0]["update_id"] + 1))

        assert [u["message"]["text"] for u in updates] == ["один", "два"]
        assert [u["message"]["text"] for u in after_offset] == ["два"]


class TestFaults:
    def test_a_blocked_fault_answers_the_recorded_403(self, tg: RunningSandbox) -> None:
        add_fault(tg, kind="blocked", method="sendMessage")

        response = call(tg, "sendMessage", chat_id=CHAT, text="Напоминание")

        assert response.status_code == 403
        assert response.json() == load_fixture("telegram/api_error_403_blocked.json")
        assert recorded(tg)["messages"] == []

    def test_a_retry_after_fault_answers_the_recorded_429(
        self, tg: RunningSandbox
    ) -> None:
        add_fault(tg, kind="retry_after", retry_after=5)

        response = call(tg, "sendMessage", chat_id=CHAT, text="x")

        assert response.status_code == 429
        assert response.json() == load_fixture(
            "telegram/api_error_429_retry_after.json"
        )
        assert response.headers["Retry-After"] == "5"

    def test_a_fault_can_hit_one_chat_among_several(self, tg: RunningSandbox) -> None:
        add_fault(tg, kind="blocked", recipient=str(OTHER_CHAT))

        statuses = [
            call(tg, "sendMessage", chat_id=chat, text="Напоминание").status_code
            for chat in (CHAT, OTHER_CHAT, CHAT)
        ]

        assert statuses == [200, 403, 200]

    @pytest.mark.parametrize(
        ("kind", "status", "description"),
        [
            ("deactivated", 403, "Forbidden: user is deactivated"),
            ("kicked", 403, "Forbidden: bot was kicked from the group chat"),
            ("unauthorized", 401, "Unauthorized"),
            ("server_error", 500, "Internal Server Error"),
        ],
    )
    def test_named_faults_answer_the_servers_errors(
        self, tg: RunningSandbox, kind: str, status: int, description: str
    ) -> None:
        add_fault(tg, kind=kind)

        response = call(tg, "sendMessage", chat_id=CHAT, text="x")

        assert response.status_code == status
        assert response.json()["description"] == description

    def test_a_bad_gateway_fault_answers_an_html_page(self, tg: RunningSandbox) -> None:
        add_fault(tg, kind="bad_gateway", times=2)

        response = call(tg, "sendMessage", chat_id=CHAT, text="x")

        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")

    def test_faults_are_listed_with_their_target_and_cleared_by_reset(
        self, tg: RunningSandbox
    ) -> None:
        add_fault(tg, kind="blocked")

        listed = tg.http.get("/_sandbox/faults").json()["faults"]
        tg.reset()

        assert [(f["target"], f["kind"]) for f in listed] == [("telegram", "blocked")]
        assert tg.http.get("/_sandbox/faults").json()["faults"] == []

    def test_an_unknown_fault_kind_is_refused(self, tg: RunningSandbox) -> None:
        response = tg.http.post(
            "/_sandbox/faults", json={"target": "telegram", "kind": "131047"}
        )

        assert response.status_code == 400
        assert "unknown telegram fault kind" in response.json()["error"]


class TestDelivery:
    def test_an_update_goes_to_the_webhook_with_the_secret_header(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)

        outcome = deliver(tg, chat_id=CHAT, text="Хочу на маникюр")

        [received] = receiver.posts()
        update = json.loads(received.body)
        assert received.headers["x-telegram-bot-api-secret-token"] == SECRET
        assert received.headers["content-type"] == "application/json"
        assert update["update_id"] == outcome["update_id"]
        assert update["message"]["text"] == "Хочу на маникюр"
        assert update["message"]["chat"] == {
            "id": CHAT,
            "first_name": "Иван",
            "type": "private",
        }
        assert outcome["deliveries"] == [
            {"update_id": update["update_id"], "status": 200, "error": None}
        ]

    def test_update_ids_increase_by_one(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)

        ids = [deliver(tg, chat_id=CHAT, text=str(n))["update_id"] for n in range(3)]

        assert ids == [ids[0], ids[0] + 1, ids[0] + 2]

    def test_a_complete_update_is_sent_as_given(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        fixture = load_fixture("telegram/message_contact.json")

        deliver(tg, **fixture)
        deliver(tg, **fixture)

        bodies = [json.loads(r.body) for r in receiver.posts()]
        assert bodies == [fixture, fixture]

    def test_a_shared_contact_carries_the_senders_user_id(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)

        deliver(tg, chat_id=CHAT, contact_phone="+7 999 000-00-01")

        contact = json.loads(receiver.posts()[0].body)["message"]["contact"]
        assert contact == {
            "phone_number": "+7 999 000-00-01",
            "first_name": "Иван",
            "user_id": CHAT,
        }

    def test_a_blocked_update_makes_sends_to_that_chat_fail_with_403(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)

        deliver(tg, chat_id=CHAT, blocked=True)
        blocked = call(tg, "sendMessage", chat_id=CHAT, text="Напоминание")
        deliver(tg, chat_id=CHAT, blocked=False)
        unblocked = call(tg, "sendMessage", chat_id=CHAT, text="Напоминание")

        update = json.loads(receiver.posts()[0].body)
        assert update["my_chat_member"]["new_chat_member"]["status"] == "kicked"
        assert blocked.json() == load_fixture("telegram/api_error_403_blocked.json")
        assert unblocked.status_code == 200

    def test_a_call_in_the_webhook_answer_is_run(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        fixture = load_fixture("telegram/callback_query.json")
        query_id = fixture["callback_query"]["id"]
        reply = {"method": "answerCallbackQuery", "callback_query_id": query_id}
        receiver.answers.append(JSONResponse(reply))

        deliver(tg, **fixture)
        again = call(tg, "answerCallbackQuery", callback_query_id=query_id)

        [answer] = recorded(tg)["callback_answers"]
        assert answer["callback_query_id"] == query_id
        # The query was answered once, in the webhook's answer: a second call is late.
        assert again.status_code == 400
        assert "query is too old" in again.json()["description"]

    def test_a_form_answer_runs_its_call_too(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        form = urlencode({"method": "sendMessage", "chat_id": CHAT, "text": "Спасибо!"})
        receiver.answers.append(
            Response(form, media_type="application/x-www-form-urlencoded")
        )

        deliver(tg, chat_id=CHAT, text="Хочу на маникюр")

        [sent] = recorded(tg)["messages"]
        assert sent["text"] == "Спасибо!"

    @pytest.mark.parametrize("method", ["deleteWebhook", "getMe", "logOut"])
    def test_calls_a_webhook_answer_may_not_make_are_ignored(
        self, tg: RunningSandbox, receiver: Receiver, method: str
    ) -> None:
        set_webhook(tg, receiver.url)
        receiver.answers.append(JSONResponse({"method": method}))
        calls_before = len(calls(tg))

        deliver(tg, chat_id=CHAT, text="x")

        assert calls(tg)[calls_before:] == []
        assert ok(call(tg, "getWebhookInfo"))["url"] == receiver.url

    def test_a_failing_webhook_holds_back_its_chat_but_not_others(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        receiver.answers.extend([500])

        first = deliver(tg, chat_id=CHAT, text="первое")
        second = deliver(tg, chat_id=CHAT, text="второе")
        other = deliver(tg, chat_id=OTHER_CHAT, text="другой чат")
        info = ok(call(tg, "getWebhookInfo"))

        texts = [json.loads(r.body)["message"]["text"] for r in receiver.posts()]
        assert first["deliveries"][0]["status"] == 500
        assert info["last_error_message"] == (
            "Wrong response from the webhook: 500 Internal Server Error"
        )
        # The failed head is re-sent before the next update of its chat.
        assert texts == ["первое", "первое", "второе", "другой чат"]
        assert second["pending_update_count"] == 0
        assert other["deliveries"][0]["status"] == 200

    def test_a_head_that_keeps_failing_is_retried_by_flush(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        receiver.answers.extend([503, 503])

        deliver(tg, chat_id=CHAT, text="первое")
        held = deliver(tg, chat_id=CHAT, text="второе")
        flushed = tg.http.post("/_sandbox/telegram/flush").json()

        texts = [json.loads(r.body)["message"]["text"] for r in receiver.posts()]
        assert held["pending_update_count"] == 2
        assert texts == ["первое", "первое", "первое", "второе"]
        assert flushed["pending_update_count"] == 0

    def test_an_unreachable_webhook_is_reported_as_telegram_reports_it(
        self, tg: RunningSandbox
    ) -> None:
        set_webhook(tg, "http://127.0.0.1:9/hook")

        outcome = deliver(tg, chat_id=CHAT, text="x")
        info = ok(call(tg, "getWebhookInfo"))

        assert outcome["deliveries"][0]["status"] is None
        assert info["last_error_message"] == "Connection refused"
        assert info["pending_update_count"] == 1

    def test_updates_outside_allowed_updates_are_not_sent(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url, allowed_updates=["callback_query"])

        outcome = deliver(tg, chat_id=CHAT, text="x")

        assert outcome["skipped"] == "allowed_updates"
        assert receiver.posts() == []

    def test_a_button_press_refers_to_the_bots_message(
        self, tg: RunningSandbox, receiver: Receiver
    ) -> None:
        set_webhook(tg, receiver.url)
        sent = ok(
            call(
                tg,
                "sendMessage",
                chat_id=CHAT,
                text="Ваш бюджет?",
                reply_markup=inline(("До 5000", "budget:5k")),
            )
        )

        deliver(tg, chat_id=CHAT, callback_data="budget:5k")

        query = json.loads(receiver.posts()[0].body)["callback_query"]
        assert query["data"] == "budget:5k"
        assert query["message"]["message_id"] == sent["message_id"]
        assert query["from"]["id"] == CHAT

    def test_a_shorthand_without_a_chat_is_refused(self, tg: RunningSandbox) -> None:
        response = tg.http.post("/_sandbox/telegram/deliver", json={"text": "x"})

        assert response.status_code == 400
        assert "chat_id" in response.json()["error"]


class TestUpdateIds:
    def test_a_new_sandbox_numbers_its_updates_from_the_clock(self) -> None:
        before = first_update_id(time.time())
        options = SandboxOptions(port=free_port(), rate_limit="off")
        with running_sandbox(options) as fresh:
            after = first_update_id(time.time())
            outcome = deliver(fresh, chat_id=CHAT, text="Привет")

        assert before <= outcome["update_id"] <= after

    def test_a_later_start_begins_above_what_an_earlier_run_handed_out(self) -> None:
        started = datetime(2026, 12, 3, 19, 30, tzinfo=UTC).timestamp()
        # A minute of updates at the rate the clock numbers them, then a restart.
        handed_out = first_update_id(started) + 60 * UPDATE_IDS_PER_SECOND - 1

        assert first_update_id(started + 60) > handed_out

    @pytest.mark.parametrize(
        "when",
        [
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 12, 3, 19, 30, tzinfo=UTC),
            datetime(2032, 5, 1, tzinfo=UTC),
            datetime(2040, 1, 1, tzinfo=UTC),
        ],
    )
    def test_ids_look_like_telegrams_and_fit_a_signed_32_bit_int(
        self, when: datetime
    ) -> None:
        first = first_update_id(when.timestamp())

        assert 9 <= len(str(first)) <= 10
        # Room for millions of updates in one run before the 32-bit limit.
        assert first + 10_000_000 < 2**31

    def test_a_reset_never_numbers_backwards(self, tg: RunningSandbox) -> None:
        for _ in range(50):
            earlier = deliver(tg, chat_id=CHAT, text="раз")["update_id"]

        tg.reset()
        later = deliver(tg, chat_id=CHAT, text="два")["update_id"]

        assert later > earlier
