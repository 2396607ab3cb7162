from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from connectors.messengers.base import Sender
from connectors.messengers.telegram import TelegramSender
from reminders.booking import callback_data, stamp_of
from reminders.firing import Later
from reminders.keys import ReminderKeys
from reminders.service import Reminders
from sandbox.telegram import SANDBOX_BOT_TOKEN
from tests.connectors.bitrix24.conftest import Wire
from tests.reminders.conftest import (
    MANAGER,
    MOSCOW,
    TELEGRAM_CHAT,
    VISIT,
    VISIT_FIELD,
    WHATSAPP_CHAT,
    FakeClock,
    MakeReminders,
    Portal,
    make_rules,
)
from tests.sandbox.conftest import free_port
from webhooks.keys import InboxKeys
from webhooks.reachability import Reachability

STAMP = stamp_of(VISIT)
DAY_BEFORE_NOON = datetime(2027, 3, 10, 12, tzinfo=MOSCOW)
TWO_HOURS_BEFORE = datetime(2027, 3, 11, 13, tzinfo=MOSCOW)


@pytest.fixture(autouse=True)
def at_noon_the_day_before(clock: FakeClock) -> None:
    clock.set(DAY_BEFORE_NOON)


async def linked_deal(
    portal: Portal,
    reminders: Reminders,
    channel: str = "telegram",
    chat_id: str = TELEGRAM_CHAT,
) -> int:
    deal_id = portal.book()
    await reminders.links.remember(deal_id, channel, chat_id)  # type: ignore[arg-type]
    return deal_id


class TestTelegramReminder:
    async def test_goes_to_the_linked_chat_with_confirm_and_cancel_buttons(
        self, portal: Portal, reminders: Reminders, wire: Wire
    ) -> None:
        deal_id = await linked_deal(portal, reminders)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "sent"
        [sent] = wire.bodies("/sendMessage")
        assert sent["chat_id"] == int(TELEGRAM_CHAT)
        assert sent["text"] == (
            "Напоминаем о вашей записи завтра в 15:00. "
            "Подтвердите, пожалуйста, что придёте."
        )
        assert sent["reply_markup"] == {
            "inline_keyboard": [
                [
                    {
                        "text": "Подтверждаю",
                        "callback_data": callback_data("confirm", deal_id, STAMP),
                    }
                ],
                [
                    {
                        "text": "Отменить запись",
                        "callback_data": callback_data("cancel", deal_id, STAMP),
                    }
                ],
            ]
        }
        [recorded] = portal.telegram_messages()["messages"]
        assert len(recorded["buttons"]) == 2

    async def test_the_hours_before_text_says_today(
        self, portal: Portal, reminders: Reminders, clock: FakeClock, wire: Wire
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        clock.set(TWO_HOURS_BEFORE)

        await reminders.firing.fire(deal_id, STAMP, "2h")

        [sent] = wire.bodies("/sendMessage")
        assert sent["text"] == "Ждём вас сегодня в 15:00. Всё в силе?"

    async def test_a_job_run_twice_sends_once(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders)

        first = await reminders.firing.fire(deal_id, STAMP, "day_before")
        second = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert (first.outcome, second.outcome) == ("sent", "done")
        assert len(portal.telegram_messages()["messages"]) == 1


class TestReadAgainAtFireTime:
    async def test_a_reminder_whose_visit_moved_is_not_sent(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        moved = VISIT + timedelta(days=2)
        portal.update(deal_id, **{VISIT_FIELD: moved.isoformat()})

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "visit_changed"
        assert portal.telegram_messages()["messages"] == []

    @pytest.mark.parametrize(
        ("stage", "outcome"),
        [
            ("PREPAYMENT_INVOICE", "role_confirmed"),
            ("FINAL_INVOICE", "role_cancelled"),
            ("WON", "role_visited"),
        ],
    )
    async def test_a_reminder_of_a_deal_no_longer_booked_is_not_sent(
        self, portal: Portal, reminders: Reminders, stage: str, outcome: str
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        portal.update(deal_id, STAGE_ID=stage)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == outcome
        assert portal.telegram_messages()["messages"] == []

    async def test_reminders_turned_off_after_planning_send_nothing(
        self, portal: Portal, make_reminders: MakeReminders
    ) -> None:
        off = make_reminders(rules=make_rules("[reminders]\nenabled = false\n"))
        deal_id = await linked_deal(portal, off)

        fired = await off.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "off_disabled"
        assert portal.telegram_messages()["messages"] == []

    async def test_a_deleted_deal_gets_no_reminder(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        portal.sandbox.result("crm.deal.delete", {"id": deal_id})

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "deal_deleted"

    async def test_a_client_who_answered_gets_no_more_reminders(
        self,
        portal: Portal,
        reminders: Reminders,
        redis: ArqRedis,
        keys: ReminderKeys,
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        await redis.set(keys.answered(deal_id, STAMP), "confirm")

        fired = await reminders.firing.fire(deal_id, STAMP, "2h")

        assert fired.outcome == "answered"

    async def test_a_late_job_gives_way_to_a_later_reminder_already_due(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        # After an outage both jobs run at once; the client reads the 2-hour one.
        deal_id = await linked_deal(portal, reminders)
        clock.set(TWO_HOURS_BEFORE + timedelta(minutes=5))

        late = await reminders.firing.fire(deal_id, STAMP, "day_before")
        on_time = await reminders.firing.fire(deal_id, STAMP, "2h")

        assert (late.outcome, on_time.outcome) == ("superseded", "sent")
        [sent] = portal.telegram_messages()["messages"]
        assert sent["text"] == "Ждём вас сегодня в 15:00. Всё в силе?"

    async def test_two_reminders_within_the_hour_send_once(
        self, portal: Portal, make_reminders: MakeReminders, clock: FakeClock
    ) -> None:
        rules = make_rules("[reminders]\nhours_before = [3, 2]\n")
        reminders = make_reminders(rules=rules)
        deal_id = await linked_deal(portal, reminders)
        clock.set(datetime(2027, 3, 11, 12, 30, tzinfo=MOSCOW))
        await reminders.firing.fire(deal_id, STAMP, "3h")  # half an hour late
        clock.set(TWO_HOURS_BEFORE)

        second = await reminders.firing.fire(deal_id, STAMP, "2h")

        assert second.outcome == "another_just_sent"
        assert len(portal.telegram_messages()["messages"]) == 1


class TestQuietHoursAtFireTime:
    async def test_a_job_run_at_night_waits_for_nine(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        clock.set(datetime(2027, 3, 10, 23, 30, tzinfo=MOSCOW))

        with pytest.raises(Later) as later:
            await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert later.value.delay == timedelta(hours=9, minutes=30)
        assert later.value.reason == "quiet_hours"
        assert portal.telegram_messages()["messages"] == []

    async def test_after_the_visit_it_gives_up(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        clock.set(VISIT + timedelta(minutes=1))

        fired = await reminders.firing.fire(deal_id, STAMP, "2h")

        assert fired.outcome == "visit_passed"


class TestChannelFromTheContact:
    async def test_a_deal_made_elsewhere_uses_the_contacts_telegram(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        contact_id = portal.contact(
            IM=[
                {"VALUE": "@someone", "VALUE_TYPE": "TELEGRAM"},
                {"VALUE": TELEGRAM_CHAT, "VALUE_TYPE": "TELEGRAM"},
            ]
        )
        deal_id = portal.book(contact_id=contact_id)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "sent"
        assert len(portal.telegram_messages()["messages"]) == 1

    async def test_a_contacts_whatsapp_number_gets_the_template(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        contact_id = portal.contact(
            IM=[{"VALUE": "+7 999 000-00-01", "VALUE_TYPE": "WHATSAPP"}]
        )
        deal_id = portal.book(contact_id=contact_id)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "sent"
        [sent] = portal.whatsapp_messages()
        assert (sent["to"], sent["type"]) == (WHATSAPP_CHAT, "template")

    async def test_without_any_chat_nothing_is_sent(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        contact_id = portal.contact(PHONE=[{"VALUE": "+79990000002"}])
        deal_id = portal.book(contact_id=contact_id)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "no_channel"

    async def test_a_channel_without_credentials_is_skipped(
        self, portal: Portal, make_reminders: MakeReminders, senders: dict[str, Sender]
    ) -> None:
        reminders = make_reminders(senders={"whatsapp": senders["whatsapp"]})
        deal_id = await linked_deal(portal, reminders)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "no_sender"


def quick_reply(index: int, payload: str) -> dict[str, Any]:
    """A template button component as the Cloud API takes it."""
    return {
        "type": "button",
        "sub_type": "quick_reply",
        "index": str(index),
        "parameters": [{"type": "payload", "payload": payload}],
    }


class TestWhatsAppReminder:
    async def test_inside_the_window_it_has_reply_buttons(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await linked_deal(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        await reminders.links.touch(
            "whatsapp", WHATSAPP_CHAT, clock() - timedelta(hours=20)
        )

        await reminders.firing.fire(deal_id, STAMP, "day_before")

        [sent] = portal.whatsapp_messages()
        assert sent["type"] == "interactive"
        assert sent["buttons"] == [
            {"id": callback_data("confirm", deal_id, STAMP), "title": "Подтверждаю"},
            {"id": callback_data("cancel", deal_id, STAMP), "title": "Отменить запись"},
        ]

    async def test_outside_the_window_it_is_the_template(
        self, portal: Portal, reminders: Reminders, clock: FakeClock, wire: Wire
    ) -> None:
        deal_id = await linked_deal(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        # 23 h 50 min ago: open, but closing before a send could count on it.
        await reminders.links.touch(
            "whatsapp", WHATSAPP_CHAT, clock() - timedelta(hours=23, minutes=50)
        )

        await reminders.firing.fire(deal_id, STAMP, "day_before")

        [body] = wire.bodies("/messages")
        assert body["type"] == "template"
        assert body["template"] == {
            "name": "visit_reminder",
            "language": {"code": "ru"},
            "components": [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": "завтра в 15:00"}],
                },
                quick_reply(0, callback_data("confirm", deal_id, STAMP)),
                quick_reply(1, callback_data("cancel", deal_id, STAMP)),
            ],
        }

    async def test_a_closed_window_reported_at_once_falls_back_to_the_template(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await linked_deal(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        await reminders.links.touch("whatsapp", WHATSAPP_CHAT, clock())
        portal.fault("whatsapp", kind="outside_window", times=1)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "sent"
        [sent] = portal.whatsapp_messages()
        assert sent["type"] == "template"

    async def test_an_undeliverable_number_gives_the_manager_a_call_task(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        portal.fault("whatsapp", kind="undeliverable", times=1)

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "unreachable"
        [task] = portal.tasks()
        assert task["title"] == (
            "Напоминание о визите 11 марта в 15:00 не доставлено (WhatsApp): "
            "позвонить клиенту"
        )

    async def test_a_rate_limit_defers_the_job(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders, "whatsapp", WHATSAPP_CHAT)
        portal.fault("whatsapp", kind="rate_limit", times=1)

        with pytest.raises(Later) as later:
            await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert later.value.reason == "slow_down"
        assert portal.whatsapp_messages() == []


class TestTelegramErrors:
    """TG-4: a blocked bot marks the chat unreachable; other reminders still go."""

    async def test_a_blocked_bot_marks_the_chat_and_asks_the_manager_to_call(
        self,
        portal: Portal,
        reminders: Reminders,
        redis: ArqRedis,
        inbox_keys: InboxKeys,
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        portal.fault("telegram", kind="blocked", method="sendMessage")

        fired = await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert fired.outcome == "unreachable"
        reachability = Reachability(redis, keys=inbox_keys)
        assert not await reachability.is_reachable("telegram", TELEGRAM_CHAT)
        [task] = portal.tasks()
        assert task["responsibleId"] == str(MANAGER)
        assert task["priority"] == "2"
        assert task["ufCrmTask"] == [f"D_{deal_id}"]
        assert task["xmlId"] == f"leadloop:rm:{deal_id}:{STAMP}:unreachable"

    async def test_a_chat_known_unreachable_is_not_tried_and_gets_one_task(
        self,
        portal: Portal,
        reminders: Reminders,
        redis: ArqRedis,
        inbox_keys: InboxKeys,
        clock: FakeClock,
        wire: Wire,
    ) -> None:
        """TG-2: a client who blocked the bot (marked unreachable) gets no reminder."""
        deal_id = await linked_deal(portal, reminders)
        await Reachability(redis, keys=inbox_keys).mark_unreachable(
            "telegram", TELEGRAM_CHAT
        )

        await reminders.firing.fire(deal_id, STAMP, "day_before")
        clock.set(TWO_HOURS_BEFORE)
        await reminders.firing.fire(deal_id, STAMP, "2h")

        assert wire.count("/sendMessage") == 0
        assert len(portal.tasks()) == 1

    async def test_one_blocked_chat_does_not_stop_the_others(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        # Known fault TG-4: three reminders, the second chat blocked the bot.
        chats = ["100000001", "100000002", "100000003"]
        for chat in chats[1:]:
            body = {"id": int(chat), "first_name": "Test"}
            portal.sandbox.http.post("/_sandbox/telegram/chats", json=body)
        portal.fault("telegram", kind="blocked", recipient="100000002")
        deals = [await linked_deal(portal, reminders, chat_id=chat) for chat in chats]

        outcomes = [
            (await reminders.firing.fire(deal_id, STAMP, "day_before")).outcome
            for deal_id in deals
        ]

        assert outcomes == ["sent", "unreachable", "sent"]
        for chat, count in zip(chats, (1, 0, 1), strict=True):
            assert len(portal.telegram_messages(chat)["messages"]) == count

    async def test_too_many_requests_waits_as_told(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        portal.fault("telegram", kind="retry_after", retry_after=7, times=1)

        with pytest.raises(Later) as later:
            await reminders.firing.fire(deal_id, STAMP, "day_before")

        assert later.value.delay == timedelta(seconds=7)
        again = await reminders.firing.fire(deal_id, STAMP, "day_before")
        assert again.outcome == "sent"

    async def test_a_request_that_never_left_is_tried_again_later(
        self,
        portal: Portal,
        make_reminders: MakeReminders,
        http: httpx.AsyncClient,
    ) -> None:
        nowhere = TelegramSender(
            http, SANDBOX_BOT_TOKEN, f"http://127.0.0.1:{free_port()}"
        )
        reminders = make_reminders(senders={"telegram": nowhere})
        deal_id = await linked_deal(portal, reminders)

        with pytest.raises(Later) as later:
            await reminders.firing.fire(deal_id, STAMP, "day_before", job_try=2)

        assert (later.value.reason, later.value.delay) == (
            "unavailable",
            timedelta(minutes=1),
        )


class TestCallCheck:
    async def test_an_unconfirmed_visit_gets_one_call_task(
        self, portal: Portal, reminders: Reminders, clock: FakeClock
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        clock.set(datetime(2027, 3, 11, 12, tzinfo=MOSCOW))

        fired = await reminders.firing.fire(deal_id, STAMP, "call")
        await reminders.firing.fire(deal_id, STAMP, "call")

        assert fired.outcome == "task"
        [task] = portal.tasks()
        assert (
            task["title"] == "Позвонить клиенту: визит 11 марта в 15:00 не подтверждён"
        )
        assert task["deadline"] == "2027-03-11T15:00:00+03:00"
        assert task["responsibleId"] == str(MANAGER)

    async def test_a_confirmed_visit_needs_no_call(
        self, portal: Portal, reminders: Reminders
    ) -> None:
        deal_id = await linked_deal(portal, reminders)
        portal.update(deal_id, STAGE_ID="PREPAYMENT_INVOICE")

        fired = await reminders.firing.fire(deal_id, STAMP, "call")

        assert fired.outcome == "role_confirmed"
        assert portal.tasks() == []

    async def test_a_task_is_made_again_only_if_the_first_is_not_found(
        self,
        portal: Portal,
        reminders: Reminders,
        redis: ArqRedis,
        keys: ReminderKeys,
    ) -> None:
        # A worker that died after the task was created runs the job again.
        deal_id = await linked_deal(portal, reminders)
        await reminders.firing.fire(deal_id, STAMP, "call")
        await redis.delete(keys.done(deal_id, STAMP, "call"))

        await reminders.firing.fire(deal_id, STAMP, "call")

        assert len(portal.tasks()) == 1


class TestOutcomeCheck:
    @pytest.mark.parametrize("stage", ["PREPARATION", "PREPAYMENT_INVOICE"])
    async def test_a_visit_without_an_outcome_gets_a_task_the_next_morning(
        self, portal: Portal, reminders: Reminders, clock: FakeClock, stage: str
    ) -> None:
        deal_id = portal.book(stage=stage)
        clock.set(datetime(2027, 3, 12, 9, tzinfo=MOSCOW))

        fired = await reminders.firing.fire(deal_id, STAMP, "outcome")

        assert fired.outcome == "task"
        [task] = portal.tasks()
        assert (
            task["title"]
            == "Отметить итог визита 11 марта в 15:00: пришёл клиент или нет"
        )
        assert task["deadline"] == "2027-03-12T21:00:00+03:00"

    @pytest.mark.parametrize("stage", ["WON", "EXECUTING", "FINAL_INVOICE"])
    async def test_a_recorded_outcome_needs_no_task(
        self, portal: Portal, reminders: Reminders, stage: str
    ) -> None:
        deal_id = portal.book(stage=stage)

        fired = await reminders.firing.fire(deal_id, STAMP, "outcome")

        assert fired.outcome.startswith("role_")
        assert portal.tasks() == []
