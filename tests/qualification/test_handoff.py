"""The hand-off against the sandbox portal over HTTP, on real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from redis.asyncio import Redis

from app.config import BusinessRules, IntakeRules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.locks import ContactLocks
from connectors.bitrix24.writes import Writer
from qualification.handoff import HandedOff, HandOff, inquiry_key
from qualification.managers import ManagerPicker
from qualification.schema import Qualification, QualifiedLead, TranscriptLine
from qualification.timeparse import TimeWindow
from reminders.keys import ReminderKeys
from reminders.links import Links
from sandbox.server import SandboxOptions
from tests.qualification.conftest import MOSCOW, NOW, SERVICES, FakeClock
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from webhooks.inbound import Channel
from webhooks.keys import chat_key

TELEGRAM_CHAT = "100000001"
PHONE = "+79990000001"
MANAGERS = ("17", "23")


def user(user_id: int, name: str) -> dict[str, Any]:
    return {
        "ID": str(user_id),
        "ACTIVE": True,
        "NAME": name,
        "LAST_NAME": "Sandbox",
        "EMAIL": f"user{user_id}@example.com",
        "USER_TYPE": "employee",
        "UF_DEPARTMENT": [1],
    }


STAFF = [user(1, "Admin"), user(17, "Анна"), user(23, "Олег")]


def lead(
    *,
    channel: Channel = "telegram",
    chat_id: str = TELEGRAM_CHAT,
    phone: str | None = PHONE,
    name: str | None = "Анна",
    readiness: str = "hot",
    handover: bool = False,
    intake_id: str | None = None,
    bot_spoke: bool = True,
) -> QualifiedLead:
    """A lead as the dialog hands it over: manicure tomorrow after 18:00."""
    window = TimeWindow(
        first_day=date(2025, 1, 9),
        last_day=date(2025, 1, 9),
        start_time=time(18),
        zone="Europe/Moscow",
        quotes=("завтра", "после 18"),
    )
    evidence: dict[str, tuple[str, ...]] = {
        "service": ("маникюр",),
        "preferred_time": ("завтра", "после 18"),
    }
    if name:
        evidence["name"] = (name,)
    if phone:
        evidence["phone"] = ("89990000001",)
    if readiness != "warm":
        evidence["readiness"] = ("хочу на",)
    qualification = Qualification.model_validate(
        {
            "service": "manicure",
            "preferred_time": window,
            "name": name,
            "phone": phone,
            "readiness": readiness,
            "summary": "Маникюр завтра после 18, горячий",
            "evidence": evidence,
        }
    )
    transcript = [TranscriptLine(at=NOW, author="client", text="Хочу на маникюр")]
    if bot_spoke:
        transcript.append(TranscriptLine(at=NOW, author="bot", text="Когда удобно?"))
    return QualifiedLead(
        intake_id=intake_id or str(uuid.uuid4()),
        channel=channel,
        chat_id=chat_id,
        sender_id=chat_id,
        profile_name="Anna T.",
        name=name,
        phone=phone,
        service_id="manicure",
        service_title="Маникюр",
        price_from=Decimal("1500.00"),
        price_to=Decimal("2500.00"),
        preferred_time=window,
        qualification=qualification,
        transcript=tuple(transcript),
        handover=handover,
        created_at=NOW,
    )


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as server:
        yield server


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    """A fresh portal in simple mode with managers 17 and 23 besides the admin."""
    portal_server.reset()
    portal_server.settings(rate_limit="off")
    portal_server.load({"users": STAFF, "settings": {"crm_mode": "simple"}})
    return portal_server


@dataclass
class Wire:
    """The REST methods the gateway called, in order (batched commands included)."""

    requests: list[httpx.Request]

    async def record(self, request: httpx.Request) -> None:
        await request.aread()
        self.requests.append(request)

    def methods(self) -> list[str]:
        called = []
        for request in self.requests:
            method = request.url.path.rsplit("/", 1)[-1].removesuffix(".json")
            if method != "batch":
                called.append(method)
                continue
            commands = json.loads(request.content)["cmd"]
            called += [command.split("?", 1)[0] for command in commands.values()]
        return called

    def calls(self, wanted: str) -> list[dict[str, str]]:
        """The parameters of every call of `wanted`, flat as the portal reads them."""
        found = []
        for request in self.requests:
            method = request.url.path.rsplit("/", 1)[-1].removesuffix(".json")
            if method == wanted:
                found.append(json.loads(request.content))
            elif method == "batch":
                commands = json.loads(request.content)["cmd"].values()
                found += [
                    dict(parse_qsl(command.split("?", 1)[1]))
                    for command in commands
                    if command.split("?", 1)[0] == wanted
                ]
        return found

    def writes(self) -> list[str]:
        reads = (".list", ".get", ".findbycomm", "user.current", ".mode.get")
        return [m for m in self.methods() if not m.endswith(reads)]


@dataclass
class Desk:
    """A hand-off wired to the sandbox, with what a test looks at."""

    handoff: HandOff
    links: Links
    wire: Wire
    portal: RunningSandbox
    clock: FakeClock

    def rows(self, method: str, params: dict[str, Any]) -> Any:
        return self.portal.result(method, params)


@pytest.fixture
async def key_root(redis: Redis) -> AsyncIterator[str]:
    root = f"test:{uuid.uuid4().hex}"
    yield root
    keys = [key async for key in redis.scan_iter(match=f"{root}:*")]
    if keys:
        await redis.delete(*keys)


@asynccontextmanager
async def open_desk(
    portal: RunningSandbox,
    redis: Redis,
    root: str,
    rules: BusinessRules,
) -> AsyncIterator[Desk]:
    """A hand-off on these rules; its batcher and HTTP client close with the block."""
    wire = Wire([])
    async with httpx.AsyncClient(
        timeout=10, event_hooks={"request": [wire.record]}
    ) as http:
        client = Bitrix24Client(
            http, WebhookCredentials(portal.webhook), portal_zone=MOSCOW
        )
        async with Batcher(client) as batcher:
            clock = FakeClock()
            links = Links(redis, keys=ReminderKeys(f"{root}:reminders"))
            handoff = HandOff(
                Writer(client, batcher),
                redis,
                rules,
                ManagerPicker(redis, rules, counter_key=f"{root}:rr"),
                links,
                clock=clock,
                prefix=f"{root}:intake",
                contact_locks=ContactLocks(redis, prefix=f"{root}:lock:contact"),
            )
            yield Desk(handoff, links, wire, portal, clock)


def salon(**intake: Any) -> BusinessRules:
    intake.setdefault("managers", list(MANAGERS))
    intake.setdefault("notify", True)
    return BusinessRules(services=SERVICES, intake=IntakeRules.model_validate(intake))


@pytest.fixture
async def desk(
    portal: RunningSandbox, redis: Redis, key_root: str
) -> AsyncIterator[Desk]:
    async with open_desk(portal, redis, key_root, salon()) as built:
        yield built


def contact_rows(desk: Desk) -> list[dict[str, Any]]:
    return list(
        desk.rows(
            "crm.contact.list",
            {"select": ["ID", "NAME", "PHONE", "IM", "ASSIGNED_BY_ID"]},
        )
    )


def deal_rows(desk: Desk) -> list[dict[str, Any]]:
    select = ["ID", "TITLE", "CONTACT_ID", "ASSIGNED_BY_ID", "SOURCE_ID", "COMMENTS"]
    select += ["CATEGORY_ID", "STAGE_ID", "ORIGIN_ID", "UF_*"]
    return list(desk.rows("crm.deal.list", {"select": select}))


def task_rows(desk: Desk) -> list[dict[str, Any]]:
    answer = desk.rows(
        "tasks.task.list",
        {"select": ["ID", "TITLE", "RESPONSIBLE_ID", "DEADLINE", "UF_CRM_TASK"]},
    )
    return list(answer["tasks"])


def comments_on(desk: Desk, kind: str, record_id: int) -> list[str]:
    rows = desk.rows(
        "crm.timeline.comment.list",
        {"filter": {"ENTITY_ID": record_id, "ENTITY_TYPE": kind}},
    )
    return [row["COMMENT"] for row in rows]


class TestNewClient:
    async def test_opens_a_contact_deal_comment_and_task(self, desk: Desk) -> None:
        new = lead()

        done = await desk.handoff.hand_off(new)

        [contact] = contact_rows(desk)
        # PH-1: a list of {VALUE, VALUE_TYPE}, WORK unless [crm] phone_type says else.
        assert [(p["VALUE_TYPE"], p["VALUE"]) for p in contact["PHONE"]] == [
            ("WORK", PHONE)
        ]
        assert [(i["VALUE_TYPE"], i["VALUE"]) for i in contact["IM"]] == [
            ("TELEGRAM", TELEGRAM_CHAT)
        ]
        [deal] = deal_rows(desk)
        assert deal["TITLE"] == "Маникюр — Анна"
        assert (deal["SOURCE_ID"], deal["CATEGORY_ID"], deal["STAGE_ID"]) == (
            "TELEGRAM",
            "0",
            "NEW",
        )
        assert deal["CONTACT_ID"] == contact["ID"]
        # The key names the chat by its pseudonym and the dialog's intake: no phone.
        assert (
            done.key
            == inquiry_key(new)
            == (f"intake:{chat_key('telegram', TELEGRAM_CHAT)}:{new.intake_id}")
        )
        assert deal["ORIGIN_ID"] == f"{done.key}:deal"
        assert deal["ASSIGNED_BY_ID"] == "17"
        assert deal["COMMENTS"].splitlines() == [
            "Заявка из Telegram (квалификация: правила)",
            "Услуга: Маникюр (1\u00a0500\u00a0₽ – 2\u00a0500\u00a0₽)",
            "Удобное время: завтра, 9 января, после 18:00",
            "Имя: Анна",
            f"Телефон: {PHONE}",
            "Готовность: горячий — «хочу на»",
            "Срочность: обычная",
            "Кратко: Маникюр завтра после 18, горячий",
            "Связаться до: 08.01.2025 14:20",
        ]
        [comment] = comments_on(desk, "deal", int(deal["ID"]))
        assert comment.splitlines() == [
            "Переписка в Telegram:",
            "[08.01 14:05] Клиент: Хочу на маникюр",
            "[08.01 14:05] Бот: Когда удобно?",
        ]
        [task] = task_rows(desk)
        assert task["title"] == "Перезвонить: Маникюр — Анна"
        assert task["responsibleId"] == "17"
        assert task["ufCrmTask"] == [f"D_{deal['ID']}"]
        assert task["deadline"].startswith("2025-01-08T14:20:00")
        assert (done.record, done.record_id, done.manager_id) == (
            "deal",
            int(deal["ID"]),
            17,
        )
        assert done.returning is False

    async def test_notifies_the_manager_and_links_the_deal_to_the_chat(
        self, desk: Desk
    ) -> None:
        done = await desk.handoff.hand_off(lead())

        [notification] = desk.wire.calls("im.notify.personal.add")
        assert str(notification["USER_ID"]) == "17"
        assert notification["MESSAGE"] == (
            f"Новая заявка из Telegram: [URL=/crm/deal/details/{done.record_id}/]"
            f"сделка {done.record_id}[/URL]. Связаться до 08.01 14:20."
        )
        chat = await desk.links.chat_for(done.record_id)
        assert chat is not None
        assert (chat.channel, chat.chat_id) == ("telegram", TELEGRAM_CHAT)

    async def test_tells_the_client_who_calls_back_and_when(self, desk: Desk) -> None:
        done = await desk.handoff.hand_off(lead(bot_spoke=False))

        assert desk.handoff.client_reply(lead(bot_spoke=False), done) == (
            "Здравствуйте! Ваша заявка: Маникюр, завтра, 9 января, после 18:00. "
            "Менеджер свяжется с вами в течение 15 минут."
        )

    async def test_after_hours_the_promise_names_the_next_morning(
        self, desk: Desk
    ) -> None:
        desk.clock.now = NOW.replace(hour=22)
        done = await desk.handoff.hand_off(lead(readiness="cold"))

        reply = desk.handoff.client_reply(lead(readiness="cold"), done)

        assert done.deadline == NOW.replace(day=9, hour=10, minute=0)
        assert reply is not None
        assert reply.endswith("Менеджер свяжется с вами завтра после 09:00.")

    async def test_a_whatsapp_lead_is_found_by_its_number(self, desk: Desk) -> None:
        whatsapp = lead(channel="whatsapp", chat_id="79990000002", phone=None)

        await desk.handoff.hand_off(whatsapp)

        [contact] = contact_rows(desk)
        assert [p["VALUE"] for p in contact["PHONE"]] == ["+79990000002"]
        assert contact.get("IM") in (None, [])
        [deal] = deal_rows(desk)
        assert deal["SOURCE_ID"] == "WHATSAPP"

    async def test_a_client_asking_for_a_person_gets_a_hot_task_and_no_promise(
        self, desk: Desk
    ) -> None:
        asking = lead(phone=None, name=None, handover=True)

        done = await desk.handoff.hand_off(asking)

        [deal] = deal_rows(desk)
        assert deal["TITLE"] == "Клиент просит менеджера — Anna T."
        assert "Клиент попросил менеджера." in deal["COMMENTS"]
        [task] = task_rows(desk)
        assert task["deadline"].startswith("2025-01-08T14:20:00")
        assert desk.handoff.client_reply(asking, done) is None


class TestReplays:
    async def test_a_second_hand_off_of_the_same_lead_calls_no_crm(
        self, desk: Desk
    ) -> None:
        same = lead()
        first = await desk.handoff.hand_off(same)
        calls = len(desk.wire.requests)

        second = await desk.handoff.hand_off(same)

        assert second == first
        assert len(desk.wire.requests) == calls

    async def test_a_run_that_died_before_its_record_finds_what_it_made(
        self, desk: Desk, redis: Redis, key_root: str
    ) -> None:
        same = lead()
        first = await desk.handoff.hand_off(same)
        # As if the worker died after the CRM writes, before the outcome was kept.
        await redis.delete(f"{key_root}:intake:handoff:{inquiry_key(same)}")
        desk.wire.requests.clear()

        second = await desk.handoff.hand_off(same)

        assert (second.record_id, second.contact_id, second.task_id) == (
            first.record_id,
            first.contact_id,
            first.task_id,
        )
        assert second.returning is False
        assert len(deal_rows(desk)) == 1
        assert len(task_rows(desk)) == 1
        assert len(comments_on(desk, "deal", first.record_id)) == 1
        assert desk.wire.writes() == ["im.notify.personal.add"]


class TestReturningClient:
    async def test_an_open_deal_gets_a_comment_and_a_task_for_its_manager(
        self, desk: Desk
    ) -> None:
        earlier = await desk.handoff.hand_off(lead())
        desk.portal.result(
            "crm.deal.update",
            {"id": earlier.record_id, "fields": {"ASSIGNED_BY_ID": 23}},
        )
        desk.clock.advance(hours=2)

        again = await desk.handoff.hand_off(lead())

        assert len(deal_rows(desk)) == 1
        assert (again.record_id, again.returning, again.manager_id) == (
            earlier.record_id,
            True,
            23,
        )
        [opening, follow_up] = comments_on(desk, "deal", earlier.record_id)
        assert opening.startswith("Переписка в Telegram:")
        assert follow_up.startswith(
            "Клиент снова написал в Telegram, пока заявка открыта."
        )
        tasks = sorted(task_rows(desk), key=lambda task: int(task["id"]))
        assert [(t["title"], t["responsibleId"]) for t in tasks][1] == (
            "Клиент снова написал (Telegram) — Анна",
            "23",
        )
        reply = desk.handoff.client_reply(lead(), again)
        assert reply is not None
        assert "Добавили ваше сообщение к вашей текущей заявке." in reply

    async def test_a_closed_deal_means_a_new_one_for_the_same_manager(
        self, desk: Desk
    ) -> None:
        earlier = await desk.handoff.hand_off(lead())
        desk.portal.result(
            "crm.deal.update",
            {
                "id": earlier.record_id,
                "fields": {"STAGE_ID": "WON", "ASSIGNED_BY_ID": 23},
            },
        )

        again = await desk.handoff.hand_off(lead())

        assert again.returning is False
        assert again.record_id != earlier.record_id
        assert again.manager_id == 23
        assert again.contact_id == earlier.contact_id
        assert len(contact_rows(desk)) == 1

    async def test_a_contact_found_by_phone_gains_the_telegram_id(
        self, desk: Desk
    ) -> None:
        existing = desk.portal.result(
            "crm.contact.add",
            {
                "fields": {
                    "NAME": "Анна",
                    "ASSIGNED_BY_ID": 17,
                    "PHONE": [{"VALUE": "8 (999) 000-00-01", "VALUE_TYPE": "WORK"}],
                }
            },
        )

        done = await desk.handoff.hand_off(lead())

        [contact] = contact_rows(desk)
        assert done.contact_id == existing == int(contact["ID"])
        assert [(i["VALUE_TYPE"], i["VALUE"]) for i in contact["IM"]] == [
            ("TELEGRAM", TELEGRAM_CHAT)
        ]
        assert len(contact["PHONE"]) == 1
        assert done.manager_id == 17


class TestPhoneType:
    async def test_the_rules_choose_the_phone_type_of_new_and_added_phones(
        self, portal: RunningSandbox, redis: Redis, key_root: str
    ) -> None:
        rules = salon()
        rules = rules.model_copy(
            update={"crm": rules.crm.model_copy(update={"phone_type": "MOBILE"})}
        )
        # One client already known by Telegram alone: her phone is added to her.
        known = portal.result(
            "crm.contact.add",
            {
                "fields": {
                    "NAME": "Анна",
                    "IM": [{"VALUE": TELEGRAM_CHAT, "VALUE_TYPE": "TELEGRAM"}],
                }
            },
        )
        async with open_desk(portal, redis, key_root, rules) as desk:
            done = await desk.handoff.hand_off(lead())

        [contact] = contact_rows(desk)
        assert done.contact_id == known
        assert [(p["VALUE_TYPE"], p["VALUE"]) for p in contact["PHONE"]] == [
            ("MOBILE", PHONE)
        ]

    async def test_an_extension_stays_off_the_phone_and_goes_into_the_deal(
        self, desk: Desk
    ) -> None:
        """PH-1: "+7 999 000-00-01 доб. 123": the E.164 number on the contact (so
        that duplicate search finds it), the extension beside it in the summary."""
        await desk.handoff.hand_off(
            lead().model_copy(update={"phone_extension": "123"})
        )

        [contact] = contact_rows(desk)
        assert [p["VALUE"] for p in contact["PHONE"]] == [PHONE]
        [deal] = deal_rows(desk)
        assert f"Телефон: {PHONE} доб. 123" in deal["COMMENTS"].splitlines()

    def test_a_type_the_portal_does_not_know_is_refused_at_start_up(self) -> None:
        with pytest.raises(ValueError, match="phone_type"):
            BusinessRules.model_validate({"crm": {"phone_type": "CELL"}})


class TestCrmModes:
    async def test_classic_mode_opens_a_lead(
        self, portal: RunningSandbox, redis: Redis, key_root: str
    ) -> None:
        portal.load({"users": STAFF, "settings": {"crm_mode": "classic"}})
        async with open_desk(portal, redis, key_root, salon()) as desk:
            done = await desk.handoff.hand_off(lead())

        [row] = portal.result(
            "crm.lead.list", {"select": ["ID", "TITLE", "STATUS_ID", "CONTACT_ID"]}
        )
        assert (done.record, done.record_id) == ("lead", int(row["ID"]))
        assert row["STATUS_ID"] == "NEW"
        assert portal.result("crm.deal.list", {}) == []
        [task] = task_rows(desk)
        assert task["ufCrmTask"] == [f"L_{row['ID']}"]

    async def test_classic_mode_adds_a_returning_client_to_the_open_lead(
        self, portal: RunningSandbox, redis: Redis, key_root: str
    ) -> None:
        portal.load({"users": STAFF, "settings": {"crm_mode": "classic"}})
        async with open_desk(portal, redis, key_root, salon()) as desk:
            earlier = await desk.handoff.hand_off(lead())
            again = await desk.handoff.hand_off(lead())

        assert (again.record, again.record_id, again.returning) == (
            "lead",
            earlier.record_id,
            True,
        )
        assert len(portal.result("crm.lead.list", {})) == 1
        assert len(comments_on(desk, "lead", earlier.record_id)) == 2

    async def test_the_qualification_goes_into_configured_fields(
        self, portal: RunningSandbox, redis: Redis, key_root: str
    ) -> None:
        portal.result(
            "crm.deal.userfield.add",
            {"fields": {"FIELD_NAME": "READINESS", "USER_TYPE_ID": "string"}},
        )
        rules = salon(comments=False, fields={"readiness": "UF_CRM_READINESS"})
        async with open_desk(portal, redis, key_root, rules) as desk:
            await desk.handoff.hand_off(lead())

        [deal] = deal_rows(desk)
        assert deal["UF_CRM_READINESS"] == "горячий"
        assert not deal["COMMENTS"]

    async def test_without_managers_the_integration_user_takes_the_lead(
        self, portal: RunningSandbox, redis: Redis, key_root: str
    ) -> None:
        rules = BusinessRules(services=SERVICES)
        async with open_desk(portal, redis, key_root, rules) as desk:
            done = await desk.handoff.hand_off(lead())

        assert done.manager_id == 1
        [task] = task_rows(desk)
        assert task["responsibleId"] == "1"


class TestSamePersonOnTwoChannels:
    """B24-6: parallel hand-offs of one person make one contact and one deal."""

    async def test_b24_6_telegram_and_whatsapp_at_once_make_one_contact_one_deal(
        self, desk: Desk
    ) -> None:
        telegram = lead()
        whatsapp = lead(channel="whatsapp", chat_id="79990000001", phone=None)

        done = await asyncio.gather(
            desk.handoff.hand_off(telegram), desk.handoff.hand_off(whatsapp)
        )

        methods = desk.wire.methods()
        assert methods.count("crm.contact.add") == 1
        assert methods.count("crm.deal.add") == 1
        [contact] = contact_rows(desk)
        [deal] = deal_rows(desk)
        assert {d.contact_id for d in done} == {int(contact["ID"])}
        assert {d.record_id for d in done} == {int(deal["ID"])}
        assert sorted(d.returning for d in done) == [False, True]
        assert len(comments_on(desk, "deal", int(deal["ID"]))) == 2

    async def test_ten_parallel_hand_offs_of_one_person_make_one_contact(
        self, desk: Desk
    ) -> None:
        leads = [
            lead(channel="whatsapp", chat_id="79990000001", phone=PHONE)
            for _ in range(5)
        ] + [lead(chat_id=f"10000001{n}") for n in range(5)]

        await asyncio.gather(*(desk.handoff.hand_off(each) for each in leads))

        assert desk.wire.methods().count("crm.contact.add") == 1
        assert len(contact_rows(desk)) == 1
        assert len(deal_rows(desk)) == 1

    async def test_parallel_hand_offs_ask_the_portal_its_crm_mode_once(
        self, desk: Desk
    ) -> None:
        leads = [
            lead(chat_id=f"10000002{n}", phone=f"+7999000002{n}") for n in range(8)
        ]

        await asyncio.gather(*(desk.handoff.hand_off(each) for each in leads))

        assert desk.wire.methods().count("crm.settings.mode.get") == 1
        assert len(deal_rows(desk)) == 8


def test_an_outcome_keeps_its_deal_id_for_reminders() -> None:
    done = HandedOff(
        key="intake:abc:1",
        record="lead",
        record_id=5,
        contact_id=1,
        returning=False,
        manager_id=17,
        deadline=NOW + timedelta(minutes=15),
        task_id=None,
        comment_id=None,
    )

    assert done.deal_id is None
