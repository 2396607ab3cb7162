"""A generated salon history on a sandbox portal, the API serving the dashboard over
real sockets, and Debian's Chromium driven by Playwright (never a downloaded one)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from playwright.sync_api import Browser, sync_playwright
from pydantic import SecretStr
from redis import Redis

from app.api import create_app
from app.settings import Settings
from sandbox.kpi_history import HistoryShape, generate
from sandbox.server import SandboxOptions
from tests.app.conftest import kept_uvicorn_log_levels
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox
from tests.support import REDIS_URL, isolated_environment, restored_logging

__all__ = ["isolated_environment", "restored_logging"]  # autouse fixtures

MSK = ZoneInfo("Europe/Moscow")
TOKEN = "dashboard-admin-t0ken"
AS_OF = datetime(2025, 2, 20, 12, tzinfo=MSK)
# A month wholly seen (bonus and plan apply) and how the page is asked for it.
MONTH = {"from": "2025-01-01", "to": "2025-02-01", "as_of": AS_OF.isoformat()}
CHROMIUM = os.environ.get("LEADLOOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RULES = """
[crm]
mode = "auto"
pipelines = [0]
visit_field = "UF_CRM_LL_VISIT_AT"

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
EUR = "99.80"

[bonus.managers."10"]
base = "30000.00"
plan = "300000.00"

[bonus.managers."11"]
base = "25000.00"
plan = "150000.00"
rate = "0.05"
"""
# Channels as a portal records them: [intake.sources] for messengers, CALL for calls.
SOURCES = ("TELEGRAM", "TELEGRAM", "WHATSAPP", "WHATSAPP", "CALL", "WEB", None)


def salon_history() -> dict[str, Any]:
    """Three months of kpi_history with each deal's SOURCE_ID, reproducibly."""
    shape = HistoryShape(
        start=date(2024, 12, 1),
        end=date(2025, 2, 15),
        managers=4,
        deals=500,
        activities=1500,
        now=AS_OF,
    )
    snapshot = generate(shape)
    for row in snapshot["deals"]:
        row["SOURCE_ID"] = SOURCES[int(row["ID"]) % len(SOURCES)]
    return snapshot


@dataclass
class RunningApi:
    base_url: str
    settings: Settings


@contextlib.contextmanager
def running_api(settings: Settings) -> Iterator[RunningApi]:
    """`create_app(settings)` served by uvicorn on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.01)
    try:
        yield RunningApi(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="package")
def portal() -> Iterator[RunningSandbox]:
    with (
        kept_uvicorn_log_levels(),
        running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as sandbox,
    ):
        sandbox.load(salon_history())
        yield sandbox


@pytest.fixture(scope="package")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "leadloop.toml"
    path.write_text(RULES, encoding="utf-8")
    return path


def api_settings(portal: RunningSandbox, rules_file: Path, **values: Any) -> Settings:
    values.setdefault("admin_token", SecretStr(TOKEN))
    return Settings(
        _env_file=None,
        redis_url=REDIS_URL,
        config=rules_file,
        bitrix24_webhook_url=SecretStr(portal.webhook),
        **values,
    )


@pytest.fixture(scope="package")
def local_api(portal: RunningSandbox, rules_file: Path) -> Iterator[RunningApi]:
    """The API in development mode: the dashboard is open."""
    with (
        kept_uvicorn_log_levels(),
        running_api(api_settings(portal, rules_file)) as api,
    ):
        yield api


@pytest.fixture(scope="package")
def production_api(portal: RunningSandbox, rules_file: Path) -> Iterator[RunningApi]:
    """The API in production: the dashboard needs the admin token."""
    settings = api_settings(portal, rules_file, env="production")
    with kept_uvicorn_log_levels(), running_api(settings) as api:
        yield api


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system; the test fails, never skips, without it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the dashboard's browser test needs Chromium at {CHROMIUM}: install it "
            "with `sudo apt-get install chromium` (or run scripts/ensure-chromium), "
            "or point LEADLOOP_CHROMIUM at a Chromium binary"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(autouse=True)
def fresh_bucket(portal: RunningSandbox) -> Iterator[None]:
    """Each test starts with the portal's request budget (Redis) full, and leaves it
    so: the pages read the portal several times a test."""
    bucket = f"leadloop:bitrix24:{portal.base_url.removeprefix('http://')}:bucket"
    with contextlib.closing(Redis.from_url(REDIS_URL)) as redis:
        redis.delete(bucket)
        yield
        redis.delete(bucket)
