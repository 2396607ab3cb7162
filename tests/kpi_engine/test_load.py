"""The loader against a seeded sandbox portal over real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from structlog.testing import capture_logs

from app.config import BusinessRules, parse_rules
from connectors.bitrix24.auth import WebhookCredentials
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.models import Activity, Deal, Lead, StageHistory, User
from connectors.bitrix24.ratelimit import NoRateLimit, RequestMeter
from kpi_engine import report
from kpi_engine.data import KpiData, KpiQuery
from kpi_engine.load import KpiLoader
from kpi_engine.metrics import compute
from sandbox.kpi_history import HistoryShape, generate
from sandbox.server import SandboxOptions
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox

MSK = ZoneInfo("Europe/Moscow")
VISIT_FIELD = "UF_CRM_LL_VISIT_AT"
RULES = f"""
[crm]
pipelines = [0]
visit_field = "{VISIT_FIELD}"

[crm.stages]
new = ["NEW"]
booked = ["PREPARATION"]
confirmed = ["PREPAYMENT_INVOICE"]
visited = ["WON"]
no_show = ["EXECUTING"]
cancelled = ["FINAL_INVOICE"]
lost = ["LOSE", "APOLOGY"]

[kpi]
non_human_users = ["3"]

[money.rates]
USD = "92.15"

[bonus.managers."10"]
plan = "20000.00"
"""
# The report week of known-faults.md and the Monday 09:00 it is posted at.
WEEK = (date(2025, 1, 6), date(2025, 1, 13))
POSTED = datetime(2025, 1, 13, 9, tzinfo=MSK)


def rules(mode: str = "auto") -> BusinessRules:
    return parse_rules(RULES.replace("[crm]\n", f'[crm]\nmode = "{mode}"\n'))


@pytest.fixture(scope="module")
def portal_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as portal:
        yield portal


@pytest.fixture
def portal(portal_server: RunningSandbox) -> RunningSandbox:
    portal_server.reset()
    return portal_server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client


def gateway(portal: RunningSandbox, http: httpx.AsyncClient) -> Bitrix24Client:
    return Bitrix24Client(
        http,
        WebhookCredentials(portal.webhook),
        portal_zone=MSK,
        limiter=RequestMeter(NoRateLimit()),
    )


def whole_portal(snapshot: dict[str, Any]) -> KpiData:
    """Every row of the snapshot, as if the loader had read the whole portal."""
    return KpiData(
        mode=snapshot.get("settings", {}).get("crm_mode", "simple"),
        users={
            int(row["ID"]): User.model_validate(row)
            for row in snapshot["users"]
            if row.get("USER_TYPE", "employee") == "employee"
        },
        deals=[Deal.model_validate(row) for row in snapshot.get("deals", [])],
        leads=[Lead.model_validate(row) for row in snapshot.get("leads", [])],
        deal_history=[
            StageHistory.model_validate(row)
            for row in snapshot.get("stagehistory", [])
            if row["ENTITY_TYPE_ID"] == 2
        ],
        activities=[
            Activity.model_validate(row) for row in snapshot.get("activities", [])
        ],
    )


def figures(data: KpiData, query: KpiQuery, rules: BusinessRules) -> dict[str, Any]:
    return report.to_json(compute(data, query, rules))


# -- a hand-made portal ---------------------------------------------------------------


def moment(text: str) -> str:
    """`"2025-01-08 10:00"` as the portal prints it, Moscow offset."""
    return datetime.fromisoformat(text).replace(tzinfo=MSK).isoformat()


def deal_row(
    *, id: int, created: str, manager: int = 10, contact: int | None = 501,
    category: int = 0, visit: str | None = None, amount: str = "3000.00",
) -> dict[str, Any]:  # fmt: skip
    return {
        "ID": str(id),
        "TITLE": f"Запись {id}",
        "CATEGORY_ID": str(category),
        "STAGE_ID": "NEW",
        "STAGE_SEMANTIC_ID": "P",
        "OPPORTUNITY": amount,
        "CURRENCY_ID": "RUB",
        "ASSIGNED_BY_ID": str(manager),
        "CONTACT_ID": str(contact) if contact else None,
        "DATE_CREATE": moment(created),
        "DATE_MODIFY": moment(created),
        VISIT_FIELD: moment(visit) if visit else "",
    }


def history_row(
    *, id: int, deal: int, at: str, stage: str, category: int = 0
) -> dict[str, Any]:
    return {
        "ID": id,
        "ENTITY_TYPE_ID": 2,
        "TYPE_ID": 2,
        "OWNER_ID": deal,
        "CREATED_TIME": moment(at),
        "CATEGORY_ID": category,
        "STAGE_ID": stage,
        "STAGE_SEMANTIC_ID": "P",
    }


def activity_row(
    *, id: int, owner: int, start: str, end: str | None = None, type_id: int = 2,
    direction: int = 2, author: int = 10, owner_type: int = 2,
) -> dict[str, Any]:  # fmt: skip
    return {
        "ID": str(id),
        "OWNER_ID": str(owner),
        "OWNER_TYPE_ID": str(owner_type),
        "TYPE_ID": str(type_id),
        "SUBJECT": "Звонок",
        "START_TIME": moment(start),
        "END_TIME": moment(end or start),
        "COMPLETED": "Y",
        "DIRECTION": str(direction),
        "RESPONSIBLE_ID": str(author),
        "AUTHOR_ID": str(author),
    }


USERS = [
    {"ID": "1", "ACTIVE": True, "NAME": "Админ", "USER_TYPE": "employee"},
    {"ID": "10", "ACTIVE": True, "NAME": "Анна", "USER_TYPE": "employee"},
    {"ID": "11", "ACTIVE": True, "NAME": "Борис", "USER_TYPE": "employee"},
]
USERFIELDS = [
    {"ID": "1", "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": VISIT_FIELD,
     "USER_TYPE_ID": "datetime", "MULTIPLE": "N"},
]  # fmt: skip


def edge_portal() -> dict[str, Any]:
    """The week 2025-01-06…13 and the deals around it that only some queries need."""
    deals = [
        # 1: created, booked and visited in the week.
        deal_row(id=1, created="2025-01-08 10:00", visit="2025-01-10 12:00"),
        # 2: created and confirmed in October, visit time in the week.
        deal_row(id=2, created="2024-10-01 10:00", visit="2025-01-09 15:00"),
        # 3: booked in November, visit field in the week, no stage move since.
        deal_row(id=3, created="2024-11-01 10:00", visit="2025-01-07 11:00"),
        # 4: in the untracked pipeline, created in the week.
        deal_row(id=4, created="2025-01-08 11:00", category=1),
        # 5: the same client's earlier visit, in the retention window W.
        deal_row(id=5, created="2024-12-20 10:00", visit="2024-12-20 12:00"),
        # 6: old and untouched since.
        deal_row(id=6, created="2024-06-01 10:00"),
        # 7: booked long ago, no visit field, visited in the week by its stage.
        deal_row(id=7, created="2024-09-01 10:00", contact=None),
        # 8: created at 00:10 during a call that had been going on for a day.
        deal_row(id=8, created="2025-01-06 00:10", contact=502),
    ]
    history = [
        history_row(id=1, deal=6, at="2024-06-01 10:00", stage="NEW"),
        history_row(id=2, deal=7, at="2024-09-01 10:00", stage="NEW"),
        history_row(id=3, deal=7, at="2024-09-02 10:00", stage="PREPARATION"),
        history_row(id=4, deal=2, at="2024-10-01 10:00", stage="NEW"),
        history_row(id=5, deal=2, at="2024-10-02 10:00", stage="PREPAYMENT_INVOICE"),
        history_row(id=6, deal=3, at="2024-11-01 10:00", stage="NEW"),
        history_row(id=7, deal=3, at="2024-11-02 10:00", stage="PREPARATION"),
        history_row(id=8, deal=5, at="2024-12-20 10:00", stage="NEW"),
        history_row(id=9, deal=5, at="2024-12-20 14:00", stage="WON"),
        history_row(id=10, deal=1, at="2025-01-08 10:00", stage="NEW"),
        history_row(id=11, deal=1, at="2025-01-08 10:30", stage="PREPARATION"),
        history_row(id=12, deal=4, at="2025-01-08 11:00", stage="C1:NEW", category=1),
        history_row(id=13, deal=4, at="2025-01-08 11:05", stage="C1:PREPARATION",
                    category=1),
        history_row(id=14, deal=2, at="2025-01-09 17:00", stage="WON"),
        history_row(id=15, deal=7, at="2025-01-11 13:00", stage="WON"),
        history_row(id=16, deal=1, at="2025-01-10 14:00", stage="WON"),
        history_row(id=17, deal=8, at="2025-01-06 00:10", stage="NEW"),
    ]  # fmt: skip
    activities = [
        # Answered while deal 8 was created: begun long before, ended in the week.
        activity_row(id=1, owner=8, start="2025-01-04 20:00", end="2025-01-06 00:20",
                     direction=1),
        activity_row(id=2, owner=1, start="2025-01-08 10:05"),
        activity_row(id=3, owner=501, owner_type=3, start="2025-01-09 09:00",
                     type_id=4),
        # Months before the week: no query of the week needs it.
        activity_row(id=4, owner=6, start="2024-06-01 10:05"),
        activity_row(id=5, owner=2, start="2025-01-12 20:00", author=11),
    ]  # fmt: skip
    return {
        "settings": {"crm_mode": "simple"},
        "users": USERS,
        "userfields": USERFIELDS,
        "deals": deals,
        "stagehistory": history,
        "activities": activities,
    }


class TestTheWeekOfAnEdgePortal:
    async def test_it_reads_the_deals_the_week_counts_and_no_others(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(edge_portal())
        query = KpiQuery(*WEEK, as_of=POSTED)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(query)

        assert [deal.id for deal in loaded.data.deals] == [1, 2, 3, 5, 7, 8]
        assert [activity.id for activity in loaded.data.activities] == [2, 3, 5, 1]

    async def test_older_history_of_old_deals_is_read_by_owner(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(edge_portal())
        query = KpiQuery(*WEEK, as_of=POSTED)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(query)

        rows = {row.id for row in loaded.data.deal_history}
        # deal 2's confirmation and deal 3's and 7's bookings predate the range.
        assert {4, 5, 6, 7, 2, 3} <= rows
        assert 1 not in rows  # deal 6 is not read
        assert not {12, 13} & rows  # the untracked deal's rows are dropped

    async def test_compute_on_what_was_read_equals_compute_on_everything(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        snapshot = edge_portal()
        portal.load(snapshot)
        query = KpiQuery(*WEEK, as_of=POSTED)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(query)

        assert figures(loaded.data, query, rules("simple")) == figures(
            whole_portal(snapshot), query, rules("simple")
        )
        total = figures(loaded.data, query, rules("simple"))["total"]
        assert (total["leads"], total["appointments"], total["visits"]) == (2, 4, 3)
        # Deal 8 answered at once by the call in progress, deal 1 after 5 minutes.
        assert total["first_response"]["median_min"] == 2.5
        assert total["confirmed_share"] == 0.25  # deal 2, confirmed in October
        assert total["retained_clients"] == 1  # deal 1 follows deal 5's visit

    async def test_the_filters_sent_are_the_windows_widened_by_a_day(
        self, portal: RunningSandbox
    ) -> None:
        """B24-4: datetime filters go out as naive portal-local strings."""
        portal.load(edge_portal())
        sent: list[httpx.Request] = []

        async def record(request: httpx.Request) -> None:
            await request.aread()
            sent.append(request)

        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            query = KpiQuery(*WEEK, as_of=POSTED)
            await KpiLoader(gateway(portal, http), rules()).load(query)

        first_pages = [
            json.loads(request.content)["cmd"].get("p0", "")
            for request in sent
            if request.url.path.endswith("/batch")
        ]
        # Deals created in the week, from the day before (portal-local, naive).
        assert (
            "filter[%40CATEGORY_ID][0]=0"
            "&filter[%3E%3DDATE_CREATE]=2025-01-05%2000%3A00%3A00"
            "&filter[%3CDATE_CREATE]=2025-01-14%2000%3A00%3A00"
        ) in first_pages[1]
        # Stage history from the retention window's start (30 days back), less a day,
        # to as_of and a day.
        assert (
            "filter[%3E%3DCREATED_TIME]=2024-12-06%2000%3A00%3A00"
            "&filter[%3C%3DCREATED_TIME]=2025-01-14%2009%3A00%3A00"
        ) in first_pages[2]
        # Calls in progress: begun before the touches' range, ended after its start.
        assert (
            "filter[%3CSTART_TIME]=2025-01-05%2000%3A00%3A00"
            "&filter[%3E%3DEND_TIME]=2025-01-05%2000%3A00%3A00"
        ) in first_pages[-1]


SALON = HistoryShape(
    start=date(2024, 10, 1), end=date(2025, 2, 1), deals=500, activities=2000
)


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    """Four months of a salon's inquiries, stage moves and touches."""
    return generate(SALON)


class TestAGeneratedPortal:
    """Every query's figures from what the loader read equal the whole portal's."""

    QUERIES = (
        pytest.param(KpiQuery(*WEEK, as_of=POSTED), id="the week, posted Monday"),
        pytest.param(
            KpiQuery(date(2024, 12, 30), date(2025, 1, 6), as_of=POSTED),
            id="a week across a new year",
        ),
        pytest.param(
            KpiQuery(date(2024, 12, 1), date(2025, 1, 1), as_of=POSTED),
            id="a whole month, bonus",
        ),
        pytest.param(
            KpiQuery(
                date(2025, 1, 1),
                date(2025, 2, 1),
                as_of=datetime(2025, 1, 15, 0, 30, tzinfo=MSK),
            ),
            id="a month seen half way",
        ),
        pytest.param(
            KpiQuery(
                date(2024, 11, 1),
                date(2024, 12, 1),
                as_of=datetime(2025, 3, 5, tzinfo=MSK),
            ),
            id="a month seen long after",
        ),
        pytest.param(
            KpiQuery(date(2025, 1, 6), date(2025, 1, 20), as_of=POSTED, manager=11),
            id="one manager, as_of inside",
        ),
    )

    @pytest.mark.parametrize("query", QUERIES)
    async def test_simple_mode_figures_equal_those_of_the_whole_portal(
        self,
        portal: RunningSandbox,
        http: httpx.AsyncClient,
        snapshot: dict[str, Any],
        query: KpiQuery,
    ) -> None:
        portal.load(snapshot)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(query)

        expected = figures(whole_portal(snapshot), query, rules("simple"))
        assert figures(loaded.data, query, rules("simple")) == expected
        assert expected["total"]["leads"] > 0
        assert len(loaded.data.deals) < len(snapshot["deals"])

    @pytest.mark.parametrize("query", QUERIES[:3])
    async def test_classic_mode_figures_equal_those_of_the_whole_portal(
        self, portal: RunningSandbox, http: httpx.AsyncClient, query: KpiQuery
    ) -> None:
        snapshot = generate(
            HistoryShape(
                start=date(2024, 10, 1),
                end=date(2025, 2, 1),
                deals=500,
                activities=2000,
                classic=True,
            )
        )
        portal.load(snapshot)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(query)

        assert loaded.data.mode == "classic"
        assert loaded.data.leads
        expected = figures(whole_portal(snapshot), query, rules("classic"))
        assert figures(loaded.data, query, rules("classic")) == expected
        assert expected["total"]["leads"] > 0

    async def test_one_load_serves_a_week_and_the_months_it_touches(
        self,
        portal: RunningSandbox,
        http: httpx.AsyncClient,
        snapshot: dict[str, Any],
    ) -> None:
        portal.load(snapshot)
        week = KpiQuery(date(2024, 12, 30), date(2025, 1, 6), as_of=POSTED)
        december = KpiQuery(date(2024, 12, 1), date(2025, 1, 1), as_of=POSTED)
        january = KpiQuery(date(2025, 1, 1), date(2025, 2, 1), as_of=POSTED)

        loaded = await KpiLoader(gateway(portal, http), rules()).load(
            week, december, january
        )

        whole = whole_portal(snapshot)
        for query in (week, december, january):
            assert figures(loaded.data, query, rules("simple")) == figures(
                whole, query, rules("simple")
            )


class TestMode:
    async def test_auto_reads_the_portals_mode(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load({**edge_portal(), "settings": {"crm_mode": "classic"}})

        loaded = await KpiLoader(gateway(portal, http), rules("auto")).load(
            KpiQuery(*WEEK, as_of=POSTED)
        )

        assert loaded.data.mode == "classic"
        assert loaded.costs[0].pull == "crm.settings.mode"

    async def test_a_configured_mode_is_not_asked_for(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(edge_portal())

        loaded = await KpiLoader(gateway(portal, http), rules("simple")).load(
            KpiQuery(*WEEK, as_of=POSTED)
        )

        assert loaded.data.mode == "simple"
        assert "crm.settings.mode" not in [cost.pull for cost in loaded.costs]
        stats = portal.http.get("/_sandbox/stats").json()
        assert "crm.settings.mode.get" not in stats["by_method"]


class TestCost:
    async def test_requests_counted_are_the_requests_the_portal_received(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(generate(SALON))

        loaded = await KpiLoader(gateway(portal, http), rules()).load(
            KpiQuery(*WEEK, as_of=POSTED)
        )

        stats = portal.http.get("/_sandbox/stats").json()
        assert loaded.requests == stats["requests"]

    async def test_each_pull_logs_its_rows_and_requests_and_no_values(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(edge_portal())

        with capture_logs() as logs:
            loaded = await KpiLoader(gateway(portal, http), rules("simple")).load(
                KpiQuery(*WEEK, as_of=POSTED)
            )

        pulled = [line for line in logs if line["event"] == "kpi.pulled"]
        assert [line["pull"] for line in pulled] == [cost.pull for cost in loaded.costs]
        deals = next(line for line in pulled if line["pull"] == "deal:created")
        assert deals.pop("s") >= 0  # seconds the pull took
        assert deals == {
            "event": "kpi.pulled",
            "log_level": "info",
            "pull": "deal:created",
            "rows": 2,  # deals 1 and 8
            "requests": 2,  # crm.deal.fields, then one batch of pages
        }
        [summary] = [line for line in logs if line["event"] == "kpi.loaded"]
        assert summary["requests"] == loaded.requests
        assert summary["deals"] == 6

    async def test_without_a_meter_rows_are_counted_and_requests_are_not(
        self, portal: RunningSandbox, http: httpx.AsyncClient
    ) -> None:
        portal.load(edge_portal())
        client = Bitrix24Client(
            http, WebhookCredentials(portal.webhook), portal_zone=MSK
        )

        loaded = await KpiLoader(client, rules("simple")).load(
            KpiQuery(*WEEK, as_of=POSTED)
        )

        assert loaded.requests is None
        assert {cost.requests for cost in loaded.costs} == {None}
        assert sum(cost.rows for cost in loaded.costs) > 0
