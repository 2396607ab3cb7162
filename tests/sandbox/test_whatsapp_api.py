"""The WhatsApp Cloud API stand-in answers, records and delivers like the real one."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.whatsapp import (
    SANDBOX_APP_SECRET,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WHATSAPP_ACCESS_TOKEN,
)
from tests.fixtures import load_fixture
from tests.sandbox.conftest import RunningSandbox
from tests.sandbox.receiver import Received, Receiver, running_receiver
from tests.sandbox.shapes import shape_differences

MESSAGES = f"/v22.0/{SANDBOX_PHONE_NUMBER_ID}/messages"
AUTH = {"Authorization": f"Bearer {SANDBOX_WHATSAPP_ACCESS_TOKEN}"}
CLIENT = "79990000001"
OTHER_CLIENT = "79990000002"


# Case WA-1 in the known faults: a Meta delivery byte for byte, and its signature
# with the app secret `test_app_secret`.
WA1_RAW = (
    '{"object":"whatsapp_business_account","entry":[{"id":"100000000000001",'
    '"changes":[{"value":{"messaging_product":"whatsapp","metadata":'
    '{"display_phone_number":"15550000000","phone_number_id":"200000000000002"},'
    '"contacts":[{"profile":{"name":"\\u0418\\u0432\\u0430\\u043d"},'
    '"wa_id":"79990000001"}],"messages":[{"from":"79990000001",'
    '"id":"wamid.TEST0001","timestamp":"1736755200","text":'
    '{"body":"ivan\\u0040example.com"},"type":"text"}]},"field":"messages"}]}]}'
)
WA1_SIGNATURE = (
    "sha256=bb87ea681b5446053d9279db747aae1475982defead024b1c1fa10f4733c638e"
)


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    receiver_server.clear()
    return receiver_server


@pytest.fixture
def wa(sandbox: RunningSandbox) -> RunningSandbox:
    """The sandbox with its default settings and no webhook."""
    configure(sandbox, webhook_url="", verify_token="", enforce_window=False)
    configure(sandbox, templates={}, statuses=[], app_secret=SANDBOX_APP_SECRET)
    return sandbox


def configure(sandbox: RunningSandbox, **settings: Any) -> httpx.Response:
    response = sandbox.http.post("/_sandbox/whatsapp/settings", json=settings)
    return response


def send(sandbox: RunningSandbox, **message: Any) -> httpx.Response:
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", **message}
    return sandbox.http.post(MESSAGES, json=body, headers=AUTH)


def text(to: str = CLIENT, body: str = "Здравствуйте!") -> dict[str, Any]:
    return {"to": to, "type": "text", "text": {"preview_url": False, "body": body}}


def buttons(*titles: str, body: str = "Подтвердите запись") -> dict[str, Any]:
    replies = [
        {"type": "reply", "reply": {"id": f"b{n}", "title": title}}
        for n, title in enumerate(titles)
    ]
    interactive = {
        "type": "button",
        "body": {"text": body},
        "action": {"buttons": replies},
    }
    return {"to": CLIENT, "type": "interactive", "interactive": interactive}


def template(name: str = "lead_reminder", *params: str) -> dict[str, Any]:
    content: dict[str, Any] = {"name": name, "language": {"code": "ru"}}
    if params:
        parameters = [{"type": "text", "text": p} for p in params]
        content["components"] = [{"type": "body", "parameters": parameters}]
    return {"to": CLIENT, "type": "template", "template": content}


def add_fault(sandbox: RunningSandbox, **fault: Any) -> None:
    response = sandbox.http.post(
        "/_sandbox/faults", json={"target": "whatsapp", **fault}
    )
    assert response.status_code == 200, response.text


def recorded(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = sandbox.http.get(
        "/_sandbox/whatsapp/messages"
    ).json()["messages"]
    return messages


def deliver(sandbox: RunningSandbox, **event: Any) -> dict[str, Any]:
    response = sandbox.http.post("/_sandbox/whatsapp/deliver", json=event)
    assert response.status_code == 200, response.text
    outcome: dict[str, Any] = response.json()
    return outcome


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def signature(raw: bytes, secret: str = SANDBOX_APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def value_of(received: Received) -> dict[str, Any]:
    payload = json.loads(received.body)
    change: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]
    return change


class TestAcceptedSends:
    def test_a_text_send_answers_in_the_recorded_shape(
        self, wa: RunningSandbox
    ) -> None:
        response = send(wa, **text())

        assert response.status_code == 200
        answer = response.json()
        assert (
            shape_differences(answer, load_fixture("whatsapp/send_response_ok.json"))
            == []
        )
        assert answer["contacts"] == [{"input": CLIENT, "wa_id": CLIENT}]
        assert answer["messages"][0]["id"].startswith("wamid.")

    def test_the_input_is_echoed_and_the_wa_id_is_digits(
        self, wa: RunningSandbox
    ) -> None:
        response = send(wa, **text(to="+7 999 000-00-01"))

        assert response.json()["contacts"] == [
            {"input": "+7 999 000-00-01", "wa_id": CLIENT}
        ]

    def test_reply_buttons_list_and_template_are_accepted_and_recorded(
        self, wa: RunningSandbox
    ) -> None:
        list_message = {
            "to": CLIENT,
            "type": "interactive",
            "interactive": {
                "type": "list",
                "body": {"text": "Какая услуга?"},
                "action": {
                    "button": "Выбрать",
                    "sections": [{"rows": [{"id": "s1", "title": "Маникюр"}]}],
                },
            },
        }

        answers = [
            send(wa, **buttons("Подтверждаю", "Отменить")),
            send(wa, **list_message),
            send(wa, **template("lead_reminder", "завтра в 10:00")),
        ]

        assert [a.status_code for a in answers] == [200, 200, 200]
        assert answers[2].json()["messages"][0]["message_status"] == "accepted"
        records = recorded(wa)
        assert [r["type"] for r in records] == [
            "interactive",
            "interactive",
            "template",
        ]
        assert records[0]["buttons"] == [
            {"id": "b0", "title": "Подтверждаю"},
            {"id": "b1", "title": "Отменить"},
        ]
        assert records[1]["rows"] == [{"id": "s1", "title": "Маникюр"}]
        assert records[2]["template"]["name"] == "lead_reminder"

    def test_the_record_lists_sends_in_order_with_recipients_and_texts(
        self, wa: RunningSandbox
    ) -> None:
        send(wa, **text(body="Первое"))
        send(wa, **text(to=OTHER_CLIENT, body="Второе"))

        records = recorded(wa)
        only_other = wa.http.get(
            "/_sandbox/whatsapp/messages", params={"to": OTHER_CLIENT}
        ).json()["messages"]

        assert [(r["wa_id"], r["text"]) for r in records] == [
            (CLIENT, "Первое"),
            (OTHER_CLIENT, "Второе"),
        ]
        assert [r["text"] for r in only_other] == ["Второе"]

    def test_a_read_mark_answers_success_and_is_recorded(
        self, wa: RunningSandbox
    ) -> None:
        response = wa.http.post(
            MESSAGES,
            json={
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": "wamid.IN1",
            },
            headers=AUTH,
        )

        assert response.json() == {"success": True}
        reads = wa.http.get("/_sandbox/whatsapp/messages").json()["reads"]
        assert [r["message_id"] for r in reads] == ["wamid.IN1"]

    def test_reset_clears_the_record(self, wa: RunningSandbox) -> None:
        send(wa, **text())

        wa.reset()

        assert recorded(wa) == []


class TestAuthAndAddressing:
    def test_a_wrong_token_is_a_401_with_code_190(self, wa: RunningSandbox) -> None:
        response = wa.http.post(
            MESSAGES, json=text(), headers={"Authorization": "Bearer EAAwrong"}
        )

        assert response.status_code == 401
        error = error_of(response)
        assert error["code"] == 190
        assert error["type"] == "OAuthException"
        assert error["fbtrace_id"]

    def test_no_token_is_refused(self, wa: RunningSandbox) -> None:
        response = wa.http.post(MESSAGES, json=text())

        assert response.status_code == 400
        assert error_of(response)["code"] == 104

    def test_an_expired_token_fault_answers_the_recorded_error(
        self, wa: RunningSandbox
    ) -> None:
        add_fault(wa, kind="expired_token")

        response = send(wa, **text())

        recording = load_fixture("whatsapp/send_error_190_expired_token.json")
        assert response.status_code == 401
        assert shape_differences(response.json(), recording) == []
        assert error_of(response)["code"] == 190
        assert error_of(response)["error_subcode"] == 463

    def test_an_unknown_phone_number_id_is_an_unsupported_post(
        self, wa: RunningSandbox
    ) -> None:
        response = wa.http.post("/v22.0/123/messages", json=text(), headers=AUTH)

        assert response.status_code == 400
        error = error_of(response)
        assert (error["code"], error["error_subcode"]) == (100, 33)
        assert error["type"] == "GraphMethodException"


class TestValidation:
    @pytest.mark.parametrize(
        ("message", "code", "details"),
        [
            (
                buttons("Один", "Два", "Три", "Четыре"),
                131009,
                "Buttons count invalid. Min allowed buttons: 1, Max allowed buttons: 3",
            ),
            (
                buttons("Подтверждаю запись на завтра"),
                131009,
                "Button title length invalid. Min length: 1, Max length: 20",
            ),
            (buttons("Да", "Да"), 131009, "Button title must be unique"),
            (
                text(body="я" * 4097),
                131009,
                "Param text['body'] must be at most 4096 characters long.",
            ),
        ],
    )
    def test_values_over_the_limits_are_refused_with_details(
        self, wa: RunningSandbox, message: dict[str, Any], code: int, details: str
    ) -> None:
        response = send(wa, **message)

        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == code
        assert error["error_data"] == {
            "messaging_product": "whatsapp",
            "details": details,
        }
        assert recorded(wa) == []

    def test_messaging_product_is_required(self, wa: RunningSandbox) -> None:
        response = wa.http.post(MESSAGES, json=text(), headers=AUTH)

        assert error_of(response)["message"] == (
            "(#100) The parameter messaging_product is required."
        )

    def test_a_type_the_sandbox_does_not_serve_is_refused(
        self, wa: RunningSandbox
    ) -> None:
        response = send(wa, to=CLIENT, type="sticker", sticker={"id": "1"})

        assert response.status_code == 400
        assert error_of(response)["code"] == 100


class TestFaults:
    @pytest.mark.parametrize(
        ("kind", "status", "code"),
        [
            ("outside_window", 400, 131047),
            ("undeliverable", 400, 131026),
            ("rate_limit", 400, 130429),
            ("pair_rate_limit", 400, 131056),
            ("spam_rate_limit", 400, 131048),
            ("experiment", 400, 130472),
            ("server_error", 500, 131000),
            ("service_unavailable", 503, 131016),
        ],
    )
    def test_named_faults_answer_metas_errors(
        self, wa: RunningSandbox, kind: str, status: int, code: int
    ) -> None:
        add_fault(wa, kind=kind)

        response = send(wa, **text())

        assert response.status_code == status
        error = error_of(response)
        assert error["code"] == code
        assert error["message"].startswith(f"(#{code}) ")
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert recorded(wa) == []

    def test_a_fault_can_hit_one_recipient(self, wa: RunningSandbox) -> None:
        add_fault(wa, kind="undeliverable", recipient=OTHER_CLIENT)

        statuses = [
            send(wa, **text(to=to)).status_code for to in (CLIENT, OTHER_CLIENT, CLIENT)
        ]

        assert statuses == [200, 400, 200]

    def test_a_bad_gateway_fault_answers_an_html_page(self, wa: RunningSandbox) -> None:
        add_fault(wa, kind="bad_gateway")

        response = send(wa, **text())

        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")

    def test_an_as_status_fault_accepts_and_then_reports_failed(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)
        add_fault(wa, kind="outside_window", as_status=True)

        response = send(wa, **text())

        [delivery] = receiver.wait_for_posts(1)
        [status] = value_of(delivery)["statuses"]
        assert response.status_code == 200
        assert status["id"] == response.json()["messages"][0]["id"]
        assert status["status"] == "failed"
        assert status["errors"][0]["code"] == 131047
        assert recorded(wa)[0]["status"] == "failed"

    def test_a_fault_for_another_platform_does_not_apply(
        self, wa: RunningSandbox
    ) -> None:
        wa.http.post("/_sandbox/faults", json={"target": "telegram", "kind": "blocked"})

        assert send(wa, **text()).status_code == 200


class TestTemplatesAndWindow:
    def test_an_unapproved_template_is_132001(self, wa: RunningSandbox) -> None:
        configure(wa, templates={"lead_reminder": 1})

        response = send(wa, **template("promo"))

        assert error_of(response)["code"] == 132001
        assert (
            "template name (promo) does not exist in ru"
            in (error_of(response)["error_data"]["details"])
        )

    def test_a_wrong_parameter_count_is_132000(self, wa: RunningSandbox) -> None:
        configure(wa, templates={"lead_reminder": 1})

        response = send(wa, **template("lead_reminder"))

        assert error_of(response)["code"] == 132000

    def test_quick_reply_payloads_are_not_counted_as_body_parameters(
        self, wa: RunningSandbox
    ) -> None:
        configure(wa, templates={"lead_reminder": 1})
        message = template("lead_reminder", "завтра")
        quick_reply = {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "rm:c:1:20270311T120000Z"}],
        }
        message["template"]["components"].append(quick_reply)

        response = send(wa, **message)

        assert response.status_code == 200, response.text
        assert recorded(wa)[0]["template"]["components"][1] == quick_reply

    def test_an_enforced_window_refuses_free_text_until_the_client_writes(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, enforce_window=True, webhook_url=receiver.url)

        before = send(wa, **text())
        as_template = send(wa, **template("lead_reminder", "завтра"))
        deliver(wa, **{"from": CLIENT, "text": "Здравствуйте"})
        after = send(wa, **text())

        assert error_of(before)["code"] == 131047
        assert as_template.status_code == 200
        assert after.status_code == 200


class TestDelivery:
    def test_an_inbound_message_is_signed_over_the_exact_bytes(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)

        outcome = deliver(
            wa, **{"from": CLIENT, "name": "Иван", "text": "ivan@example.com"}
        )

        [received] = receiver.posts()
        assert received.headers["x-hub-signature-256"] == signature(received.body)
        assert received.headers["content-type"] == "application/json"
        # Meta escapes non-ASCII, "/" and "@", so re-serialised JSON signs differently.
        assert b"\\u0418\\u0432\\u0430\\u043d" in received.body
        assert b"ivan\\u0040example.com" in received.body
        assert outcome["status"] == 200

    def test_an_inbound_message_has_the_real_payload_shape(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)

        deliver(wa, **{"from": CLIENT, "text": "Хочу записаться"})

        payload = json.loads(receiver.posts()[0].body)
        recording = load_fixture("whatsapp/text.json")
        optional = frozenset({"user_id", "parent_user_id"})
        assert shape_differences(payload, recording, allow_missing=optional) == []
        message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
        assert message["text"]["body"] == "Хочу записаться"
        assert message["from"] == CLIENT

    def test_a_button_reply_points_at_the_interactive_message(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)
        sent = send(wa, **buttons("Подтверждаю")).json()["messages"][0]["id"]

        deliver(
            wa,
            **{"from": CLIENT, "button_reply": {"id": "b0", "title": "Подтверждаю"}},
        )

        message = value_of(receiver.posts()[0])["messages"][0]
        recording = load_fixture("whatsapp/interactive_button_reply.json")
        recorded_message = recording["entry"][0]["changes"][0]["value"]["messages"][0]
        assert shape_differences(message, recorded_message) == []
        assert message["context"]["id"] == sent

    def test_a_status_names_our_message_and_has_no_contacts(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)
        sent = send(wa, **text()).json()["messages"][0]["id"]

        deliver(wa, status="delivered", id=sent)

        value = value_of(receiver.posts()[0])
        assert "contacts" not in value
        assert value["statuses"][0]["id"] == sent
        assert value["statuses"][0]["status"] == "delivered"
        assert value["statuses"][0]["recipient_id"] == CLIENT

    def test_several_events_travel_in_one_signed_post(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url)
        sent = send(wa, **text()).json()["messages"][0]["id"]

        deliver(
            wa,
            events=[
                {"status": "read", "id": sent},
                {"from": OTHER_CLIENT, "text": "Здравствуйте"},
            ],
        )

        [received] = receiver.posts()
        changes = json.loads(received.body)["entry"][0]["changes"]
        assert [sorted(c["value"]) for c in changes] == [
            ["messaging_product", "metadata", "statuses"],
            ["contacts", "messages", "messaging_product", "metadata"],
        ]

    def test_status_webhooks_follow_each_send_when_turned_on(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url, statuses=["sent", "delivered"])

        sent = send(wa, **text()).json()["messages"][0]["id"]

        deliveries = receiver.wait_for_posts(2)
        statuses = [value_of(d)["statuses"][0] for d in deliveries]
        assert [(s["id"], s["status"]) for s in statuses] == [
            (sent, "sent"),
            (sent, "delivered"),
        ]
        assert all(
            d.headers["x-hub-signature-256"] == signature(d.body) for d in deliveries
        )

    def test_a_raw_body_is_sent_byte_for_byte(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        configure(wa, webhook_url=receiver.url, app_secret="test_app_secret")
        raw = '{"object":"whatsapp_business_account","entry":[]}'

        deliver(wa, raw=raw)

        [received] = receiver.posts()
        assert received.body == raw.encode()
        assert received.headers["x-hub-signature-256"] == signature(
            raw.encode(), "test_app_secret"
        )

    def test_a_whole_payload_is_serialised_and_signed_as_meta_does(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        """WA-1: the sandbox signs the case's payload exactly as Meta does."""
        # Case WA-1 (known faults): these bytes and this signature are Meta's.
        configure(wa, webhook_url=receiver.url, app_secret="test_app_secret")

        deliver(wa, **json.loads(WA1_RAW))

        [received] = receiver.posts()
        assert received.body == WA1_RAW.encode()
        assert received.headers["x-hub-signature-256"] == WA1_SIGNATURE

    def test_delivering_without_a_webhook_is_refused(self, wa: RunningSandbox) -> None:
        response = wa.http.post(
            "/_sandbox/whatsapp/deliver", json={"from": CLIENT, "text": "x"}
        )

        assert response.status_code == 400
        assert "webhook_url" in response.json()["error"]


class TestCallbackVerification:
    def test_a_callback_that_echoes_the_challenge_is_accepted(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        response = configure(wa, webhook_url=receiver.url, verify_token="verify_me")

        [handshake] = receiver.requests
        assert response.status_code == 200
        assert handshake.method == "GET"
        assert handshake.query["hub.mode"] == "subscribe"
        assert handshake.query["hub.verify_token"] == "verify_me"
        assert handshake.query["hub.challenge"].isdigit()

    def test_a_callback_that_does_not_echo_is_refused(
        self, wa: RunningSandbox, receiver: Receiver
    ) -> None:
        receiver.echo_challenge = False

        response = configure(wa, webhook_url=receiver.url, verify_token="verify_me")

        assert response.status_code == 400
        assert "couldn't be validated" in response.json()["error"]
        assert wa.http.get("/_sandbox/whatsapp/settings").json()["webhook_url"] == ""

    @pytest.mark.parametrize(
        "settings",
        [
            {"colour": "green"},
            {"statuses": ["seen"]},
            {"templates": {"lead_reminder": "one"}},
            {"enforce_window": "yes"},
        ],
    )
    def test_unknown_or_malformed_settings_are_refused(
        self, wa: RunningSandbox, settings: dict[str, Any]
    ) -> None:
        response = configure(wa, **settings)

        assert response.status_code == 400
        assert response.json()["error"]
