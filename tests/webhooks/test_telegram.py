from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from app.api import create_app
from app.settings import Settings
from tests.fixtures import FIXTURES, load_fixture
from tests.webhooks.conftest import (
    TELEGRAM_SECRET,
    OpenApi,
    Recorder,
    RunWorker,
    queued_jobs,
)
from webhooks import telegram
from webhooks.endpoints import get_inbox
from webhooks.inbound import InboundKind, InboundMessage, MalformedPayload
from webhooks.jobs import DrainPolicy
from webhooks.keys import InboxKeys, chat_key
from webhooks.queue import PROCESS_CHAT, Inbox
from webhooks.reachability import Reachability
from webhooks.setaside import SetAside

NOW = datetime(2025, 1, 13, 9, 0, tzinfo=UTC)
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
Logs = Callable[[], list[dict[str, Any]]]

# What each recorded update becomes; every inbound fixture is listed here.
EXPECTED: dict[str, dict[str, Any]] = {
    "message_text.json": {
        "kind": InboundKind.TEXT,
        "event_id": "892252934",
        "text": "hello there",
        "provider_message_id": "6557",
    },
    "message_contact.json": {
        "kind": InboundKind.CONTACT,
        "event_id": "892252935",
        "phone": "79990000000",
        "phone_is_senders": True,
        "text": None,
    },
    "message_location.json": {
        "kind": InboundKind.LOCATION,
        "event_id": "892252938",
        "latitude": 12.345678,
        "longitude": 98.765432,
    },
    "message_photo.json": {
        "kind": InboundKind.MEDIA,
        "event_id": "892252939",
        "text": None,
    },
    "message_voice.json": {
        "kind": InboundKind.MEDIA,
        "event_id": "892252937",
        "text": None,
    },
    "callback_query.json": {
        "kind": InboundKind.CALLBACK,
        "event_id": "163399206",
        "callback_id": "1000000000000000001",
        "callback_data": "K0ktLokvzsgvj6+oKquqACIA",
        "provider_message_id": "1054",
        "received_at": NOW,
    },
    "my_chat_member_blocked.json": {
        "kind": InboundKind.BLOCKED,
        "event_id": "1",
        "sender_name": "FN LN",
    },
}
# Bot API answers to what the bot sends: the sender's fixtures, not webhooks.
SEND_SIDE = {"api_error_403_blocked.json", "api_error_429_retry_after.json"}


def update(update_id: int, **fields: Any) -> dict[str, Any]:
    return {"update_id": update_id, **fields}


def private_message(message_id: int = 42, **content: Any) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "from": {"id": 100000001, "is_bot": False, "first_name": "Иван"},
        "chat": {"id": 100000001, "type": "private"},
        "date": 1736751600,
        **content,
    }


class TestFixtureCoverage:
    def test_every_telegram_fixture_is_a_webhook_case_or_a_send_answer(self) -> None:
        names = {path.name for path in Path(FIXTURES, "telegram").glob("*.json")}

        assert names == set(EXPECTED) | SEND_SIDE


class TestParse:
    @pytest.mark.parametrize("name", sorted(EXPECTED))
    def test_fixture_becomes_one_message(self, name: str) -> None:
        parsed = telegram.parse(load_fixture(f"telegram/{name}"), now=NOW)

        [message] = parsed.messages
        assert parsed.unsupported == ()
        assert message.channel == "telegram"
        assert (message.chat_id, message.sender_id) == ("111111111", "111111111")
        assert message.received_at.tzinfo is not None
        for field, value in EXPECTED[name].items():
            assert getattr(message, field) == value, field

    def test_a_forwarded_contact_card_is_not_the_senders_phone(self) -> None:
        card = {"phone_number": "+7 999 000-00-02", "first_name": "Пётр"}
        forwarded_card = {**card, "user_id": 100000002}

        without_owner = telegram.parse(
            update(1, message=private_message(contact=card)), now=NOW
        )
        someone_else = telegram.parse(
            update(2, message=private_message(contact=forwarded_card)), now=NOW
        )

        assert without_owner.messages[0].phone_is_senders is False
        assert someone_else.messages[0].phone_is_senders is False
        assert someone_else.messages[0].phone == "+7 999 000-00-02"

    def test_an_edit_is_an_edit_not_a_new_answer(self) -> None:
        edited = private_message(text="Хочу в субботу", edit_date=1736751700)

        [message] = telegram.parse(update(3, edited_message=edited), now=NOW).messages

        assert message.kind is InboundKind.EDITED
        assert message.text == "Хочу в субботу"
        assert message.received_at == datetime.fromtimestamp(1736751700, tz=UTC)

    def test_a_photo_caption_travels_with_the_media(self) -> None:
        photo = [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]

        [message] = telegram.parse(
            update(4, message=private_message(photo=photo, caption="вот так")),
            now=NOW,
        ).messages

        assert (message.kind, message.text) == (InboundKind.MEDIA, "вот так")

    def test_unblocking_is_acknowledged_and_left_alone(self) -> None:
        blocked = load_fixture("telegram/my_chat_member_blocked.json")
        member = blocked["my_chat_member"]
        unblocked = {
            **member,
            "old_chat_member": member["new_chat_member"],
            "new_chat_member": {**member["old_chat_member"], "status": "member"},
        }

        parsed = telegram.parse(update(5, my_chat_member=unblocked), now=NOW)

        assert parsed.messages == ()
        assert parsed.unsupported[0].kind == "my_chat_member.member"

    def test_a_group_message_is_not_a_lead(self) -> None:
        group = {
            **private_message(text="всем привет"),
            "chat": {"id": -5, "type": "group"},
        }

        parsed = telegram.parse(update(6, message=group), now=NOW)

        assert parsed.messages == ()
        assert parsed.unsupported[0].kind == "message.group"

    def test_a_message_missing_its_chat_is_skipped_not_raised(self) -> None:
        parsed = telegram.parse(update(7, message={"message_id": 1}), now=NOW)

        assert parsed.messages == ()
        assert parsed.unsupported[0].kind == "message"

    @pytest.mark.parametrize("body", [[], {"message": {}}, {"update_id": "1"}])
    def test_a_body_without_an_integer_update_id_is_malformed(self, body: Any) -> None:
        with pytest.raises(MalformedPayload):
            telegram.parse(body, now=NOW)


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
        body = (FIXTURES / "telegram" / name).read_bytes()
        event_id = EXPECTED[name]["event_id"]
        chat = chat_key("telegram", "111111111")

        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                content=body,
                headers={**HEADERS, "Content-Type": "application/json"},
            )

        assert response.status_code == 200
        stored = await redis.get(keys.event("telegram", event_id))
        assert InboundMessage.from_json(stored).kind == EXPECTED[name]["kind"]
        assert await redis.lrange(keys.inbox("telegram", chat), 0, -1) == [
            event_id.encode()
        ]
        assert await queued_jobs(redis, queue) == [(PROCESS_CHAT, ("telegram", chat))]

    async def test_a_button_press_is_answered_in_the_acknowledgement(
        self, open_api: OpenApi
    ) -> None:
        """TG-3: a callback query is answered in the webhook's 200 response."""
        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                json=load_fixture("telegram/callback_query.json"),
                headers=HEADERS,
            )

        assert response.json() == {
            "method": "answerCallbackQuery",
            "callback_query_id": "1000000000000000001",
        }

    @pytest.mark.parametrize(
        "headers",
        [{}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}],
        ids=["missing", "wrong"],
    )
    async def test_a_missing_or_wrong_secret_gets_401_and_nothing_is_queued(
        self,
        headers: dict[str, str],
        open_api: OpenApi,
        redis: ArqRedis,
        keys: InboxKeys,
        queue: str,
    ) -> None:
        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                json=load_fixture("telegram/message_text.json"),
                headers=headers,
            )

        assert response.status_code == 401
        assert response.json()["error"] == "not_authenticated"
        assert await queued_jobs(redis, queue) == []
        assert await redis.exists(keys.seen("telegram", "892252934")) == 0

    async def test_malformed_json_gets_400_not_500(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        """TG-2: a malformed body gets 400, not 500."""
        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                content=b"{",
                headers={**HEADERS, "Content-Type": "application/json"},
            )

        assert response.status_code == 400
        assert response.json()["error"] == "malformed_body"
        assert await queued_jobs(redis, queue) == []

    async def test_a_get_gets_405_in_the_apps_one_error_shape(
        self, open_api: OpenApi
    ) -> None:
        # The route is a plain Starlette route: the app's handlers still answer.
        async with open_api() as api:
            response = await api.get("/webhooks/telegram", headers=HEADERS)

        assert response.status_code == 405
        assert response.json()["error"] == "method_not_allowed"
        assert response.headers["allow"] == "POST"

    async def test_a_form_body_gets_415(self, open_api: OpenApi) -> None:
        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram", data={"update_id": "1"}, headers=HEADERS
            )

        assert response.status_code == 415

    async def test_a_body_over_one_mebibyte_gets_413(
        self, open_api: OpenApi, redis: ArqRedis, queue: str
    ) -> None:
        text = "я" * (600 * 1024)
        body = json.dumps(update(9, message=private_message(text=text)))

        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                content=body.encode(),
                headers={**HEADERS, "Content-Type": "application/json"},
            )

        assert response.status_code == 413
        assert await queued_jobs(redis, queue) == []


class TestKnownFaults:
    async def test_tg1_the_same_update_three_times_is_handled_once(
        self, open_api: OpenApi, run_worker: RunWorker, redis: ArqRedis, queue: str
    ) -> None:
        """TG-1: one update POSTed three times gets 200 each time, handled once."""
        body = update(
            700000001,
            message=private_message(text="Хочу консультацию по внедрению CRM"),
        )

        async with open_api() as api:
            first, third = await asyncio.gather(
                api.post("/webhooks/telegram", json=body, headers=HEADERS),
                api.post("/webhooks/telegram", json=body, headers=HEADERS),
            )
            second = await api.post("/webhooks/telegram", json=body, headers=HEADERS)
        assert len(await queued_jobs(redis, queue)) == 1
        recorder = Recorder()
        await run_worker(recorder)

        assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
        assert recorder.event_ids == ["700000001"]

    async def test_tg2_unexpected_updates_get_200_and_a_line_on_their_own_logger(
        self, open_api: OpenApi, logs: Logs, redis: ArqRedis, queue: str
    ) -> None:
        """TG-2: unsupported updates get 200 and are logged as ignored, by kind."""
        channel_post = update(
            700000010,
            channel_post={
                "message_id": 5,
                "chat": {"id": -1001000000001, "type": "channel", "title": "Новости"},
                "date": 1736751600,
                "text": "пост",
            },
        )
        forwarded = update(
            700000012,
            message=private_message(
                text="переслано",
                forward_origin={"type": "hidden_user", "sender_user_name": "Кто-то"},
            ),
        )

        async with open_api() as api:
            responses = [
                await api.post("/webhooks/telegram", json=body, headers=HEADERS)
                for body in (channel_post, forwarded)
            ]

        assert [response.status_code for response in responses] == [200, 200]
        ignored = [
            (line["event_id"], line["kind"])
            for line in logs()
            if line["logger"] == "leadloop.webhooks.unsupported"
        ]
        assert ignored == [
            ("700000010", "channel_post"),
            ("700000012", "message.forward"),
        ]
        assert await queued_jobs(redis, queue) == []

    async def test_tg2_a_block_marks_the_chat_unreachable(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        """TG-2: my_chat_member 'kicked' marks the chat unreachable."""
        blocked = load_fixture("telegram/my_chat_member_blocked.json")
        reachability = Reachability(redis, keys=keys)

        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram", json=blocked, headers=HEADERS
            )
        recorder = Recorder()
        await run_worker(recorder)

        assert response.status_code == 200
        assert [m.kind for m in recorder.messages] == [InboundKind.BLOCKED]
        assert await reachability.is_reachable("telegram", "111111111") is False
        assert await reachability.is_reachable("telegram", "111111112") is True

    async def test_tg2_a_failing_handler_never_reaches_telegram_as_5xx(
        self,
        open_api: OpenApi,
        run_worker: RunWorker,
        redis: ArqRedis,
        keys: InboxKeys,
    ) -> None:
        """TG-2: a failure after enqueueing never reaches Telegram as a 5xx."""

        async def broken(message: InboundMessage) -> None:
            raise RuntimeError("the dialog is down")

        async with open_api() as api:
            response = await api.post(
                "/webhooks/telegram",
                json=update(700000013, message=private_message(text="привет")),
                headers=HEADERS,
            )
        await run_worker(broken, policy=DrainPolicy(retry_delays=(timedelta(0),)))

        assert response.status_code == 200
        [aside] = await SetAside(redis, keys).latest()
        assert (aside.ref, aside.reason) == ("telegram:700000013", "tries")

    async def test_tg5_sticker_voice_and_contact_arrive_without_text(
        self, open_api: OpenApi, run_worker: RunWorker
    ) -> None:
        """TG-5: sticker, voice and contact updates without text get 200."""
        sticker = {
            "file_id": "CAACAgIAAxk-fake",
            "file_unique_id": "AgAD-fake1",
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "👍",
        }
        voice = {
            "file_id": "AwAC-fake",
            "file_unique_id": "AgAD-fake2",
            "duration": 4,
            "mime_type": "audio/ogg",
        }
        contact = {
            "phone_number": "89990000001",
            "first_name": "Иван",
            "user_id": 100000001,
        }
        updates = [
            update(700000040, message=private_message(40, sticker=sticker)),
            update(700000041, message=private_message(41, voice=voice)),
            update(700000042, message=private_message(42, contact=contact)),
        ]

        async with open_api() as api:
            responses = [
                await api.post("/webhooks/telegram", json=body, headers=HEADERS)
                for body in updates
            ]
        recorder = Recorder()
        await run_worker(recorder)

        assert [response.status_code for response in responses] == [200, 200, 200]
        assert [(m.kind, m.text) for m in recorder.messages] == [
            (InboundKind.MEDIA, None),
            (InboundKind.MEDIA, None),
            (InboundKind.CONTACT, None),
        ]
        assert recorder.messages[2].phone == "89990000001"
        assert recorder.messages[2].phone_is_senders is True


class TestUnconfigured:
    async def test_without_a_configured_secret_every_update_gets_401(
        self, settings: Settings, inbox: Inbox, redis: ArqRedis, queue: str
    ) -> None:
        app = create_app(settings.model_copy(update={"telegram_webhook_secret": None}))

        async def test_inbox() -> Inbox:
            return inbox

        app.dependency_overrides[get_inbox] = test_inbox
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            response = await api.post(
                "/webhooks/telegram",
                json=load_fixture("telegram/message_text.json"),
                headers={"X-Telegram-Bot-Api-Secret-Token": ""},
            )

        assert response.status_code == 401
        assert await queued_jobs(redis, queue) == []
