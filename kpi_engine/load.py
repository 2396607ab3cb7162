"""Reading what KPI queries need from the portal through complete pulls, and no more.

`period.needed_window` says which facts a query counts; this module turns that into
list filters (reference §8) and pulls only those rows:

| what                          | how                                                 |
|-------------------------------|-----------------------------------------------------|
| users                         | `user.get`, all (names, and who is human)           |
| inquiries                     | deals of the tracked pipelines (simple) or leads    |
|                               | (classic) by `DATE_CREATE`; classic mode adds the   |
|                               | deals converted from them, by `LEAD_ID`             |
| stage history                 | every deal's rows from the earliest booking or      |
|                               | visit instant a query needs to `as_of`              |
| deals booked or visited then  | the owners of those rows, by `ID`; deals whose      |
|                               | visit-time field falls in the visit window          |
| older history                 | rows before that range of the deals created before  |
|                               | it, by `OWNER_ID`: a role's earliest row decides    |
| touches and calls             | completed calls, e-mails and provider messages by   |
|                               | `START_TIME`; incoming calls begun earlier by       |
|                               | `END_TIME` (answered when an inquiry was created)   |

Filters are supersets: every bound is widened by `FILTER_MARGIN`, so a portal whose
time zone differs from the client's still returns every row near a boundary, and the
engine re-checks each timestamp (KPI.md "Time and as_of"). Lead status history is not
read: a lead's own statuses reach only the roles `new` and `lost`, which no metric
counts.

Rows asked for by id or owner go through `Puller.pull_ids`: 50 ids (fewer by owner)
to a command and 50 commands to a batch, a full page continued by a keyset pull.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from app.config import BusinessRules
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.models import (
    Activity,
    Deal,
    Lead,
    RowModel,
    StageHistory,
    User,
    validate_row,
)
from connectors.bitrix24.pull import (
    PAGE_SIZE,
    USERS,
    ListedEntity,
    Puller,
    stage_history,
)
from connectors.bitrix24.ratelimit import RequestMeter
from connectors.bitrix24.reads import CrmMode, crm_mode
from kpi_engine.data import CrmModeName, KpiData, KpiQuery
from kpi_engine.facts import BOOKING_ROLES, CALL, EMAIL, PROVIDER, role_map
from kpi_engine.period import Span, needed_window

log = structlog.stdlib.get_logger(__name__)

# Wider than any offset between the portal's zone and the client's (at most 26 h in
# theory, 0–3 h for the Russian portals leadloop serves): a day costs about one
# thirtieth more rows on a month and loses none near a boundary.
FILTER_MARGIN = timedelta(days=1)
DEAL_TYPE_ID = 2
VISIT_ROLES = ("visited", "no_show")
INCOMING = 1

DEAL_FIELDS = (
    "ID",
    "CATEGORY_ID",
    "OPPORTUNITY",
    "CURRENCY_ID",
    "ASSIGNED_BY_ID",
    "CONTACT_ID",
    "LEAD_ID",
    "DATE_CREATE",
    # Not counted by any metric: the dashboard's channels and deal lists show them.
    "SOURCE_ID",
    "TITLE",
    "STAGE_ID",
)
LEAD_FIELDS = (
    "ID",
    "STATUS_ID",
    "ASSIGNED_BY_ID",
    "CONTACT_ID",
    "DATE_CREATE",
    "SOURCE_ID",
    "TITLE",
)
HISTORY_FIELDS = (
    "ID",
    "TYPE_ID",
    "OWNER_ID",
    "CREATED_TIME",
    "CATEGORY_ID",
    "STAGE_ID",
)
ACTIVITY_FIELDS = (
    "ID",
    "OWNER_ID",
    "OWNER_TYPE_ID",
    "TYPE_ID",
    "DIRECTION",
    "COMPLETED",
    "START_TIME",
    "END_TIME",
    "RESPONSIBLE_ID",
    "AUTHOR_ID",
)
# Ids per command when asking by a key that is not the row's own id: a deal has a
# handful of history rows and a lead one or two deals, so a page of 50 rarely fills.
OWNERS_PER_COMMAND = 12
LEADS_PER_COMMAND = 40
SHORT_PULL_PAGES = 2


@dataclass(frozen=True)
class PullCost:
    """What one pull cost: rows, HTTP requests (None when not metered), seconds."""

    pull: str
    rows: int
    requests: int | None
    seconds: float = 0.0


@dataclass
class Loaded:
    """The data of a load and what each of its pulls cost."""

    data: KpiData
    costs: list[PullCost] = field(default_factory=list)

    @property
    def requests(self) -> int | None:
        counted = [cost.requests for cost in self.costs]
        return None if None in counted else sum(c for c in counted if c is not None)


@dataclass(frozen=True)
class _Need:
    """The union of the windows of every query of one load."""

    inquiries: Span
    bookings: Span
    visits: Span
    history_until: datetime
    activities: Span
    calls_in_progress: Span

    @property
    def history_from(self) -> datetime:
        return min(self.bookings.start, self.visits.start)


def _union(spans: Iterable[Span]) -> Span:
    listed = list(spans)
    return Span(min(s.start for s in listed), max(s.end for s in listed))


def _need(queries: Sequence[KpiQuery], rules: BusinessRules) -> _Need:
    windows = [needed_window(query, rules) for query in queries]
    return _Need(
        inquiries=_union(w.inquiries for w in windows),
        bookings=_union(w.bookings for w in windows),
        visits=_union(w.visits for w in windows),
        history_until=max(w.history_until for w in windows),
        activities=_union(w.activities for w in windows),
        calls_in_progress=_union(w.calls_in_progress for w in windows),
    )


def _since(moment: datetime) -> datetime:
    return moment - FILTER_MARGIN


def _until(moment: datetime) -> datetime:
    return moment + FILTER_MARGIN


class KpiLoader:
    """Pulls the users, inquiries, stage history and activities that queries need."""

    def __init__(self, client: Bitrix24Client, rules: BusinessRules) -> None:
        self.client = client
        self.rules = rules
        self.puller = Puller(client)
        self._costs: list[PullCost] = []

    async def load(self, *queries: KpiQuery) -> Loaded:
        """Everything `metrics.compute` needs to answer each of `queries`."""
        if not queries:
            raise ValueError("load needs at least one query")
        self._costs = []
        need = _need(queries, self.rules)
        mode = await self._mode()
        users = {user.id: user for user in await self._users()}
        leads: list[Lead] = []
        deals: dict[int, Deal] = {}
        if mode == "classic":
            leads = await self._leads(need)
            await self._add(deals, self._deals_by_lead([lead.id for lead in leads]))
        else:
            await self._add(deals, self._deals_created(need))
        history = await self._history(need)
        await self._add(deals, self._deals_by_visit_field(need, mode))
        wanted = self._booked_or_visited(history, need) - deals.keys()
        await self._add(deals, self._deals_by_id(sorted(wanted)))
        history += await self._older_history(deals.values(), need)
        activities = await self._activities(need)

        data = KpiData(
            mode=mode,
            users=users,
            deals=sorted(deals.values(), key=lambda deal: deal.id),
            leads=leads,
            deal_history=[row for row in history if row.owner_id in deals],
            activities=activities,
        )
        loaded = Loaded(data, list(self._costs))
        log.info(
            "kpi.loaded",
            mode=mode,
            queries=len(queries),
            requests=loaded.requests,
            deals=len(data.deals),
            history=len(data.deal_history),
            activities=len(data.activities),
        )
        return loaded

    # -- what to read -----------------------------------------------------------------

    async def _mode(self) -> CrmModeName:
        configured = self.rules.crm.mode
        if configured != "auto":
            return configured
        before = self._started()
        mode = await crm_mode(self.client)
        self._note("crm.settings.mode", 1, before)
        return "classic" if mode == CrmMode.CLASSIC else "simple"

    async def _users(self) -> list[User]:
        return await self._pull("user", USERS, User)

    async def _leads(self, need: _Need) -> list[Lead]:
        window = need.inquiries
        return await self._pull(
            "lead:created",
            "lead",
            Lead,
            {
                ">=DATE_CREATE": _since(window.start),
                "<DATE_CREATE": _until(window.end),
            },
            LEAD_FIELDS,
        )

    def _deal_filter(self) -> dict[str, object]:
        return {"@CATEGORY_ID": list(self.rules.crm.pipelines)}

    def _deal_select(self) -> list[str]:
        visit_field = self.rules.crm.visit_field
        return [*DEAL_FIELDS, visit_field] if visit_field else list(DEAL_FIELDS)

    async def _deals_created(self, need: _Need) -> list[Deal]:
        window = need.inquiries
        return await self._pull(
            "deal:created",
            "deal",
            Deal,
            {
                **self._deal_filter(),
                ">=DATE_CREATE": _since(window.start),
                "<DATE_CREATE": _until(window.end),
            },
            self._deal_select(),
        )

    async def _deals_by_visit_field(self, need: _Need, mode: CrmModeName) -> list[Deal]:
        """Deals whose visit-time field falls in the visit window.

        In simple mode the deals created in the inquiry window are read already: only
        those created before it (most) and after it (a visit entered afterwards) are
        asked for, in two pulls, since a legacy filter cannot say "or".
        """
        visit_field = self.rules.crm.visit_field
        if visit_field is None:
            return []
        visits = {
            **self._deal_filter(),
            f">={visit_field}": _since(need.visits.start),
            f"<{visit_field}": _until(need.visits.end),
        }
        select = self._deal_select()
        if mode == "classic":
            return await self._pull("deal:visit_field", "deal", Deal, visits, select)
        created = need.inquiries
        before = {**visits, "<DATE_CREATE": _since(created.start)}
        after = {**visits, ">=DATE_CREATE": _until(created.end)}
        return [
            *await self._pull("deal:visit_field", "deal", Deal, before, select),
            *await self._pull(
                "deal:visit_field_later", "deal", Deal, after, select, short=True
            ),
        ]

    async def _deals_by_id(self, deal_ids: Sequence[int]) -> list[Deal]:
        return await self._pull_by(
            "deal:by_id", "deal", Deal, "ID", deal_ids, PAGE_SIZE, self._deal_filter()
        )

    async def _deals_by_lead(self, lead_ids: Sequence[int]) -> list[Deal]:
        return await self._pull_by(
            "deal:by_lead",
            "deal",
            Deal,
            "LEAD_ID",
            lead_ids,
            LEADS_PER_COMMAND,
            self._deal_filter(),
        )

    async def _history(self, need: _Need) -> list[StageHistory]:
        return await self._pull(
            "stagehistory:range",
            stage_history(DEAL_TYPE_ID),
            StageHistory,
            {
                ">=CREATED_TIME": _since(need.history_from),
                "<=CREATED_TIME": _until(need.history_until),
            },
            HISTORY_FIELDS,
        )

    def _booked_or_visited(
        self, history: Iterable[StageHistory], need: _Need
    ) -> set[int]:
        """Owners of rows that may make a booking time fall in P or a visit in W…P."""
        roles = role_map(self.rules.crm.stages)
        bookings = Span(_since(need.bookings.start), _until(need.bookings.end))
        visits = Span(_since(need.visits.start), _until(need.visits.end))
        spans = {
            role: visits if role in VISIT_ROLES else bookings for role in roles.values()
        }
        owners = set()
        for row in history:
            role = roles.get(row.stage or "")
            if role in BOOKING_ROLES and row.created_at in spans[role]:
                owners.add(row.owner_id)
        return owners

    async def _older_history(
        self, deals: Iterable[Deal], need: _Need
    ) -> list[StageHistory]:
        """Rows before the range, of the deals that may have some: created before it."""
        start = _since(need.history_from)
        older = sorted(
            deal.id
            for deal in deals
            if deal.created_at is None or deal.created_at < _until(start)
        )
        return await self._pull_by(
            "stagehistory:older",
            stage_history(DEAL_TYPE_ID),
            StageHistory,
            "OWNER_ID",
            older,
            OWNERS_PER_COMMAND,
            {"<CREATED_TIME": start},
            HISTORY_FIELDS,
        )

    async def _activities(self, need: _Need) -> list[Activity]:
        window = need.activities
        touches = await self._pull(
            "activity:touches_and_calls",
            "activity",
            Activity,
            {
                "COMPLETED": True,
                "@TYPE_ID": [CALL, EMAIL, PROVIDER],
                ">=START_TIME": _since(window.start),
                "<START_TIME": _until(window.end),
            },
            ACTIVITY_FIELDS,
        )
        in_progress = await self._pull(
            "activity:calls_in_progress",
            "activity",
            Activity,
            {
                "COMPLETED": True,
                "TYPE_ID": CALL,
                "DIRECTION": INCOMING,
                "<START_TIME": _since(window.start),
                ">=END_TIME": _since(need.calls_in_progress.start),
            },
            ACTIVITY_FIELDS,
            short=True,
        )
        return touches + in_progress

    # -- how to read ------------------------------------------------------------------

    async def _add(self, deals: dict[int, Deal], found: Awaitable[list[Deal]]) -> None:
        for deal in await found:
            deals.setdefault(deal.id, deal)

    async def _pull(
        self,
        label: str,
        entity: str | ListedEntity,
        model: type[RowModel],
        filter: Mapping[str, object] | None = None,
        select: Sequence[str] | None = None,
        *,
        short: bool = False,
    ) -> list[RowModel]:
        before = self._started()
        # A pull that is nearly always empty chains few pages: 50 would cost the
        # portal 50 list queries for one short page.
        pages = SHORT_PULL_PAGES if short else None
        models = self.puller.pull_models(
            entity, model, filter, select, pages_per_batch=pages
        )
        rows = [row async for row in models]
        self._note(label, len(rows), before)
        return rows

    async def _pull_by(
        self,
        label: str,
        entity: str | ListedEntity,
        model: type[RowModel],
        key: str,
        ids: Sequence[int],
        per_command: int,
        filter: Mapping[str, object],
        select: Sequence[str] | None = None,
    ) -> list[RowModel]:
        before = self._started()
        found = self.puller.pull_ids(
            entity, key, ids, filter, select, per_command=per_command
        )
        rows = [validate_row(model, row) async for row in found]
        self._note(label, len(rows), before)
        return rows

    # -- cost -------------------------------------------------------------------------

    def _requests(self) -> int | None:
        limiter = self.client.limiter
        return limiter.requests if isinstance(limiter, RequestMeter) else None

    def _started(self) -> tuple[int | None, float]:
        return self._requests(), time.perf_counter()

    def _note(self, label: str, rows: int, before: tuple[int | None, float]) -> None:
        requests_before, began = before
        after = self._requests()
        requests = (
            None
            if requests_before is None or after is None
            else after - requests_before
        )
        seconds = round(time.perf_counter() - began, 3)
        self._costs.append(PullCost(label, rows, requests, seconds))
        log.info("kpi.pulled", pull=label, rows=rows, requests=requests, s=seconds)
