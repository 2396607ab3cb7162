from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis
from structlog.testing import capture_logs

from connectors.bitrix24.errors import Rejected
from reminders.booking import callback_data, stamp_of
from reminders.keys import ReminderKeys
from reminders.service import Reminders
from tests.connectors.bitrix24.conftest import Wire
from tests.reminders.conftest import (
    MANAGER,
    MOSCOW,
    TELEGRAM_CHAT,
    VISIT,
    VISIT_FIELD,
    WHATSAPP_CHAT,
    FakeClock,
    Portal,
)
from webhooks import telegram
from webhooks.inbound import InboundKind, InboundMessage

STAMP = stamp_of(VISIT)
DAY_BEFORE_NOON = datetime(2027, 3, 10, 12, tzinfo=MOSCOW)
CONFIRMED_COMMENT = (
    "Клиент подтвердил визит 11 марта в 15:00 кнопкой в напоминании (Telegram)."
)


@pytest.fixture(autouse=True)
def at_noon_the_day_before(clock: FakeClock) -> None:
    clock.set(DAY_BEFORE_NOON)


async def reminded(
    portal: Portal,
    reminders: Reminders,
    channel: str = "telegram",
    chat_id: str = TELEGRAM_CHAT,
) -> int:
    """A booked deal whose client got the day-before reminder."""
    deal_id = portal.book()
    await reminders.links.remember(deal_id, channel, chat_id)  # type: ignore[arg-type]
    if channel == "whatsapp":
        await reminders.links.touch("whatsapp", chat_id, DAY_BEFORE_NOON)
    fired = await reminders.firing.fire(deal_id, STAMP, "day_before")
    assert fired.outcome == "sent"
    return deal_id


def telegram_tap(portal: Portal, data: str) -> InboundMessage:
    """A press on the chat's newest inline keyboard, as the webhook parses it."""
    body = {"chat_id": int(TELEGRAM_CHAT), "callback_data": data}
    delivered = portal.sandbox.http.post("/_sandbox/telegram/deliver", json=body)
    update: dict[str, Any] = delivered.json()["update"]
    [message] = telegram.parse(update, now=DAY_BEFORE_NOON).messages
    return message


def whatsapp_tap(data: str, *, text: str = "Подтверждаю", n: int = 1) -> InboundMessage:
    return InboundMessage(
        channel="whatsapp",
        event_id=f"wamid.TAP{n}",
        chat_id=WHATSAPP_CHAT,
        sender_id=WHATSAPP_CHAT,
        kind=InboundKind.CALLBACK,
        received_at=DAY_BEFORE_NOON,
        callback_data=data,
        text=text,
        provider_message_id=f"wamid.TAP{n}",
    )


def text_message(text: str, *, n: int = 1) -> InboundMessage:
    return InboundMessage(
        channel="telegram",
        event_id=f"70000010{n}",
        chat_id=TELEGRAM_CHAT,
        sender_id=TELEGRAM_CHAT,
        kind=InboundKind.TEXT,
        received_at=DAY_BEFORE_NOON,
        text=text,
    )


def status(wamid: str, state: str, code: int | None = None) -> InboundMessage:
    return InboundMessage(
        channel="whatsapp",
        event_id=f"{wamid}:{state}",
        chat_id=WHATSAPP_CHAT,
        sender_id=WHATSAPP_CHAT,
        kind=InboundKind.STATUS,
        received_at=DAY_BEFORE_NOON,
        provider_message_id=wamid,
        status=state,
        error_code=code,
    )


def methods(wire: Wire) -> list[str]:
    return [request.url.path.rsplit("/", 1)[-1] for request in wire.requests]


class TestConfirm:
    async def test_moves_the_deal_comments_and_thanks_the_client(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))

        handled = await reminders.answers.handle_answer(tap)

        assert handled is True
        assert portal.deal(deal_id)["STAGE_ID"] == "PREPAYMENT_INVOICE"
        assert portal.comments(deal_id) == [CONFIRMED_COMMENT]
        record = portal.telegram_messages()
        assert record["messages"][-1]["text"] == "Спасибо! Ждём вас завтра в 15:00."

    async def test_a_tap_the_webhook_answered_is_not_answered_again(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        """TG-3: one answerCallbackQuery per callback id."""
        # Known fault TG-3: one answer per callback id. The webhook route answered
        # this one in its acknowledgement, which Telegram runs before any job.
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))
        portal.answer_callback(str(tap.callback_id))
        wire.requests.clear()

        with capture_logs() as logs:
            await reminders.answers.handle_answer(tap)

        assert "answerCallbackQuery" not in methods(wire)
        assert [
            entry["event"] for entry in logs if entry["log_level"] == "warning"
        ] == []
        record = portal.telegram_messages()
        assert len(record["callback_answers"]) == 1
        assert record["messages"][-1]["text"] == "Спасибо! Ждём вас завтра в 15:00."

    async def test_the_buttons_are_taken_off_the_reminder(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))

        await reminders.answers.handle_answer(tap)

        [edit] = portal.telegram_messages()["edits"]
        assert str(edit["message_id"]) == tap.provider_message_id

    async def test_a_second_tap_changes_nothing_twice(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        """TG-3: a second tap on the same button repeats no action."""
        # Known fault TG-3: the client saw nothing happen and tapped again.
        deal_id = await reminded(portal, reminders)
        data = callback_data("confirm", deal_id, STAMP)
        first, second = telegram_tap(portal, data), telegram_tap(portal, data)

        await reminders.answers.handle_answer(first)
        again = await reminders.answers.handle_answer(second)

        assert again is True
        assert wire.count("/crm.deal.update") == 1
        assert portal.comments(deal_id) == [CONFIRMED_COMMENT]
        assert len(portal.telegram_messages()["messages"]) == 2  # reminder, thanks

    async def test_a_retried_event_finishes_what_failed_and_repeats_nothing(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))
        portal.fault(
            "bitrix24",
            method="crm.timeline.comment.add",
            kind="error",
            status=400,
            code="ERROR_CORE",
            description="Comment could not be saved",
            times=1,
        )

        with pytest.raises(Rejected):
            await reminders.answers.handle_answer(tap)
        await reminders.answers.handle_answer(tap)

        assert wire.count("/crm.deal.update") == 1
        assert portal.comments(deal_id) == [CONFIRMED_COMMENT]
        assert portal.deal(deal_id)["STAGE_ID"] == "PREPAYMENT_INVOICE"

    async def test_stops_later_reminders_of_the_visit(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))
        await reminders.answers.handle_answer(tap)
        clock.set(datetime(2027, 3, 11, 13, tzinfo=MOSCOW))

        fired = await reminders.firing.fire(deal_id, STAMP, "2h")

        assert fired.outcome == "role_confirmed"


class TestCancel:
    async def test_moves_the_deal_and_asks_the_manager_to_rebook(
        self, portal: Portal, reminders: Reminders, redis: ArqRedis, keys: ReminderKeys
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("cancel", deal_id, STAMP))

        await reminders.answers.handle_answer(tap)

        assert portal.deal(deal_id)["STAGE_ID"] == "FINAL_INVOICE"
        assert portal.comments(deal_id) == [
            "Клиент отменил визит 11 марта в 15:00 кнопкой в напоминании (Telegram)."
        ]
        [task] = portal.tasks()
        assert task["title"] == (
            "Клиент отменил визит 11 марта в 15:00: предложить другое время"
        )
        assert task["responsibleId"] == str(MANAGER)
        assert task["xmlId"] == f"leadloop:rm:{deal_id}:{STAMP}:rebook"
        assert portal.telegram_messages()["messages"][-1]["text"].startswith(
            "Запись отменена."
        )
        assert not await redis.exists(keys.open_reminder("telegram", TELEGRAM_CHAT))

    async def test_a_cancel_after_a_confirm_still_cancels(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        confirm = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))
        cancel = replace(
            confirm,
            event_id="700000099",
            callback_data=callback_data("cancel", deal_id, STAMP),
        )

        await reminders.answers.handle_answer(confirm)
        await reminders.answers.handle_answer(cancel)

        assert portal.deal(deal_id)["STAGE_ID"] == "FINAL_INVOICE"


class TestStaleOrForeignTaps:
    async def test_a_tap_on_a_moved_visit_only_tells_the_manager(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        moved = VISIT + timedelta(days=1)
        portal.update(deal_id, **{VISIT_FIELD: moved.isoformat()})
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))

        handled = await reminders.answers.handle_answer(tap)

        assert handled is True
        assert portal.deal(deal_id)["STAGE_ID"] == "PREPARATION"
        assert portal.comments(deal_id) == [
            "Клиент нажал «Подтверждаю» в напоминании о визите 11 марта в 15:00 "
            "(Telegram), но запись уже изменилась."
        ]

    async def test_a_tap_naming_a_visit_this_chat_was_not_reminded_of_does_nothing(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("cancel", deal_id, STAMP))
        forged = replace(tap, chat_id="100000009", sender_id="100000009")
        wire.requests.clear()

        handled = await reminders.answers.handle_answer(forged)

        assert handled is True
        assert methods(wire) == []
        assert portal.deal(deal_id)["STAGE_ID"] == "PREPARATION"

    async def test_another_button_is_left_to_the_dialog(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        await reminded(portal, reminders)
        tap = telegram_tap(portal, "budget:100-300k")
        wire.requests.clear()

        assert await reminders.answers.handle_answer(tap) is False
        assert wire.requests == []

    async def test_a_text_is_not_a_tap(self, reminders: Reminders) -> None:
        assert await reminders.answers.handle_answer(text_message("да")) is False


class TestWhatsAppAnswers:
    async def test_a_reply_button_confirms_and_marks_the_reply_read(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        deal_id = await reminded(portal, reminders, "whatsapp", WHATSAPP_CHAT)

        handled = await reminders.answers.handle_answer(
            whatsapp_tap(callback_data("confirm", deal_id, STAMP))
        )

        assert handled is True
        assert portal.deal(deal_id)["STAGE_ID"] == "PREPAYMENT_INVOICE"
        [read, reply] = wire.bodies("/messages")[-2:]
        assert read == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.TAP1",
        }
        assert reply["text"]["body"] == "Спасибо! Ждём вас завтра в 15:00."

    async def test_the_reply_is_marked_read_before_any_bitrix24_call(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        deal_id = await reminded(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        wire.requests.clear()

        await reminders.answers.handle_answer(
            whatsapp_tap(callback_data("confirm", deal_id, STAMP))
        )

        called = methods(wire)
        assert called[0] == "messages"
        assert wire.bodies("/messages")[0]["status"] == "read"
        assert called.index("messages") < called.index("crm.deal.get")

    async def test_a_template_quick_reply_answers_the_visit_its_payload_names(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        first = portal.book()
        later = VISIT + timedelta(hours=1)
        second = portal.book(later)
        for deal_id, stamp in ((first, STAMP), (second, stamp_of(later))):
            await reminders.links.remember(deal_id, "whatsapp", WHATSAPP_CHAT)
            await reminders.firing.fire(deal_id, stamp, "day_before")  # the template

        # The chat was last reminded of the second visit; the tap names the first.
        tap = whatsapp_tap(
            callback_data("cancel", first, STAMP), text="Отменить запись"
        )
        handled = await reminders.answers.handle_answer(tap)

        assert handled is True
        assert portal.deal(first)["STAGE_ID"] == "FINAL_INVOICE"
        assert portal.deal(second)["STAGE_ID"] == "PREPARATION"

    async def test_a_template_approved_with_its_buttons_swapped_answers_as_read(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = portal.book()
        await reminders.links.remember(deal_id, "whatsapp", WHATSAPP_CHAT)
        await reminders.firing.fire(deal_id, STAMP, "day_before")  # the template
        # "Отменить запись" stands first in the approved template: it got the
        # confirm payload.
        tap = whatsapp_tap(
            callback_data("confirm", deal_id, STAMP), text="Отменить запись"
        )

        with capture_logs() as logs:
            await reminders.answers.handle_answer(tap)

        assert portal.deal(deal_id)["STAGE_ID"] == "FINAL_INVOICE"
        assert "reminders.template_buttons_swapped" in [e["event"] for e in logs]

    async def test_a_quick_reply_without_a_payload_answers_the_chats_open_reminder(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = portal.book()
        await reminders.links.remember(deal_id, "whatsapp", WHATSAPP_CHAT)
        await reminders.firing.fire(deal_id, STAMP, "day_before")  # the template

        handled = await reminders.answers.handle_answer(
            whatsapp_tap("Отменить запись", text="Отменить запись")
        )

        assert handled is True
        assert portal.deal(deal_id)["STAGE_ID"] == "FINAL_INVOICE"

    async def test_a_quick_reply_without_an_open_reminder_is_not_ours(
        self, reminders: Reminders
    ) -> None:
        tap = whatsapp_tap("Подтверждаю")

        assert await reminders.answers.handle_answer(tap) is False


class TestForwardText:
    async def test_a_reply_to_a_reminder_reaches_the_manager(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)

        handled = await reminders.answers.forward_text(
            text_message("Можно перенести на 17:00?")
        )

        assert handled is True
        assert portal.comments(deal_id) == [
            "Ответ клиента на напоминание о визите 11 марта в 15:00 (Telegram):\n"
            "Можно перенести на 17:00?"
        ]
        [note] = portal.notifications()
        assert note["USER_ID"] == str(MANAGER)
        assert str(deal_id) in note["MESSAGE"]
        assert "17:00" not in note["MESSAGE"]
        assert portal.telegram_messages()["messages"][-1]["text"] == (
            "Передал ваше сообщение администратору, он скоро ответит."
        )

    async def test_the_same_message_twice_is_forwarded_once(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        message = text_message("Опоздаю на 10 минут")

        await reminders.answers.forward_text(message)
        again = await reminders.answers.forward_text(message)

        assert again is True
        assert len(portal.comments(deal_id)) == 1

    async def test_text_without_an_open_reminder_goes_to_the_dialog(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        portal.book()

        assert await reminders.answers.forward_text(text_message("Привет")) is False

    async def test_text_about_a_moved_visit_goes_to_the_dialog(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        moved = VISIT + timedelta(days=3)
        portal.update(deal_id, **{VISIT_FIELD: moved.isoformat()})

        assert await reminders.answers.forward_text(text_message("Ок")) is False
        assert portal.comments(deal_id) == []


class TestStatuses:
    async def wamid_of_reminder(
        self, portal: Portal, reminders: Reminders
    ) -> tuple[int, str]:
        deal_id = await reminded(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        [sent] = portal.whatsapp_messages()
        return deal_id, str(sent["id"])

    async def test_a_closed_window_reported_later_sends_the_template_once(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        _, wamid = await self.wamid_of_reminder(portal, reminders)
        failed = status(wamid, "failed", 131047)

        first = await reminders.answers.handle_status(failed)
        await reminders.answers.handle_status(failed)

        assert first is True
        sent = portal.whatsapp_messages()
        assert [message["type"] for message in sent] == ["interactive", "template"]

    async def test_an_undeliverable_number_gives_a_call_task(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id, wamid = await self.wamid_of_reminder(portal, reminders)

        await reminders.answers.handle_status(status(wamid, "failed", 131026))

        [task] = portal.tasks()
        assert task["xmlId"] == f"leadloop:rm:{deal_id}:{STAMP}:unreachable"

    async def test_a_delivered_status_of_a_reminder_needs_nothing(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        _, wamid = await self.wamid_of_reminder(portal, reminders)

        assert await reminders.answers.handle_status(status(wamid, "delivered"))
        assert len(portal.whatsapp_messages()) == 1

    async def test_a_status_of_another_message_is_not_ours(
        self, reminders: Reminders
    ) -> None:
        other = status("wamid.NOTOURS", "failed", 131047)

        assert await reminders.answers.handle_status(other) is False


class TestOffer:
    async def test_records_the_clients_time_then_handles_the_tap(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await reminded(portal, reminders)
        tap = telegram_tap(portal, callback_data("confirm", deal_id, STAMP))

        assert await reminders.answers.offer(tap) is True
        last = await reminders.links.last_inbound_at("telegram", TELEGRAM_CHAT)
        assert last == DAY_BEFORE_NOON

    async def test_a_message_of_no_reminder_passes_through(
        self, reminders: Reminders
    ) -> None:
        assert await reminders.answers.offer(text_message("Хочу на маникюр")) is False
