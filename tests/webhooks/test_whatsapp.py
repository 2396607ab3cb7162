from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from tests.fixtures import FIXTURES, load_fixture
from tests.webhooks.conftest import (
    WHATSAPP_VERIFY_TOKEN,
    OpenApi,
    Recorder,
    RunWorker,
    queued_jobs,
    sign,
)
from webhooks import whatsapp
from webhooks.inbound import InboundKind, InboundMessage, MalformedPayload
from webhooks.jobs import DrainPolicy
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import PROCESS_CHAT
from webhooks.reachability import Reachability
from webhooks.setaside import SetAside
from webhooks.statuses import SentMessages

SENDER = "972987654321"
Logs = Callable[[], list[dict[str, Any]]]

# What each recorded notification becomes; every inbound fixture is listed here.
EXPECTED: dict[str, dict[str, Any]] = {
    "text.json": {"kind": InboundKind.TEXT, "text": "Body Text"},
    "text_reply_with_context.json": {"kind": InboundKind.TEXT, "text": "replied text"},
    "interactive_button_reply.json": {
        "kind": InboundKind.CALLBACK,
        "callback_data": "callback_data",
        "text": "title",
    },
    "interactive_list_reply.json": {
        "kind": InboundKind.CALLBACK,
        "event_id": "wamid.zyzxyz",
        "callback_data": "callback_data",
    },
    "location.json": {
        "kind": InboundKind.LOCATION,
        "latitude": 12.3456789,
        "longitude": -98.7654321,
    },
    "contacts.json": {
        "kind": InboundKind.CONTACT,
        "phone": "+1 555-555-5555",
        "phone_is_senders": True,
    },
    "image.json": {"kind": InboundKind.MEDIA, "text": None},
    "audio_voice.json": {"kind": InboundKind.MEDIA, "text": None},
    "unsupported.json": {"kind": InboundKind.MEDIA, "text": None},
    "status_sent.json": {"kind": InboundKind.STATUS, "status": "sent"},
    "status_delivered.json": {"kind": InboundKind.STATUS, "status": "delivered"},
    "status_read.json": {"kind": InboundKind.STATUS, "status": "read"},
    "status_failed.json": {
        "kind": InboundKind.STATUS,
        "status": "failed",
        "error_code": 130472,
    },
}
# Graph API answers to what the bot sends: the sender's fixtures, not webhooks.
SEND_SIDE = {"send_response_ok.json", "send_error_190_expired_token.json"}

# Case WA-1: the exact bytes Meta signs, compact with \u escapes, no newline.
WA1_BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"100000000000001",'
    b'"changes":[{"value":{"messaging_product":"whatsapp","metadata":'
    b'{"display_phone_number":"15550000000","phone_number_id":"200000000000002"},'
    b'"contacts":[{"profile":{"name":"\\u0418\\u0432\\u0430\\u043d"},'
    b'"wa_id":"79990000001"}],"messages":[{"from":"79990000001",'
    b'"id":"wamid.TEST0001","timestamp":"1736755200","text":'
    b'{"body":"ivan\\u0040example.com"},"type":"text"}]},"field":"messages"}]}]}'
)
WA1_SIGNATURE = (
    "sha256=bb87ea681b5446053d9279db747aae1475982defead024b1c1fa10f4733c638e"
)


def notification(value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": "200000000000002",
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def text_message(wamid: str, sender: str, body: str) -> dict[str, Any]:
    return {
        "from": sender,
        "id": wamid,
        "timestamp": "1736755200",
        "type": "text",
        "text": {"body": body},
    }


def status(wamid: str, state: str, recipient: str) -> dict[str, Any]:
    return {
        "id": wamid,
        "status": state,
        "timestamp": "1736755300",
        "recipient_id": recipient,
    }


def signed(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}


def compact(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class TestFixtureCoverage:
    def test_every_whatsapp_fixture_is_a_webhook_case_or_a_send_answer(self) -> None:
        names = {path.name for path in Path(FIXTURES, "whatsapp").glob("*.json")}

        assert names == set(EXPECTED) | SEND_SIDE


class TestParse:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_fixture_becomes_one_message(self, name: str) -> None:
        parsed = whatsapp.parse(load_fixture(f"whatsapp/{name}"))

        [message] = parsed.messages
        assert message.channel == "whatsapp"
        assert message.chat_id == SENDER
        assert message.received_at.tzinfo is not None
        expected = {"event_id": "wamid.xyzxyz", **EXPECTED[name]}
        if message.kind is InboundKind.STATUS:
            expected["event_id"] = f"wamid.xyzxyz:{message.status}"
            expected["provider_message_id"] = "wamid.xyzxyz"
        for field, value in expected.items():
            assert getattr(message, field) == value, field

    def test_a_client_message_carries_the_senders_own_number_and_name(self) -> None:
        [message] = whatsapp.parse(load_fixture("whatsapp/text.json")).messages

        assert (message.phone, message.phone_is_senders) == (SENDER, True)
        assert message.sender_name == "Test Name"

    def test_a_status_is_never_a_client_message(self) -> None:
        """WA-2: a status is parsed as a status, never as a client message."""
        [message] = whatsapp.parse(load_fixture("whatsapp/status_read.json")).messages

        assert message.kind is InboundKind.STATUS
        assert (message.text, message.phone, message.sender_name) == (None, None, None)

    def test_unsupported_is_answered_as_media_and_noted(self) -> None:
        parsed = whatsapp.parse(load_fixture("whatsapp/unsupported.json"))

        [note] = parsed.unsupported
        assert note.kind == "message.unsupported"
        assert "131051" in note.reason

    def test_a_template_quick_reply_is_a_button_press(self) -> None:
        quick_reply = {
            "from": "79990000001",
            "id": "wamid.QR01",
            "timestamp": "1736755200",
            "type": "button",
            "context": {"from": "15550000000", "id": "wamid.TEMPLATE01"},
            "button": {"payload": "confirm:42", "text": "Подтверждаю"},
        }

        [message] = whatsapp.parse(notification({"messages": [quick_reply]})).messages

        assert message.kind is InboundKind.CALLBACK
        assert (message.callback_data, message.text) == ("confirm:42", "Подтверждаю")

    def test_every_entry_change_message_and_status_is_read(self) -> None:
        first = notification(
            {
                "messages": [
                    text_message("wamid.A1", "79990000001", "раз"),
                    text_message("wamid.A2", "79990000001", "два"),
                ],
                "statuses": [status("wamid.OURS1", "read", "79990000002")],
            }
        )
        second = notification({"messages": [text_message("wamid.B1", "7999", "три")]})
        payload = {**first, "entry": first["entry"] + second["entry"]}

        parsed = whatsapp.parse(payload)

        assert [m.event_id for m in parsed.messages] == [
            "wamid.A1",
            "wamid.A2",
            "wamid.OURS1:read",
            "wamid.B1",
        ]

    def test_one_broken_item_does_not_cost_the_others(self) -> None:
        """WA-2: a malformed status does not cost the message beside it."""
        broken_status = {"status": "read", "timestamp": "1736755301"}
        payload = notification(
            {
                "messages": [text_message("wamid.C1", "79990000003", "здравствуйте")],
                "statuses": [broken_status, status("wamid.OURS2", "sent", "7999")],
            }
        )

        parsed = whatsapp.parse(payload)

        assert [m.event_id for m in parsed.messages] == ["wamid.C1", "wamid.OURS2:sent"]
        assert [note.kind for note in parsed.unsupported] == ["status.malformed"]

    def test_a_reaction_is_acknowledged_and_left_alone(self) -> None:
        reaction = {
            "from": "79990000001",
            "id": "wamid.R1",
            "timestamp": "1736755200",
            "type": "reaction",
            "reaction": {"message_id": "wamid.OURS1", "emoji": "👍"},
        }

        parsed = whatsapp.parse(notification({"messages": [reaction]}))

        assert parsed.messages == ()
        assert parsed.unsupported[0].kind == "message.reaction"

    @pytest.mark.parametrize("body", [[], {"object": "whatsapp_business_account"}])
    def test_a_body_without_entries_is_malformed(self, body: Any) -> None:
        with pytest.raises(MalformedPayload):
            whatsapp.parse(body)


class TestSignature:
    """WA-1: the HMAC is computed over the raw bytes, not a re-serialised body."""

    def test_wa1_the_raw_bytes_match_metas_signature(self) -> None:
        assert whatsapp.signature_matches(b"test_app_secret", WA1_BODY, WA1_SIGNATURE)

    @pytest.mark.parametrize(
        "reserialise",
        [
            lambda raw: json.dumps(json.loads(raw)).encode(),
            lambda raw: compact(json.loads(raw)),
        ],
        ids=["json-dumps", "compact-utf8"],
    )
    def test_wa1_a_reserialised_body_does_not_match(
        self, reserialise: Callable[[bytes], bytes]
    ) -> None:
        body = reserialise(WA1_BODY)

        assert body != WA1_BODY
        assert not whatsapp.signature_matches(b"test_app_secret", body, WA1_SIGNATURE)

    def test_a_header_without_the_algorithm_prefix_does_not_match(self) -> None:
        digest = WA1_SIGNATURE.removeprefix("sha256=")

        assert not whatsapp.signature_matches(b"test_app_secret", WA1_BODY, digest)


class TestHandshake:
    async def test_wa1_the_challenge_comes_back_as_plain_text_without_a_signature(
        self, open_api: OpenApi
    ) -> None:
        """WA-1: the GET handshake needs no signature and echoes the challenge."""
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": WHATSAPP_VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        }

        async with open_api() as api:
            response = await api.get("/webhooks/whatsapp", params=params)

        assert response.status_code == 200
        assert response.text == "1158201444"
        assert response.headers["content-type"].startswith("text/plain")

    @pytest.mark.parametrize(
        "params",
        [
            {"hub.mode": "subscribe", "hub.verify_token": "wrong"},
            {"hub.mode": "unsubscribe", "hub.verify_token": WHATSAPP_VERIFY_TOKEN},
            {"hub.mode": "subscribe"},
        ],
        ids=["wrong-token", "wrong-mode", "no-token"],
    )
    async def test_anything_else_gets_403(
        self, params: dict[str, str], open_api: OpenApi
    ) -> None:
        async with open_api() as api:
            response = await api.get(
                "/webhooks/whatsapp", params={**params, "hub.challenge": "1"}
            )

        assert response.status_code == 403
        assert "1" not in response.text.split('"detail"')[0]


class TestRoute:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    async def test_fixture_is_stored_and_queued_for_its_chat(
        self,
        name: str,
        open_api: OpenApi,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
    ) -> None:
        body = (FIXTURES / "whatsapp" / name).read_bytes()
        chat = chat_key("whatsapp", SENDER)

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )

        assert response.status_code == 200
        [event_id] = await redis.lrange(keys.inbox("whatsapp", chat), 0, -1)
        stored = await redis.get(keys.event("whatsapp", event_id.decode()))
        assert InboundMessage.from_json(stored).kind == EXPECTED[name]["kind"]
        jobs = await queued_jobs(redis, queue)
        assert jobs == [(PROCESS_CHAT, ("whatsapp", chat))]
        # arq logs job arguments: the sender's number must not be among them.
        [job_id] = await redis.zrange(queue, 0, -1)
        assert SENDER.encode() not in await redis.get(b"arq:job:" + job_id)

    async def test_wa1_metas_exact_bytes_are_accepted_with_their_signature(
        self, open_api: OpenApi, run_worker: RunWorker
    ) -> None:
        """WA-1: Meta's exact bytes and signature are accepted."""
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": WA1_SIGNATURE,
        }

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=WA1_BODY, headers=headers
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        [message] = recorder.messages
        assert (message.text, message.sender_name) == ("ivan@example.com", "Иван")

    async def test_wa1_cyrillic_and_emoji_bytes_sent_unescaped_verify(
        self, open_api: OpenApi, run_worker: RunWorker
    ) -> None:
        """WA-1: unescaped UTF-8 bytes verify too."""
        text = "Здравствуйте! Хочу записаться 💅 на субботу"
        body = compact(
            notification({"messages": [text_message("wamid.E1", "79990000001", text)]})
        )

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        assert [m.text for m in recorder.messages] == [text]

    async def test_wa1_a_reserialised_body_with_the_original_signature_gets_403(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        """WA-1: a re-serialised body fails the check closed."""
        body = json.dumps(json.loads(WA1_BODY)).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": WA1_SIGNATURE,
        }

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=headers
            )

        assert response.status_code == 403
        assert await queued_jobs(redis, queue) == []

    async def test_wa1_one_changed_byte_gets_403(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        """WA-1: one changed byte fails the check closed."""
        body = WA1_BODY.replace(b"TEST0001", b"TEST0002")
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": WA1_SIGNATURE,
        }

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=headers
            )

        assert response.status_code == 403
        assert response.json()["error"] == "bad_signature"
        assert await queued_jobs(redis, queue) == []

    async def test_wa1_a_missing_signature_gets_401(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        """WA-1: a missing signature header gets 401."""
        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp",
                content=WA1_BODY,
                headers={"Content-Type": "application/json"},
            )

        assert response.status_code == 401
        assert await queued_jobs(redis, queue) == []

    async def test_signed_malformed_json_gets_400(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        body = b'{"object": "whatsapp_business_account", "entry": ['

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )

        assert response.status_code == 400
        assert await queued_jobs(redis, queue) == []

    async def test_a_text_plain_body_gets_415(self, open_api: OpenApi) -> None:
        headers = {**signed(WA1_BODY), "Content-Type": "text/plain"}

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=WA1_BODY, headers=headers
            )

        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"

    async def test_a_declared_length_over_one_mebibyte_gets_413(
        self, open_api: OpenApi
    ) -> None:
        body = b'{"entry": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )

        assert response.status_code == 413
        assert response.json()["error"] == "body_too_large"

    async def test_a_streamed_body_over_one_mebibyte_gets_413(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"entry": [], "pad": "'
            for _ in range(20):
                yield b"x" * 65536
            yield b'"}'

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp",
                content=chunks(),
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": "sha256=0",
                },
            )

        assert response.status_code == 413
        assert "content-length" not in response.request.headers
        assert await queued_jobs(redis, queue) == []


class TestKnownFaults:
    """WA-2: statuses apart from messages; one bad item loses nothing else."""

    async def test_wa2_a_statuses_only_payload_records_ours_and_ignores_the_rest(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        sent = SentMessages(redis, keys=keys)
        await sent.remember("whatsapp", "wamid.OURS0001", "79990000001")
        body = compact(
            notification(
                {
                    "statuses": [
                        status("wamid.OURS0001", "delivered", "79990000001"),
                        status("wamid.UNKNOWN0001", "read", "79990000002"),
                    ]
                }
            )
        )

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        assert await sent.status_of("whatsapp", "wamid.OURS0001") == "delivered"
        assert await sent.status_of("whatsapp", "wamid.UNKNOWN0001") is None
        assert [(m.kind, m.provider_message_id) for m in recorder.messages] == [
            (InboundKind.STATUS, "wamid.OURS0001")
        ]

    async def test_wa2_statuses_only_move_forward(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        sent = SentMessages(redis, keys=keys)
        await sent.remember("whatsapp", "wamid.OURS0002", "79990000001")
        # Out of order and repeated, as WhatsApp delivers them.
        states = ["read", "sent", "delivered", "read"]
        statuses = [status("wamid.OURS0002", s, "79990000001") for s in states]
        body = compact(notification({"statuses": statuses}))

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        assert await sent.status_of("whatsapp", "wamid.OURS0002") == "read"
        assert [m.status for m in recorder.messages] == ["read"]

    async def test_a_failed_status_for_an_unreachable_number_marks_the_chat(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        sent = SentMessages(redis, keys=keys)
        await sent.remember("whatsapp", "wamid.OURS0003", "79990000004")
        failed = {
            **status("wamid.OURS0003", "failed", "79990000004"),
            "errors": [{"code": 131026, "title": "Message undeliverable"}],
        }
        body = compact(notification({"statuses": [failed]}))

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        reachability = Reachability(redis, keys=keys)
        assert await reachability.is_reachable("whatsapp", "79990000004") is False
        assert [(m.status, m.error_code) for m in recorder.messages] == [
            ("failed", 131026)
        ]

    async def test_wa2_a_status_that_fails_to_record_does_not_cost_the_message(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        # A string where the status hash belongs: recording it fails in Redis.
        await redis.set(keys.sent("whatsapp", "wamid.BROKEN01"), "not a hash")
        body = compact(
            notification(
                {
                    "messages": [
                        text_message("wamid.M1", "79990000003", "хочу записаться")
                    ],
                    "statuses": [status("wamid.BROKEN01", "read", "79990000003")],
                }
            )
        )

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )
        recorder = Recorder()
        policy = DrainPolicy(retry_delays=(timedelta(0),))
        await run_worker(recorder, policy=policy)

        assert response.status_code == 200
        assert recorder.event_ids == ["wamid.M1"]
        [aside] = await SetAside(redis, keys).latest()
        assert (aside.ref, aside.reason) == ("whatsapp:wamid.BROKEN01:read", "tries")

    async def test_wa2_a_malformed_status_is_logged_and_the_message_still_queued(
        self, open_api: OpenApi, logs: Logs, redis: ArqRedis, queue: str
    ) -> None:
        body = compact(
            notification(
                {
                    "messages": [
                        text_message("wamid.M2", "79990000003", "добрый день")
                    ],
                    "statuses": [{"status": "read"}],
                }
            )
        )

        async with open_api() as api:
            response = await api.post(
                "/webhooks/whatsapp", content=body, headers=signed(body)
            )

        assert response.status_code == 200
        assert len(await queued_jobs(redis, queue)) == 1
        [line] = [x for x in logs() if x["logger"] == "leadloop.webhooks.unsupported"]
        assert (line["channel"], line["kind"]) == ("whatsapp", "status.malformed")
