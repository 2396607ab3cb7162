"""What `leadloop setup` and `leadloop doctor` ask of a portal: its scopes, deal
pipelines and stages, user fields, source directory and event bindings.

Each answer is turned into a small typed record here, so the callers never see the
two method families' shapes: `crm.category.*` is an engine controller (camelCase,
`{"categories": [...]}`), `crm.status.*` and `crm.*.userfield.*` are legacy
(UPPER keys, string values, reference §7.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import Bitrix24Error

DEAL_TYPE_ID = 2
UserFieldOwner = Literal["deal", "lead"]
StageSemantics = Literal["process", "success", "failure"]
_SEMANTICS_CODES: dict[str, StageSemantics] = {"S": "success", "F": "failure"}
_SEMANTICS_SENT = {"success": "S", "failure": "F"}


@dataclass(frozen=True)
class Pipeline:
    """A deal pipeline (`CATEGORY_ID`); `origin_id` is ours when we created it."""

    id: int
    name: str
    origin_id: str = ""
    originator_id: str = ""


@dataclass(frozen=True)
class Stage:
    """A deal stage, or an entry of another directory (`SOURCE`, `STATUS`)."""

    status_id: str
    name: str
    sort: int
    semantics: StageSemantics = "process"


@dataclass(frozen=True)
class UserField:
    """A custom field of deals or leads: `UF_CRM_…` and its type."""

    id: int
    name: str
    user_type: str


@dataclass(frozen=True)
class EventBinding:
    """One handler the app has bound to an event."""

    event: str
    handler: str


def stage_directory(pipeline_id: int) -> str:
    """The `crm.status` directory holding a pipeline's stages."""
    return "DEAL_STAGE" if pipeline_id == 0 else f"DEAL_STAGE_{pipeline_id}"


class PortalAdmin:
    """Typed reads and creates for setting a portal up, on the gateway client."""

    def __init__(self, client: Bitrix24Client) -> None:
        self.client = client

    @property
    def is_app(self) -> bool:
        """True for an OAuth app, False for an inbound webhook.

        Only an app may bind events (`event.bind` from a webhook answers
        WRONG_AUTH_TYPE, reference §1.3); only an app's tokens can be renewed.
        """
        return self.client.credentials.renewable

    async def server_time(self) -> str:
        return str(await self.client.call("server.time"))

    async def scopes(self) -> set[str]:
        """The scopes the webhook or app was granted (`scope` needs none itself)."""
        answer = await self.client.call("scope")
        if not isinstance(answer, list):
            raise _shape("scope", "a list of scopes")
        return {str(scope) for scope in answer}

    async def is_admin(self) -> bool:
        """Whether the user behind the credentials administers the portal."""
        return bool(await self.client.call("user.admin"))

    async def pipelines(self) -> list[Pipeline]:
        answer = await self.client.call(
            "crm.category.list", {"entityTypeId": DEAL_TYPE_ID}
        )
        rows = answer.get("categories") if isinstance(answer, Mapping) else None
        if not isinstance(rows, list):
            raise _shape("crm.category.list", "{categories: [...]}")
        return [_pipeline(row) for row in rows if isinstance(row, Mapping)]

    async def add_pipeline(
        self, name: str, *, originator_id: str, origin_id: str
    ) -> Pipeline:
        """A new deal pipeline; the portal picks its id and lays down its stages."""
        fields = {"name": name, "originatorId": originator_id, "originId": origin_id}
        answer = await self.client.call(
            "crm.category.add", {"entityTypeId": DEAL_TYPE_ID, "fields": fields}
        )
        row = answer.get("category") if isinstance(answer, Mapping) else None
        if not isinstance(row, Mapping):
            raise _shape("crm.category.add", "{category: {...}}")
        return _pipeline(row)

    async def directory(self, entity_id: str) -> list[Stage]:
        """Every entry of a `crm.status` directory, in `SORT` order."""
        params = {"filter": {"ENTITY_ID": entity_id}, "order": {"SORT": "ASC"}}
        entries: list[Stage] = []
        start = 0
        while True:
            # A directory is short (a pipeline has a few dozen stages at most), but
            # the legacy list still pages by 50.
            page = await self.client.call_envelope(
                "crm.status.list", {**params, "start": start}
            )
            rows = page.result if isinstance(page.result, list) else []
            entries += [_stage(row) for row in rows if isinstance(row, Mapping)]
            if page.next is None or page.next <= start:
                return entries
            start = page.next

    async def add_status(
        self,
        entity_id: str,
        status_id: str,
        name: str,
        *,
        sort: int,
        semantics: StageSemantics = "process",
    ) -> int:
        """A new directory entry or stage; its row id."""
        fields: dict[str, object] = {
            "ENTITY_ID": entity_id,
            "STATUS_ID": status_id,
            "NAME": name,
            "SORT": sort,
        }
        if semantics in _SEMANTICS_SENT:
            fields["SEMANTICS"] = _SEMANTICS_SENT[semantics]
        return _row_id(await self.client.call("crm.status.add", {"fields": fields}))

    async def user_fields(self, owner: UserFieldOwner) -> dict[str, UserField]:
        """The custom fields of deals or leads by `FIELD_NAME`."""
        answer = await self.client.call(f"crm.{owner}.userfield.list", {})
        if not isinstance(answer, list):
            raise _shape(f"crm.{owner}.userfield.list", "a list of fields")
        fields = [_user_field(row) for row in answer if isinstance(row, Mapping)]
        return {field.name: field for field in fields}

    async def add_user_field(
        self, owner: UserFieldOwner, name: str, user_type: str, label: str
    ) -> int:
        """A new custom field; `name` is the full `UF_CRM_…` code."""
        # The portal prefixes UF_CRM_ itself when it is missing: the short form is
        # right whichever way a portal version reads it.
        short = name.removeprefix("UF_CRM_")
        fields = {
            "FIELD_NAME": short,
            "USER_TYPE_ID": user_type,
            "XML_ID": name,
            "LABEL": label,
            "EDIT_FORM_LABEL": label,
            "LIST_COLUMN_LABEL": label,
            "LIST_FILTER_LABEL": label,
            "SHOW_FILTER": "Y",
        }
        answer = await self.client.call(
            f"crm.{owner}.userfield.add", {"fields": fields}
        )
        return _row_id(answer)

    async def bindings(self) -> list[EventBinding]:
        """The app's event handlers (`event.get`); apps only."""
        answer = await self.client.call("event.get")
        if not isinstance(answer, list):
            raise _shape("event.get", "a list of handlers")
        return [
            EventBinding(str(row.get("event", "")).upper(), str(row.get("handler", "")))
            for row in answer
            if isinstance(row, Mapping)
        ]

    async def bind(self, event: str, handler: str) -> None:
        """Send `event` to `handler` (`event.bind`); apps only."""
        await self.client.call("event.bind", {"event": event, "handler": handler})


def _pipeline(row: Mapping[str, Any]) -> Pipeline:
    try:
        return Pipeline(
            id=int(row["id"]),
            name=str(row.get("name") or ""),
            origin_id=str(row.get("originId") or ""),
            originator_id=str(row.get("originatorId") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise _shape("crm.category", "a pipeline with an id") from None


def _stage(row: Mapping[str, Any]) -> Stage:
    semantics = _SEMANTICS_CODES.get(str(row.get("SEMANTICS") or ""), "process")
    try:
        sort = int(row.get("SORT") or 0)
    except (TypeError, ValueError):
        sort = 0
    return Stage(
        status_id=str(row.get("STATUS_ID") or ""),
        name=str(row.get("NAME") or ""),
        sort=sort,
        semantics=semantics,
    )


def _user_field(row: Mapping[str, Any]) -> UserField:
    try:
        return UserField(
            id=int(row["ID"]),
            name=str(row["FIELD_NAME"]),
            user_type=str(row.get("USER_TYPE_ID") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise _shape("crm.*.userfield.list", "fields with ID and FIELD_NAME") from None


def _row_id(answer: object) -> int:
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise _shape("add", "the new row's id")
    try:
        return int(answer)
    except ValueError:
        raise _shape("add", "the new row's id") from None


def _shape(method: str, expected: str) -> Bitrix24Error:
    return Bitrix24Error(f"{method}: the answer is not {expected}", method=method)
