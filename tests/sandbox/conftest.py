"""A sandbox served over real HTTP on a free loopback port, one per test module."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from sandbox.server import SandboxApp, SandboxOptions


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningSandbox:
    """A live sandbox: its base URL, the app object, and a client bound to it."""

    base_url: str
    app: SandboxApp
    http: httpx.Client

    @property
    def webhook(self) -> str:
        return f"{self.base_url}/rest/1/sandbox/"

    def call(self, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """POST JSON to the default inbound webhook."""
        return self.http.post(f"/rest/1/sandbox/{method}", json=params or {})

    def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = self.call(method, params)
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def reset(self) -> None:
        self.http.post("/_sandbox/reset").raise_for_status()

    def load(self, snapshot: dict[str, Any]) -> None:
        self.http.post("/_sandbox/snapshot", json=snapshot).raise_for_status()

    def settings(self, **values: Any) -> None:
        self.http.post("/_sandbox/settings", json=values).raise_for_status()


def start_sandbox(
    options: SandboxOptions,
) -> tuple[uvicorn.Server, threading.Thread, SandboxApp]:
    app = SandboxApp(options)
    config = uvicorn.Config(
        app.build(), host=options.host, port=options.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("sandbox did not start")
        time.sleep(0.01)
    return server, thread, app


@contextlib.contextmanager
def running_sandbox(options: SandboxOptions) -> Iterator[RunningSandbox]:
    """Serve a sandbox with these options until the block ends."""
    server, thread, app = start_sandbox(options)
    base_url = f"http://127.0.0.1:{options.port}"
    try:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            yield RunningSandbox(base_url, app, http)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[RunningSandbox]:
    with running_sandbox(SandboxOptions(port=free_port(), rate_limit="off")) as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """The module's sandbox, reset to a fresh portal with limits off."""
    sandbox_server.reset()
    sandbox_server.settings(rate_limit="off")
    return sandbox_server
