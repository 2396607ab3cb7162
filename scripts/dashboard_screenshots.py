"""Screenshots of the dashboard for docs/: a salon's month on the sandbox, in Chromium.

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs/images]

Seeds a sandbox portal with `sandbox.salon_month` under the example rules
(`deploy/leadloop.example.toml`), serves the API on it in development mode (the
dashboard open), and has the system's Chromium (`/usr/bin/chromium` or
`LEADLOOP_CHROMIUM`) save `dashboard.png` (the whole page),
`dashboard-charts.png` (the charts) and `dashboard-deals.png` (the visits behind a
manager's number). The month and `as_of` are fixed, so the pictures are reproducible.
The month and date pickers are the browser's own: Debian's chromium without
chromium-l10n draws them in English, a Russian browser in Russian.
Needs Redis (`LEADLOOP_REDIS_URL`, default database 15) for the portal's request
budget; it deletes its key afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import uvicorn
from playwright.sync_api import sync_playwright
from pydantic import SecretStr
from redis import Redis
from starlette.types import ASGIApp

from app.api import create_app
from app.config import load_rules
from app.settings import Settings
from sandbox.salon_month import salon_month
from sandbox.server import SandboxApp, SandboxOptions

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "leadloop.example.toml"
MONTH = "2026-11"
# Two days into December: November is whole in the salon's 30 days before `now`.
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=ZoneInfo("Europe/Moscow"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(app: ASGIApp, port: int) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    chromium = os.environ.get("LEADLOOP_CHROMIUM", "/usr/bin/chromium")
    if not os.access(chromium, os.X_OK):
        sys.stderr.write(
            f"Chromium is needed at {chromium}: apt-get install chromium\n"
        )
        return 1
    redis_url = os.environ.get("LEADLOOP_REDIS_URL", "redis://127.0.0.1:6379/15")
    rules = load_rules(RULES)
    args.out.mkdir(parents=True, exist_ok=True)

    sandbox_port = free_port()
    sandbox = SandboxApp(SandboxOptions(port=sandbox_port, rate_limit="off"))
    with serving(sandbox.build(), sandbox_port) as portal:
        loaded = httpx.post(
            f"{portal}/_sandbox/snapshot", json=salon_month(rules, now=NOW), timeout=60
        )
        loaded.raise_for_status()
        settings = Settings(
            _env_file=None,
            redis_url=redis_url,
            config=RULES,
            bitrix24_webhook_url=SecretStr(f"{portal}/rest/1/sandbox/"),
        )
        try:
            with serving(create_app(settings), free_port()) as api:
                shoot(api, chromium, args.out)
        finally:
            bucket = f"leadloop:bitrix24:127.0.0.1:{sandbox_port}:bucket"
            with contextlib.closing(Redis.from_url(redis_url)) as redis:
                redis.delete(bucket)
    return 0


def shoot(api: str, chromium: str, out: Path) -> None:
    query = urlencode({"month": MONTH, "as_of": NOW.isoformat()})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS
        )
        page = browser.new_page(
            viewport={"width": 1480, "height": 900},
            locale="ru-RU",
            device_scale_factor=1,
        )
        page.goto(f"{api}/dashboard?{query}")
        page.screenshot(path=str(out / "dashboard.png"), full_page=True)
        page.locator("section.charts").screenshot(
            path=str(out / "dashboard-charts.png")
        )
        first = page.locator("table.figures tbody tr").first
        first.locator('td[data-metric="visits"] a').click()
        page.wait_for_load_state()
        page.set_viewport_size({"width": 1100, "height": 700})
        page.screenshot(path=str(out / "dashboard-deals.png"))
        browser.close()
    for name in ("dashboard.png", "dashboard-charts.png", "dashboard-deals.png"):
        sys.stdout.write(f"{out / name}\n")


if __name__ == "__main__":
    sys.exit(main())
