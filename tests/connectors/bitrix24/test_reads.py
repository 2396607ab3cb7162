"""The portal's CRM mode, contacts by phone and employees, read from the sandbox."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.batcher import Batcher
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.reads import (
    CrmMode,
    crm_mode,
    find_contacts_by_phones,
    users,
)
from tests.connectors.bitrix24.conftest import MOSCOW, Sleeps, Wire
from tests.sandbox.conftest import RunningSandbox

PORTAL = "https://example.bitrix24.ru/rest/1/s3cretc0de/"


def contact(contact_id: int, *phones: str) -> dict[str, Any]:
    return {
        "ID": str(contact_id),
        "NAME": f"Client {contact_id}",
        "PHONE": [
            {"ID": str(contact_id * 10 + n), "VALUE_TYPE": "WORK", "VALUE": phone,
             "TYPE_ID": "PHONE"}
            for n, phone in enumerate(phones)
        ],
    }  # fmt: skip


@pytest.fixture
def contacts(portal: RunningSandbox) -> RunningSandbox:
    portal.load(
        {
            "contacts": [
                contact(5, "+79990000001"),
                # The portal compares numbers, not how they were typed.
                contact(6, "8 (999) 000-00-01", "+79990000002"),
                contact(7, "+79990000003"),
            ]
        }
    )
    return portal


def findbycomm_commands(wire: Wire) -> list[str]:
    return [
        command for body in wire.bodies("/batch") for command in body["cmd"].values()
    ]


class TestCrmMode:
    async def test_a_fresh_portal_is_classic(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        assert await crm_mode(webhook_client) is CrmMode.CLASSIC
        assert wire.count("/crm.settings.mode.get") == 1

    async def test_a_portal_switched_to_simple_mode_says_so(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        portal.load({"settings": {"crm_mode": "simple"}})

        assert await crm_mode(webhook_client) is CrmMode.SIMPLE

    @pytest.mark.parametrize("answer", [3, "", None, {"MODE": 1}])
    async def test_an_answer_that_is_no_mode_is_an_error(self, answer: object) -> None:
        async with httpx.AsyncClient() as http:
            client = Bitrix24Client(
                http, WebhookCredentials(PORTAL), portal_zone=MOSCOW, sleep=Sleeps()
            )
            with respx.mock(base_url=PORTAL) as mock:
                mock.post("crm.settings.mode.get").respond(
                    200, json={"result": answer, "time": {}}
                )

                with pytest.raises(Bitrix24Error, match="not 1 or 2"):
                    await crm_mode(client)


class TestFindContactsByPhones:
    async def test_each_phone_gets_its_own_contacts_in_one_request(
        self, contacts: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        found = await find_contacts_by_phones(
            webhook_client, ["+79990000001", "+79990000004", "+79990000002"]
        )

        assert found == {
            "+79990000001": [5, 6],
            "+79990000004": [],
            "+79990000002": [6],
        }
        assert len(wire.requests) == 1
        assert findbycomm_commands(wire) == [
            "crm.duplicate.findbycomm?type=PHONE&values[0]=%2B79990000001"
            "&entity_type=CONTACT",
            "crm.duplicate.findbycomm?type=PHONE&values[0]=%2B79990000004"
            "&entity_type=CONTACT",
            "crm.duplicate.findbycomm?type=PHONE&values[0]=%2B79990000002"
            "&entity_type=CONTACT",
        ]

    async def test_one_phone_is_one_direct_call(
        self, contacts: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        found = await find_contacts_by_phones(webhook_client, ["+79990000003"])

        assert found == {"+79990000003": [7]}
        assert wire.bodies("/crm.duplicate.findbycomm") == [
            {"type": "PHONE", "values": ["+79990000003"], "entity_type": "CONTACT"}
        ]

    async def test_sixty_phones_take_two_requests_of_at_most_fifty(
        self, contacts: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        """B24-2: many phone lookups go out as batches of at most 50 commands."""
        phones = [f"+7999111{n:04d}" for n in range(58)] + ["+79990000001"] * 2
        phones += ["+79990000003", "+79990000002"]

        found = await find_contacts_by_phones(webhook_client, phones)

        assert len(found) == 61  # a repeated phone is asked once
        assert found["+79990000003"] == [7]
        assert sum(1 for ids in found.values() if ids) == 3
        assert [len(body["cmd"]) for body in wire.bodies("/batch")] == [50, 11]

    async def test_a_thousand_phones_take_twenty_full_batches_and_none_is_skipped(
        self, contacts: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        """B24-2: the maintenance job's 1,000 lookups: one value a command (the
        method reads at most 20), 50 commands a batch, every phone answered."""
        phones = [f"+7999222{n:04d}" for n in range(997)]
        phones += ["+79990000001", "+79990000002", "+79990000003"]

        found = await find_contacts_by_phones(webhook_client, phones)

        assert set(found) == set(phones)
        assert found["+79990000003"] == [7]
        assert sum(1 for ids in found.values() if ids) == 3
        bodies = wire.bodies("/batch")
        assert [len(body["cmd"]) for body in bodies] == [50] * 20
        assert wire.bodies("/crm.duplicate.findbycomm") == []

    async def test_no_phones_or_blank_ones_ask_nothing(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        assert await find_contacts_by_phones(webhook_client, []) == {}
        assert await find_contacts_by_phones(webhook_client, ["", " "]) == {
            "": [],
            " ": [],
        }
        assert wire.requests == []

    async def test_through_the_batcher_concurrent_phones_share_a_request(
        self, contacts: RunningSandbox, webhook_client: Bitrix24Client, wire: Wire
    ) -> None:
        async with Batcher(webhook_client) as batcher:
            found = await find_contacts_by_phones(
                batcher, ["+79990000001", "+79990000003", "+79990000009"]
            )

        assert found == {
            "+79990000001": [5, 6],
            "+79990000003": [7],
            "+79990000009": [],
        }
        assert len(wire.requests) == 1
        assert len(findbycomm_commands(wire)) == 3


class TestUsers:
    async def test_active_employees_only_when_asked(
        self, portal: RunningSandbox, webhook_client: Bitrix24Client
    ) -> None:
        rows = [
            {
                "ID": str(n),
                "ACTIVE": n != 3,
                "NAME": f"Manager {n}",
                "UF_DEPARTMENT": [1],
            }
            for n in range(1, 6)
        ]
        portal.load({"users": [*rows, {"ID": "9", "ACTIVE": True, "USER_TYPE": "bot"}]})

        everyone = await users(webhook_client)
        working = await users(webhook_client, active_only=True)

        assert [user.id for user in everyone] == [1, 2, 3, 4, 5]
        assert [user.id for user in working] == [1, 2, 4, 5]
        assert working[0].full_name == "Manager 1"
