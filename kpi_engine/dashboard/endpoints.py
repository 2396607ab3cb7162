"""`GET /dashboard` and the deal lists behind its numbers, server-rendered.

Pages carry no script: the period picker is a GET form, the charts inline SVG, the
stylesheet is served from here, and the Content-Security-Policy says so. Locally
(`LEADLOOP_ENV=development`) the pages are open; in production they need the admin
token (see `auth`), and without one configured they answer 503 like `/api/kpi`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from starlette.exceptions import HTTPException

from app.clients import Clients
from app.config import BusinessRules, DashboardTexts, load_rules
from app.portal import NotConfigured
from app.settings import Settings
from connectors.bitrix24.errors import Bitrix24Error
from kpi_engine.dashboard import charts, views
from kpi_engine.dashboard.auth import DashboardAuth, SignInRequired
from kpi_engine.dashboard.service import Dashboard, DashboardService, PeriodTooLong
from kpi_engine.data import InvalidPeriod, KpiQuery
from kpi_engine.period import Period, month_period, next_month
from kpi_engine.result import KpiResult
from kpi_engine.service import KpiService, utc_now

log = structlog.stdlib.get_logger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PageProblem(Exception):
    """A page that cannot be shown as asked: its status and what to tell the reader."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Chart:
    name: str
    caption: str
    svg: Markup


class Pages:
    """The Jinja templates, autoescaped, rendered to responses with our headers."""

    def __init__(self, texts: DashboardTexts) -> None:
        self.texts = texts
        self.env = Environment(
            loader=PackageLoader("kpi_engine.dashboard", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(texts=self.texts, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def dashboard_router(
    settings: Settings, rules: BusinessRules | None = None
) -> APIRouter:
    """The dashboard pages; rules default to LEADLOOP_CONFIG's."""
    business = rules if rules is not None else load_rules(settings.config)
    auth = DashboardAuth(settings)
    texts = business.dashboard.texts
    pages = Pages(texts)
    stylesheet = (files("kpi_engine.dashboard") / "static" / "dashboard.css").read_text(
        encoding="utf-8"
    )
    router = APIRouter(include_in_schema=False)

    def service(request: Request) -> DashboardService:
        clients: Clients = request.app.state.clients
        try:
            return DashboardService(KpiService.on_portal(settings, business, clients))
        except NotConfigured:
            raise PageProblem(503, texts.portal_missing) from None

    def problem(exc: PageProblem) -> HTMLResponse:
        return pages.render(
            "error.html",
            exc.status,
            heading=texts.problem,
            detail=exc.detail,
            signed_in=auth.required,
        )

    def sign_in_first(request: Request) -> Response:
        """A browser goes to the login form and comes back; a script gets 401."""
        if "text/html" not in request.headers.get("accept", ""):
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        return RedirectResponse("/dashboard/login?" + urlencode({"next": target}), 303)

    @router.get("/dashboard/static/dashboard.css")
    async def get_stylesheet() -> Response:
        return Response(stylesheet, media_type="text/css; charset=utf-8")

    async def answer(
        request: Request, build: Callable[[], Awaitable[Response]]
    ) -> Response:
        """`build()`'s page for a reader allowed to see it, or why not."""
        try:
            auth.check(request)
        except SignInRequired:
            return sign_in_first(request)
        try:
            return await build()
        except InvalidPeriod as exc:
            return problem(_invalid(exc, texts))
        except PageProblem as exc:
            return problem(exc)
        except Bitrix24Error as exc:
            log.warning("dashboard.portal_failed", error=type(exc).__name__)
            return problem(_portal_failed(exc, texts))

    @router.get("/dashboard", response_class=HTMLResponse)
    async def get_dashboard(
        request: Request,
        month: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
        start: Annotated[date | None, Query(alias="from")] = None,
        end: Annotated[date | None, Query(alias="to")] = None,
        as_of: Annotated[datetime | None, Query()] = None,
    ) -> Response:
        """KPIs, plan, bonus and charts of a period (default: this month so far)."""

        async def build() -> Response:
            query = _query(month, start, end, as_of, business)
            page = await service(request).dashboard(query)
            log.info("dashboard.shown", start=str(query.start), end=str(query.end))
            context = _dashboard_context(page, business, auth.required)
            return pages.render("dashboard.html", **context)

        return await answer(request, build)

    @router.get("/dashboard/deals", response_class=HTMLResponse)
    async def get_deals(
        request: Request,
        metric: str,
        start: Annotated[date, Query(alias="from")],
        end: Annotated[date, Query(alias="to")],
        as_of: Annotated[datetime | None, Query()] = None,
        manager: Annotated[int | None, Query(ge=1)] = None,
    ) -> Response:
        """The deals, leads or calls behind one number of the dashboard."""

        async def build() -> Response:
            if metric not in views.DRILL_METRICS:
                raise PageProblem(422, texts.unknown_metric)
            query = _query(None, start, end, as_of, business)
            result, drill = await service(request).rows(query)
            listing = views.listing(
                drill,
                result,
                metric,
                manager,
                rules=business,
                texts=texts,
                portal=views.portal_base(settings),
                users={row.id: row.name or f"#{row.id}" for row in result.managers},
            )
            log.info("dashboard.deals_shown", metric=metric, rows=len(listing.rows))
            period = {"from": str(query.start), "to": str(query.end)}
            back = urlencode({**period, "as_of": query.as_of.isoformat()})
            return pages.render(
                "deals.html",
                listing=listing,
                back=f"/dashboard?{back}",
                period_line=_period_line(result, business),
                signed_in=auth.required,
            )

        return await answer(request, build)

    @router.get("/dashboard/login", response_class=HTMLResponse)
    async def get_login(next: str = "/dashboard") -> Response:
        if not auth.required:
            return RedirectResponse("/dashboard", 303)
        return pages.render("login.html", next=_local(next), failed=False)

    @router.post("/dashboard/login", response_class=HTMLResponse)
    async def post_login(request: Request) -> Response:
        form = await request.form()
        token, target = form.get("token"), form.get("next")
        target = _local(target if isinstance(target, str) else "/dashboard")
        if not auth.required:
            return RedirectResponse(target, 303)
        if not isinstance(token, str) or not auth.token_matches(token):
            log.warning("dashboard.sign_in_failed")
            return pages.render("login.html", 401, next=target, failed=True)
        response = RedirectResponse(target, 303)
        auth.sign_in(response)
        log.info("dashboard.signed_in")
        return response

    @router.post("/dashboard/logout")
    async def post_logout() -> Response:
        response = RedirectResponse("/dashboard/login", 303)
        auth.sign_out(response)
        return response

    return router


def _query(
    month: str | None,
    start: date | None,
    end: date | None,
    as_of: datetime | None,
    rules: BusinessRules,
) -> KpiQuery:
    """The period asked for: a month, from–to, or this month in the business zone."""
    moment = as_of or utc_now()
    try:
        if month is not None:
            start, end = month_period(month)
        elif start is None or end is None:
            today = moment.astimezone(rules.zone).date()
            start = today.replace(day=1)
            end = next_month(start)
        return KpiQuery(start, end, moment)
    except InvalidPeriod as exc:
        raise _invalid(exc, rules.dashboard.texts) from None


def _invalid(exc: InvalidPeriod, texts: DashboardTexts) -> PageProblem:
    if isinstance(exc, PeriodTooLong):
        return PageProblem(422, texts.period_too_long)
    return PageProblem(422, texts.invalid_period)


def _portal_failed(exc: Bitrix24Error, texts: DashboardTexts) -> PageProblem:
    return PageProblem(502, texts.portal_failed.format(detail=type(exc).__name__))


def _local(target: str) -> str:
    """Only a path of the dashboard is a place to return to after signing in."""
    if target.startswith("/dashboard") and not target.startswith("//"):
        return target
    return "/dashboard"


def _period_line(result: KpiResult, rules: BusinessRules) -> str:
    period = result.period
    last_day = period.end.date() - timedelta(days=1)
    return rules.dashboard.texts.period_line.format(
        start=period.start.strftime("%d.%m.%Y"),
        end=last_day.strftime("%d.%m.%Y"),
        timezone=rules.timezone,
        as_of=period.as_of.strftime("%d.%m.%Y %H:%M"),
    )


def _dashboard_context(
    page: Dashboard, rules: BusinessRules, signed_in: bool
) -> dict[str, Any]:
    query, result = page.query, page.result
    texts = rules.dashboard.texts
    steps = views.funnel_steps(page.drill, query, texts)
    chart_list = [
        Chart("leads", texts.chart_leads, charts.leads_chart(page.days, texts)),
        Chart("funnel", texts.chart_funnel, charts.funnel_chart(steps, texts)),
        Chart("no_show", texts.chart_no_show, charts.no_show_chart(page.weeks, texts)),
        Chart(
            "first_response",
            texts.chart_first_response,
            charts.wait_chart(page.waits, texts),
        ),
    ]
    return {
        "period_line": _period_line(result, rules),
        "month_value": query.start.strftime("%Y-%m"),
        "from_value": query.start.isoformat(),
        "to_value": query.end.isoformat(),
        "is_month": Period.of(query, rules).is_month,
        "final": result.period.final,
        "tables": [
            views.activity_table(result, query, rules, texts),
            views.money_table(result, query, rules, texts),
        ],
        "charts": chart_list,
        "warnings": _warnings(page, rules),
        "signed_in": signed_in,
    }


def _warnings(page: Dashboard, rules: BusinessRules) -> list[str]:
    named = rules.report.texts.warnings
    lines = []
    for warning in page.result.warnings:
        template = getattr(named, warning.code, None)
        text = template.format(detail=warning.message) if template else warning.message
        if warning.deal_ids:
            text += f" ({len(warning.deal_ids)})"
        lines.append(text)
    return lines
