"""Field metadata of the legacy CRM entities, and the value codecs behind them.

Three jobs, all driven by one `FieldInfo` per field:

- **Metadata**: `entity_fields(portal, entity)` gives the fields of `deal`, `lead`,
  `contact`, `company` or `activity` as `crm.*.fields` describes them, standard fields
  first (from the recorded answers: fixture `crm.deal.fields.response.json` and the
  docs' examples for the others) and then the portal's user fields read from the
  `userfield` table (rows as `crm.deal.userfield.list` returns them; this module only
  reads that table). `FieldInfo.describe()` renders one `*.fields` entry.
- **Input** (`internalize`): a value sent in `fields` becomes the stored string the list
  methods return (`"1500.00"`, `"Y"`, ISO datetimes with the portal offset), or `DROP`
  when the server would ignore it (an unparsable date, an array for a scalar field).
- **Comparison** (`stored_parser`): the stored value parsed once for filters and sorting
  (`Table.typed()` style caches keep the result): ints, floats, case-folded strings,
  epoch seconds for datetimes and day numbers for dates.

Time follows the server code (reference §9): input is any `strtotime` string; an
explicit offset or `Z` is honoured and naive strings are portal-local; date fields keep
the date only and print as the instant of midnight UTC of that date in the portal zone
(`"2024-08-30T02:00:00+02:00"` on UTC+2). `parse_moment` understands `YYYY-MM-DD`,
`YYYY-MM-DD HH:MM[:SS]`, ISO 8601 with `T`, fractions and `Z`/`±HH[:MM]`,
`DD.MM.YYYY [HH:MM[:SS]]`, `MM/DD/YYYY`, `YYYY/MM/DD`, `@<unix>`, and `now`, `today`,
`tomorrow`, `yesterday`, `midnight`: the forms clients send; other `strtotime` forms
(relative phrases) are treated as unparsable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final, Literal
from zoneinfo import ZoneInfo

from sandbox.phpform import intval, truthy

if TYPE_CHECKING:
    from sandbox.state import Portal

Entity = Literal["deal", "lead", "contact", "company", "activity"]
Kind = Literal[
    "int", "double", "string", "char", "date", "datetime", "multifield", "bool",
    "bindings", "none",
]  # fmt: skip


class _Drop:
    """Marker for a value the server discards without an error."""

    def __repr__(self) -> str:
        return "DROP"


DROP: Final = _Drop()

MULTIFIELD_TYPES: Final = ("PHONE", "EMAIL", "WEB", "IM", "LINK")
# `entity` -> the ENTITY_ID of its user fields in the `userfield` table.
UF_ENTITY_IDS: Final[dict[str, str]] = {
    "deal": "CRM_DEAL",
    "lead": "CRM_LEAD",
    "contact": "CRM_CONTACT",
    "company": "CRM_COMPANY",
}


@dataclass(frozen=True)
class FieldInfo:
    """One field as `crm.*.fields` describes it, plus how the sandbox compares it."""

    name: str
    type: str
    title: str
    kind: Kind
    required: bool = False
    read_only: bool = False
    immutable: bool = False
    multiple: bool = False
    dynamic: bool = False
    deprecated: bool = False
    status_type: str | None = None
    settings: Mapping[str, Any] | None = None
    labels: tuple[Any, Any, Any] | None = None
    items: tuple[dict[str, str], ...] | None = None
    show_filter: str = "N"
    default: Any = None

    @property
    def is_user_field(self) -> bool:
        return self.dynamic

    def describe(self) -> dict[str, Any]:
        """The entry `crm.*.fields` answers for this field."""
        entry: dict[str, Any] = {
            "type": self.type,
            "isRequired": self.required,
            "isReadOnly": self.read_only,
            "isImmutable": self.immutable,
            "isMultiple": self.multiple,
            "isDynamic": self.dynamic,
        }
        if self.deprecated:
            entry["isDeprecated"] = True
        if self.status_type is not None:
            entry["statusType"] = self.status_type
        entry["title"] = self.title
        if self.labels is not None:
            entry["listLabel"], entry["formLabel"], entry["filterLabel"] = self.labels
        if self.settings is not None:
            entry["settings"] = dict(self.settings)
        if self.items is not None:
            entry["items"] = [dict(item) for item in self.items]
        return entry


# -- standard fields ------------------------------------------------------------------
# One line per field: NAME TYPE[:statusType] FLAGS [^parentEntityTypeId] Title.
# Flags: Q required, R read-only, I immutable, M multiple, D deprecated, - none.

_DEAL = """
ID                       integer                R      ID
TITLE                    string                 -      Title
TYPE_ID                  crm_status:DEAL_TYPE   -      Type
CATEGORY_ID              crm_category           I      Sales Funnel
STAGE_ID                 crm_status:DEAL_STAGE  -      Deal Stage
STAGE_SEMANTIC_ID        string                 R      Stage Group
IS_NEW                   char                   R      New Deal
IS_RECURRING             char                   -      Recurring Deal
IS_RETURN_CUSTOMER       char                   -      Repeat Deal
IS_REPEATED_APPROACH     char                   -      Repeated Approach
PROBABILITY              integer                -      Probability
CURRENCY_ID              crm_currency           -      Currency
OPPORTUNITY              double                 -      Amount
IS_MANUAL_OPPORTUNITY    char                   -      IS_MANUAL_OPPORTUNITY
TAX_VALUE                double                 -      Tax Rate
COMPANY_ID               crm_company            -   ^4 Company
CONTACT_ID               crm_contact            D      Contact
CONTACT_IDS              crm_contact            M      Contacts
QUOTE_ID                 crm_quote              R   ^7 Estimate
BEGINDATE                date                   -      Start Date
CLOSEDATE                date                   -      Close Date
OPENED                   char                   -      Available to All
CLOSED                   char                   -      Closed
COMMENTS                 string                 -      Comment
ASSIGNED_BY_ID           user                   -      Responsible
CREATED_BY_ID            user                   R      Created By
MODIFY_BY_ID             user                   R      Modified By
MOVED_BY_ID              user                   R      MOVED_BY_ID
DATE_CREATE              datetime               R      Creation Date
DATE_MODIFY              datetime               R      Modification Date
MOVED_TIME               datetime               R      MOVED_TIME
SOURCE_ID                crm_status:SOURCE      -      Source
SOURCE_DESCRIPTION       string                 -      Additional Info about Source
LEAD_ID                  crm_lead               R   ^1 Lead
ADDITIONAL_INFO          string                 -      Additional Information
LOCATION_ID              location               -      Location
ORIGINATOR_ID            string                 -      External Source
ORIGIN_ID                string                 -      Identifier in External Source
UTM_SOURCE               string                 -      Advertising System
UTM_MEDIUM               string                 -      Traffic Type
UTM_CAMPAIGN             string                 -      Campaign Identifier
UTM_CONTENT              string                 -      Campaign Content
UTM_TERM                 string                 -      Campaign Search Condition
LAST_ACTIVITY_TIME       datetime               R      LAST_ACTIVITY_TIME
LAST_ACTIVITY_BY         user                   R      LAST_ACTIVITY_BY
"""

_ADDRESS = """
ADDRESS                  string                 -      Address
ADDRESS_2                string                 -      Address (Line 2)
ADDRESS_CITY             string                 -      City
ADDRESS_POSTAL_CODE      string                 -      Postal Code
ADDRESS_REGION           string                 -      Region
ADDRESS_PROVINCE         string                 -      Province
ADDRESS_COUNTRY          string                 -      Country
ADDRESS_COUNTRY_CODE     string                 -      Country Code
ADDRESS_LOC_ADDR_ID      integer                -      Location Address ID
"""

_UTM = """
UTM_SOURCE               string                 -      Advertising System
UTM_MEDIUM               string                 -      Traffic Type
UTM_CAMPAIGN             string                 -      Campaign Identifier
UTM_CONTENT              string                 -      Campaign Content
UTM_TERM                 string                 -      Campaign Search Term
"""

_MULTIFIELDS = """
PHONE                    crm_multifield         M      Phone
EMAIL                    crm_multifield         M      E-mail
WEB                      crm_multifield         M      Website
IM                       crm_multifield         M      Messenger
LINK                     crm_multifield         M      LINK
"""

_LEAD = (
    """
ID                       integer                R      ID
TITLE                    string                 -      Lead Title
HONORIFIC                crm_status:HONORIFIC   -      Salutation
NAME                     string                 -      First Name
SECOND_NAME              string                 -      Middle Name
LAST_NAME                string                 -      Last Name
BIRTHDATE                date                   -      Birthdate
COMPANY_TITLE            string                 -      Company Name
SOURCE_ID                crm_status:SOURCE      -      Source
SOURCE_DESCRIPTION       string                 -      Source Description
STATUS_ID                crm_status:STATUS      -      Stage
STATUS_DESCRIPTION       string                 -      Stage Description
STATUS_SEMANTIC_ID       string                 R      Status Semantic
POST                     string                 -      Position
"""
    + _ADDRESS
    + """
CURRENCY_ID              crm_currency           -      Currency
OPPORTUNITY              double                 -      Amount
IS_MANUAL_OPPORTUNITY    char                   -      IS_MANUAL_OPPORTUNITY
OPENED                   char                   -      Available to All
COMMENTS                 string                 -      Comments
HAS_PHONE                char                   R      Phone Provided
HAS_EMAIL                char                   R      Email Provided
HAS_IMOL                 char                   R      Open Line Assigned
ASSIGNED_BY_ID           user                   -      Responsible User
CREATED_BY_ID            user                   R      Created By
MODIFY_BY_ID             user                   R      Modified By
MOVED_BY_ID              user                   R      MOVED_BY_ID
DATE_CREATE              datetime               R      Creation Date
DATE_MODIFY              datetime               R      Modification Date
MOVED_TIME               datetime               R      MOVED_TIME
COMPANY_ID               crm_company            -   ^4 Company
CONTACT_ID               crm_contact            D      Contact
CONTACT_IDS              crm_contact            M      CONTACT_IDS
IS_RETURN_CUSTOMER       char                   R      Returning Lead
DATE_CLOSED              datetime               R      Closing Date
ORIGINATOR_ID            string                 -      External Source
ORIGIN_ID                string                 -      Identifier in External Source
"""
    + _UTM
    + """
LAST_ACTIVITY_TIME       datetime               R      LAST_ACTIVITY_TIME
LAST_ACTIVITY_BY         user                   R      LAST_ACTIVITY_BY
"""
    + _MULTIFIELDS
)

_CONTACT = (
    """
ID                       integer                R      ID
HONORIFIC                crm_status:HONORIFIC   -      Salutation
NAME                     string                 -      First Name
SECOND_NAME              string                 -      Middle Name
LAST_NAME                string                 -      Last Name
PHOTO                    file                   -      Photo
BIRTHDATE                date                   -      Birthdate
TYPE_ID                  crm_status:CONTACT_TYPE -     Contact Type
SOURCE_ID                crm_status:SOURCE      -      Source
SOURCE_DESCRIPTION       string                 -      Additional Source Information
POST                     string                 -      Position
"""
    + _ADDRESS
    + """
COMMENTS                 string                 -      Comment
OPENED                   char                   -      Available to All
EXPORT                   char                   -      Participates in Contact Export
HAS_PHONE                char                   R      Phone Set
HAS_EMAIL                char                   R      E-mail Set
HAS_IMOL                 char                   R      Open Line Set
ASSIGNED_BY_ID           user                   -      Responsible Person
CREATED_BY_ID            user                   R      Created By
MODIFY_BY_ID             user                   R      Modified By
DATE_CREATE              datetime               R      Creation Date
DATE_MODIFY              datetime               R      Modification Date
COMPANY_ID               crm_company            D      Company
COMPANY_IDS              crm_company            M      COMPANY_IDS
LEAD_ID                  crm_lead               R   ^1 Lead
ORIGINATOR_ID            string                 -      External Source
ORIGIN_ID                string                 -      Identifier in External Source
ORIGIN_VERSION           string                 -      Original Version
"""
    + _UTM
    + """
LAST_ACTIVITY_TIME       datetime               R      Last Activity
LAST_ACTIVITY_BY         user                   R      Last Activity By
"""
    + _MULTIFIELDS
)

_COMPANY = (
    """
ID                       integer                R      ID
TITLE                    string                 Q      Company Name
COMPANY_TYPE             crm_status:COMPANY_TYPE -     Company Type
LOGO                     file                   -      Logo
"""
    + _ADDRESS
    + """
ADDRESS_LEGAL            string                 -      Legal Address
REG_ADDRESS              string                 -      Legal Address
REG_ADDRESS_2            string                 -      Legal Address (line 2)
REG_ADDRESS_CITY         string                 -      Legal Address City
REG_ADDRESS_POSTAL_CODE  string                 -      Legal Address Postal Code
REG_ADDRESS_REGION       string                 -      Legal Address Region
REG_ADDRESS_PROVINCE     string                 -      Legal Address Province
REG_ADDRESS_COUNTRY      string                 -      Legal Address Country
REG_ADDRESS_COUNTRY_CODE string                 -      Legal Address Country Code
REG_ADDRESS_LOC_ADDR_ID  integer                -      Legal Address Location ID
BANKING_DETAILS          string                 -      Banking Details
INDUSTRY                 crm_status:INDUSTRY    -      Industry
EMPLOYEES                crm_status:EMPLOYEES   -      Number of Employees
CURRENCY_ID              crm_currency           -      Currency
REVENUE                  double                 -      Annual Revenue
OPENED                   char                   -      Available to Everyone
COMMENTS                 string                 -      Comment
HAS_PHONE                char                   R      Phone Set
HAS_EMAIL                char                   R      E-mail Set
HAS_IMOL                 char                   R      Open Line Set
IS_MY_COMPANY            char                   -      My Company
ASSIGNED_BY_ID           user                   -      Responsible Person
CREATED_BY_ID            user                   R      Created By
MODIFY_BY_ID             user                   R      Modified By
DATE_CREATE              datetime               R      Creation Date
DATE_MODIFY              datetime               R      Modification Date
CONTACT_ID               crm_contact            M      Contact
LEAD_ID                  crm_lead               R   ^1 Lead
ORIGINATOR_ID            string                 -      External Source
ORIGIN_ID                string                 -      Identifier in External Source
ORIGIN_VERSION           string                 -      Original Version
"""
    + _UTM
    + """
LAST_ACTIVITY_TIME       datetime               R      Last Activity Time
LAST_ACTIVITY_BY         user                   R      Last Activity Author
"""
    + _MULTIFIELDS
)

_ACTIVITY = """
ID                       integer                R      ID
OWNER_ID                 integer                I      Owner ID
OWNER_TYPE_ID            crm_enum_ownertype     I      Owner Type
TYPE_ID                  crm_enum_activitytype  QI     Type
PROVIDER_ID              string                 -      Provider ID
PROVIDER_TYPE_ID         string                 -      Provider Type
PROVIDER_GROUP_ID        string                 -      Connector Type
ASSOCIATED_ENTITY_ID     integer                R      Associated Entity ID
SUBJECT                  string                 Q      Subject
START_TIME               datetime               -      Start
END_TIME                 datetime               -      Deadline
DEADLINE                 datetime               -      Execution Deadline
COMPLETED                char                   -      Completed
STATUS                   crm_enum_activitystatus -     Status
RESPONSIBLE_ID           user                   Q      Responsible
PRIORITY                 crm_enum_activitypriority -   Priority
NOTIFY_TYPE              crm_enum_activitynotifytype - Notification Type
NOTIFY_VALUE             integer                -      Notification Parameter
DESCRIPTION              string                 -      Description
DESCRIPTION_TYPE         crm_enum_contenttype   -      Description Type
DIRECTION                crm_enum_activitydirection -  Direction
LOCATION                 string                 -      Location
CREATED                  datetime               R      Creation Date
AUTHOR_ID                user                   R      Created By
LAST_UPDATED             datetime               R      Last Updated Date
EDITOR_ID                user                   R      Edited By
SETTINGS                 object                 -      Settings
ORIGIN_ID                string                 -      External Code
ORIGINATOR_ID            string                 -      External Source
RESULT_STATUS            integer                -      RESULT_STATUS
RESULT_STREAM            integer                -      RESULT_STREAM
RESULT_SOURCE_ID         string                 -      RESULT_SOURCE_ID
PROVIDER_PARAMS          object                 -      Provider Parameters
PROVIDER_DATA            string                 -      Provider Data
RESULT_MARK              integer                -      RESULT_MARK
RESULT_VALUE             double                 -      RESULT_VALUE
RESULT_SUM               double                 -      RESULT_SUM
RESULT_CURRENCY_ID       string                 -      RESULT_CURRENCY_ID
AUTOCOMPLETE_RULE        integer                -      Autocomplete
BINDINGS                 crm_activity_binding   RM     Bindings
COMMUNICATIONS           crm_activity_communication QM Communication Channel
FILES                    diskfile               M      Files
WEBDAV_ELEMENTS          diskfile               MD     Added Files
IS_INCOMING_CHANNEL      char                   R      IS_INCOMING_CHANNEL
"""

# REST type -> how the list SQL compares it (CCrm*::GetFields types).
_KIND_BY_TYPE: dict[str, Kind] = {
    "integer": "int",
    "user": "int",
    "crm_category": "int",
    "crm_company": "int",
    "crm_contact": "int",
    "crm_lead": "int",
    "crm_quote": "int",
    "crm_entity": "int",
    "double": "double",
    "char": "char",
    "string": "string",
    "crm_status": "string",
    "crm_currency": "string",
    "location": "string",
    "date": "date",
    "datetime": "datetime",
    "crm_multifield": "multifield",
    "crm_activity_binding": "bindings",
}

# Fields the list SQL cannot filter or sort on although `*.fields` lists them.
_UNLISTED = frozenset({"CONTACT_IDS", "COMPANY_IDS"})


def _kind_for(name: str, type_: str, multiple: bool) -> Kind:
    if name in _UNLISTED:
        return "none"
    if type_.startswith("crm_enum_"):
        return "int"
    kind = _KIND_BY_TYPE.get(type_, "none")
    if multiple and kind not in ("multifield", "bindings"):
        return "none"
    return kind


def _parse_spec(spec: str) -> dict[str, FieldInfo]:
    fields: dict[str, FieldInfo] = {}
    for line in spec.strip().splitlines():
        if not line.strip():
            continue
        name, type_spec, flags, *rest = line.split()
        settings: dict[str, Any] | None = None
        if rest and rest[0].startswith("^"):
            settings = {"parentEntityTypeId": int(rest.pop(0)[1:])}
        type_, _, status_type = type_spec.partition(":")
        multiple = "M" in flags
        fields[name] = FieldInfo(
            name=name,
            type=type_,
            title=" ".join(rest),
            kind=_kind_for(name, type_, multiple),
            required="Q" in flags,
            read_only="R" in flags,
            immutable="I" in flags,
            multiple=multiple,
            deprecated="D" in flags,
            status_type=status_type or None,
            settings=settings,
        )
    return fields


STANDARD_FIELDS: Final[dict[str, dict[str, FieldInfo]]] = {
    "deal": _parse_spec(_DEAL),
    "lead": _parse_spec(_LEAD),
    "contact": _parse_spec(_CONTACT),
    "company": _parse_spec(_COMPANY),
    "activity": _parse_spec(_ACTIVITY),
}


# -- user fields ----------------------------------------------------------------------

_UF_KIND: dict[str, Kind] = {
    "string": "string",
    "integer": "int",
    "double": "double",
    "boolean": "bool",
    "datetime": "datetime",
    "date": "date",
    "enumeration": "int",
    "employee": "int",
    "money": "string",
    "url": "string",
    "crm_status": "string",
    "crm": "string",
    "address": "string",
    "iblock_element": "int",
    "iblock_section": "int",
}


def user_field_info(row: Mapping[str, Any]) -> FieldInfo:
    """A `userfield` table row (as `crm.deal.userfield.list` returns it) as metadata."""
    name = str(row.get("FIELD_NAME", ""))
    type_ = str(row.get("USER_TYPE_ID") or "string")
    multiple = row.get("MULTIPLE") == "Y"
    kind: Kind = _UF_KIND.get(type_, "none")
    settings = row.get("SETTINGS")
    items = None
    if type_ == "enumeration":
        items = tuple(
            {"ID": str(entry.get("ID", "")), "VALUE": str(entry.get("VALUE", ""))}
            for entry in row.get("LIST") or []
            if isinstance(entry, Mapping)
        )
    return FieldInfo(
        name=name,
        type=type_,
        title=name,
        kind=kind,
        required=row.get("MANDATORY") == "Y",
        multiple=multiple,
        dynamic=True,
        settings=settings if isinstance(settings, Mapping) else {},
        labels=(
            row.get("LIST_COLUMN_LABEL") or name,
            row.get("EDIT_FORM_LABEL") or name,
            row.get("LIST_FILTER_LABEL") or name,
        ),
        items=items,
        show_filter=str(row.get("SHOW_FILTER") or "N"),
        default=_uf_default(type_, settings),
    )


def _uf_default(type_: str, settings: Any) -> Any:
    if not isinstance(settings, Mapping):
        return None
    value = settings.get("DEFAULT_VALUE")
    if type_ == "boolean":
        return "1" if intval(value) > 0 else "0"
    return None


def user_fields(portal: Portal, entity: str) -> dict[str, FieldInfo]:
    entity_id = UF_ENTITY_IDS.get(entity)
    if entity_id is None:
        return {}
    found: dict[str, FieldInfo] = {}
    for row in portal.table("userfield"):
        if row.get("ENTITY_ID") == entity_id and row.get("FIELD_NAME"):
            info = user_field_info(row)
            found[info.name] = info
    return found


def entity_fields(portal: Portal, entity: str) -> dict[str, FieldInfo]:
    """Standard fields of the entity followed by the portal's user fields."""
    fields = dict(STANDARD_FIELDS[entity])
    fields.update(user_fields(portal, entity))
    return fields


# -- time -----------------------------------------------------------------------------

_ISO = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)
_DOTTED = re.compile(
    r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$"
)
_AMERICAN = re.compile(
    r"^(\d{1,2})/(\d{1,2})/(\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$"
)
_SLASHED = re.compile(
    r"^(\d{4})/(\d{1,2})/(\d{1,2})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$"
)
_WORDS = {"now": None, "today": 0, "midnight": 0, "tomorrow": 1, "yesterday": -1}


def parse_moment(value: Any, zone: ZoneInfo) -> datetime | None:
    """A `strtotime`-like reading of a client value: an aware datetime or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    if not text:
        return None
    lowered = text.lower()
    if lowered in _WORDS:
        now = datetime.now(zone).replace(microsecond=0)
        shift = _WORDS[lowered]
        if shift is None:
            return now
        return (now + timedelta(days=shift)).replace(hour=0, minute=0, second=0)
    if lowered.startswith("@"):
        try:
            return datetime.fromtimestamp(int(lowered[1:]), zone)
        except (ValueError, OverflowError, OSError):
            return None
    return _parse_calendar(text, zone)


def parse_datetime(text: str, zone: ZoneInfo) -> datetime | None:
    """An engine date-time: any `strtotime` form, in the portal zone, whole seconds."""
    moment = parse_moment(text, zone)
    if moment is None:
        return None
    return moment.astimezone(zone).replace(microsecond=0)


def _parse_calendar(text: str, zone: ZoneInfo) -> datetime | None:
    iso = _ISO.match(text)
    if iso:
        year, month, day, hour, minute, second, fraction, offset = iso.groups()
        parts = (year, month, day, hour, minute, second)
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        return _build(parts, zone, offset, micro)
    for pattern, order in ((_DOTTED, (2, 1, 0)), (_AMERICAN, (2, 0, 1))):
        match = pattern.match(text)
        if match:
            groups = match.groups()
            ymd = tuple(groups[i] for i in order)
            return _build((*ymd, *groups[3:]), zone, None, 0)
    slashed = _SLASHED.match(text)
    if slashed:
        return _build(slashed.groups(), zone, None, 0)
    return None


def _build(
    parts: tuple[str | None, ...], zone: ZoneInfo, offset: str | None, micro: int
) -> datetime | None:
    year, month, day, hour, minute, second = (int(p) if p else 0 for p in parts)
    try:
        naive = datetime(year, month, day, hour, minute, second, micro)  # noqa: DTZ001
    except ValueError:
        return None
    if offset is None:
        return naive.replace(tzinfo=zone)
    if offset.upper() == "Z":
        return naive.replace(tzinfo=UTC)
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return naive.replace(
        tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes))
    )


def parse_input_date(value: Any, zone: ZoneInfo) -> date | None:
    """A date field's input: the portal-local date of whatever instant was sent."""
    moment = parse_moment(value, zone)
    if moment is None:
        return None
    return moment.astimezone(zone).date()


def format_datetime(moment: datetime | float, zone: ZoneInfo) -> str:
    """ISO 8601 with the portal offset, whole seconds (`2024-09-02T18:37:18+02:00`)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(int(moment), zone)
    return moment.astimezone(zone).replace(microsecond=0).isoformat()


def format_date(day: date, zone: ZoneInfo) -> str:
    """A date field on output: the instant of midnight UTC that day, portal zone."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return midnight.astimezone(zone).isoformat()


def now_iso(zone: ZoneInfo) -> str:
    return format_datetime(datetime.now(zone), zone)


def today(zone: ZoneInfo) -> date:
    return datetime.now(zone).date()


# -- stored values parsed for comparison ----------------------------------------------


def stored_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return intval(value)


def stored_double(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return php_floatval(value)


def stored_text(value: Any) -> str | None:
    # MySQL's default collation compares case-insensitively.
    if value is None:
        return None
    if isinstance(value, str):
        return value.casefold()
    return php_string(value).casefold()


def stored_epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def stored_day(value: Any) -> int | None:
    """A stored date (`2024-08-30T02:00:00+02:00`) as its UTC day number."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(UTC).date().toordinal()
    except ValueError:
        return None


def stored_bool(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return 1 if intval(value) > 0 else 0


def stored_multifield(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        str(item.get("VALUE", "")).casefold()
        for item in value
        if isinstance(item, dict)
    )


_SCALAR_PARSERS: dict[str, Callable[[Any], Any]] = {
    "int": stored_int,
    "double": stored_double,
    "string": stored_text,
    "char": stored_text,
    "datetime": stored_epoch,
    "date": stored_day,
    "bool": stored_bool,
}


def stored_parser(info: FieldInfo) -> Callable[[Any], Any]:
    """How a stored value of this field is parsed for filters (multiple: a tuple)."""
    if info.kind == "multifield":
        return stored_multifield
    scalar = _SCALAR_PARSERS.get(info.kind, lambda value: value)
    if not info.multiple:
        return scalar

    def parse_many(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            return ()
        return tuple(scalar(item) for item in value)

    return parse_many


# -- PHP conversions ------------------------------------------------------------------

_LEADING_FLOAT = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def php_floatval(value: Any) -> float:
    """PHP `floatval`: the leading number of a string, 0.0 when there is none."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _LEADING_FLOAT.match(value)
        return float(match.group(0)) if match else 0.0
    return 1.0 if value else 0.0


def php_string(value: Any) -> str:
    """PHP `(string)`: true is "1", false and null are "", floats lose a trailing .0."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def format_number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def money(value: Any) -> str:
    """A money amount as the list methods print it: two decimals (`"1500.00"`)."""
    if isinstance(value, str):
        text = value.strip().replace(",", ".").replace(" ", "")
        try:
            return f"{Decimal(text):.2f}" if text else "0.00"
        except InvalidOperation:
            return f"{php_floatval(text):.2f}"
    return f"{php_floatval(value):.2f}"


# -- input values ---------------------------------------------------------------------

_LINK_TYPES = frozenset(
    {"crm_company", "crm_contact", "crm_lead", "crm_quote", "crm_category"}
)


@dataclass
class Codec:
    """Converts `fields` input into stored values for one portal zone."""

    zone: ZoneInfo
    money_fields: frozenset[str] = field(
        default_factory=lambda: frozenset({"OPPORTUNITY", "TAX_VALUE", "REVENUE"})
    )

    def internalize(self, info: FieldInfo, value: Any) -> Any:
        """The stored form of `value`, or DROP when the server would ignore it."""
        if info.dynamic:
            return self._user_field(info, value)
        if info.kind == "date":
            return self._date(value)
        if info.kind == "datetime":
            return self._datetime(value)
        if isinstance(value, dict | list):
            return DROP
        if info.kind == "double":
            if info.name in self.money_fields:
                return money(value)
            return None if value in (None, "") else format_number(php_floatval(value))
        if info.kind == "int":
            return self._int(info, value)
        if info.kind == "char":
            return yes_no(value)
        return None if value is None else php_string(value)

    def _int(self, info: FieldInfo, value: Any) -> str | None:
        number = intval(value)
        if info.type in _LINK_TYPES and number <= 0:
            return None
        if value is None or value == "":
            return None
        return str(number)

    def _date(self, value: Any) -> Any:
        if value is None or value == "":
            return ""
        day = parse_input_date(value, self.zone)
        return DROP if day is None else format_date(day, self.zone)

    def _datetime(self, value: Any) -> Any:
        if value is None or value == "":
            return ""
        moment = parse_moment(value, self.zone)
        return DROP if moment is None else format_datetime(moment, self.zone)

    def _user_field(self, info: FieldInfo, value: Any) -> Any:
        if info.multiple:
            values = value if isinstance(value, list) else [value]
            if isinstance(value, dict):
                values = list(value.values())
            stored = [self._user_scalar(info, item) for item in values]
            return [item for item in stored if item is not DROP and item is not None]
        if isinstance(value, dict | list):
            return DROP
        return self._user_scalar(info, value)

    def _user_scalar(self, info: FieldInfo, value: Any) -> Any:
        if info.kind == "bool":
            return "1" if uf_boolean(value) else "0"
        if value is None or value == "":
            return "" if info.kind in ("date", "datetime") else None
        if info.kind == "date":
            return self._date(value)
        if info.kind == "datetime":
            return self._datetime(value)
        if info.kind == "double":
            return format_number(php_floatval(value))
        if info.kind == "int":
            return str(intval(value))
        if info.type == "money":
            amount, _, currency = php_string(value).partition("|")
            return f"{money(amount)}|{currency}" if currency else money(amount)
        return php_string(value)


def yes_no(value: Any) -> str:
    """A char flag: `Y`/`N` as sent; other values by PHP truthiness."""
    if isinstance(value, str) and value.upper() in ("Y", "N"):
        return value.upper()
    return "Y" if truthy(value) else "N"


def uf_boolean(value: Any) -> bool:
    """A boolean user field's input: `Y`, `1`, `true` and numbers above 0 are yes.

    The server saves any PHP-truthy value as 1; the sandbox also reads `N` as no,
    which is what clients mean by it.
    """
    if isinstance(value, str):
        upper = value.strip().upper()
        if upper in ("N", "NO", "FALSE"):
            return False
        if upper in ("Y", "YES", "TRUE"):
            return True
    return truthy(value)
