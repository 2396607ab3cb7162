"""`leadloop run` without messenger credentials: a person can chat with the bot."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.clients import redis_client
from app.config import BusinessRules
from app.local import Listening, local_settings, run_local
from app.settings import Settings
from sandbox.server import SandboxOptions
from sandbox.server import create_app as create_sandbox_app
from tests.e2e.conftest import REDIS_URL
from tests.sandbox.conftest import free_port
from webhooks.keys import chat_key

pytestmark = pytest.mark.slow
GREETING = "Здравствуйте! Я помогу записаться. Как к вам обращаться?"


@dataclass
class Person:
    """A client on both channels, and what names the keys a run leaves for them."""

    chat: int = field(
        default_factory=lambda: random.randrange(100_000_100, 100_999_999)
    )
    wa_id: str = field(default_factory=lambda: f"7999{random.randrange(10**6, 10**7)}")
    marks: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.marks |= {
            str(self.chat),
            self.wa_id,
            chat_key("telegram", str(self.chat)),
            chat_key("whatsapp", self.wa_id),
        }


@pytest.fixture
async def person() -> AsyncIterator[Person]:
    """A fresh client; the keys every run left for them are deleted afterwards."""
    client = redis_client(REDIS_URL)
    before = {key async for key in client.scan_iter(match="*leadloop:*")}
    someone = Person()
    yield someone
    doomed = [
        key
        async for key in client.scan_iter(match="*leadloop:*")
        if key not in before and any(mark in key.decode() for mark in someone.marks)
    ]
    if doomed:
        await client.delete(*doomed)
    await client.aclose()


@dataclass
class Run:
    listening: Listening
    update_id: int
    telegram: list[dict[str, Any]]
    whatsapp: list[dict[str, Any]]


async def run_once(person: Person, text: str, replies: int) -> Run:
    """Start `leadloop run`, write `text` on both channels, wait for the replies."""
    settings, token = local_settings(
        Settings(
            _env_file=None,
            redis_url=REDIS_URL,
            sandbox_port=free_port(),
            api_port=free_port(),
        )
    )
    person.marks.add(f"127.0.0.1:{settings.sandbox_port}:")  # the portal's limit
    sandbox = create_sandbox_app(
        SandboxOptions(port=settings.sandbox_port, application_token=token)
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    where: list[Listening] = []

    def on_ready(listening: Listening) -> None:
        where.append(listening)
        ready.set()

    running = asyncio.create_task(
        run_local(settings, BusinessRules(), sandbox, on_ready=on_ready, stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=15)
        async with httpx.AsyncClient(base_url=where[0].sandbox, timeout=10) as http:
            return Run(where[0], *await _both_channels(http, person, text, replies))
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=20)


async def _both_channels(
    http: httpx.AsyncClient, person: Person, text: str, replies: int
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    told = await http.post(
        "/_sandbox/telegram/deliver", json={"chat_id": person.chat, "text": text}
    )
    assert told.json()["deliveries"][0]["status"] == 200
    update_id: int = told.json()["update_id"]
    person.marks.add(str(update_id))
    wrote = await http.post(
        "/_sandbox/whatsapp/deliver", json={"from": person.wa_id, "text": text}
    )
    person.marks.add(_wamid(wrote.json()["body"]))
    telegram = await _replies(
        http, "/_sandbox/telegram/messages", replies, chat_id=str(person.chat)
    )
    whatsapp = await _replies(
        http, "/_sandbox/whatsapp/messages", replies, to=person.wa_id
    )
    person.marks |= {message["id"] for message in whatsapp}
    return update_id, telegram, whatsapp


async def _replies(
    http: httpx.AsyncClient, path: str, count: int, **query: str
) -> list[dict[str, Any]]:
    async with asyncio.timeout(15):
        while True:
            messages: list[dict[str, Any]] = (
                await http.get(path, params=query)
            ).json()["messages"]
            if len(messages) >= count:
                return messages
            await asyncio.sleep(0.05)


def _wamid(body: str) -> str:
    notification = json.loads(body)
    return str(notification["entry"][0]["changes"][0]["value"]["messages"][0]["id"])


class TestLeadloopRun:
    async def test_the_sandbox_bots_answer_on_both_channels(
        self, person: Person
    ) -> None:
        run = await run_once(person, "Привет", replies=1)

        assert run.telegram[0]["text"] == run.whatsapp[0]["text"] == GREETING
        base = run.listening.sandbox
        assert run.listening.telegram == (
            f"{base}/_sandbox/telegram/deliver, replies at "
            f"{base}/_sandbox/telegram/messages"
        )
        assert run.listening.whatsapp.startswith(f"{base}/_sandbox/whatsapp/deliver")

    async def test_after_a_restart_the_first_message_is_not_taken_for_a_repeat(
        self, person: Person
    ) -> None:
        first = await run_once(person, "Привет", replies=1)

        # A new sandbox, the same Redis: the service remembers every update id and
        # wamid it saw for a week, so the new ones must not repeat them.
        again = await run_once(person, "Анна", replies=1)

        assert again.update_id > first.update_id
        assert [m["text"] for m in again.telegram] == [
            "На какую услугу хотите записаться?"
        ]
        assert [m["text"] for m in again.whatsapp] == [
            "На какую услугу хотите записаться?"
        ]
