"""The chaos benchmark's traffic: whole client conversations, sent as providers send.

Each client holds one conversation that ends in a complete lead: on WhatsApp one
message with everything in it, on Telegram three answers and the shared contact.
Deliveries go to the API's webhook routes, signed as Meta signs them or with the
Telegram secret header, over keep-alive connections of a bare asyncio HTTP/1.1
client (httpx would measure itself at these rates: bench/intake.py). A client's
next message waits for the acknowledgement of the one before, as Telegram's
per-chat queue does; a delivery that is not acknowledged with a 2xx is sent again
after a growing delay, as both providers do; some deliveries are sent a second
time after their acknowledgement (a provider that missed it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from sandbox.whatsapp import (
    SANDBOX_DISPLAY_PHONE_NUMBER,
    SANDBOX_PHONE_NUMBER_ID,
    SANDBOX_WABA_ID,
    meta_json,
)

Channel = Literal["telegram", "whatsapp"]

TELEGRAM_CHAT_BASE = 300_000_000
UPDATE_ID_BASE = 800_000_000
# How long a client takes to type the next answer.
THINK_S = 0.5
# Providers retry an unacknowledged delivery with a growing delay.
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0)
REQUEST_TIMEOUT_S = 10.0
WHATSAPP_NAMES = ("Ольга", "Мария", "Ирина", "Светлана")
WHATSAPP_ASKS = (
    "хочу записаться на стрижку завтра в 15:00",
    "хочу записаться на маникюр завтра в 16:00",
    "хочу записаться на педикюр завтра в 12:00",
)
TELEGRAM_ANSWERS = (
    ("Хочу на маникюр", "Анна", "завтра после 18"),
    ("Хочу на стрижку", "Елена", "завтра после 17"),
)


@dataclass(frozen=True)
class Delivery:
    """One webhook request: a path, its provider headers and the exact body."""

    path: str
    headers: bytes
    body: bytes


@dataclass
class Client:
    """A person writing to the salon; `phone` is what the CRM must hold once."""

    number: int
    channel: Channel
    chat_id: str
    phone: str
    deliveries: list[Delivery]
    # Indexes of deliveries the provider sends twice.
    repeated: set[int] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return len(self.deliveries) + len(self.repeated)


def phone_of(number: int) -> str:
    """Every client's own valid Russian mobile number, in E.164."""
    return f"+7999{number:07d}"


class Conversations:
    """Builds clients' conversations and their signed deliveries."""

    def __init__(self, telegram_secret: str, whatsapp_app_secret: str) -> None:
        self._telegram_head = (
            "Content-Type: application/json\r\n"
            f"X-Telegram-Bot-Api-Secret-Token: {telegram_secret}\r\n"
        ).encode()
        self._app_secret = whatsapp_app_secret.encode()
        self._update_ids = iter(range(UPDATE_ID_BASE, UPDATE_ID_BASE + 10**8))

    def client(self, number: int, rng: random.Random, repeat_share: float) -> Client:
        """Alternately a WhatsApp and a Telegram client."""
        if number % 2 == 0:
            client = self._whatsapp(number, rng)
        else:
            client = self._telegram(number, rng)
        client.repeated = {
            index
            for index in range(len(client.deliveries))
            if rng.random() < repeat_share
        }
        return client

    def _whatsapp(self, number: int, rng: random.Random) -> Client:
        phone = phone_of(number)
        wa_id = phone[1:]
        name = rng.choice(WHATSAPP_NAMES)
        text = (
            f"Здравствуйте! Меня зовут {name}, {rng.choice(WHATSAPP_ASKS)}, "
            f"мой телефон {phone}"
        )
        message = {
            "from": wa_id,
            "id": f"wamid.chaos{number:010d}",
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": text},
        }
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": SANDBOX_DISPLAY_PHONE_NUMBER,
                "phone_number_id": SANDBOX_PHONE_NUMBER_ID,
            },
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [message],
        }
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": SANDBOX_WABA_ID,
                    "changes": [{"value": value, "field": "messages"}],
                }
            ],
        }
        raw = meta_json(payload)
        signature = hmac.new(self._app_secret, raw, hashlib.sha256).hexdigest()
        headers = (
            "Content-Type: application/json\r\n"
            f"X-Hub-Signature-256: sha256={signature}\r\n"
        ).encode()
        delivery = Delivery("/webhooks/whatsapp", headers, raw)
        return Client(number, "whatsapp", wa_id, phone, [delivery])

    def _telegram(self, number: int, rng: random.Random) -> Client:
        chat = TELEGRAM_CHAT_BASE + number
        phone = phone_of(number)
        answers = rng.choice(TELEGRAM_ANSWERS)
        contents: list[dict[str, object]] = [{"text": text} for text in answers]
        # Shared with the bot's request-contact button: the sender's own card.
        contact = {"phone_number": phone[1:], "first_name": answers[1], "user_id": chat}
        contents.append({"contact": contact})
        deliveries = [
            self._update(chat, answers[1], position, content)
            for position, content in enumerate(contents, start=1)
        ]
        return Client(number, "telegram", str(chat), phone, deliveries)

    def _update(
        self, chat: int, name: str, position: int, content: dict[str, object]
    ) -> Delivery:
        person = {"id": chat, "is_bot": False, "first_name": name}
        update = {
            "update_id": next(self._update_ids),
            "message": {
                "message_id": position,
                "from": person,
                "chat": {"id": chat, "first_name": name, "type": "private"},
                "date": int(time.time()),
                **content,
            },
        }
        body = json.dumps(update, ensure_ascii=False).encode()
        return Delivery("/webhooks/telegram", self._telegram_head, body)


def plan(
    conversations: Conversations,
    *,
    rate: float,
    seconds: float,
    repeat_share: float,
    seed: int = 8,
) -> list[Client]:
    """Clients whose deliveries, repeats included, add up to `rate` times `seconds`."""
    rng = random.Random(seed)
    target = round(rate * seconds)
    clients: list[Client] = []
    total = 0
    while total < target:
        client = conversations.client(len(clients), rng, repeat_share)
        clients.append(client)
        total += client.requests
    return clients


# -- sending -----------------------------------------------------------------------


@dataclass
class Attempt:
    """One HTTP request of a delivery and what came back."""

    sent_at: float  # seconds since the load started
    seconds: float
    status: int  # 0: no answer (connection refused or reset, timed out)
    first: bool  # the delivery's first try (not a provider's retry)


@dataclass
class LoadResult:
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: int = 0
    # Deliveries never acknowledged before the load's deadline.
    unacknowledged: int = 0
    first_sent: float = 0.0
    last_acknowledged: float = 0.0
    # How far behind its start time the slowest client began (the sender's lag).
    worst_start_lag_s: float = 0.0


class Connections:
    """Keep-alive connections to the API, each carrying one request at a time."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        self._idle = asyncio.Queue()
        self._free = asyncio.Semaphore(size)

    async def post(self, delivery: Delivery) -> int:
        """The HTTP status of one POST; 0 when no answer came."""
        async with self._free:
            try:
                reader, writer = self._idle.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self._host, self._port),
                        REQUEST_TIMEOUT_S,
                    )
                except (OSError, TimeoutError):
                    return 0
            request = (
                f"POST {delivery.path} HTTP/1.1\r\nHost: {self._host}\r\n".encode()
                + delivery.headers
                + b"Content-Length: %d\r\n\r\n" % len(delivery.body)
                + delivery.body
            )
            try:
                writer.write(request)
                status = await asyncio.wait_for(
                    _read_response(reader), REQUEST_TIMEOUT_S
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                writer.close()
                return 0
            self._idle.put_nowait((reader, writer))
            return status

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait()[1].close()


async def _read_response(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(line, None)
    status = int(line.split()[1])
    length = 0
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


class Sender:
    """Plays the clients' conversations against the API on a fixed schedule."""

    def __init__(self, connections: Connections, *, give_up_after_s: float) -> None:
        self._connections = connections
        self._give_up_after_s = give_up_after_s
        self.result = LoadResult()
        self._started = 0.0

    def now(self) -> float:
        return time.perf_counter() - self._started

    async def play(self, clients: list[Client], seconds: float) -> LoadResult:
        """Start the clients evenly over `seconds`; return once every one is done."""
        self._started = time.perf_counter()
        spacing = seconds / max(len(clients), 1)
        tasks = []
        for index, client in enumerate(clients):
            due = index * spacing
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.result.worst_start_lag_s = max(
                self.result.worst_start_lag_s, self.now() - due
            )
            tasks.append(asyncio.create_task(self._converse(client)))
        await asyncio.gather(*tasks)
        return self.result

    async def _converse(self, client: Client) -> None:
        for index, delivery in enumerate(client.deliveries):
            if index:
                await asyncio.sleep(THINK_S)
            if not await self._deliver(delivery):
                # The provider gave up on it: what follows would answer nothing.
                self.result.unacknowledged += len(client.deliveries) - index
                return
            if index in client.repeated:
                await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> bool:
        """Send until a 2xx, as a provider retries; False if the deadline passed."""
        result = self.result
        for attempt in _attempts():
            if not result.first_sent:
                result.first_sent = self.now()
            sent_at = self.now()
            status = await self._connections.post(delivery)
            seconds = self.now() - sent_at
            result.attempts.append(Attempt(sent_at, seconds, status, attempt == 0))
            if 200 <= status < 300:
                result.acknowledged += 1
                result.last_acknowledged = self.now()
                return True
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            if self.now() + delay > self._give_up_after_s:
                return False
            await asyncio.sleep(delay)
        return False


def _attempts() -> Iterator[int]:
    attempt = 0
    while True:
        yield attempt
        attempt += 1
