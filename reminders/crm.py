"""What the reminders read from and write to Bitrix24, all through the gateway.

Tasks are created through the idempotent `Writer`, keyed per deal, visit and kind
(`rm:<deal>:<stamp>:<kind>`), so a job that runs twice makes one task. Stage moves
are idempotent by nature; a timeline comment is not, and callers guard it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import NotFound
from connectors.bitrix24.models import Contact, Deal, validate_row
from connectors.bitrix24.pull import Puller
from connectors.bitrix24.writes import Created, Writer
from reminders.booking import Booking

log = structlog.stdlib.get_logger(__name__)

DEAL_OWNER_TYPE = "deal"
PRIORITY_HIGH = 2
PRIORITY_MEDIUM = 1


@dataclass(frozen=True)
class TaskRequest:
    """A task for the deal's manager about one visit."""

    kind: str
    title: str
    deadline: datetime
    priority: int = PRIORITY_MEDIUM


class Crm:
    """The reminders' side of the portal: deals, contacts, stages, comments, tasks."""

    def __init__(self, client: Bitrix24Client, writer: Writer | None = None) -> None:
        self.client = client
        self.writer = writer or Writer(client)

    async def deal(self, deal_id: int) -> Deal | None:
        """The deal as it is now; None once it is deleted."""
        try:
            row = await self.client.call("crm.deal.get", {"id": deal_id})
        except NotFound:
            return None
        return validate_row(Deal, row)

    async def contact(self, contact_id: int) -> Contact | None:
        try:
            row = await self.client.call("crm.contact.get", {"id": contact_id})
        except NotFound:
            return None
        return validate_row(Contact, row)

    async def deals_with_visits(
        self,
        stages: Sequence[str],
        visit_field: str,
        start: datetime,
        end: datetime,
    ) -> AsyncIterator[Deal]:
        """Every deal in `stages` with a visit in [start, end], complete, id order."""
        fields = ["ID", "STAGE_ID", "CATEGORY_ID", "ASSIGNED_BY_ID", "CONTACT_ID"]
        rows = Puller(self.client).pull_models(
            "deal",
            Deal,
            {
                "@STAGE_ID": list(stages),
                f">={visit_field}": start,
                f"<={visit_field}": end,
            },
            [*fields, visit_field],
        )
        async for deal in rows:
            yield deal

    async def move(self, deal_id: int, stage_id: str) -> None:
        """Put the deal in `stage_id`; moving it where it is changes nothing."""
        params = {"id": deal_id, "fields": {"STAGE_ID": stage_id}}
        await self.client.call("crm.deal.update", params)
        log.info("reminders.deal_moved", deal_id=deal_id, stage_id=stage_id)

    async def comment(self, deal_id: int, text: str) -> int:
        """A timeline comment on the deal; its id."""
        fields = {"ENTITY_ID": deal_id, "ENTITY_TYPE": DEAL_OWNER_TYPE, "COMMENT": text}
        comment_id = await self.client.call(
            "crm.timeline.comment.add", {"fields": fields}
        )
        log.info("reminders.commented", deal_id=deal_id, comment_id=comment_id)
        return int(comment_id)

    async def task(self, booking: Booking, request: TaskRequest) -> Created | None:
        """A task for the deal's manager, at most once per deal, visit and kind."""
        if booking.manager_id is None:
            log.error("reminders.task_without_manager", deal_id=booking.deal_id)
            return None
        fields = {
            "TITLE": request.title,
            "RESPONSIBLE_ID": booking.manager_id,
            "DEADLINE": request.deadline,
            "PRIORITY": request.priority,
            "UF_CRM_TASK": [f"D_{booking.deal_id}"],
        }
        key = task_key(booking, request.kind)
        created = await self.writer.create("task", fields, key=key)
        log.info(
            "reminders.task",
            deal_id=booking.deal_id,
            kind=request.kind,
            task_id=created.id,
            created=created.created,
        )
        return created

    async def notify(self, user_id: int, text: str, *, tag: str) -> None:
        """A notification for one employee; a repeated tag replaces the earlier one."""
        params = {"USER_ID": user_id, "MESSAGE": text, "TAG": tag}
        await self.client.call("im.notify.system.add", params)


def task_key(booking: Booking, kind: str) -> str:
    """The idempotency key of a task about one visit."""
    return f"rm:{booking.deal_id}:{booking.stamp}:{kind}"
