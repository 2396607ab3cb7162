"""Sandbox at scale: 100,000 deals loaded, filtered 50-row pages over real HTTP.

Prints the median and p95 of each query, and the ratio against `server.time` measured
in the same run (the floor: HTTP, routing, auth and the envelope with no data work).
"""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import uvicorn

from sandbox.server import SandboxApp, SandboxOptions

DEALS = 100_000
ROUNDS = 60
ZONE = ZoneInfo("Europe/Moscow")


def make_deals(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    stages = ["NEW", "PREPARATION", "EXECUTING", "WON", "LOSE"]
    start = datetime(2025, 1, 1, 9, tzinfo=ZONE)
    rows = []
    for deal_id in range(1, count + 1):
        created = start + timedelta(minutes=deal_id * 7 + rng.randint(0, 6))
        stage = rng.choice(stages)
        rows.append(
            {
                "ID": str(deal_id),
                "TITLE": f"Deal {deal_id}",
                "TYPE_ID": "SALE",
                "CATEGORY_ID": "0",
                "STAGE_ID": stage,
                "STAGE_SEMANTIC_ID": {"WON": "S", "LOSE": "F"}.get(stage, "P"),
                "OPPORTUNITY": f"{rng.randint(500, 20000)}.00",
                "CURRENCY_ID": "RUB",
                "ASSIGNED_BY_ID": str(rng.randint(1, 5)),
                "CONTACT_ID": str(rng.randint(1, 30000)),
                "OPENED": "Y",
                "CLOSED": "Y" if stage in ("WON", "LOSE") else "N",
                "DATE_CREATE": created.isoformat(),
                "DATE_MODIFY": created.isoformat(),
            }
        )
    return rows


def timed(call: Callable[[], httpx.Response], rounds: int) -> tuple[float, list[float]]:
    """The first call (it fills the column caches it reads) and `rounds` more."""
    began = time.perf_counter()
    call().raise_for_status()
    first = (time.perf_counter() - began) * 1000
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        response = call()
        samples.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
        if "error" in response.json():
            raise RuntimeError(response.text)
    return first, samples


def p95(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.95) - 1]


def main() -> None:
    with socket.socket() as probe:  # a free loopback port for this run
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    app = SandboxApp(SandboxOptions(port=port, rate_limit="off"))
    server = uvicorn.Server(
        uvicorn.Config(app.build(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the sandbox did not start")
        time.sleep(0.01)

    base = f"http://127.0.0.1:{port}/rest/1/sandbox/"
    with httpx.Client(base_url=base, timeout=120) as http:
        began = time.perf_counter()
        loaded = httpx.post(
            f"http://127.0.0.1:{port}/_sandbox/snapshot",
            json={"deals": make_deals(DEALS)},
            timeout=300,
        )
        loaded.raise_for_status()
        print(f"loaded {DEALS:,} deals in {time.perf_counter() - began:.1f} s")

        queries: dict[str, Callable[[], httpx.Response]] = {
            "server.time (baseline)": lambda: http.post("server.time"),
            "crm.deal.list stage+manager, page 1 with total": lambda: http.post(
                "crm.deal.list",
                json={
                    "filter": {"STAGE_ID": "WON", "ASSIGNED_BY_ID": 3},
                    "select": ["ID", "TITLE", "OPPORTUNITY", "DATE_CREATE"],
                    "order": {"ID": "ASC"},
                },
            ),
            "crm.deal.list date window, page 20 with total": lambda: http.post(
                "crm.deal.list",
                json={
                    "filter": {
                        ">=DATE_CREATE": "2025-03-01 00:00:00",
                        "<DATE_CREATE": "2025-09-01 00:00:00",
                    },
                    "order": {"ID": "ASC"},
                    "start": 1000,
                },
            ),
            "crm.deal.list keyset >ID, start=-1": lambda: http.post(
                "crm.deal.list",
                json={
                    "filter": {">ID": 73_500, "CATEGORY_ID": 0},
                    "order": {"ID": "ASC"},
                    "select": ["ID"],
                    "start": -1,
                },
            ),
            "crm.deal.list LIKE on TITLE, page 1 with total": lambda: http.post(
                "crm.deal.list",
                json={"filter": {"%TITLE": "Deal 99"}, "select": ["ID", "TITLE"]},
            ),
        }
        results = {name: timed(call, ROUNDS) for name, call in queries.items()}

    server.should_exit = True
    thread.join(timeout=10)

    floor = statistics.median(results["server.time (baseline)"][1])
    header = (
        f"{'query':50} {'first ms':>9} {'median ms':>10} {'p95 ms':>8} "
        f"{'x baseline':>11}"
    )
    print(f"\n{header}")
    for name, (first, samples) in results.items():
        median = statistics.median(samples)
        print(
            f"{name:50} {first:9.1f} {median:10.2f} {p95(samples):8.2f} "
            f"{median / floor:11.1f}"
        )


if __name__ == "__main__":
    main()
