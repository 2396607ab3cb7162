from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime

import pytest

from webhooks.inbound import InboundKind, InboundMessage
from webhooks.keys import chat_key


def contact() -> InboundMessage:
    return InboundMessage(
        channel="telegram",
        event_id="892252935",
        chat_id="111111111",
        sender_id="111111111",
        kind=InboundKind.CONTACT,
        received_at=datetime(2019, 9, 26, 17, 19, 2, tzinfo=UTC),
        text="Здравствуйте 👋",
        phone="79990000000",
        phone_is_senders=True,
        sender_name="Иван Петров",
        latitude=55.75,
        longitude=37.62,
    )


class TestInboundMessage:
    def test_survives_the_round_trip_through_redis(self) -> None:
        message = contact()

        assert InboundMessage.from_json(message.to_json()) == message

    def test_stores_every_field_it_has(self) -> None:
        # to_json names the fields one by one (asdict was too slow for the route):
        # a field added to the class must be added there too.
        stored = json.loads(contact().to_json())

        assert set(stored) == {field.name for field in fields(InboundMessage)}

    def test_keeps_cyrillic_and_emoji_readable_in_storage(self) -> None:
        assert "Здравствуйте 👋" in contact().to_json()

    def test_refuses_a_naive_time(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            InboundMessage(
                channel="whatsapp",
                event_id="wamid.X",
                chat_id="79990000001",
                sender_id="79990000001",
                kind=InboundKind.TEXT,
                received_at=datetime(2025, 1, 13, 9, 0),
            )

    def test_refuses_an_unknown_channel_when_read_back(self) -> None:
        stored = contact().to_json().replace('"telegram"', '"vk"')

        with pytest.raises(ValueError, match="unknown channel"):
            InboundMessage.from_json(stored)


class TestChatKey:
    def test_hides_the_number_and_tells_channels_apart(self) -> None:
        whatsapp = chat_key("whatsapp", "79990000001")

        assert "79990000001" not in whatsapp
        assert whatsapp == chat_key("whatsapp", "79990000001")
        assert whatsapp != chat_key("telegram", "79990000001")
