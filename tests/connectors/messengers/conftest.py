"""Senders against the messenger sandboxes over real sockets, the wire recorded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.server import SandboxOptions
from tests.connectors.bitrix24.conftest import http, wire
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox

__all__ = ["http", "wire"]  # fixtures, used by name


@pytest.fixture(scope="module")
def messenger_server() -> Iterator[RunningSandbox]:
    options = SandboxOptions(port=free_port(), rate_limit="off")
    with running_sandbox(options) as running:
        yield running


@pytest.fixture
def sandbox(messenger_server: RunningSandbox) -> RunningSandbox:
    """The sandbox reset: no records, no faults, no windows."""
    messenger_server.reset()
    return messenger_server


def add_fault(sandbox: RunningSandbox, target: str, **fault: Any) -> None:
    response = sandbox.http.post("/_sandbox/faults", json={"target": target, **fault})
    assert response.status_code == 200, response.text
