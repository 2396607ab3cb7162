"""The HTTP application: health, readiness and one error shape for every failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Literal

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from app.clients import Clients, open_clients, ping_redis
from app.errors import ServiceError
from app.logging import REQUEST_ID_HEADER, RequestIds, current_request_id
from app.metrics import metrics_router
from app.security import BodySizeLimit
from app.settings import Settings, get_settings
from connectors.bitrix24.probe import probe_server_time
from kpi_engine.dashboard.endpoints import dashboard_router
from kpi_engine.endpoints import kpi_router
from webhooks.bitrix24 import bitrix24_router
from webhooks.endpoints import telegram_router, whatsapp_router

log = structlog.stdlib.get_logger(__name__)


class Check(BaseModel):
    status: Literal["ok", "failed"]
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]
    failed: list[str]


class ErrorBody(BaseModel):
    error: str
    detail: str


router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; says nothing about its dependencies."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Redis answers PING and Bitrix24 answers `server.time`."""
    clients: Clients = request.app.state.clients
    settings: Settings = request.app.state.settings

    redis, bitrix24 = await asyncio.gather(
        _check_redis(clients), _check_bitrix24(clients, settings)
    )
    checks = {"redis": redis, "bitrix24": bitrix24}
    failed = [name for name, check in checks.items() if check.status == "failed"]

    if failed:
        log.warning("readyz.not_ready", failed=failed)
    readiness = Readiness(
        status="not_ready" if failed else "ready", checks=checks, failed=failed
    )
    return JSONResponse(
        readiness.model_dump(),
        status_code=HTTPStatus.SERVICE_UNAVAILABLE if failed else HTTPStatus.OK,
    )


async def _check_redis(clients: Clients) -> Check:
    problem = await ping_redis(clients.redis)
    if problem is None:
        return Check(status="ok", detail="PING answered")
    return Check(status="failed", detail=problem)


async def _check_bitrix24(clients: Clients, settings: Settings) -> Check:
    if settings.bitrix24_webhook_url is None:
        return Check(status="failed", detail="LEADLOOP_BITRIX24_WEBHOOK_URL is not set")
    result = await probe_server_time(
        clients.http, settings.bitrix24_webhook_url.get_secret_value()
    )
    return Check(status="ok" if result.ok else "failed", detail=result.detail)


async def render_error(request: Request, exc: Exception) -> JSONResponse:
    """The one place an error becomes a response: `{"error", "detail"}`."""
    headers: Mapping[str, str] | None = None
    if isinstance(exc, ServiceError):
        status, body = exc.status_code, ErrorBody(error=exc.code, detail=exc.detail)
    elif isinstance(exc, RequestValidationError):
        # Only where and what: the offending input may be personal data.
        detail = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        status, body = 422, ErrorBody(error="invalid_request", detail=detail)
    elif isinstance(exc, HTTPException):
        phrase = HTTPStatus(exc.status_code).phrase
        status = exc.status_code
        body = ErrorBody(error=phrase.lower().replace(" ", "_"), detail=str(exc.detail))
        # A 401 names its scheme (WWW-Authenticate); keep what the raiser set.
        headers = exc.headers
    else:
        status, body = 500, ErrorBody(error="internal_error", detail="internal error")
        # Rendered outside RequestIds (ServerErrorMiddleware): the id is added here.
        request_id = current_request_id()
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; its clients open at start-up and close at shutdown."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.clients = open_clients(settings.redis_url)
        log.info("api.started")
        try:
            yield
        finally:
            await app.state.clients.aclose()
            log.info("api.stopped")

    app = FastAPI(
        title="leadloop",
        summary="Messengers, AI and Bitrix24 for small service businesses.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
    for error_type in (ServiceError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(error_type, render_error)
    app.include_router(router)
    app.include_router(telegram_router(settings))
    app.include_router(whatsapp_router(settings))
    app.include_router(bitrix24_router(settings))
    app.include_router(kpi_router(settings))
    app.include_router(dashboard_router(settings))
    app.include_router(metrics_router(settings))
    app.add_middleware(RequestIds)
    return app
