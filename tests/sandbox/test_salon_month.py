"""The salon month `leadloop run` seeds: reproducible, realistic, served, counted."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from redis.asyncio import Redis

from app.config import BusinessRules, load_rules, parse_rules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.ratelimit import NoRateLimit, RequestMeter
from kpi_engine.data import KpiQuery
from kpi_engine.service import KpiService
from sandbox.salon_month import SalonRulesError, salon_month
from tests.sandbox.conftest import RunningSandbox
from tests.support import REDIS_URL

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "leadloop.example.toml"
MSK = ZoneInfo("Europe/Moscow")
NOW = datetime(2026, 12, 4, 13, 30, tzinfo=MSK)
VISIT_FIELD = "UF_CRM_LL_VISIT_AT"
CALL, PROVIDER = "2", "6"
INCOMING, OUTGOING = "1", "2"


@pytest.fixture(scope="module")
def rules() -> BusinessRules:
    return load_rules(EXAMPLE)


@pytest.fixture(scope="module")
def month(rules: BusinessRules) -> dict[str, Any]:
    return salon_month(rules, now=NOW)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def deal_history(month: dict[str, Any]) -> dict[int, list[str]]:
    """Each deal's stages in the order it reached them."""
    stages: dict[int, list[str]] = {}
    for row in month["stagehistory"]:
        stages.setdefault(row["OWNER_ID"], []).append(row["STAGE_ID"])
    return stages


class TestSalonMonth:
    def test_the_same_seed_gives_the_same_month(self, rules: BusinessRules) -> None:
        assert salon_month(rules, now=NOW, seed=5) == salon_month(
            rules, now=NOW, seed=5
        )

    def test_another_seed_gives_another_month(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        other = salon_month(rules, now=NOW, seed=2027)

        assert other["deals"] != month["deals"]
        assert other["contacts"] != month["contacts"]

    def test_it_is_generated_well_under_a_second(self, rules: BusinessRules) -> None:
        # CPU time: a machine busy with other work must not fail the test.
        began = time.process_time()
        salon_month(rules, now=NOW)

        assert time.process_time() - began < 1.0

    def test_three_managers_of_the_rules_take_the_inquiries(
        self, month: dict[str, Any]
    ) -> None:
        managers = Counter(deal["ASSIGNED_BY_ID"] for deal in month["deals"])
        names = {user["ID"]: user["NAME"] for user in month["users"]}

        assert set(managers) == {"17", "23", "31"}
        assert min(managers.values()) > 30
        assert {names[manager] for manager in managers} <= {
            "Екатерина",
            "Ольга",
            "Марина",
        }

    def test_four_masters_services_are_booked_at_the_configured_prices(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        titles = Counter(deal["TITLE"].split(" — ")[0] for deal in month["deals"])
        masters = {deal["COMMENTS"] for deal in month["deals"]}
        manicure = [
            Decimal(deal["OPPORTUNITY"])
            for deal in month["deals"]
            if deal["TITLE"].startswith("Маникюр")
        ]
        service = rules.services["manicure"]

        assert set(titles) == {"Маникюр", "Стрижка", "Окрашивание волос", "Чистка лица"}
        assert len({comment.split("Мастер: ")[1] for comment in masters}) == 4
        assert service.price_from is not None
        assert service.price_to is not None
        # A visit may add an extra service: up to 30 % over the list price.
        assert min(manicure) >= service.price_from
        assert max(manicure) <= service.price_to * Decimal("1.3")
        assert {deal["CURRENCY_ID"] for deal in month["deals"]} == {"RUB"}

    def test_about_400_inquiries_arrive_by_telegram_whatsapp_and_phone(
        self, month: dict[str, Any]
    ) -> None:
        sources = Counter(deal["SOURCE_ID"] for deal in month["deals"])
        created = [moment(deal["DATE_CREATE"]) for deal in month["deals"]]

        assert 340 <= len(month["deals"]) <= 460
        assert set(sources) == {"TELEGRAM", "WHATSAPP", "CALL"}
        assert min(sources.values()) > 50
        assert NOW - timedelta(days=30) <= min(created)
        assert max(created) < NOW
        assert created == sorted(created)  # ids rise with creation, as on a portal

    def test_inquiries_follow_the_salons_weekdays_and_hours(
        self, month: dict[str, Any]
    ) -> None:
        created = [moment(deal["DATE_CREATE"]) for deal in month["deals"]]
        evening = sum(1 for c in created if 17 <= c.hour < 21)
        night = sum(1 for c in created if 1 <= c.hour < 6)
        sundays = sum(1 for c in created if c.weekday() == 6)
        mondays = sum(1 for c in created if c.weekday() == 0)

        assert evening > 4 * night > 0
        assert mondays > sundays > 0

    def test_calls_confirmations_cancellations_no_shows_and_returns_happen(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        stages = rules.crm.stages
        reached = Counter(row["STAGE_ID"] for row in month["stagehistory"])
        kinds = Counter(
            (row["TYPE_ID"], row["DIRECTION"], row["COMPLETED"])
            for row in month["activities"]
        )
        contacts = Counter(deal["CONTACT_ID"] for deal in month["deals"])

        for role in ("booked", "confirmed", "visited", "lost"):
            assert reached[getattr(stages, role)[0]] > 50, role
        for role in ("cancelled", "no_show"):  # some 5-10 % of the bookings
            assert reached[getattr(stages, role)[0]] > 2, role
        assert kinds[(CALL, OUTGOING, "Y")] > 100
        assert kinds[(CALL, INCOMING, "Y")] > 30
        assert kinds[(CALL, INCOMING, "N")] > 0  # missed calls, called back
        assert kinds[(PROVIDER, OUTGOING, "Y")] > 200
        assert sum(1 for count in contacts.values() if count > 1) > 20

    def test_returning_clients_visit_again_within_the_month(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        visited = rules.crm.stages.visited[0]
        history = deal_history(month)
        visits: dict[str, list[datetime]] = {}
        for deal in month["deals"]:
            if visited in history[int(deal["ID"])]:
                visit = moment(deal[VISIT_FIELD])
                visits.setdefault(deal["CONTACT_ID"], []).append(visit)

        gaps = [
            (later - earlier).days
            for dates in visits.values()
            for earlier, later in zip(sorted(dates), sorted(dates)[1:], strict=False)
        ]
        assert len(gaps) > 5
        assert all(1 <= gap <= 40 for gap in gaps)

    def test_visits_are_booked_for_the_next_days(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        ahead = [
            deal
            for deal in month["deals"]
            if deal[VISIT_FIELD] and moment(deal[VISIT_FIELD]) > NOW
        ]
        open_stages = {*rules.crm.stages.booked, *rules.crm.stages.confirmed}

        assert len(ahead) > 10
        assert all(moment(d[VISIT_FIELD]) < NOW + timedelta(days=14) for d in ahead)
        assert sum(1 for deal in ahead if deal["STAGE_ID"] in open_stages) > 10

    def test_every_stage_used_has_a_role_in_the_rules(
        self, rules: BusinessRules, month: dict[str, Any]
    ) -> None:
        used = {row["STAGE_ID"] for row in month["stagehistory"]}
        used |= {deal["STAGE_ID"] for deal in month["deals"]}

        assert all(rules.crm.stages.role_of(stage) for stage in used)

    def test_nothing_happened_after_now(self, month: dict[str, Any]) -> None:
        times = [moment(row["CREATED_TIME"]) for row in month["stagehistory"]]
        times += [moment(row["START_TIME"]) for row in month["activities"]]

        assert max(times) <= NOW

    def test_each_deal_ends_in_its_last_stage_move(self, month: dict[str, Any]) -> None:
        history = deal_history(month)
        rows = month["stagehistory"]

        assert [row["ID"] for row in rows] == list(range(1, len(rows) + 1))
        assert all(
            deal["STAGE_ID"] == history[int(deal["ID"])][-1] for deal in month["deals"]
        )

    def test_first_replies_come_mostly_within_minutes_on_shift(
        self, month: dict[str, Any]
    ) -> None:
        created = {deal["ID"]: moment(deal["DATE_CREATE"]) for deal in month["deals"]}
        managers = {d["ID"]: d["ASSIGNED_BY_ID"] for d in month["deals"]}
        first: dict[str, datetime] = {}
        for row in month["activities"]:
            human = row["AUTHOR_ID"] == managers[row["OWNER_ID"]]
            if row["TYPE_ID"] == PROVIDER and human:
                first.setdefault(row["OWNER_ID"], moment(row["START_TIME"]))
        daytime = [
            first[deal] - created[deal]
            for deal in first
            if 10 <= created[deal].hour < 20 and created[deal].weekday() < 5
        ]

        quick = sum(1 for wait in daytime if wait <= timedelta(minutes=15))
        assert quick / len(daytime) > 0.6
        assert any(wait > timedelta(hours=1) for wait in daytime)

    def test_contacts_have_russian_names_and_fake_mobile_numbers(
        self, month: dict[str, Any]
    ) -> None:
        phones = [contact["PHONE"][0]["VALUE"] for contact in month["contacts"]]

        assert all(phone.startswith("+7999") and len(phone) == 12 for phone in phones)
        assert len(set(phones)) == len(phones)
        assert all(
            contact["NAME"].isalpha()
            and contact["NAME"][0] in "АБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯ"
            for contact in month["contacts"]
        )
        assert {c["PHONE"][0]["TYPE_ID"] for c in month["contacts"]} == {"PHONE"}

    def test_rules_without_salon_stages_still_give_a_month(self) -> None:
        month = salon_month(BusinessRules(), now=NOW)
        used = {row["STAGE_ID"] for row in month["stagehistory"]}
        managers = {deal["ASSIGNED_BY_ID"] for deal in month["deals"]}

        assert used == {"NEW", "WON", "LOSE"}
        assert len(managers) == 3
        assert VISIT_FIELD not in month["deals"][0]

    def test_rules_without_a_visited_stage_are_refused(self) -> None:
        rules = parse_rules('[crm.stages]\nvisited = ["C3:WON"]\n')

        with pytest.raises(SalonRulesError, match="no visited stage in pipeline 0"):
            salon_month(rules, now=NOW)

    def test_a_naive_now_is_refused(self, rules: BusinessRules) -> None:
        with pytest.raises(ValueError, match="aware"):
            salon_month(rules, now=NOW.replace(tzinfo=None))


class TestServedBySandbox:
    def test_the_portal_lists_it_as_a_portal_would(
        self, sandbox: RunningSandbox, month: dict[str, Any]
    ) -> None:
        sandbox.load(month)

        mode = sandbox.result("crm.settings.mode.get")
        users = sandbox.result("user.get")
        deals = sandbox.call(
            "crm.deal.list",
            {"select": ["ID", "SOURCE_ID", "OPPORTUNITY", VISIT_FIELD], "start": 0},
        ).json()
        history = sandbox.result(
            "crm.stagehistory.list", {"entityTypeId": 2, "filter": {"OWNER_ID": 1}}
        )
        activities = sandbox.result(
            "crm.activity.list",
            {"filter": {"OWNER_TYPE_ID": 2, "OWNER_ID": 1}, "select": ["*"]},
        )
        contacts = sandbox.result(
            "crm.contact.list", {"filter": {"ID": 1}, "select": ["ID", "PHONE"]}
        )

        assert mode == 2  # simple: deals only
        assert {user["ID"] for user in users} >= {"1", "17", "23", "31", "45"}
        assert deals["total"] == len(month["deals"])
        assert len(deals["result"]) == 50
        assert deals["result"][0]["OPPORTUNITY"] == month["deals"][0]["OPPORTUNITY"]
        assert history["items"][0]["TYPE_ID"] == 1
        assert history["items"][0]["STAGE_ID"] == "NEW"
        assert activities
        assert {row["OWNER_ID"] for row in activities} == {"1"}
        assert contacts[0]["PHONE"][0]["VALUE"].startswith("+7999")

    def test_a_pipeline_of_its_own_is_created_with_the_salons_stage_names(
        self, sandbox: RunningSandbox
    ) -> None:
        rules = parse_rules(
            '[crm]\npipelines = [1]\n[crm.stages]\nnew = ["C1:NEW"]\n'
            'booked = ["C1:PREPARATION"]\nvisited = ["C1:WON"]\n'
            'cancelled = ["C1:UC_CANCEL"]\nlost = ["C1:LOSE"]\n'
        )
        sandbox.load(salon_month(rules, now=NOW))

        categories = sandbox.result("crm.category.list", {"entityTypeId": 2})
        stages = sandbox.result(
            "crm.status.list", {"filter": {"ENTITY_ID": "DEAL_STAGE_1"}}
        )
        deals = sandbox.call(
            "crm.deal.list", {"filter": {"!CATEGORY_ID": 1}, "select": ["ID"]}
        ).json()

        assert {c["id"] for c in categories["categories"]} == {0, 1}
        names = {stage["STATUS_ID"]: stage["NAME"] for stage in stages}
        assert names["C1:PREPARATION"] == "Записан"
        assert names["C1:UC_CANCEL"] == "Отменил"
        assert deals["total"] == 0


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


class TestKpiOverTheMonth:
    async def test_leadloop_kpi_counts_the_month_without_warnings(
        self,
        sandbox: RunningSandbox,
        rules: BusinessRules,
        month: dict[str, Any],
        redis: Redis,
    ) -> None:
        sandbox.load(month)
        query = KpiQuery(
            (NOW - timedelta(days=30)).date(), (NOW + timedelta(days=1)).date(), NOW
        )

        async with httpx.AsyncClient(timeout=30) as http:
            client = Bitrix24Client(
                http,
                WebhookCredentials(sandbox.webhook),
                portal_zone=rules.zone,
                limiter=RequestMeter(NoRateLimit()),
            )
            result = await KpiService(client, rules, redis).figures(query)

        total = result.total
        assert result.warnings == ()
        assert [manager.id for manager in result.managers] == [17, 23, 31]
        assert total.leads == len(month["deals"])
        assert total.conversion is not None
        assert 0.3 <= total.conversion <= 0.8
        assert total.no_show_rate is not None
        assert 0 < total.no_show_rate < 0.2
        assert total.cancellations > 0
        assert total.confirmed_share is not None
        assert total.confirmed_share > 0.5
        assert total.retained_clients > 0
        assert total.calls > 0
        assert total.revenue is not None
        assert total.revenue > 0
        median = total.first_response.median_min
        assert median is not None
        assert median < 60
        assert total.first_response.unanswered > 0
