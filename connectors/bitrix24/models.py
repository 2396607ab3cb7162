"""Typed rows as the portal sends them: Decimal money, aware datetimes, bools for Y/N.

Legacy CRM lists send every value as a string (`"ID": "37"`, `"OPPORTUNITY":
"19999.99"`, `"COMPLETED": "Y"`), stage history and `crm.item` send ints, tasks send
camelCase strings and `user.get` sends `ACTIVE` as a JSON boolean (reference §9). The
models accept each of those forms and nothing vaguer: a datetime without an offset,
money that is not a decimal number or a flag that is not Y/N is a validation error,
never a silent default.

Deals, leads and contacts read from `crm.item.*` validate too: their camelCase names
(`stageId`, `createdTime`, `ufCrm_…`) are renamed to the legacy ones first (§7.6).

Custom fields (`UF_*`) are kept raw in `user_fields`; `datetime_field` and
`money_field` read one of them when asked, because only the configuration knows what a
portal's custom field means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("Y", "1", 1):
        return True
    if value in ("N", "0", 0, "", None):
        return False
    raise ValueError(f"not a Y/N flag: {value!r}")


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a boolean is not money")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # crm.item sends money as a JSON number; its shortest repr is what was stored.
        number = Decimal(repr(value))
        if not number.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        return number
    if isinstance(value, str):
        text = value.strip().replace(",", ".")
        if not text:
            return Decimal("0")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
        if not number.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        return number
    raise ValueError(f"not money: {value!r}")


def parse_moment(value: object) -> datetime | None:
    """An ISO 8601 date-time with an offset; `""`, `{}` and None are no value."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO date-time: {value!r}") from None
    else:
        raise ValueError(f"not a date-time: {value!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a date-time without an offset: {value!r}")
    return moment


def _portal_date(value: object) -> date | None:
    """A date field: midnight UTC of the date, printed in the portal zone (§9).

    `2024-08-30T02:00:00+02:00` and `2024-08-29T19:00:00-05:00` both mean 30 August.
    A value at local midnight cannot come from that rule unless the offset is zero,
    so it is read as a local date: a portal printing local midnights would otherwise
    lose a day east of UTC.
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO date: {value!r}") from None
    moment = parse_moment(value)
    if moment is None:
        return None
    if moment.timetz().replace(tzinfo=None) == time(0, 0):
        return moment.date()
    return moment.astimezone(UTC).date()


def _optional_id(value: object) -> int | None:
    if value is None or value == "" or value == 0 or value == "0":
        return None
    return _id(value)


def _id(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an id")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"not an id: {value!r}")


def _optional_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | int):
        return str(value)
    raise ValueError(f"not text: {value!r}")


def _int_or_zero(value: object) -> int:
    """A pipeline id: the default pipeline is 0, printed as null by crm.item."""
    if value is None or value == "":
        return 0
    return _id(value)


def _text_or_empty(value: object) -> str:
    return _optional_text(value) or ""


def _small_int(value: object) -> int | None:
    """A code such as DIRECTION or PRIORITY; `""` and None are no value."""
    if value is None or value == "":
        return None
    return _id(value)


def _id_list(value: object) -> list[int]:
    if value is None or value == "" or value == {}:
        return []
    if isinstance(value, Mapping):
        value = list(value.values())
    if not isinstance(value, list):
        value = [value]
    return [_id(item) for item in value if item not in (None, "")]


Flag = Annotated[bool, BeforeValidator(_flag)]
Money = Annotated[Decimal, BeforeValidator(_decimal)]
Moment = Annotated[datetime | None, BeforeValidator(parse_moment)]
RequiredMoment = Annotated[datetime, BeforeValidator(parse_moment)]
PortalDate = Annotated[date | None, BeforeValidator(_portal_date)]
Id = Annotated[int, BeforeValidator(_id)]
OptionalId = Annotated[int | None, BeforeValidator(_optional_id)]
Text = Annotated[str | None, BeforeValidator(_optional_text)]
IdList = Annotated[list[int], BeforeValidator(_id_list)]
Code = Annotated[int | None, BeforeValidator(_small_int)]
ZeroId = Annotated[int, BeforeValidator(_int_or_zero)]
Name = Annotated[str, BeforeValidator(_text_or_empty)]

# `ufCrm_1721244707107` and `ufCrm2_1639669411830`, the item names of UF_CRM_ fields.
_ITEM_USER_FIELD = re.compile(r"ufCrm(\d*)_(.+)")


def legacy_user_field_name(name: str) -> str:
    """`ufCrm_1721244707107` -> `UF_CRM_1721244707107` (`ufCrm2_…` -> `UF_CRM_2_…`)."""
    found = _ITEM_USER_FIELD.fullmatch(name)
    if found is None:
        return name
    number, rest = found.groups()
    prefix = f"UF_CRM_{number}_" if number else "UF_CRM_"
    return prefix + rest.upper()


class InvalidRow(ValueError):
    """A row the model refused; names the entity, the row id and the bad fields only.

    pydantic's own message quotes the input values, which may be names or phones:
    those never reach a log line, so the cause is dropped.
    """

    def __init__(self, model: str, row_id: object, fields: list[str]) -> None:
        shown = ", ".join(fields) or "the row itself"
        super().__init__(f"{model} row {row_id!r}: invalid {shown}")
        self.model = model
        self.row_id = row_id
        self.fields = fields


RowModel = TypeVar("RowModel", bound=BaseModel)


def validate_row(model: type[RowModel], row: object) -> RowModel:
    """`model.model_validate(row)`, raising `InvalidRow` without the row's values."""
    try:
        return model.model_validate(row)
    except ValidationError as error:
        fields = sorted(
            {
                ".".join(str(part) for part in problem["loc"])
                for problem in error.errors()
            }
        )
        row_id = None
        if isinstance(row, Mapping):
            row_id = row.get("ID", row.get("id"))
        raise InvalidRow(model.__name__, row_id, fields) from None


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class MultiField(_Row):
    """One phone, e-mail, web or messenger entry of a contact or lead."""

    id: OptionalId = Field(default=None, alias="ID")
    type_id: str = Field(default="", alias="TYPE_ID")
    value_type: str = Field(default="", alias="VALUE_TYPE")
    value: str = Field(default="", alias="VALUE")


class _CrmRow(_Row):
    """What deals, leads and contacts share, with their custom fields kept raw.

    `_ITEM_NAMES` maps the `crm.item` names that are not just the field's own name.
    """

    _ITEM_NAMES: ClassVar[dict[str, str]] = {
        "assignedById": "ASSIGNED_BY_ID",
        "createdTime": "DATE_CREATE",
        "updatedTime": "DATE_MODIFY",
        "originatorId": "ORIGINATOR_ID",
        "originId": "ORIGIN_ID",
        "sourceId": "SOURCE_ID",
    }

    id: Id = Field(alias="ID")
    assigned_by_id: OptionalId = Field(default=None, alias="ASSIGNED_BY_ID")
    created_at: Moment = Field(default=None, alias="DATE_CREATE")
    modified_at: Moment = Field(default=None, alias="DATE_MODIFY")
    originator_id: Text = Field(default=None, alias="ORIGINATOR_ID")
    origin_id: Text = Field(default=None, alias="ORIGIN_ID")
    source_id: Text = Field(default=None, alias="SOURCE_ID")
    user_fields: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_item_and_user_fields(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or "user_fields" in data:
            return data
        renamed = {cls._ITEM_NAMES.get(str(k), str(k)): v for k, v in data.items()}
        custom = {
            legacy_user_field_name(key): value
            for key, value in renamed.items()
            if key.startswith(("UF_", "ufCrm"))
        }
        return {**renamed, "user_fields": custom}

    def datetime_field(self, name: str) -> datetime | None:
        """A custom date-time field; None when empty or not a date-time."""
        try:
            return parse_moment(self.user_fields.get(name))
        except ValueError:
            return None

    def money_field(self, name: str) -> tuple[Decimal, str] | None:
        """A `money` custom field, `"1500.00|RUB"`; None when empty."""
        raw = self.user_fields.get(name)
        if not isinstance(raw, str) or not raw:
            return None
        amount, _, currency = raw.partition("|")
        return _decimal(amount), currency


class Deal(_CrmRow):
    """A deal from `crm.deal.get/list` or `crm.item.*` (entityTypeId 2)."""

    _ITEM_NAMES: ClassVar[dict[str, str]] = {
        **_CrmRow._ITEM_NAMES,
        "categoryId": "CATEGORY_ID",
        "stageId": "STAGE_ID",
        "stageSemanticId": "STAGE_SEMANTIC_ID",
        "currencyId": "CURRENCY_ID",
        "contactId": "CONTACT_ID",
        "companyId": "COMPANY_ID",
        "leadId": "LEAD_ID",
        "isReturnCustomer": "IS_RETURN_CUSTOMER",
        "begindate": "BEGINDATE",
        "closedate": "CLOSEDATE",
        "movedTime": "MOVED_TIME",
    }

    title: Name = Field(default="", alias="TITLE")
    category_id: ZeroId = Field(default=0, alias="CATEGORY_ID")
    stage_id: Name = Field(default="", alias="STAGE_ID")
    stage_semantic_id: Text = Field(default=None, alias="STAGE_SEMANTIC_ID")
    opportunity: Money = Field(default=Decimal("0"), alias="OPPORTUNITY")
    currency_id: Text = Field(default=None, alias="CURRENCY_ID")
    contact_id: OptionalId = Field(default=None, alias="CONTACT_ID")
    company_id: OptionalId = Field(default=None, alias="COMPANY_ID")
    lead_id: OptionalId = Field(default=None, alias="LEAD_ID")
    closed: Flag = Field(default=False, alias="CLOSED")
    opened: Flag = Field(default=True, alias="OPENED")
    is_return_customer: Flag = Field(default=False, alias="IS_RETURN_CUSTOMER")
    begin_date: PortalDate = Field(default=None, alias="BEGINDATE")
    close_date: PortalDate = Field(default=None, alias="CLOSEDATE")
    moved_at: Moment = Field(default=None, alias="MOVED_TIME")


class Lead(_CrmRow):
    """A lead from `crm.lead.get/list` or `crm.item.*` (entityTypeId 1)."""

    # The item calls a lead's status its stage.
    _ITEM_NAMES: ClassVar[dict[str, str]] = {
        **_CrmRow._ITEM_NAMES,
        "lastName": "LAST_NAME",
        "stageId": "STATUS_ID",
        "stageSemanticId": "STATUS_SEMANTIC_ID",
        "currencyId": "CURRENCY_ID",
        "contactId": "CONTACT_ID",
    }

    title: Name = Field(default="", alias="TITLE")
    name: Text = Field(default=None, alias="NAME")
    last_name: Text = Field(default=None, alias="LAST_NAME")
    status_id: Name = Field(default="", alias="STATUS_ID")
    status_semantic_id: Text = Field(default=None, alias="STATUS_SEMANTIC_ID")
    opportunity: Money = Field(default=Decimal("0"), alias="OPPORTUNITY")
    currency_id: Text = Field(default=None, alias="CURRENCY_ID")
    contact_id: OptionalId = Field(default=None, alias="CONTACT_ID")
    phones: list[MultiField] = Field(default_factory=list, alias="PHONE")
    ims: list[MultiField] = Field(default_factory=list, alias="IM")


class Contact(_CrmRow):
    """A contact from `crm.contact.get/list` or `crm.item.*` (entityTypeId 3)."""

    _ITEM_NAMES: ClassVar[dict[str, str]] = {
        **_CrmRow._ITEM_NAMES,
        "lastName": "LAST_NAME",
        "secondName": "SECOND_NAME",
    }

    name: Text = Field(default=None, alias="NAME")
    last_name: Text = Field(default=None, alias="LAST_NAME")
    second_name: Text = Field(default=None, alias="SECOND_NAME")
    phones: list[MultiField] = Field(default_factory=list, alias="PHONE")
    emails: list[MultiField] = Field(default_factory=list, alias="EMAIL")
    ims: list[MultiField] = Field(default_factory=list, alias="IM")


class ActivityBinding(_Row):
    owner_type_id: Id = Field(alias="OWNER_TYPE_ID")
    owner_id: Id = Field(alias="OWNER_ID")


class Activity(_Row):
    """A timeline activity; TYPE_ID 2 call, 4 e-mail, 6 provider; DIRECTION 1 in."""

    id: Id = Field(alias="ID")
    owner_type_id: OptionalId = Field(default=None, alias="OWNER_TYPE_ID")
    owner_id: OptionalId = Field(default=None, alias="OWNER_ID")
    type_id: Id = Field(alias="TYPE_ID")
    provider_id: Text = Field(default=None, alias="PROVIDER_ID")
    provider_type_id: Text = Field(default=None, alias="PROVIDER_TYPE_ID")
    direction: Code = Field(default=None, alias="DIRECTION")
    completed: Flag = Field(default=False, alias="COMPLETED")
    start_time: Moment = Field(default=None, alias="START_TIME")
    end_time: Moment = Field(default=None, alias="END_TIME")
    created_at: Moment = Field(default=None, alias="CREATED")
    responsible_id: OptionalId = Field(default=None, alias="RESPONSIBLE_ID")
    author_id: OptionalId = Field(default=None, alias="AUTHOR_ID")
    origin_id: Text = Field(default=None, alias="ORIGIN_ID")
    originator_id: Text = Field(default=None, alias="ORIGINATOR_ID")
    bindings: list[ActivityBinding] = Field(default_factory=list, alias="BINDINGS")

    def bound_to(self) -> set[tuple[int, int]]:
        """Every (entity type id, id) the activity is bound to, owner included."""
        pairs = {(b.owner_type_id, b.owner_id) for b in self.bindings}
        if self.owner_type_id is not None and self.owner_id is not None:
            pairs.add((self.owner_type_id, self.owner_id))
        return pairs


class StageHistory(_Row):
    """One row of `crm.stagehistory.list`: the owner entered a stage (or status)."""

    id: Id = Field(alias="ID")
    type_id: Id = Field(alias="TYPE_ID")
    owner_id: Id = Field(alias="OWNER_ID")
    created_at: RequiredMoment = Field(alias="CREATED_TIME")
    category_id: int | None = Field(default=None, alias="CATEGORY_ID")
    stage_id: Text = Field(default=None, alias="STAGE_ID")
    status_id: Text = Field(default=None, alias="STATUS_ID")
    semantic_id: Text = Field(default=None, alias="STAGE_SEMANTIC_ID")

    @model_validator(mode="before")
    @classmethod
    def _lead_status_as_stage(cls, data: Any) -> Any:
        # Lead rows carry STATUS_ID and STATUS_SEMANTIC_ID instead of the stage pair.
        if isinstance(data, Mapping) and "STATUS_SEMANTIC_ID" in data:
            return {**data, "STAGE_SEMANTIC_ID": data["STATUS_SEMANTIC_ID"]}
        return data

    @property
    def stage(self) -> str | None:
        """The stage (deal) or status (lead) the row records."""
        return self.stage_id if self.stage_id is not None else self.status_id


class User(_Row):
    """An employee as `user.get` returns them; bots are not listed there."""

    id: Id = Field(alias="ID")
    active: Flag = Field(default=True, alias="ACTIVE")
    name: Text = Field(default=None, alias="NAME")
    last_name: Text = Field(default=None, alias="LAST_NAME")
    second_name: Text = Field(default=None, alias="SECOND_NAME")
    user_type: Text = Field(default=None, alias="USER_TYPE")
    departments: IdList = Field(default_factory=list, alias="UF_DEPARTMENT")
    work_position: Text = Field(default=None, alias="WORK_POSITION")

    @property
    def full_name(self) -> str:
        parts = [self.name, self.last_name]
        return " ".join(part for part in parts if part) or f"#{self.id}"


class Task(_Row):
    """A task as `tasks.task.list`/`.get` return it (camelCase, numbers as strings)."""

    id: Id = Field(alias="id")
    title: Name = Field(default="", alias="title")
    responsible_id: OptionalId = Field(default=None, alias="responsibleId")
    created_by: OptionalId = Field(default=None, alias="createdBy")
    status: int = Field(default=2, alias="status")
    priority: int = Field(default=1, alias="priority")
    deadline: Moment = Field(default=None, alias="deadline")
    created_at: Moment = Field(default=None, alias="createdDate")
    changed_at: Moment = Field(default=None, alias="changedDate")
    closed_at: Moment = Field(default=None, alias="closedDate")
    crm_bindings: list[str] = Field(default_factory=list, alias="ufCrmTask")

    @property
    def completed(self) -> bool:
        return self.status == 5
