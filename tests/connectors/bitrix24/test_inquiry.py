"""A new lead end to end on the sandbox: one contact, a deal, its task and comment."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import Rejected
from connectors.bitrix24.inquiry import (
    NewInquiry,
    OpenedInquiry,
    RecordKind,
    TaskSpec,
    open_inquiry,
)
from connectors.bitrix24.locks import ContactLocks, normalise_phone
from connectors.bitrix24.writes import Writer
from tests.connectors.bitrix24.conftest import (
    MOSCOW,
    ClientFactory,
    PageAfterWrite,
    Sleeps,
    Wire,
    fault,
    methods_sent,
)
from tests.sandbox.conftest import RunningSandbox

DEADLINE = datetime(2026, 5, 4, 15, 0, tzinfo=MOSCOW)
COMMENT = "Хочет маникюр завтра после 18:00, готов записаться"


def new_inquiry(
    key: str = "tg:upd:700000001",
    *,
    phone: str | None = "+79990000001",
    im: tuple[str, str] | None = ("TELEGRAM", "100000001"),
    kind: RecordKind = "deal",
) -> NewInquiry:
    return NewInquiry(
        key=key,
        kind=kind,
        phone=phone,
        im=im,
        contact={"NAME": "Иван"},
        fields={"TITLE": "Маникюр", "SOURCE_ID": "WEB"},
        task=TaskSpec("Перезвонить клиенту", responsible_id=1, deadline=DEADLINE),
        comment=COMMENT,
    )


@pytest.fixture
async def batcher(webhook_client: Bitrix24Client) -> AsyncIterator[Batcher]:
    async with Batcher(webhook_client) as batcher:
        yield batcher


@pytest.fixture
def writer(webhook_client: Bitrix24Client, batcher: Batcher, sleeps: Sleeps) -> Writer:
    return Writer(webhook_client, batcher, sleep=sleeps)


@pytest.fixture
def locks(redis: Redis, key_prefix: str) -> ContactLocks:
    return ContactLocks(redis, prefix=f"{key_prefix}:lock", wait_s=10)


def every_row(
    portal: RunningSandbox, method: str, params: dict[str, Any], rows_key: str = ""
) -> list[Any]:
    """All pages of a list, read straight from the sandbox."""
    rows: list[Any] = []
    start: int | None = 0
    while start is not None:
        answer = portal.call(method, {**params, "start": start}).json()
        page = answer["result"][rows_key] if rows_key else answer["result"]
        rows += page
        start = answer.get("next")
    return rows


def counts(portal: RunningSandbox) -> dict[str, int]:
    return {
        "contacts": len(every_row(portal, "crm.contact.list", {"select": ["ID"]})),
        "deals": len(every_row(portal, "crm.deal.list", {"select": ["ID"]})),
        "leads": len(every_row(portal, "crm.lead.list", {"select": ["ID"]})),
        "tasks": len(every_row(portal, "tasks.task.list", {}, rows_key="tasks")),
        "comments": len(portal.app.portal.table("comment").rows),
    }


def task_row(portal: RunningSandbox, task_id: int) -> dict[str, Any]:
    select = ["ID", "UF_CRM_TASK", "XML_ID", "DEADLINE"]
    task: dict[str, Any] = portal.result(
        "tasks.task.get", {"taskId": task_id, "select": select}
    )["task"]
    return task


def comments_on(portal: RunningSandbox, owner_id: int, kind: str) -> list[Any]:
    rows: list[Any] = portal.result(
        "crm.timeline.comment.list",
        {"filter": {"ENTITY_ID": owner_id, "ENTITY_TYPE": kind}},
    )
    return rows


class TestNewInquiry:
    def test_a_naive_deadline_is_refused(self) -> None:
        with pytest.raises(ValueError, match="aware"):
            TaskSpec("Перезвонить", responsible_id=1, deadline=datetime(2026, 5, 4))

    @pytest.mark.parametrize(
        ("changes", "problem"),
        [
            ({"phone": "89990000001"}, "E.164"),
            ({"phone": None, "im": None}, "phone or a messenger"),
            ({"im": ("WHATSAPP", "1")}, "im is"),
            ({"kind": "company"}, "'deal' or a 'lead'"),
            ({"contact": {"PHONE": "x"}}, "set by the gateway"),
            ({"fields": {"CONTACT_ID": 5}}, "set by the gateway"),
            ({"key": "phone:79990000001"}, "phone number"),
            ({"comment": "  "}, "empty comment"),
        ],
    )
    def test_an_inquiry_that_cannot_be_opened_is_refused_early(
        self, changes: dict[str, Any], problem: str
    ) -> None:
        with pytest.raises(ValueError, match=problem):
            dataclasses.replace(new_inquiry(), **changes)

    def test_its_repr_holds_no_personal_data(self) -> None:
        shown = repr(new_inquiry())

        assert "9990000001" not in shown
        assert "Иван" not in shown
        assert "маникюр" not in shown
        assert "tg:upd:700000001" in shown


class TestOpenInquiry:
    async def test_a_new_person_gets_contact_deal_task_and_comment_in_two_requests(
        self,
        writer: Writer,
        locks: ContactLocks,
        wire: Wire,
        portal: RunningSandbox,
    ) -> None:
        """PH-1: the contact's PHONE is sent as a list of VALUE/VALUE_TYPE dicts."""
        opened = await open_inquiry(writer, locks, new_inquiry())

        assert opened == OpenedInquiry(
            contact_id=1,
            contact_created=True,
            deal_id=1,
            lead_id=None,
            task_id=1,
            comment_id=1,
            http_requests=2,
        )
        lookup, create = wire.bodies("/batch")
        assert len(wire.requests) == 2
        assert lookup["halt"] == 0
        assert create["halt"] == 1
        assert list(create["cmd"]) == [
            "e0_contact",
            "e0_record",
            "e0_task",
            "e0_comment",
        ]
        record, task_command = create["cmd"]["e0_record"], create["cmd"]["e0_task"]
        assert "fields[CONTACT_IDS][0]=$result[e0_contact]" in record
        assert "fields[UF_CRM_TASK][0]=D_%24result%5Be0_record%5D" in task_command

        contact = portal.result("crm.contact.get", {"id": 1})
        assert [(i["VALUE"], i["VALUE_TYPE"]) for i in contact["PHONE"]] == [
            ("+79990000001", "WORK")
        ]
        assert [(i["VALUE"], i["VALUE_TYPE"]) for i in contact["IM"]] == [
            ("100000001", "TELEGRAM")
        ]
        assert (contact["ORIGINATOR_ID"], contact["ORIGIN_ID"]) == (
            "leadloop",
            "tg:upd:700000001:contact",
        )
        deal = portal.result("crm.deal.get", {"id": 1})
        assert (deal["CONTACT_ID"], deal["TITLE"], deal["ORIGIN_ID"]) == (
            "1",
            "Маникюр",
            "tg:upd:700000001:deal",
        )
        task = task_row(portal, 1)
        assert task["ufCrmTask"] == ["D_1"]
        assert task["xmlId"] == "leadloop:tg:upd:700000001:task"
        assert task["deadline"] == "2026-05-04T15:00:00+03:00"
        assert [row["COMMENT"] for row in comments_on(portal, 1, "deal")] == [COMMENT]

    async def test_a_known_phone_reuses_its_contact(
        self,
        writer: Writer,
        locks: ContactLocks,
        wire: Wire,
        portal: RunningSandbox,
    ) -> None:
        phone = [{"VALUE": "8 (999) 000-00-01", "VALUE_TYPE": "WORK"}]
        known = portal.result("crm.contact.add", {"fields": {"PHONE": phone}})

        opened = await open_inquiry(writer, locks, new_inquiry())

        assert (opened.contact_id, opened.contact_created) == (known, False)
        assert "crm.contact.add" not in methods_sent(wire)
        deal = portal.result("crm.deal.get", {"id": opened.deal_id})
        assert deal["CONTACT_ID"] == str(known)

    async def test_a_known_messenger_id_reuses_its_contact_when_no_phone_is_known(
        self, writer: Writer, locks: ContactLocks, portal: RunningSandbox
    ) -> None:
        def with_im(kind: str) -> int:
            im = [{"VALUE": "100000001", "VALUE_TYPE": kind}]
            contact: int = portal.result("crm.contact.add", {"fields": {"IM": im}})
            return contact

        with_im("VK")  # the same id in another messenger is someone else
        known = with_im("TELEGRAM")

        opened = await open_inquiry(writer, locks, new_inquiry(phone=None))

        assert (opened.contact_id, opened.contact_created) == (known, False)

    async def test_a_classic_crm_inquiry_opens_a_lead(
        self, writer: Writer, locks: ContactLocks, portal: RunningSandbox
    ) -> None:
        opened = await open_inquiry(writer, locks, new_inquiry(kind="lead"))

        assert (opened.deal_id, opened.lead_id) == (None, 1)
        lead = portal.result("crm.lead.get", {"id": 1})
        assert (lead["CONTACT_ID"], lead["ORIGIN_ID"]) == ("1", "tg:upd:700000001:lead")
        assert task_row(portal, 1)["ufCrmTask"] == ["L_1"]
        assert [row["COMMENT"] for row in comments_on(portal, 1, "lead")] == [COMMENT]

    async def test_a_replay_returns_the_same_ids_and_creates_nothing(
        self,
        writer: Writer,
        locks: ContactLocks,
        wire: Wire,
        portal: RunningSandbox,
    ) -> None:
        first = await open_inquiry(writer, locks, new_inquiry())
        wire.requests.clear()

        again = await open_inquiry(writer, locks, new_inquiry())

        assert again == dataclasses.replace(
            first, contact_created=False, http_requests=2
        )
        assert not [method for method in methods_sent(wire) if method.endswith(".add")]
        assert counts(portal) == {
            "contacts": 1,
            "deals": 1,
            "leads": 0,
            "tasks": 1,
            "comments": 1,
        }

    async def test_the_deal_is_not_opened_when_the_contact_cannot_be_made(
        self, writer: Writer, locks: ContactLocks, portal: RunningSandbox
    ) -> None:
        fault(portal, method="crm.contact.add", kind="error", status=400, code="X")

        with pytest.raises(Rejected):
            await open_inquiry(writer, locks, new_inquiry())

        assert counts(portal) == dict.fromkeys(
            ("contacts", "deals", "leads", "tasks", "comments"), 0
        )

    async def test_a_failed_task_is_added_on_replay_without_a_second_deal(
        self, writer: Writer, locks: ContactLocks, portal: RunningSandbox
    ) -> None:
        fault(portal, method="tasks.task.add", kind="error", status=400, code="X")
        with pytest.raises(Rejected):
            await open_inquiry(writer, locks, new_inquiry())

        opened = await open_inquiry(writer, locks, new_inquiry())

        assert (opened.contact_id, opened.deal_id, opened.task_id) == (1, 1, 1)
        assert not opened.contact_created
        assert task_row(portal, 1)["ufCrmTask"] == ["D_1"]
        assert counts(portal) == {
            "contacts": 1,
            "deals": 1,
            "leads": 0,
            "tasks": 1,
            "comments": 1,
        }


class TestUnclearOutcome:
    @pytest.fixture
    def open_with(
        self, client_with: ClientFactory, locks: ContactLocks, sleeps: Sleeps
    ) -> Callable[..., Any]:
        async def run(**client: Any) -> OpenedInquiry:
            http = client_with(**client)
            async with Batcher(http) as batcher:
                writer = Writer(http, batcher, sleep=sleeps)
                return await open_inquiry(writer, locks, new_inquiry())

        return run

    async def test_a_timeout_after_the_create_request_makes_nothing_twice(
        self, open_with: Callable[..., Any], wire: Wire, portal: RunningSandbox
    ) -> None:
        fault(portal, method="crm.deal.add", kind="timeout_after_write", seconds=0.6)

        opened = await open_with(timeout_s=0.25)

        assert opened == OpenedInquiry(1, True, 1, None, 1, 1, http_requests=4)
        assert counts(portal) == {
            "contacts": 1,
            "deals": 1,
            "leads": 0,
            "tasks": 1,
            "comments": 1,
        }
        adds = [method for method in methods_sent(wire) if method.endswith(".add")]
        assert len(adds) == 4

    async def test_an_html_page_after_the_create_request_makes_nothing_twice(
        self, open_with: Callable[..., Any], wire: Wire, portal: RunningSandbox
    ) -> None:
        opened = await open_with(transport=PageAfterWrite("crm.deal.add"))

        assert opened == OpenedInquiry(1, True, 1, None, 1, 1, http_requests=4)
        assert counts(portal)["deals"] == counts(portal)["comments"] == 1
        assert methods_sent(wire).count("crm.deal.add") == 1

    async def test_a_page_before_the_create_request_sends_it_once_more(
        self, open_with: Callable[..., Any], wire: Wire, portal: RunningSandbox
    ) -> None:
        fault(portal, method="crm.deal.add", kind="html")

        opened = await open_with()

        assert opened.deal_id == 1
        assert counts(portal) == {
            "contacts": 1,
            "deals": 1,
            "leads": 0,
            "tasks": 1,
            "comments": 1,
        }
        assert methods_sent(wire).count("crm.deal.add") == 2


class TestParallelIntake:
    """Known fault B24-6: parallel jobs for one person, one contact."""

    @pytest.mark.parametrize("jobs", [2, 10])
    async def test_parallel_jobs_for_one_phone_create_one_contact(
        self,
        jobs: int,
        portal: RunningSandbox,
        redis: Redis,
        redis_factory: Callable[[], Redis],
        key_prefix: str,
        sleeps: Sleeps,
    ) -> None:
        # Telegram shares "89990000001", WhatsApp's wa_id is "79990000001".
        spellings = ["89990000001", "79990000001"]

        async def job(index: int) -> OpenedInquiry:
            """One worker process: its own HTTP client, batcher and Redis link."""
            async with httpx.AsyncClient(timeout=10) as http:
                client = Bitrix24Client(
                    http,
                    WebhookCredentials(portal.webhook),
                    portal_zone=MOSCOW,
                    sleep=sleeps,
                )
                locks = ContactLocks(redis_factory(), prefix=f"{key_prefix}:lock")
                async with Batcher(client) as batcher:
                    writer = Writer(client, batcher, sleep=sleeps)
                    phone = normalise_phone(spellings[index % 2])
                    inquiry = new_inquiry(f"job:{index}", phone=phone, im=None)
                    return await open_inquiry(writer, locks, inquiry)

        opened = await asyncio.gather(*(job(index) for index in range(jobs)))

        stats = portal.http.get("/_sandbox/stats").json()["by_method"]
        assert stats["crm.contact.add"] == 1
        (contact,) = {item.contact_id for item in opened}
        assert [item.contact_created for item in opened].count(True) == 1
        deals = every_row(portal, "crm.deal.list", {"select": ["ID", "CONTACT_ID"]})
        assert [deal["CONTACT_ID"] for deal in deals] == [str(contact)] * jobs


class TestManyInquiries:
    async def test_200_simultaneous_inquiries_share_requests_and_link_correctly(
        self,
        writer: Writer,
        locks: ContactLocks,
        wire: Wire,
        portal: RunningSandbox,
    ) -> None:
        inquiries = [
            new_inquiry(
                f"tg:upd:{700000000 + index}",
                phone=f"+7999{index:07d}",
                im=("TELEGRAM", str(100000000 + index)),
            )
            for index in range(200)
        ]

        started = time.perf_counter()
        opened = await asyncio.gather(
            *(open_inquiry(writer, locks, inquiry) for inquiry in inquiries)
        )
        elapsed_s = time.perf_counter() - started

        per_lead = len(wire.requests) / len(inquiries)
        assert per_lead <= 1.2, (per_lead, elapsed_s)
        phones = {
            int(row["ID"]): row["PHONE"][0]["VALUE"]
            for row in every_row(
                portal, "crm.contact.list", {"select": ["ID", "PHONE"]}
            )
        }
        deals = {
            int(row["ID"]): int(row["CONTACT_ID"])
            for row in every_row(
                portal, "crm.deal.list", {"select": ["ID", "CONTACT_ID"]}
            )
        }
        tasks = {
            int(row["id"]): row["ufCrmTask"]
            for row in every_row(
                portal,
                "tasks.task.list",
                {"select": ["ID", "UF_CRM_TASK"]},
                rows_key="tasks",
            )
        }
        assert len(phones) == len(deals) == len(tasks) == 200
        for inquiry, item in zip(inquiries, opened, strict=True):
            assert item.deal_id is not None
            assert item.task_id is not None
            assert phones[deals[item.deal_id]] == inquiry.phone
            assert deals[item.deal_id] == item.contact_id
            assert tasks[item.task_id] == [f"D_{item.deal_id}"]
        batches = wire.bodies("/batch")
        assert json.dumps(batches).count("crm.contact.add") == 200
