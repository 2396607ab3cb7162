"""Idempotent creates: the key on the wire, a lookup first, unclear outcomes settled."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx
import structlog

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import Rejected, WriteOutcomeUnknown
from connectors.bitrix24.writes import Created, Writer, check_key, hashed_key
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


def keyed_rows(portal: RunningSandbox, entity: str, key: str) -> list[Any]:
    rows: list[Any] = portal.result(
        f"crm.{entity}.list",
        {"filter": {"ORIGIN_ID": key}, "select": ["ID", "ORIGINATOR_ID", "ORIGIN_ID"]},
    )
    return rows


@pytest.fixture
def writer(webhook_client: Bitrix24Client, sleeps: Sleeps) -> Writer:
    return Writer(webhook_client, sleep=sleeps)


class TestKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "tg:upd:700000001",
            "tg:upd:2015087859",  # ten digits: no Egyptian number for us
            "c0ffee00-0000-4000-8000-000000000001",
            "bench.0a1b2c3d4e5f4a7b8c9d7999000000012.3",  # digits glued to hex
            "intake:d0cafe00-0000-4000-8000-799900000001",
            "wa:wamid.HBgLNzk5OTAwMDAwMDEVAgASGBQzQUE5",
            "intake_42.contact",
        ],
    )
    def test_ids_of_events_and_jobs_are_valid_keys(self, key: str) -> None:
        assert check_key(key) == key

    @pytest.mark.parametrize(
        ("key", "problem"),
        [
            ("", "letters, digits"),
            ("tg upd 1", "letters, digits"),
            ("заявка:1", "letters, digits"),
            ("lead:ivan@example.com", "letters, digits"),
            ("tg:+79990000001", "letters, digits"),
            ("phone:79990000001", "phone number"),
            ("wa:89990000001", "phone number"),
            ("lead_9990000001", "phone number"),
            ("wa:380440000001", "phone number"),
            ("k" * 101, "at most 100"),
        ],
    )
    def test_malformed_keys_and_keys_with_a_phone_are_refused(
        self, key: str, problem: str
    ) -> None:
        with pytest.raises(ValueError, match=problem):
            check_key(key)

    def test_a_hashed_key_hides_the_value_and_is_stable(self) -> None:
        key = hashed_key("phone", "+79990000001")

        assert check_key(key) == key
        assert "9990000001" not in key
        assert key == hashed_key("phone", "+79990000001")
        assert key != hashed_key("phone", "+79990000001", secret=b"portal-secret")


class TestCreate:
    async def test_a_create_carries_our_originator_and_key(
        self, writer: Writer, wire: Wire, portal: RunningSandbox
    ) -> None:
        created = await writer.create("contact", {"NAME": "Анна"}, key="tg:upd:1:c")

        assert created == Created(1, created=True)
        (add,) = wire.bodies("/crm.contact.add")
        assert add["fields"] == {
            "NAME": "Анна",
            "ORIGINATOR_ID": "leadloop",
            "ORIGIN_ID": "tg:upd:1:c",
        }
        assert keyed_rows(portal, "contact", "tg:upd:1:c") == [
            {"ID": "1", "ORIGINATOR_ID": "leadloop", "ORIGIN_ID": "tg:upd:1:c"}
        ]

    async def test_a_second_create_with_the_same_key_finds_the_first(
        self, writer: Writer, wire: Wire
    ) -> None:
        first = await writer.create("deal", {"TITLE": "Маникюр"}, key="tg:upd:2")
        second = await writer.create("deal", {"TITLE": "Маникюр"}, key="tg:upd:2")

        assert second == Created(first.id, created=False)
        assert methods_sent(wire) == ["crm.deal.list", "crm.deal.add", "crm.deal.list"]

    async def test_a_task_keeps_the_key_in_its_external_id(
        self, writer: Writer, wire: Wire, portal: RunningSandbox
    ) -> None:
        fields = {"TITLE": "Перезвонить", "RESPONSIBLE_ID": 1}

        created = await writer.create("task", fields, key="tg:upd:3:task")

        (add,) = wire.bodies("/tasks.task.add")
        assert add["fields"]["XML_ID"] == "leadloop:tg:upd:3:task"
        assert await writer.find_by_key("task", "tg:upd:3:task") == created.id
        task = portal.result("tasks.task.get", {"taskId": created.id})["task"]
        assert task["xmlId"] == "leadloop:tg:upd:3:task"

    async def test_an_activity_is_keyed_like_the_crm_records(
        self, writer: Writer, portal: RunningSandbox
    ) -> None:
        contact = portal.result("crm.contact.add", {"fields": {"NAME": "Анна"}})
        fields = {
            "OWNER_TYPE_ID": 3,
            "OWNER_ID": contact,
            "TYPE_ID": 4,
            "SUBJECT": "Письмо",
            "DIRECTION": 2,
            "COMMUNICATIONS": [
                {"VALUE": "anna@example.com", "ENTITY_ID": contact, "ENTITY_TYPE_ID": 3}
            ],
        }

        created = await writer.create("activity", fields, key="mail:1")

        assert await writer.find_by_key("activity", "mail:1") == created.id
        assert await writer.find_by_key("activity", "mail:2") is None

    async def test_a_key_that_differs_only_in_case_is_not_ours(
        self, writer: Writer, portal: RunningSandbox
    ) -> None:
        # The portal compares strings without case (MySQL collation).
        portal.result(
            "crm.lead.add",
            {"fields": {"ORIGINATOR_ID": "leadloop", "ORIGIN_ID": "wa:wamid.ABC"}},
        )

        assert await writer.find_by_key("lead", "wa:wamid.abc") is None

    async def test_of_two_records_with_one_key_the_oldest_is_taken(
        self, writer: Writer, portal: RunningSandbox
    ) -> None:
        fields = {"ORIGINATOR_ID": "leadloop", "ORIGIN_ID": "tg:upd:5"}
        first = portal.result("crm.contact.add", {"fields": fields})
        portal.result("crm.contact.add", {"fields": fields})

        with structlog.testing.capture_logs() as logs:
            found = await writer.find_by_key("contact", "tg:upd:5")

        assert found == first
        assert [entry["event"] for entry in logs] == ["bitrix24.write.duplicate_key"]

    async def test_a_lookup_whose_filter_the_portal_dropped_is_an_error(
        self, sleeps: Sleeps
    ) -> None:
        portal = "https://example.bitrix24.ru/rest/1/s3cretc0de/"
        rows = [{"ID": "7", "ORIGINATOR_ID": None, "ORIGIN_ID": None}]
        async with httpx.AsyncClient() as http:
            client = Bitrix24Client(
                http, WebhookCredentials(portal), portal_zone=MOSCOW, sleep=sleeps
            )
            with respx.mock(base_url=portal) as mock:
                mock.post("crm.contact.list").mock(
                    return_value=httpx.Response(200, json={"result": rows})
                )

                with pytest.raises(Rejected, match="did not apply the filter"):
                    await Writer(client).find_by_key("contact", "tg:upd:6")

    async def test_fields_that_carry_the_key_are_the_writer_s_own(
        self, writer: Writer
    ) -> None:
        with pytest.raises(ValueError, match="ORIGIN_ID"):
            await writer.create("deal", {"ORIGIN_ID": "x"}, key="tg:upd:7")
        with pytest.raises(ValueError, match="no keyed entity"):
            await writer.create("company", {}, key="tg:upd:7")


class TestUnclearOutcome:
    async def test_a_timeout_after_the_write_finds_the_record_instead_of_writing(
        self,
        client_with: ClientFactory,
        wire: Wire,
        sleeps: Sleeps,
        portal: RunningSandbox,
    ) -> None:
        fault(portal, method="crm.contact.add", kind="timeout_after_write", seconds=0.6)
        writer = Writer(client_with(timeout_s=0.25), settle_s=0.5, sleep=sleeps)

        created = await writer.create("contact", {"NAME": "Анна"}, key="tg:upd:10")

        assert created.created
        assert [row["ID"] for row in keyed_rows(portal, "contact", "tg:upd:10")] == [
            str(created.id)
        ]
        assert methods_sent(wire) == [
            "crm.contact.list",
            "crm.contact.add",
            "crm.contact.list",
        ]
        assert sleeps.delays == [0.5]  # the portal was given time to finish

    async def test_an_html_page_after_the_write_is_reconciled(
        self,
        client_with: ClientFactory,
        wire: Wire,
        sleeps: Sleeps,
        portal: RunningSandbox,
    ) -> None:
        client = client_with(transport=PageAfterWrite("crm.deal.add"))
        writer = Writer(client, sleep=sleeps)

        created = await writer.create("deal", {"TITLE": "X"}, key="tg:upd:11")

        assert created.created
        assert len(keyed_rows(portal, "deal", "tg:upd:11")) == 1
        assert methods_sent(wire).count("crm.deal.add") == 1

    async def test_a_page_before_the_write_sends_it_once_more(
        self, writer: Writer, wire: Wire, portal: RunningSandbox
    ) -> None:
        fault(portal, method="crm.deal.add", kind="html")

        created = await writer.create("deal", {"TITLE": "X"}, key="tg:upd:12")

        assert created == Created(1, created=True)
        assert len(keyed_rows(portal, "deal", "tg:upd:12")) == 1
        assert methods_sent(wire).count("crm.deal.add") == 2

    async def test_unclear_outcomes_give_up_after_the_attempts(
        self, writer: Writer, wire: Wire, portal: RunningSandbox
    ) -> None:
        fault(portal, method="crm.deal.add", kind="status", status=500, times=3)

        with pytest.raises(WriteOutcomeUnknown):
            await writer.create("deal", {"TITLE": "X"}, key="tg:upd:13")

        assert methods_sent(wire).count("crm.deal.add") == 3


class TestThroughABatcher:
    async def test_concurrent_creates_share_their_lookups_and_their_adds(
        self, webhook_client: Bitrix24Client, wire: Wire, sleeps: Sleeps
    ) -> None:
        async with Batcher(webhook_client) as batcher:
            writer = Writer(webhook_client, batcher, sleep=sleeps)
            created = await asyncio.gather(
                *(
                    writer.create("contact", {"NAME": f"К{i}"}, key=f"tg:upd:{i}")
                    for i in range(20)
                )
            )

        assert sorted(item.id for item in created) == list(range(1, 21))
        assert wire.count("/batch") == len(wire.requests) == 2

    async def test_a_timed_out_batch_of_creates_is_reconciled_record_by_record(
        self,
        client_with: ClientFactory,
        wire: Wire,
        sleeps: Sleeps,
        portal: RunningSandbox,
    ) -> None:
        fault(portal, method="crm.contact.add", kind="timeout_after_write", seconds=0.6)
        client = client_with(timeout_s=0.25)

        async with Batcher(client) as batcher:
            writer = Writer(client, batcher, sleep=sleeps)
            created = await asyncio.gather(
                *(
                    writer.create("contact", {"NAME": f"К{i}"}, key=f"tg:upd:{i}")
                    for i in range(5)
                )
            )

        assert all(item.created for item in created)
        assert len(portal.result("crm.contact.list")) == 5
        assert methods_sent(wire).count("crm.contact.add") == 5
