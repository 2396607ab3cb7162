"""Scripted conversations end to end: messenger sandbox → API → worker → portal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import Stack
from tests.qualification.test_handoff import STAFF
from tests.sandbox.conftest import RunningSandbox
from webhooks.keys import InboxKeys
from webhooks.statuses import SentMessages

TG_CHAT = 100000001
WA_ANNA = "79990000001"
WA_OLGA = "79990000002"
OLGA_WRITES = (
    "Здравствуйте! Меня зовут Ольга, хочу записаться на стрижку завтра в 15:00, "
    "мой телефон +7 999 000-00-02"
)

pytestmark = pytest.mark.slow


async def telegram_until_the_phone(stack: Stack) -> list[dict[str, Any]]:
    """Anna tells the bot what and when; the bot asks for her phone."""
    delivered = []
    for text in ("Здравствуйте, хочу на маникюр", "Анна", "завтра после 18"):
        update = {"chat_id": TG_CHAT, "first_name": "Анна", "text": text}
        delivered.append(await stack.tell_telegram(update))
        await stack.settle()
    return delivered


async def share_contact(stack: Stack) -> dict[str, Any]:
    # The request-contact button: the card carries Anna's own user id.
    return await stack.tell_telegram(
        {"chat_id": TG_CHAT, "contact_phone": "89990000001"}
    )


async def counts(stack: Stack) -> dict[str, int]:
    crm = await stack.crm()
    telegram = await stack.telegram_messages(TG_CHAT)
    whatsapp = await stack.whatsapp_messages(WA_OLGA)
    return {name: len(rows) for name, rows in crm.items()} | {
        "telegram": len(telegram),
        "whatsapp": len(whatsapp),
    }


class TestTelegram:
    async def test_a_conversation_ends_with_contact_deal_comment_and_task(
        self, stack: Stack
    ) -> None:
        await telegram_until_the_phone(stack)
        await share_contact(stack)
        await stack.settle()

        replies = await stack.telegram_messages(TG_CHAT)
        assert [reply["text"] for reply in replies[:3]] == [
            "Здравствуйте! Маникюр: от 1\u00a0500 до 2\u00a0500\u00a0₽. "
            "Как к вам обращаться?",
            "Когда вам удобно прийти?",
            "Оставьте, пожалуйста, номер телефона для связи.",
        ]
        assert [reply["request_contact"] for reply in replies] == [
            False,
            False,
            True,
            False,
        ]
        assert replies[3]["text"].startswith("Ваша заявка: Маникюр, завтра")
        assert "Менеджер свяжется с вами в течение 15 минут." in replies[3]["text"]

        crm = await stack.crm()
        [contact] = crm["contacts"]
        assert contact["NAME"] == "Анна"
        assert [phone["VALUE"] for phone in contact["PHONE"]] == ["+79990000001"]
        assert [(im["VALUE_TYPE"], im["VALUE"]) for im in contact["IM"]] == [
            ("TELEGRAM", str(TG_CHAT))
        ]
        [deal] = crm["deals"]
        assert (deal["TITLE"], deal["SOURCE_ID"], deal["STAGE_ID"]) == (
            "Маникюр — Анна",
            "TELEGRAM",
            "NEW",
        )
        assert deal["CONTACT_ID"] == contact["ID"]
        assert "Готовность: горячий" in deal["COMMENTS"]
        [comment] = crm["comments"]
        assert comment["COMMENT"].splitlines()[0] == "Переписка в Telegram:"
        assert "Клиент: завтра после 18" in comment["COMMENT"]
        [task] = crm["tasks"]
        assert task["responsibleId"] == deal["ASSIGNED_BY_ID"] == "17"
        assert task["ufCrmTask"] == [f"D_{deal['ID']}"]

    async def test_replaying_every_delivery_changes_nothing(self, stack: Stack) -> None:
        """TG-1: re-delivered updates add no reply, contact or deal."""
        delivered = await telegram_until_the_phone(stack)
        delivered.append(await share_contact(stack))
        await stack.settle()
        before = await counts(stack)

        for outcome in delivered:
            await stack.tell_telegram(outcome["update"])
        await stack.settle()

        assert await counts(stack) == before
        assert before | {"telegram": 4} == before


FORWARDED = "Передал ваше сообщение администратору, он ответит в этом чате."


async def telegram_deal(stack: Stack) -> dict[str, Any]:
    """Anna's conversation, to the deal it opens."""
    await telegram_until_the_phone(stack)
    await share_contact(stack)
    await stack.settle()
    [deal] = (await stack.crm())["deals"]
    return dict(deal)


async def anna_writes(stack: Stack, text: str) -> dict[str, Any]:
    update = {"chat_id": TG_CHAT, "first_name": "Анна", "text": text}
    delivered = await stack.tell_telegram(update)
    await stack.settle()
    return delivered


class TestAfterTheHandOff:
    async def test_later_messages_go_on_the_deal_and_the_manager_hears_once(
        self, stack: Stack, sandbox: RunningSandbox
    ) -> None:
        deal = await telegram_deal(stack)
        answered = len(await stack.telegram_messages(TG_CHAT))

        later = [
            await anna_writes(stack, "Ещё раз здравствуйте"),
            await anna_writes(stack, "Можно в 19:00 вместо 18?"),
        ]

        crm = await stack.crm()
        assert [row["ID"] for row in crm["deals"]] == [deal["ID"]]
        comments = sorted(crm["comments"], key=lambda row: int(row["ID"]))
        assert [row["COMMENT"].splitlines()[0] for row in comments] == [
            "Переписка в Telegram:",
            "Клиент написал в Telegram после передачи заявки.",
            "Клиент написал в Telegram после передачи заявки.",
        ]
        assert comments[1]["COMMENT"].endswith("Клиент: Ещё раз здравствуйте")
        assert comments[2]["COMMENT"].endswith("Клиент: Можно в 19:00 вместо 18?")
        # The call-back task is still open: the manager gets one notification.
        assert len(crm["tasks"]) == 1
        notices = [
            (row["USER_ID"], row["TAG"]) for row in sandbox.app.portal.table("notify")
        ]
        assert notices == [("17", f"leadloop:followup:deal:{deal['ID']}")]
        replies = await stack.telegram_messages(TG_CHAT)
        assert [reply["text"] for reply in replies[answered:]] == [FORWARDED]

        before = await counts(stack)
        for outcome in later:
            await stack.tell_telegram(outcome["update"])
        await stack.settle()
        assert await counts(stack) == before

    async def test_after_the_deal_is_won_a_message_opens_a_new_deal(
        self, stack: Stack
    ) -> None:
        deal = await telegram_deal(stack)
        await stack.rest(
            "crm.deal.update", {"id": deal["ID"], "fields": {"STAGE_ID": "WON"}}
        )

        await anna_writes(stack, "Хочу ещё на педикюр завтра в 12")

        crm = await stack.crm()
        [new] = [row for row in crm["deals"] if row["ID"] != deal["ID"]]
        assert new["TITLE"] == "Педикюр — Анна"
        assert new["CONTACT_ID"] == deal["CONTACT_ID"]
        assert len(crm["tasks"]) == 2
        last = (await stack.telegram_messages(TG_CHAT))[-1]
        assert last["text"].startswith("Здравствуйте! Ваша заявка: Педикюр, завтра")

    async def test_after_a_portal_reset_the_readmes_first_message_opens_a_deal(
        self, stack: Stack, sandbox: RunningSandbox
    ) -> None:
        await telegram_deal(stack)
        sandbox.reset()
        sandbox.load({"users": STAFF, "settings": {"crm_mode": "simple"}})

        await anna_writes(stack, "Меня зовут Анна, хочу на маникюр завтра после 18")

        crm = await stack.crm()
        [deal] = crm["deals"]
        assert deal["TITLE"] == "Маникюр — Анна"
        [contact] = crm["contacts"]
        assert [phone["VALUE"] for phone in contact["PHONE"]] == ["+79990000001"]
        assert len(crm["tasks"]) == 1
        last = (await stack.telegram_messages(TG_CHAT))[-1]
        assert "Менеджер свяжется с вами" in last["text"]


class TestWhatsApp:
    async def test_everything_in_one_message_opens_the_deal_at_once(
        self, stack: Stack
    ) -> None:
        await stack.sandbox.post(
            "/_sandbox/whatsapp/settings",
            json={"statuses": ["sent", "delivered", "read"]},
        )

        delivered = await stack.tell_whatsapp(
            {"from": WA_OLGA, "name": "Ольга", "text": OLGA_WRITES}
        )
        await stack.settle()
        before = await counts(stack)
        await stack.tell_whatsapp({"raw": delivered["body"]})
        await stack.settle()

        [reply] = await stack.whatsapp_messages(WA_OLGA)
        assert reply["text"].startswith("Здравствуйте! Ваша заявка: Стрижка, завтра")
        assert "Менеджер свяжется с вами" in reply["text"]
        crm = await stack.crm()
        [contact] = crm["contacts"]
        assert [phone["VALUE"] for phone in contact["PHONE"]] == ["+79990000002"]
        [deal] = crm["deals"]
        assert (deal["TITLE"], deal["SOURCE_ID"]) == ("Стрижка — Ольга", "WHATSAPP")
        assert len(crm["tasks"]) == len(crm["comments"]) == 1
        # Its delivery statuses came back, were recorded, and opened nothing.
        statuses = SentMessages(stack.redis, keys=InboxKeys(f"{stack.root}:inbound"))
        assert await statuses.status_of("whatsapp", reply["id"]) == "read"
        assert await counts(stack) == before

    async def test_a_returning_client_with_an_open_deal_gets_a_comment_on_it(
        self, stack: Stack
    ) -> None:
        contact = await stack.rest(
            "crm.contact.add",
            {
                "fields": {
                    "NAME": "Ольга",
                    "PHONE": [{"VALUE": "+79990000002", "VALUE_TYPE": "MOBILE"}],
                }
            },
        )
        open_deal = await stack.rest(
            "crm.deal.add",
            {
                "fields": {
                    "TITLE": "Окрашивание — Ольга",
                    "CONTACT_IDS": [contact],
                    "ASSIGNED_BY_ID": 23,
                }
            },
        )

        await stack.tell_whatsapp(
            {"from": WA_OLGA, "name": "Ольга", "text": OLGA_WRITES}
        )
        await stack.settle()

        crm = await stack.crm()
        assert [int(deal["ID"]) for deal in crm["deals"]] == [open_deal]
        [comment] = crm["comments"]
        assert comment["COMMENT"].startswith(
            "Клиент снова написал в WhatsApp, пока заявка открыта."
        )
        [task] = crm["tasks"]
        assert (task["responsibleId"], task["ufCrmTask"]) == ("23", [f"D_{open_deal}"])
        [reply] = await stack.whatsapp_messages(WA_OLGA)
        assert "Добавили ваше сообщение к вашей текущей заявке." in reply["text"]


class TestSamePersonOnTwoChannels:
    async def test_b24_6_a_telegram_contact_and_a_whatsapp_message_make_one_contact(
        self, stack: Stack
    ) -> None:
        """B24-6: a Telegram contact and a WhatsApp message at once: one contact."""
        await telegram_until_the_phone(stack)

        # Within milliseconds: the shared contact, and the same number on WhatsApp.
        await asyncio.gather(
            share_contact(stack),
            stack.tell_whatsapp(
                {
                    "from": WA_ANNA,
                    "name": "Анна",
                    "text": "Анна, маникюр завтра после 18, 8 999 000-00-01",
                }
            ),
        )
        await stack.settle()

        crm = await stack.crm()
        [contact] = crm["contacts"]
        assert [phone["VALUE"] for phone in contact["PHONE"]] == ["+79990000001"]
        assert [(im["VALUE_TYPE"], im["VALUE"]) for im in contact["IM"]] == [
            ("TELEGRAM", str(TG_CHAT))
        ]
        [deal] = crm["deals"]
        assert deal["CONTACT_ID"] == contact["ID"]
        assert len(crm["comments"]) == 2
        assert len(crm["tasks"]) == 2
