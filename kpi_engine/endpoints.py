"""`GET /api/kpi`: the KPI report over HTTP, behind the admin bearer token.

Without `LEADLOOP_ADMIN_TOKEN` the endpoint answers 503 `admin_disabled`: it fails
closed, and the answer says what to configure. A missing or wrong token answers 401
with `WWW-Authenticate: Bearer`; tokens are compared in constant time.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from app.clients import Clients
from app.config import BusinessRules, load_rules
from app.errors import ServiceError
from app.portal import NotConfigured
from app.security import bearer_matches
from app.settings import Settings
from connectors.bitrix24.errors import Bitrix24Error
from kpi_engine import report
from kpi_engine.data import InvalidPeriod, KpiQuery, UnknownManager
from kpi_engine.service import KpiService, utc_now

log = structlog.stdlib.get_logger(__name__)

MEDIA_TYPES = {"csv": "text/csv", "md": "text/markdown"}


class AdminDisabled(ServiceError):
    status_code = 503
    code = "admin_disabled"


class InvalidQuery(ServiceError):
    status_code = 422
    code = "invalid_query"


class PortalNotConfigured(ServiceError):
    status_code = 503
    code = "bitrix24_not_configured"


class PortalFailed(ServiceError):
    status_code = 502
    code = "bitrix24_failed"


def kpi_router(settings: Settings, rules: BusinessRules | None = None) -> APIRouter:
    """The KPI endpoint with its admin check; rules default to LEADLOOP_CONFIG's."""
    business = rules if rules is not None else load_rules(settings.config)
    router = APIRouter()

    async def require_admin(request: Request) -> None:
        token = settings.admin_token
        if token is None or not token.get_secret_value():
            raise AdminDisabled("LEADLOOP_ADMIN_TOKEN is not set: the endpoint is off")
        if not bearer_matches(request.headers, token):
            log.warning("api.kpi_unauthorized")
            raise HTTPException(
                401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    @router.get(
        "/api/kpi",
        dependencies=[Depends(require_admin)],
        responses={
            200: {"description": "KPI.md's JSON, or the CSV or Markdown table"},
            401: {"description": "missing or wrong bearer token"},
            422: {"description": "a bad period, as_of or manager"},
            503: {"description": "LEADLOOP_ADMIN_TOKEN or the portal not configured"},
        },
    )
    async def get_kpi(
        request: Request,
        start: Annotated[date, Query(alias="from", description="First day, local")],
        end: Annotated[date, Query(alias="to", description="Day after the last")],
        as_of: Annotated[datetime | None, Query(description="ISO, with offset")] = None,
        manager: Annotated[int | None, Query(ge=1)] = None,
        format: Literal["json", "csv", "md"] = "json",
    ) -> Response:
        """KPIs and bonus of [from, to) seen as of `as_of` (default now)."""
        try:
            query = KpiQuery(start, end, as_of or utc_now(), manager)
        except InvalidPeriod as exc:
            raise InvalidQuery(str(exc)) from None
        clients: Clients = request.app.state.clients
        try:
            service = KpiService.on_portal(settings, business, clients)
            result = await service.figures(query)
        except NotConfigured as exc:
            raise PortalNotConfigured(str(exc)) from None
        except UnknownManager as exc:
            raise InvalidQuery(str(exc)) from None
        except Bitrix24Error as exc:
            log.warning("api.kpi_portal_failed", error=type(exc).__name__)
            raise PortalFailed(f"Bitrix24 failed: {type(exc).__name__}") from None
        if format == "json":
            return JSONResponse(report.to_json(result))
        text = report.to_csv(result) if format == "csv" else report.to_markdown(result)
        return Response(text, media_type=f"{MEDIA_TYPES[format]}; charset=utf-8")

    return router
