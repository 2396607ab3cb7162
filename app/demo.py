"""What `leadloop run` shows on the sandbox: a month of salon history, then live chats.

The demo seeds the sandbox portal with `sandbox.salon_month` (the 30 days before now
and the bookings ahead), then plays scripted clients through the messenger
sandboxes exactly as a person would type them: the service turns each conversation
into a contact, a deal and a call-back task. A manager then books the first deal in
the CRM (stage and visit time over REST); the portal's event reaches the service,
which sends the client a reminder with confirm and cancel buttons, and the client
taps "confirm", which moves the deal on. Last comes the month's KPI headline, from
the same code as `leadloop kpi`.

The visit is booked `hours_before` from now, so that its reminder is due at once.
Quiet hours would hold that reminder back at night, so the demo's rules have none
(`demo_rules`); the banner says so. Logs carry ids and counts only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import httpx
import structlog

from app.clients import open_clients
from app.config import BusinessRules, ReminderRules
from app.local import Listening
from app.portal import NotConfigured
from app.settings import Settings
from connectors.bitrix24.errors import Bitrix24Error
from kpi_engine.data import KpiQuery
from kpi_engine.service import KpiService
from reminders.booking import (
    CALLBACK_PREFIX,
    reminders_off_because,
    stage_for,
    stamp_of,
)
from sandbox.salon_month import salon_month

log = structlog.stdlib.get_logger(__name__)

Channel = Literal["telegram", "whatsapp"]
Clock = Callable[[], datetime]

DEFAULT_SEED = 2026
# Ten times what the conversations, the reminder and the tap took on a loaded
# two-core machine (about 6 s); short enough for CI to fail fast.
DEFAULT_TIMEOUT_S = 60.0
POLL_S = 0.1
# REST calls count against the portal's limit the service shares (2 a second).
REST_POLL_S = 1.0
LIMIT_EXCEEDED = "QUERY_LIMIT_EXCEEDED"
KPI_DAYS = 30
# An activity of this TYPE_ID is a call (crm.enum.activitytype).
CALL_TYPE = "2"
# Demo clients get fresh ids every run: the bot remembers a chat for 12 hours. The
# ranges are apart from the ids the tests use.
TELEGRAM_CHATS = range(7_000_000_000, 7_999_999_999)
# +7 900 0…: apart from the seeded clients' +7 999 numbers, so that no demo client
# is taken for a returning one.
DEMO_PHONE_PREFIX = "79000"
# No instant lies strictly between these two: quiet hours that never hold anything.
NO_QUIET_HOURS = (time(0, 0), time(0, 0, 0, 1))


class DemoFailed(Exception):
    """Something the demo waits for did not happen; the message says what."""


# -- the script ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing the client does: write `text`, or share the phone with the button."""

    text: str = ""
    share_phone: bool = False


@dataclass(frozen=True)
class Client:
    """A scripted client: who, on which channel, and what they write."""

    channel: Channel
    name: str
    steps: tuple[Step, ...]
    chat_id: str
    phone: str

    def delivery(self, step: Step) -> dict[str, Any]:
        """The body of `/_sandbox/<channel>/deliver` for one step."""
        if self.channel == "whatsapp":
            return {"from": self.chat_id, "name": self.name, "text": step.text}
        update: dict[str, Any] = {"chat_id": int(self.chat_id), "first_name": self.name}
        if step.share_phone:
            return update | {"contact_phone": self.phone}
        return update | {"text": step.text}


def scripted_clients(rng: random.Random) -> list[Client]:
    """Three clients: step by step with the contact button, all in one WhatsApp
    message, and a typed phone after a question about the price."""
    phones = [f"{DEMO_PHONE_PREFIX}{rng.randrange(10**6):06d}" for _ in range(3)]
    chats = [str(rng.choice(TELEGRAM_CHATS)) for _ in range(2)]
    olga = phones[1]
    olga_writes = (
        "Здравствуйте! Меня зовут Ольга, хочу записаться на стрижку завтра в 15:00, "
        f"мой телефон +7 {olga[1:4]} {olga[4:7]}-{olga[7:9]}-{olga[9:]}"
    )
    return [
        Client(
            "telegram",
            "Анна",
            (
                Step("Здравствуйте, хочу записаться на маникюр"),
                Step("Анна"),
                Step("завтра после 18"),
                Step(share_phone=True),
            ),
            chats[0],
            phones[0],
        ),
        Client("whatsapp", "Ольга", (Step(olga_writes),), olga, olga),
        Client(
            "telegram",
            "Марина",
            (
                Step("Добрый день! Сколько стоит коррекция бровей? Хочу в субботу"),
                Step("Марина"),
                Step(f"8 {phones[2][1:4]} {phones[2][4:7]} {phones[2][7:]}"),
            ),
            chats[1],
            phones[2],
        ),
    ]


# -- what the demo reports -----------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    deals: int
    contacts: int
    calls: int


@dataclass(frozen=True)
class Headline:
    """The month's figures for everyone, as `leadloop kpi` computes them."""

    start: date
    end: date
    leads: int
    bookings: int
    conversion: Decimal | None
    visits: int
    no_show_rate: Decimal | None
    revenue: Decimal | None
    currency: str
    first_response_median_min: Decimal | None


@dataclass
class Summary:
    """What the demo did, for `run --once` to print and judge."""

    seed: int
    # The conversations the script holds; 0 with `--no-conversations`.
    planned: int = 0
    # Why the demo stopped short, when it did.
    failure: str | None = None
    seeded: Seeded | None = None
    conversations: int = 0
    deals_created: int = 0
    reminders_sent: int = 0
    confirmations: int = 0
    kpi: Headline | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """The month was seeded and measured; every planned conversation made a
        deal, and a reminder went out and was confirmed."""
        if self.failure or self.seeded is None or self.kpi is None:
            return False
        if not self.planned:
            return True
        return (
            self.conversations == self.deals_created == self.planned
            and self.reminders_sent >= 1
            and self.confirmations >= 1
        )


# -- rules ---------------------------------------------------------------------------


def demo_rules(rules: BusinessRules) -> BusinessRules:
    """The rules with no quiet hours, so that the reminder goes out at any hour."""
    reminders = ReminderRules.model_validate(
        rules.reminders.model_dump() | {"quiet_hours": NO_QUIET_HOURS}
    )
    return rules.model_copy(update={"reminders": reminders})


def quiet_hours_text(rules: BusinessRules) -> str:
    start, end = rules.reminders.quiet_hours
    return f"{start:%H:%M}–{end:%H:%M}"


# -- the demo ------------------------------------------------------------------------


class Demo:
    """Seeds the sandbox and plays the script against a running local system."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: Settings,
        rules: BusinessRules,
        *,
        seed: int = DEFAULT_SEED,
        clock: Clock,
    ) -> None:
        self._http = http
        self._settings = settings
        self._rules = rules
        self._seed = seed
        self._clock = clock
        self._webhook = _webhook(settings)
        self._last_deal = 0
        # What the demo waits for now, for the message when it waits too long.
        self._waiting_for = "the start"
        self.summary = Summary(seed)

    async def seed(self) -> Seeded:
        """Load the month of history into the portal; the visit field made sure of."""
        snapshot = salon_month(self._rules, now=self._clock(), seed=self._seed)
        answer = await self._http.post("/_sandbox/snapshot", json=snapshot)
        if answer.status_code != 200:
            raise DemoFailed(f"the sandbox refused the month's snapshot: {answer.text}")
        loaded: dict[str, int] = answer.json()["loaded"]
        calls = [
            row
            for row in snapshot.get("activities", [])
            if str(row.get("TYPE_ID")) == CALL_TYPE
        ]
        self._last_deal = max(
            (int(row["ID"]) for row in snapshot.get("deals", [])), default=0
        )
        await self._ensure_visit_field()
        seeded = Seeded(loaded.get("deals", 0), loaded.get("contacts", 0), len(calls))
        self.summary.seeded = seeded
        log.info(
            "demo.seeded",
            seed=self._seed,
            deals=seeded.deals,
            contacts=seeded.contacts,
            calls=seeded.calls,
        )
        return seeded

    async def play(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> Summary:
        """Conversations, booking, reminder and tap, within `timeout_s`."""
        script = scripted_clients(random.Random())  # noqa: S311  (chat ids)
        self.summary.planned = len(script)
        try:
            async with asyncio.timeout(timeout_s):
                deals = [
                    await self._converse(number, client)
                    for number, client in enumerate(script, 1)
                ]
                await self._remind(deals[0], script[0])
        except TimeoutError:
            waited = self._waiting_for
            log.error("demo.timed_out", waiting_for=waited, timeout_s=timeout_s)
            raise DemoFailed(
                f"the demo stopped after {timeout_s:g} s waiting for {waited}"
            ) from None
        return self.summary

    async def headline(self) -> Headline | None:
        """The KPIs of the last 30 days and today; None (noted) if they fail."""
        now = self._clock()
        today = now.astimezone(self._rules.zone).date()
        query = KpiQuery(
            today - timedelta(days=KPI_DAYS), today + timedelta(days=1), now
        )
        shared = open_clients(self._settings.redis_url)
        try:
            service = KpiService.on_portal(self._settings, self._rules, shared)
            result = await service.figures(query)
        except (NotConfigured, Bitrix24Error) as exc:
            log.warning("demo.kpi_failed", error=type(exc).__name__)
            self.summary.notes.append(f"KPIs not computed: {exc}")
            return None
        finally:
            await shared.aclose()
        total = result.total
        headline = Headline(
            start=query.start,
            end=query.end,
            leads=total.leads,
            bookings=total.bookings_made,
            conversion=total.conversion,
            visits=total.visits,
            no_show_rate=total.no_show_rate,
            revenue=total.revenue,
            currency=self._rules.money.currency,
            first_response_median_min=total.first_response.median_min,
        )
        self.summary.kpi = headline
        log.info(
            "demo.kpi",
            leads=headline.leads,
            bookings=headline.bookings,
            visits=headline.visits,
        )
        return headline

    # -- conversations ----------------------------------------------------------------

    async def _converse(self, number: int, client: Client) -> int:
        """Play one client; the id of the deal the service opened for them."""
        bound = structlog.contextvars.bound_contextvars(
            conversation=number, channel=client.channel
        )
        with bound:
            self.summary.conversations += 1
            log.info("demo.lead_arriving", steps=len(client.steps))
            for step in client.steps:
                self._waiting_for = f"the bot's answer in conversation {number}"
                await self._say(client, step)
            self._waiting_for = f"the deal of conversation {number}"
            deal = await self._new_deal()
            self.summary.deals_created += 1
            log.info(
                "demo.deal_appeared",
                deal_id=int(deal["ID"]),
                stage=deal.get("STAGE_ID"),
                source=deal.get("SOURCE_ID"),
                manager_id=deal.get("ASSIGNED_BY_ID"),
            )
            return int(deal["ID"])

    async def _say(self, client: Client, step: Step) -> list[dict[str, Any]]:
        """Deliver one step and wait for the bot's answer to it."""
        before = len(await self._chat(client))
        answer = await self._http.post(
            f"/_sandbox/{client.channel}/deliver", json=client.delivery(step)
        )
        if answer.status_code != 200:
            raise DemoFailed(
                f"the {client.channel} sandbox refused a message: {answer.text}"
            )
        while True:
            messages = await self._chat(client)
            if len(messages) > before:
                return messages
            await asyncio.sleep(POLL_S)

    async def _chat(self, client: Client) -> list[dict[str, Any]]:
        if client.channel == "telegram":
            path, query = "/_sandbox/telegram/messages", {"chat_id": client.chat_id}
        else:
            path, query = "/_sandbox/whatsapp/messages", {"to": client.chat_id}
        answer = await self._http.get(path, params=query)
        answer.raise_for_status()
        messages: list[dict[str, Any]] = answer.json()["messages"]
        return messages

    async def _new_deal(self) -> dict[str, Any]:
        """The next deal the service opened after the ones seen so far."""
        while True:
            rows = await self._rest(
                "crm.deal.list",
                {
                    "filter": {">ID": self._last_deal},
                    "order": {"ID": "ASC"},
                    "select": ["ID", "STAGE_ID", "SOURCE_ID", "ASSIGNED_BY_ID"],
                },
            )
            if rows:
                deal: dict[str, Any] = rows[0]
                self._last_deal = int(deal["ID"])
                return deal
            await asyncio.sleep(REST_POLL_S)

    # -- the booking and its reminder -------------------------------------------------

    async def _remind(self, deal_id: int, client: Client) -> None:
        off = reminders_off_because(self._rules)
        booked = stage_for("booked", 0, self._rules)
        hours = sorted(self._rules.reminders.hours_before)
        if off is not None or booked is None or not hours:
            why = off or ("no booked stage" if booked is None else "no hours_before")
            self.summary.notes.append(f"no reminder: the rules allow none ({why})")
            log.warning("demo.no_reminder", reason=why)
            return
        with structlog.contextvars.bound_contextvars(
            deal_id=deal_id, channel=client.channel
        ):
            # To the second: a run in the same minute on the same Redis (the same
            # seed gives the same deal ids) would find this visit's reminder done.
            visit = self._clock().replace(microsecond=0) + timedelta(hours=hours[0])
            await self._book(deal_id, booked, visit)
            self._waiting_for = f"the reminder of deal {deal_id}"
            confirm = await self._reminder(client, deal_id)
            self.summary.reminders_sent += 1
            log.info("demo.reminder_sent", visit=stamp_of(visit))
            self._waiting_for = f"the confirmation of deal {deal_id}"
            stage = await self._confirm(client, deal_id, confirm)
            self.summary.confirmations += 1
            log.info("demo.confirmed", stage=stage)

    async def _book(self, deal_id: int, stage: str, visit: datetime) -> None:
        """What a manager does in the CRM: the booked stage and the visit time."""
        field_code = self._rules.crm.visit_field or ""
        local = visit.astimezone(self._rules.zone).isoformat()
        await self._rest(
            "crm.deal.update",
            {"id": deal_id, "fields": {"STAGE_ID": stage, field_code: local}},
        )
        log.info("demo.booked", stage=stage, visit=stamp_of(visit))

    async def _reminder(self, client: Client, deal_id: int) -> str:
        """Wait for the reminder in the client's chat; its confirm button's data."""
        wanted = f"{CALLBACK_PREFIX}c:{deal_id}:"
        while True:
            for message in await self._chat(client):
                for data in _button_data(message):
                    if data.startswith(wanted):
                        return data
            await asyncio.sleep(POLL_S)

    async def _confirm(self, client: Client, deal_id: int, data: str) -> str:
        """The client taps "confirm"; the deal's stage once it is confirmed."""
        tap: dict[str, Any]
        if client.channel == "telegram":
            tap = {"chat_id": int(client.chat_id), "callback_data": data}
        else:
            title = self._rules.reminders.texts.confirm_button
            tap = {"from": client.chat_id, "button_reply": {"id": data, "title": title}}
        answer = await self._http.post(f"/_sandbox/{client.channel}/deliver", json=tap)
        answer.raise_for_status()
        confirmed = self._rules.crm.stages.confirmed
        while True:
            deal = await self._rest("crm.deal.get", {"id": deal_id})
            if deal["STAGE_ID"] in confirmed:
                return str(deal["STAGE_ID"])
            await asyncio.sleep(REST_POLL_S)

    # -- the portal -------------------------------------------------------------------

    async def _ensure_visit_field(self) -> None:
        """The deals' visit field exists, as `leadloop setup` makes sure."""
        code = self._rules.crm.visit_field
        if code is None:
            return
        fields = await self._rest(
            "crm.deal.userfield.list", {"filter": {"FIELD_NAME": code}}
        )
        if not fields:
            name = code.removeprefix("UF_CRM_")
            await self._rest(
                "crm.deal.userfield.add",
                {"fields": {"FIELD_NAME": name, "USER_TYPE_ID": "datetime"}},
            )
            log.info("demo.visit_field_added")

    async def _rest(self, method: str, params: dict[str, Any]) -> Any:
        """One call as a manager's browser makes it; over the limit, again later."""
        while True:
            answer = await self._http.post(f"{self._webhook}{method}", json=params)
            body = answer.json()
            if body.get("error") != LIMIT_EXCEEDED:
                break
            await asyncio.sleep(REST_POLL_S)
        if answer.status_code != 200 or "result" not in body:
            raise DemoFailed(
                f"the sandbox portal refused {method}: {body.get('error')}"
            )
        return body["result"]


def _webhook(settings: Settings) -> str:
    if settings.bitrix24_webhook_url is None:
        raise DemoFailed("the demo needs the sandbox as the Bitrix24 portal")
    return settings.bitrix24_webhook_url.get_secret_value()


def _button_data(message: dict[str, Any]) -> list[str]:
    """The data of every button of a recorded Telegram or WhatsApp message."""
    buttons = message.get("buttons") or []
    rows = buttons if buttons and isinstance(buttons[0], list) else [buttons]
    found = []
    for row in rows:
        for button in row:
            data = button.get("callback_data") or button.get("id")
            if isinstance(data, str):
                found.append(data)
    return found


# -- the run -------------------------------------------------------------------------


def player(
    settings: Settings,
    rules: BusinessRules,
    *,
    seed: int,
    conversations: bool,
    timeout_s: float,
    clock: Clock,
    stop: asyncio.Event | None = None,
) -> Callable[[Listening], Coroutine[Any, Any, Summary]]:
    """What `run_local` plays once everything is wired; setting `stop` when done
    (`run --once`) ends the run there."""

    async def play(listening: Listening) -> Summary:
        async with httpx.AsyncClient(base_url=listening.sandbox, timeout=30) as http:
            demo = Demo(http, settings, rules, seed=seed, clock=clock)
            try:
                await _play(demo, listening, conversations, timeout_s)
            except DemoFailed as exc:
                demo.summary.failure = str(exc)
                log.error("demo.failed")
            except httpx.HTTPError as exc:
                demo.summary.failure = f"the sandbox did not answer ({exc!r})"
                log.error("demo.failed", error=type(exc).__name__)
        if stop is not None:
            stop.set()
        return demo.summary

    return play


async def _play(
    demo: Demo, listening: Listening, conversations: bool, timeout_s: float
) -> None:
    if not listening.webhook.startswith(listening.sandbox):
        # A real portal is never seeded nor played with.
        demo.summary.notes.append("no demo: LEADLOOP_BITRIX24_WEBHOOK_URL is a portal")
        return
    await demo.seed()
    try:
        if conversations and not (listening.telegram and listening.whatsapp):
            raise DemoFailed(
                "a messenger has credentials of its own: the demo's clients write "
                "to the sandbox bots only (--no-conversations runs without them)"
            )
        if conversations:
            await demo.play(timeout_s)
    except DemoFailed:
        # The month's figures, whatever became of the conversations.
        await demo.headline()
        raise
    await demo.headline()
    log.info("demo.done")


def summary_rows(summary: Summary) -> list[tuple[str, str]]:
    """The summary as `run` prints it: a label and a line per part."""
    rows = []
    seeded = summary.seeded
    if seeded is not None:
        rows.append(
            (
                "seeded",
                f"seed {summary.seed}: {seeded.deals} deals, "
                f"{seeded.contacts} contacts, {seeded.calls} calls",
            )
        )
    if summary.conversations:
        rows.append(
            (
                "live",
                f"conversations {summary.conversations}, "
                f"deals created {summary.deals_created}, "
                f"reminders sent {summary.reminders_sent}, "
                f"confirmed {summary.confirmations}",
            )
        )
    if summary.kpi is not None:
        rows.append(("KPIs", _headline_text(summary.kpi)))
    rows += [("note", note) for note in summary.notes]
    if summary.failure:
        rows.append(("stopped short", summary.failure))
    return rows


def _headline_text(kpi: Headline) -> str:
    last = kpi.end - timedelta(days=1)
    revenue = "—" if kpi.revenue is None else f"{kpi.revenue:,.2f}".replace(",", " ")
    median = kpi.first_response_median_min
    return (
        f"{kpi.start:%d.%m}–{last:%d.%m.%Y}: {kpi.leads} leads, "
        f"{kpi.bookings} booked ({_percent(kpi.conversion)}), "
        f"{kpi.visits} visits, no-shows {_percent(kpi.no_show_rate)}, "
        f"revenue {revenue} {kpi.currency}, first response median "
        f"{'—' if median is None else f'{median} min'}"
    )


def _percent(share: Decimal | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"
