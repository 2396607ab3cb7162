"""Reads other parts of the service ask the portal for: its CRM mode, contacts by
phone, its employees.

`crm.duplicate.findbycomm` reads up to 20 values per call and answers the contacts
holding *any* of them, merged into one list (`{"CONTACT": [275, 2297]}`, or `[]` for
no hit, reference §7.4). A merged answer cannot say which phone found which contact,
so every phone is asked on its own; many phones travel together as the commands of
one `batch` (50 to a request), which costs no more requests than chunks of 20 would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Protocol

import structlog

from connectors.bitrix24.client import MAX_BATCH_COMMANDS, Bitrix24Client, Command
from connectors.bitrix24.errors import Bitrix24Error
from connectors.bitrix24.models import User
from connectors.bitrix24.pull import USERS, Puller

log = structlog.stdlib.get_logger(__name__)

FIND_BY_COMMUNICATION = "crm.duplicate.findbycomm"


class CrmMode(Enum):
    """The portal's CRM mode as `crm.settings.mode.get` numbers it."""

    CLASSIC = 1  # leads first, converted into deals
    SIMPLE = 2  # no leads: every request is a deal


class Caller(Protocol):
    """Anything that runs one method: the client, or the batcher that coalesces."""

    async def call(self, method: str, params: Mapping[str, object]) -> Any: ...


async def crm_mode(client: Caller) -> CrmMode:
    """Read the portal's CRM mode; an answer other than 1 or 2 is an error."""
    answer = await client.call("crm.settings.mode.get", {})
    try:
        return CrmMode(int(answer))
    except (TypeError, ValueError):
        raise Bitrix24Error(
            f"crm.settings.mode.get answered {answer!r}, not 1 or 2",
            method="crm.settings.mode.get",
        ) from None


async def find_contacts_by_phones(
    client: Bitrix24Client | Caller, phones: Iterable[str]
) -> dict[str, list[int]]:
    """Contact ids per phone, `[]` where no contact holds it; phones as given.

    Phones are compared by the portal, which ignores formatting and extensions. A
    client sends the questions as batches of 50; any other caller (the batcher) gets
    them one by one, at once, to coalesce.
    """
    wanted = list(dict.fromkeys(phones))
    asked = [phone for phone in wanted if phone.strip()]
    found: dict[str, list[int]] = {phone: [] for phone in wanted}
    if isinstance(client, Bitrix24Client) and len(asked) > 1:
        answers = await _batched(client, asked)
    else:
        answers = await asyncio.gather(
            *(client.call(FIND_BY_COMMUNICATION, _question(phone)) for phone in asked)
        )
    for phone, answer in zip(asked, answers, strict=True):
        found[phone] = _contact_ids(answer)
    log.info(
        "bitrix24.contacts_by_phone",
        phones=len(wanted),
        hits=sum(1 for ids in found.values() if ids),
    )
    return found


async def users(client: Bitrix24Client, *, active_only: bool = False) -> list[User]:
    """Every employee `user.get` shows (bots never), in id order."""
    filter_ = {"ACTIVE": True} if active_only else None
    puller = Puller(client)
    return [user async for user in puller.pull_models(USERS, User, filter_)]


def _question(phone: str) -> dict[str, object]:
    return {"type": "PHONE", "values": [phone], "entity_type": "CONTACT"}


async def _batched(client: Bitrix24Client, phones: list[str]) -> list[Any]:
    answers: list[Any] = []
    for first in range(0, len(phones), MAX_BATCH_COMMANDS):
        chunk = phones[first : first + MAX_BATCH_COMMANDS]
        commands = {
            f"phone{index}": Command(FIND_BY_COMMUNICATION, _question(phone))
            for index, phone in enumerate(chunk)
        }
        result = await client.batch(commands)
        answers += [result.value(name) for name in commands]
    return answers


def _contact_ids(answer: object) -> list[int]:
    """`{"CONTACT": [275, 2297]}` or `[]` for no hit; ids may come as strings."""
    if not isinstance(answer, Mapping):
        if answer in ([], None, ""):
            return []
        raise Bitrix24Error(
            f"{FIND_BY_COMMUNICATION}: unexpected answer shape",
            method=FIND_BY_COMMUNICATION,
        )
    ids = answer.get("CONTACT") or []
    if not isinstance(ids, list):
        raise Bitrix24Error(
            f"{FIND_BY_COMMUNICATION}: CONTACT is not a list",
            method=FIND_BY_COMMUNICATION,
        )
    return [int(contact_id) for contact_id in ids]
