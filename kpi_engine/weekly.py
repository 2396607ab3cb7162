"""The one-page weekly report for the Bitrix24 feed, and posting it exactly once.

The report covers the calendar week Monday to Monday (never "the last 7 days",
known fault KPI-1) and each month the week touches from its first day to `as_of`:
revenue against plan and the bonus so far. Figures are those of the JSON report,
written the Russian way ("1 234,50", "33,33 %") in BB codes, the markup the feed
renders.

Posting is idempotent across workers and retries. A Redis lease lets one process
post at a time; an attempt is recorded before `log.blogpost.add` is sent, and the
post's title ends in the week's marker (`(2025-W02)`). When an earlier attempt may
have reached the portal (its answer was lost: `WriteOutcomeUnknown`, or the process
died), the feed is searched for the marker before posting again, so a lost answer
never doubles the post and a failed one is simply retried.

The post carries the week's chart (`chart.py`) as a file in `FILES`, the way
`log.blogpost.add` takes files: `[name, base64 content]` pairs. The chart is drawn
the same byte for byte from the same figures, so a retry sends the same image with
the same title, and the look-up that prevents a second post also prevents a
second image.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import structlog
from redis.asyncio import Redis

from app.config import BusinessRules, ReportTexts
from app.russian import MONTH_NOMINATIVE
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import WriteOutcomeUnknown
from kpi_engine.chart import chart_png
from kpi_engine.data import ClosedMonth, KpiData, KpiQuery
from kpi_engine.facts import DealFacts, TouchIndex
from kpi_engine.metrics import compute, find_inquiries, tracked_deals
from kpi_engine.period import Period, business_minutes, next_month
from kpi_engine.result import DataWarning, KpiResult, ManagerResult, Metrics

log = structlog.stdlib.get_logger(__name__)

DASH = "—"  # KPI.md: a null share or amount is shown as a dash
NBSP = "\u00a0"
PROBLEMS_SHOWN = 3
SLOWEST_SHOWN = 3
IDS_SHOWN = 10
# How much one affected inquiry weighs when problems are ranked: a lead nobody
# answered loses the client; a late answer or a no-show loses money; a cancellation
# or an unconfirmed visit is a risk.
SEVERITY = {
    "unanswered": 3,
    "slowest": 2,
    "no_shows": 2,
    "cancellations": 1,
    "unconfirmed": 1,
}


def week_label(start: date) -> str:
    """`2025-W02` for the week starting Monday 2025-01-06."""
    year, week, _ = start.isocalendar()
    return f"{year}-W{week:02d}"


def report_queries(start: date, as_of: datetime) -> tuple[KpiQuery, ...]:
    """The week starting `start`, then each month it touches, all seen at `as_of`."""
    end = start + timedelta(days=7)
    months = []
    month = start.replace(day=1)
    while month < end:
        months.append(KpiQuery(month, next_month(month), as_of=as_of))
        month = next_month(month)
    return (KpiQuery(start, end, as_of=as_of), *months)


# --- the report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One of the week's problems: what it is, how heavy, and the line shown."""

    kind: str
    weight: int
    text: str


@dataclass(frozen=True)
class WeeklyReport:
    """The week's figures, each touched month's figures, problems and warnings."""

    week: str
    start: date
    as_of: datetime
    result: KpiResult
    months: tuple[tuple[str, KpiResult], ...]
    problems: tuple[Problem, ...]
    warnings: tuple[DataWarning, ...]


@dataclass(frozen=True)
class Attachment:
    """A file attached to a feed post."""

    name: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class FeedPost:
    """A feed post as `log.blogpost.add` takes it."""

    title: str
    message: str
    marker: str
    files: tuple[Attachment, ...] = ()


def build_report(
    data: KpiData,
    start: date,
    as_of: datetime,
    rules: BusinessRules,
    closed: Mapping[str, ClosedMonth] | None = None,
) -> WeeklyReport:
    """The report of the week starting Monday `start`, from one load of `data`."""
    if start.weekday() != 0:
        raise ValueError(f"a report week starts on a Monday, not on {start}")
    week, *months = report_queries(start, as_of)
    result = compute(data, week, rules)
    month_results = tuple(
        (
            query.start.strftime("%Y-%m"),
            compute(
                data,
                query,
                rules,
                closed=(closed or {}).get(query.start.strftime("%Y-%m")),
            ),
        )
        for query in months
    )
    problems = _problems(data, week, result, rules)
    warnings = _unique(
        [*result.warnings, *(w for _, r in month_results for w in r.warnings)]
    )
    return WeeklyReport(
        week=week_label(start),
        start=start,
        as_of=as_of,
        result=result,
        months=month_results,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def _unique(warnings: Iterable[DataWarning]) -> list[DataWarning]:
    return list(dict.fromkeys(warnings))


@dataclass(frozen=True)
class _Wait:
    inquiry: int
    manager: int | None
    minutes: Fraction | None


def _waits(
    data: KpiData, deals: Mapping[int, DealFacts], period: Period, rules: BusinessRules
) -> list[_Wait]:
    """Each inquiry of the week and the business minutes it waited for a human."""
    bots = {int(user) for user in rules.kpi.non_human_users}
    touches = TouchIndex(data.activities, {u for u in data.users if u not in bots})
    waits = []
    for inquiry in find_inquiries(data, deals, period):
        touch = touches.first_touch(inquiry.bindings, inquiry.created_at, period.as_of)
        minutes = None
        if touch is not None:
            minutes = business_minutes(
                inquiry.created_at, touch, rules.calendar, period.zone
            )
        waits.append(_Wait(inquiry.id, inquiry.manager, minutes))
    return waits


def _problems(
    data: KpiData, query: KpiQuery, result: KpiResult, rules: BusinessRules
) -> list[Problem]:
    period = Period.of(query, rules)
    deals = tracked_deals(data, period, rules)
    names = {row.id: row.name for row in result.managers}
    found = _wait_problems(
        _waits(data, deals, period, rules), data.mode, result.total, names, rules
    )
    appointments = [
        facts
        for facts in deals.values()
        if facts.booked_at is not None and facts.visit_at in period.span
    ]
    found += _appointment_problems(appointments, rules)
    found.sort(key=lambda problem: -problem.weight)  # stable: ties keep their order
    return found[:PROBLEMS_SHOWN]


def _wait_problems(
    waits: Sequence[_Wait],
    mode: str,
    total: Metrics,
    names: Mapping[int, str | None],
    rules: BusinessRules,
) -> list[Problem]:
    texts = rules.report.texts
    ref = texts.lead_ref if mode == "classic" else texts.deal_ref
    found = []
    unanswered = [w.inquiry for w in waits if w.minutes is None]
    if unanswered:
        text = texts.unanswered.format(
            count=len(unanswered), leads=total.leads, ids=_ids(ref, unanswered)
        )
        found.append(
            Problem("unanswered", len(unanswered) * SEVERITY["unanswered"], text)
        )
    sla = Fraction(rules.kpi.sla_minutes)
    late = sorted(
        (w for w in waits if w.minutes is not None and w.minutes > sla),
        key=lambda w: (-(w.minutes or 0), w.inquiry),
    )
    if late:
        items = [_slow_item(texts, ref, wait, names) for wait in late[:SLOWEST_SHOWN]]
        text = texts.slowest.format(
            count=len(late),
            leads=total.leads,
            sla=rules.kpi.sla_minutes,
            items=", ".join(items),
        )
        found.append(Problem("slowest", len(late) * SEVERITY["slowest"], text))
    return found


def _appointment_problems(
    appointments: Sequence[DealFacts], rules: BusinessRules
) -> list[Problem]:
    texts = rules.report.texts
    count = len(appointments)
    no_shows = sorted(f.deal.id for f in appointments if f.outcome == "no_show")
    cancelled = sum("cancelled" in f.reached for f in appointments)
    unconfirmed = sum(not f.confirmed_before_visit for f in appointments)
    found = []
    if no_shows:
        text = texts.no_show_problem.format(
            count=len(no_shows),
            appointments=count,
            ids=_ids(texts.deal_ref, no_shows),
        )
        found.append(Problem("no_shows", len(no_shows) * SEVERITY["no_shows"], text))
    if cancelled:
        text = texts.cancellation_problem.format(count=cancelled, appointments=count)
        found.append(
            Problem("cancellations", cancelled * SEVERITY["cancellations"], text)
        )
    if unconfirmed:
        text = texts.unconfirmed.format(count=unconfirmed, appointments=count)
        found.append(
            Problem("unconfirmed", unconfirmed * SEVERITY["unconfirmed"], text)
        )
    return found


def _slow_item(
    texts: ReportTexts, ref: str, wait: _Wait, names: Mapping[int, str | None]
) -> str:
    minutes = int(wait.minutes or 0)
    hours, rest = divmod(minutes, 60)
    shown = texts.wait.format(hours=hours, minutes=f"{rest:02d}")
    who = names.get(wait.manager) if wait.manager is not None else None
    suffix = f" ({who})" if who else ""
    return f"{ref.format(id=wait.inquiry)} — {shown}{suffix}"


def _ids(ref: str, ids: Sequence[int]) -> str:
    shown = ", ".join(ref.format(id=i) for i in ids[:IDS_SHOWN])
    more = len(ids) - IDS_SHOWN
    return f"{shown} … +{more}" if more > 0 else shown


# --- the post ------------------------------------------------------------------------


def render(report: WeeklyReport, rules: BusinessRules) -> FeedPost:
    """The report as a feed post: a title with the week's marker, BB-code text and
    the week's chart (none when no manager has figures to draw)."""
    texts = rules.report.texts
    zone = rules.zone
    last_day = report.start + timedelta(days=6)
    marker = f"({report.week})"
    title = texts.title.format(start=_day(report.start), end=_day(last_day))
    lines = [
        texts.period.format(
            start=_day(report.start),
            end=_day(last_day),
            timezone=rules.timezone,
            as_of=report.as_of.astimezone(zone).strftime("%d.%m.%Y %H:%M"),
        ),
        "",
        f"[B]{texts.week_heading}[/B]",
        _week_table(report.result, texts),
    ]
    for month, result in report.months:
        lines += ["", _month_block(month, result, texts)]
    lines += ["", f"[B]{texts.problems_heading}[/B]"]
    lines.append(_list([p.text for p in report.problems]) or texts.no_problems)
    lines += ["", f"[B]{texts.warnings_heading}[/B]"]
    names = {row.id: row.name for _, r in report.months for row in r.managers}
    names |= {row.id: row.name for row in report.result.managers}
    lines.append(_list(_warning_lines(report.warnings, texts, names)))
    if not report.warnings:
        lines[-1] = texts.no_warnings
    return FeedPost(
        title=f"{title} {marker}",
        message="\n".join(lines),
        marker=marker,
        files=_chart_files(report, texts),
    )


def _chart_files(report: WeeklyReport, texts: ReportTexts) -> tuple[Attachment, ...]:
    chart = chart_png(report, texts)
    if chart is None:
        return ()
    return (Attachment(texts.chart_file.format(week=report.week), chart),)


def _week_table(result: KpiResult, texts: ReportTexts) -> str:
    header = [
        texts.manager,
        texts.leads,
        texts.calls,
        texts.bookings_made,
        texts.cancellations,
        texts.visits,
        texts.no_shows,
        texts.average_check,
        texts.conversion,
        texts.confirmed_share,
        texts.no_show_rate,
        texts.first_response,
    ]
    rows = [[_name(row), *_week_cells(row.metrics)] for row in result.managers]
    rows.append([f"[B]{texts.total}[/B]", *_week_cells(result.total)])
    return _table(header, rows)


def _week_cells(metrics: Metrics) -> list[str]:
    first = metrics.first_response
    return [
        str(metrics.leads),
        str(metrics.calls),
        str(metrics.bookings_made),
        str(metrics.cancellations),
        str(metrics.visits),
        str(metrics.no_shows),
        money_text(metrics.average_check),
        share_text(metrics.conversion),
        share_text(metrics.confirmed_share),
        share_text(metrics.no_show_rate),
        f"{number_text(first.median_min)} / {number_text(first.p90_min)}",
    ]


def _month_block(month: str, result: KpiResult, texts: ReportTexts) -> str:
    heading = texts.month_heading.format(month=_month_name(month))
    retained = texts.retained_clients
    if not result.period.final:
        retained = f"{retained} ({texts.not_final})"
    header = [
        texts.manager,
        texts.revenue,
        texts.plan,
        texts.plan_done,
        retained,
        texts.bonus,
    ]
    rows = []
    for row in result.managers:
        bonus = row.bonus
        plan = bonus.plan if bonus is not None else None
        rows.append(
            [
                _name(row),
                money_text(row.metrics.revenue),
                money_text(plan),
                _plan_done(row.metrics.revenue, plan),
                str(row.metrics.retained_clients),
                money_text(bonus.payout if bonus is not None else None),
            ]
        )
    total = result.total
    rows.append(
        [
            f"[B]{texts.total}[/B]",
            money_text(total.revenue),
            DASH,
            DASH,
            str(total.retained_clients),
            DASH,
        ]
    )
    return f"[B]{heading}[/B]\n" + _table(header, rows)


def _plan_done(revenue: Decimal | None, plan: Decimal | None) -> str:
    if revenue is None or not plan:
        return DASH
    return share_text((revenue / plan).quantize(Decimal("0.0001")))


def _warning_lines(
    warnings: Iterable[DataWarning],
    texts: ReportTexts,
    names: Mapping[int, str | None],
) -> list[str]:
    """One line per kind of warning, with the deals (or managers) of all of its
    occurrences in the week and the months."""
    merged: dict[str, tuple[set[int], set[int]]] = {}
    for warning in warnings:
        template = getattr(texts.warnings, warning.code, None)
        if isinstance(template, str):
            text = template.format(detail=warning.message)
        else:  # a code this version has no words for: the engine's own text
            text = warning.message
        deals, users = merged.setdefault(text, (set(), set()))
        deals.update(warning.deal_ids)
        users.update(warning.user_ids)
    lines = []
    for text, (deals, users) in merged.items():
        if deals:
            text += ": " + _ids(texts.deal_ref, sorted(deals))
        elif users:
            text += ": " + ", ".join(names.get(u) or f"#{u}" for u in sorted(users))
        lines.append(text)
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str], bold: bool = False) -> str:
        shown = (f"[B]{cell}[/B]" if bold else cell for cell in cells)
        return "[TR]" + "".join(f"[TD]{cell}[/TD]" for cell in shown) + "[/TR]"

    body = [line(header, bold=True), *(line(row) for row in rows)]
    return "[TABLE]" + "".join(body) + "[/TABLE]"


def _list(items: Sequence[str]) -> str:
    if not items:
        return ""
    return "[LIST=1]" + "".join(f"[*]{item}" for item in items) + "[/LIST]"


def _name(row: ManagerResult) -> str:
    return row.name or f"#{row.id}"


def _day(day: date) -> str:
    return day.strftime("%d.%m.%Y")


def _month_name(month: str) -> str:
    year, number = month.split("-")
    return f"{MONTH_NOMINATIVE[int(number) - 1].capitalize()} {year}"


def money_text(amount: Decimal | None) -> str:
    """`1234.50` → `1 234,50` (no-break space), None → a dash."""
    if amount is None:
        return DASH
    whole, _, cents = f"{amount:,.2f}".partition(".")
    return f"{whole.replace(',', NBSP)},{cents}"


def share_text(share: Decimal | None) -> str:
    """`0.3333` → `33,33 %`; the share is already rounded to 4 places."""
    if share is None:
        return DASH
    percent = (share * 100).quantize(Decimal("0.01"))
    return f"{percent:f}".replace(".", ",") + f"{NBSP}%"


def number_text(value: Decimal | None) -> str:
    """`12.5` → `12,5`; None → a dash."""
    return DASH if value is None else f"{value:f}".replace(".", ",")


# --- posting once --------------------------------------------------------------------


class PostInProgress(Exception):
    """Another process holds the week's lease and may be posting right now."""


@dataclass(frozen=True)
class Posted:
    """The week's post id and whether this call created it."""

    post_id: int
    created: bool


# Release the lease only if it is still ours: it may have expired and been taken.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
FEED_PAGE = 50
# The portal's clock and ours may differ: search the feed from a little before the
# first attempt.
CLOCK_SKEW_S = 300


class WeeklyPoster:
    """Posts a week's report to the feed once, whatever fails and whoever retries."""

    def __init__(
        self,
        client: Bitrix24Client,
        redis: Redis,
        *,
        prefix: str = "leadloop:kpi:weekly",
        lease_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.redis = redis
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        self.clock = clock

    def _key(self, week: str, part: str) -> str:
        return f"{self.prefix}:{week}:{part}"

    async def posted(self, week: str) -> int | None:
        """The id of the week's post when it is known to exist."""
        raw = await self.redis.get(self._key(week, "post"))
        return None if raw is None else int(json.loads(raw)["post_id"])

    async def post(
        self,
        week: str,
        build: Callable[[], Awaitable[FeedPost]],
        recipients: Sequence[str],
    ) -> Posted:
        """Post the week's report unless it exists; answer the post either way.

        `build` makes the post; it runs only under the lease, so two workers never
        both read the portal for it.
        """
        known = await self.posted(week)
        if known is not None:
            log.info("kpi.weekly_already_posted", week=week, post_id=known)
            return Posted(known, created=False)
        token = secrets.token_hex(16)
        lease = self._key(week, "lease")
        if not await self.redis.set(lease, token, nx=True, px=self.lease_ms):
            log.info("kpi.weekly_post_in_progress", week=week)
            raise PostInProgress(f"the report of {week} is being posted")
        try:
            return await self._post_once(week, build, recipients)
        finally:
            await self.redis.register_script(_RELEASE)(keys=[lease], args=[token])

    async def _post_once(
        self,
        week: str,
        build: Callable[[], Awaitable[FeedPost]],
        recipients: Sequence[str],
    ) -> Posted:
        known = await self.posted(week)
        if known is not None:
            return Posted(known, created=False)
        post = await build()
        attempt = self._key(week, "attempt")
        since = await self.redis.get(attempt)
        if since is not None:
            found = await self._find(post.marker, float(since) - CLOCK_SKEW_S)
            if found is not None:
                log.info("kpi.weekly_post_found", week=week, post_id=found)
                await self._remember(week, found)
                return Posted(found, created=False)
        else:
            await self.redis.set(attempt, repr(self.clock()), nx=True)
        try:
            answer = await self.client.call(
                "log.blogpost.add", _add_params(post, recipients)
            )
        except WriteOutcomeUnknown:
            log.warning("kpi.weekly_post_unknown", week=week)
            raise
        post_id = int(answer)
        await self._remember(week, post_id)
        log.info("kpi.weekly_posted", week=week, post_id=post_id, files=len(post.files))
        return Posted(post_id, created=True)

    async def _remember(self, week: str, post_id: int) -> None:
        record = {"post_id": post_id, "at": self.clock()}
        await self.redis.set(self._key(week, "post"), json.dumps(record))

    async def _find(self, marker: str, since: float) -> int | None:
        """The newest feed post whose title carries `marker`, looking back to
        `since` (Unix time)."""
        start = 0
        while True:
            envelope = await self.client.call_envelope(
                "log.blogpost.get", {"start": start}
            )
            posts = envelope.result if isinstance(envelope.result, list) else []
            for feed_post in posts:
                if marker in str(feed_post.get("TITLE", "")):
                    return int(feed_post["ID"])
            if not posts or envelope.next is None or _older(posts[-1], since):
                return None
            start = envelope.next


def _add_params(post: FeedPost, recipients: Sequence[str]) -> dict[str, object]:
    params: dict[str, object] = {
        "POST_TITLE": post.title,
        "POST_MESSAGE": post.message,
        "DEST": list(recipients),
    }
    if post.files:
        # Each file a [name, base64 content] pair (docs
        # `api-reference/files/how-to-upload-files.md`); the portal saves it to the
        # author's Drive and lists it in the post's UF_BLOG_POST_FILE.
        params["FILES"] = [
            [file.name, base64.b64encode(file.content).decode("ascii")]
            for file in post.files
        ]
    return params


def _older(feed_post: Mapping[str, Any], since: float) -> bool:
    published = feed_post.get("DATE_PUBLISH")
    if not isinstance(published, str) or not published:
        return False
    try:
        moment = datetime.fromisoformat(published)
    except ValueError:
        return False
    return moment.tzinfo is not None and moment.timestamp() < since
