"""WhatsAppSender: what crosses the wire, and every Graph error mapped."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from connectors.messengers.base import (
    AuthFailed,
    Button,
    MessengerError,
    OutsideWindow,
    Rejected,
    SentMessage,
    SlowDown,
    Template,
    Unavailable,
    Unreachable,
)
from connectors.messengers.whatsapp import (
    SLOW_DOWN_S,
    WhatsAppSender,
    error_class,
    map_whatsapp_error,
)
from sandbox.whatsapp import SANDBOX_PHONE_NUMBER_ID, SANDBOX_WHATSAPP_ACCESS_TOKEN
from tests.connectors.bitrix24.conftest import Wire
from tests.connectors.messengers.conftest import add_fault
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox, free_port

CLIENT = "79990000001"
PATH = f"/v22.0/{SANDBOX_PHONE_NUMBER_ID}/messages"


@pytest.fixture
def wa(sandbox: RunningSandbox) -> RunningSandbox:
    settings = {"webhook_url": "", "enforce_window": False, "templates": {}}
    sandbox.http.post("/_sandbox/whatsapp/settings", json=settings).raise_for_status()
    return sandbox


@pytest.fixture
def sender(wa: RunningSandbox, http: httpx.AsyncClient) -> WhatsAppSender:
    return WhatsAppSender(
        http,
        SANDBOX_WHATSAPP_ACCESS_TOKEN,
        SANDBOX_PHONE_NUMBER_ID,
        f"{wa.base_url}/v22.0",
    )


def recorded(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sandbox.http.get(
        "/_sandbox/whatsapp/messages"
    ).json()["messages"]
    return messages


def only_body(wire: Wire) -> Any:
    [body] = wire.bodies("/messages")
    return body


def choices(count: int) -> list[Button]:
    return [Button(f"Услуга {n}", f"service:{n}") for n in range(1, count + 1)]


class TestSendText:
    async def test_a_text_crosses_the_wire_as_the_cloud_api_expects(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        sent = await sender.send_text(CLIENT, "Здравствуйте! Чем помочь?")

        [request] = wire.requests
        assert request.url.path == PATH
        assert request.headers["Authorization"] == (
            f"Bearer {SANDBOX_WHATSAPP_ACCESS_TOKEN}"
        )
        assert json.loads(request.content) == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CLIENT,
            "type": "text",
            "text": {"preview_url": False, "body": "Здравствуйте! Чем помочь?"},
        }
        [message] = recorded(wa)
        assert sent == SentMessage(message["id"])

    async def test_up_to_three_buttons_are_reply_buttons(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        buttons = [Button("Подтверждаю", "confirm:42"), Button("Отменить", "cancel:42")]

        await sender.send_text(CLIENT, "Вы придёте завтра в 10:00?", buttons=buttons)

        body = only_body(wire)
        assert body["type"] == "interactive"
        assert body["interactive"] == {
            "type": "button",
            "body": {"text": "Вы придёте завтра в 10:00?"},
            "action": {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": "confirm:42", "title": "Подтверждаю"},
                    },
                    {
                        "type": "reply",
                        "reply": {"id": "cancel:42", "title": "Отменить"},
                    },
                ]
            },
        }
        assert recorded(wa)[0]["buttons"] == [
            {"id": "confirm:42", "title": "Подтверждаю"},
            {"id": "cancel:42", "title": "Отменить"},
        ]

    async def test_a_title_over_the_limit_is_shortened_so_the_send_passes(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        label = "Подтверждаю запись на завтра"

        await sender.send_text(CLIENT, "?", buttons=[Button(label, "confirm")])

        title = only_body(wire)["interactive"]["action"]["buttons"][0]["reply"]["title"]
        assert title == "Подтверждаю запись…"
        assert len(recorded(wa)) == 1

    async def test_four_to_ten_buttons_are_a_list_with_full_labels(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        buttons = [*choices(4), Button("Наращивание ресниц классическое", "lashes")]

        await sender.send_text(CLIENT, "Какая услуга?", buttons=buttons)

        interactive = only_body(wire)["interactive"]
        rows = interactive["action"]["sections"][0]["rows"]
        assert interactive["type"] == "list"
        assert interactive["action"]["button"] == "Выбрать"
        assert rows[0] == {"id": "service:1", "title": "Услуга 1"}
        assert rows[4] == {
            "id": "lashes",
            "title": "Наращивание ресниц клас…",
            "description": "Наращивание ресниц классическое",
        }
        assert len(recorded(wa)[0]["rows"]) == 5

    async def test_more_than_ten_choices_send_nothing(
        self, sender: WhatsAppSender, wire: Wire
    ) -> None:
        with pytest.raises(ValueError, match="at most 10"):
            await sender.send_text(CLIENT, "?", buttons=choices(11))

        assert wire.requests == []

    async def test_a_phone_request_is_plain_text_on_whatsapp(
        self, sender: WhatsAppSender, wire: Wire
    ) -> None:
        await sender.send_text(CLIENT, "Как к вам обращаться?", request_phone=True)

        assert only_body(wire)["type"] == "text"

    async def test_a_version_given_apart_is_put_into_the_path(
        self, wa: RunningSandbox, http: httpx.AsyncClient, wire: Wire
    ) -> None:
        sender = WhatsAppSender(
            http,
            SANDBOX_WHATSAPP_ACCESS_TOKEN,
            SANDBOX_PHONE_NUMBER_ID,
            wa.base_url,
            "v23.0",
        )

        await sender.send_text(CLIENT, "x")

        assert wire.requests[0].url.path == f"/v23.0/{SANDBOX_PHONE_NUMBER_ID}/messages"


class TestTemplates:
    async def test_a_template_carries_its_body_parameters_in_order(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        reminder = Template("lead_reminder", "ru", ("Анна", "завтра в 10:00"))

        sent = await sender.send_template(CLIENT, reminder)

        assert only_body(wire) == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CLIENT,
            "type": "template",
            "template": {
                "name": "lead_reminder",
                "language": {"code": "ru"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Анна"},
                            {"type": "text", "text": "завтра в 10:00"},
                        ],
                    }
                ],
            },
        }
        assert recorded(wa)[0]["id"] == sent.provider_message_id

    async def test_quick_replies_go_as_button_payloads_by_position(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        wa.http.post(
            "/_sandbox/whatsapp/settings", json={"templates": {"visit_reminder": 1}}
        ).raise_for_status()
        reminder = Template(
            "visit_reminder",
            parameters=("завтра в 10:00",),
            quick_replies=("rm:c:42:20270311T120000Z", "rm:x:42:20270311T120000Z"),
        )

        await sender.send_template(CLIENT, reminder)

        components = only_body(wire)["template"]["components"]
        assert components[1:] == [
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [
                    {"type": "payload", "payload": "rm:c:42:20270311T120000Z"}
                ],
            },
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "1",
                "parameters": [
                    {"type": "payload", "payload": "rm:x:42:20270311T120000Z"}
                ],
            },
        ]
        assert components[0]["type"] == "body"
        assert recorded(wa)[0]["template"]["components"] == components

    async def test_a_template_without_parameters_or_payloads_has_no_components(
        self, sender: WhatsAppSender, wire: Wire
    ) -> None:
        await sender.send_template(CLIENT, Template("hello_world", "en_US"))

        assert only_body(wire)["template"] == {
            "name": "hello_world",
            "language": {"code": "en_US"},
        }

    async def test_a_closed_window_is_outside_window_and_a_template_gets_through(
        self, sender: WhatsAppSender, wa: RunningSandbox
    ) -> None:
        wa.http.post(
            "/_sandbox/whatsapp/settings",
            json={"enforce_window": True, "templates": {"lead_reminder": 1}},
        ).raise_for_status()

        with pytest.raises(OutsideWindow) as caught:
            await sender.send_text(CLIENT, "Напоминаем о записи")
        sent = await sender.send_template(
            CLIENT, Template("lead_reminder", parameters=("завтра в 10:00",))
        )

        assert caught.value.code == 131047
        assert [m["type"] for m in recorded(wa)] == ["template"]
        assert recorded(wa)[0]["id"] == sent.provider_message_id

    async def test_an_unapproved_template_is_rejected(
        self, sender: WhatsAppSender, wa: RunningSandbox
    ) -> None:
        wa.http.post(
            "/_sandbox/whatsapp/settings", json={"templates": {"lead_reminder": 1}}
        ).raise_for_status()

        with pytest.raises(Rejected) as caught:
            await sender.send_template(CLIENT, Template("promo"))

        assert caught.value.code == 132001


class TestAnswerCallback:
    async def test_a_button_reply_is_marked_read(
        self, sender: WhatsAppSender, wa: RunningSandbox, wire: Wire
    ) -> None:
        answered = await sender.answer_callback("wamid.REPLY1", "Записали")

        assert answered is True
        assert only_body(wire) == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.REPLY1",
        }
        reads = wa.http.get("/_sandbox/whatsapp/messages").json()["reads"]
        assert [r["message_id"] for r in reads] == ["wamid.REPLY1"]


class TestErrorsFromTheSandbox:
    @pytest.mark.parametrize(
        ("kind", "error_class_", "code"),
        [
            ("outside_window", OutsideWindow, 131047),
            ("undeliverable", Unreachable, 131026),
            ("experiment", Unreachable, 130472),
            ("rate_limit", SlowDown, 130429),
            ("pair_rate_limit", SlowDown, 131056),
            ("spam_rate_limit", Rejected, 131048),
            ("expired_token", AuthFailed, 190),
            ("server_error", Unavailable, 131000),
            ("service_unavailable", Unavailable, 131016),
        ],
    )
    async def test_each_fault_arrives_as_its_class(
        self,
        sender: WhatsAppSender,
        wa: RunningSandbox,
        kind: str,
        error_class_: type[MessengerError],
        code: int,
    ) -> None:
        add_fault(wa, "whatsapp", kind=kind)

        with pytest.raises(error_class_) as caught:
            await sender.send_text(CLIENT, "x")

        assert type(caught.value) is error_class_
        assert caught.value.code == code
        assert caught.value.channel == "whatsapp"

    async def test_a_rate_limit_waits_the_documented_pause(
        self, sender: WhatsAppSender, wa: RunningSandbox
    ) -> None:
        add_fault(wa, "whatsapp", kind="pair_rate_limit")

        with pytest.raises(SlowDown) as caught:
            await sender.send_text(CLIENT, "x")

        assert caught.value.retry_after_s == SLOW_DOWN_S[131056] == 6.0

    async def test_a_wrong_token_is_auth_failed(
        self, wa: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        sender = WhatsAppSender(
            http, "EAAwrong", SANDBOX_PHONE_NUMBER_ID, f"{wa.base_url}/v22.0"
        )

        with pytest.raises(AuthFailed) as caught:
            await sender.send_text(CLIENT, "x")

        assert caught.value.status == 401

    async def test_a_proxy_page_is_unavailable(
        self, sender: WhatsAppSender, wa: RunningSandbox
    ) -> None:
        add_fault(wa, "whatsapp", kind="bad_gateway")

        with pytest.raises(Unavailable) as caught:
            await sender.send_text(CLIENT, "x")

        assert caught.value.status == 502

    async def test_a_slow_api_is_unavailable_and_maybe_sent(
        self, wa: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        add_fault(wa, "whatsapp", kind="latency", seconds=1.0)
        sender = WhatsAppSender(
            http,
            SANDBOX_WHATSAPP_ACCESS_TOKEN,
            SANDBOX_PHONE_NUMBER_ID,
            f"{wa.base_url}/v22.0",
            timeout=httpx.Timeout(0.2),
        )

        with pytest.raises(Unavailable) as caught:
            await sender.send_text(CLIENT, "x")

        assert caught.value.sent is True

    async def test_a_refused_connection_is_surely_not_sent(
        self, http: httpx.AsyncClient
    ) -> None:
        sender = WhatsAppSender(
            http,
            SANDBOX_WHATSAPP_ACCESS_TOKEN,
            SANDBOX_PHONE_NUMBER_ID,
            f"http://127.0.0.1:{free_port()}/v22.0",
        )

        with pytest.raises(Unavailable) as caught:
            await sender.send_text(CLIENT, "x")

        assert caught.value.sent is False

    async def test_no_log_line_names_the_client_or_the_token(
        self, sender: WhatsAppSender, wa: RunningSandbox
    ) -> None:
        with capture_logs() as logs:
            await sender.send_text(CLIENT, "x")
            add_fault(wa, "whatsapp", kind="undeliverable")
            with pytest.raises(Unreachable) as caught:
                await sender.send_text(CLIENT, "x")

        seen = repr(logs) + str(caught.value)
        assert CLIENT not in seen
        assert SANDBOX_WHATSAPP_ACCESS_TOKEN not in seen
        assert [entry["event"] for entry in logs] == [
            "whatsapp.sent",
            "whatsapp.send_failed",
        ]


def graph_error(code: int, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": {
            "message": f"(#{code}) Error",
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AFAKEtrace",
        }
    }


# Reference §2.7 and §6 and the recorded fixtures: every Graph error leadloop meets.
REFERENCE_CODES: list[tuple[int, type[MessengerError]]] = [
    (131047, OutsideWindow),
    (131026, Unreachable),
    (130429, SlowDown),
    (131056, SlowDown),
    (131048, Rejected),
    (131051, Rejected),
    (130472, Unreachable),
    (190, AuthFailed),
]


class TestErrorMapping:
    @pytest.mark.parametrize(("code", "expected"), REFERENCE_CODES)
    def test_every_reference_code_is_mapped(
        self, code: int, expected: type[MessengerError]
    ) -> None:
        status, body = graph_error(code, 401 if code == 190 else 400)

        error = map_whatsapp_error(status, body)

        assert type(error) is expected
        assert error.code == code

    def test_the_recorded_expired_token_is_auth_failed(self) -> None:
        body = load_fixture("whatsapp/send_error_190_expired_token.json")

        error = map_whatsapp_error(401, body)

        assert type(error) is AuthFailed
        assert "Session has expired" in error.description

    def test_a_failed_status_error_is_classified_the_same_way(self) -> None:
        payload = load_fixture("whatsapp/status_failed.json")
        status = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
        [item] = status["errors"]

        error = map_whatsapp_error(None, {"error": item})

        assert type(error) is Unreachable
        assert error.code == 130472
        assert "part of an experiment" in error.description

    @pytest.mark.parametrize(
        ("code", "status", "expected"),
        [
            (10, 403, AuthFailed),
            (200, 403, AuthFailed),
            (299, 403, AuthFailed),
            (4, 400, SlowDown),
            (80007, 400, SlowDown),
            (131000, 500, Unavailable),
            (131016, 503, Unavailable),
            (133999, 500, Unavailable),
            (100, 400, Rejected),
            (132001, 400, Rejected),
        ],
    )
    def test_other_codes_follow_their_family(
        self, code: int, status: int, expected: type[MessengerError]
    ) -> None:
        assert error_class(code, status) is expected

    @pytest.mark.parametrize("body", [None, {"messages": []}, {"error": "text"}])
    def test_an_answer_without_a_graph_error_is_unavailable(self, body: Any) -> None:
        assert type(map_whatsapp_error(502, body)) is Unavailable

    @respx.mock
    async def test_a_retry_after_header_overrides_the_default_pause(self) -> None:
        # The sandbox never sends Retry-After; a Graph front end sometimes does.
        status, body = graph_error(130429)
        url = f"https://graph.facebook.com/v22.0/{SANDBOX_PHONE_NUMBER_ID}/messages"
        respx.post(url).respond(status, json=body, headers={"Retry-After": "3"})

        async with httpx.AsyncClient() as http:
            sender = WhatsAppSender(
                http, SANDBOX_WHATSAPP_ACCESS_TOKEN, SANDBOX_PHONE_NUMBER_ID
            )
            with pytest.raises(SlowDown) as caught:
                await sender.send_text(CLIENT, "x")

        assert caught.value.retry_after_s == 3.0

    @respx.mock
    async def test_an_accepted_answer_without_an_id_is_unavailable(self) -> None:
        url = f"https://graph.facebook.com/v22.0/{SANDBOX_PHONE_NUMBER_ID}/messages"
        respx.post(url).respond(200, json={"messaging_product": "whatsapp"})

        async with httpx.AsyncClient() as http:
            sender = WhatsAppSender(
                http, SANDBOX_WHATSAPP_ACCESS_TOKEN, SANDBOX_PHONE_NUMBER_ID
            )
            with pytest.raises(Unavailable, match="no message id"):
                await sender.send_text(CLIENT, "x")
