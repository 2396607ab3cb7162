"""Python values to the Bitrix24 wire, one way for direct calls and batch commands.

Every scalar becomes the string a PHP form would carry, before the transport is
chosen: a JSON body and a `batch` command string (PHP brackets, parsed once by the
portal's `parse_str`) then hold the same values, so a filter means the same on the
first page and on every batched page (known fault B24-1: fast-bitrix24 sends `true`
in JSON and the text `True` in batches, which legacy methods read as neither Y nor N).

- booleans: "Y" / "N" (legacy code compares `=== 'Y'`; engine methods accept them too);
- None and empty lists or dicts: "" (a form cannot carry an empty array);
- Decimal and int: plain digits, never an exponent; floats the same via their repr;
- aware datetimes: portal-local naive "YYYY-MM-DD HH:MM:SS" (some portals drop a
  datetime filter written with an offset, docs-ru#215); naive datetimes are refused;
- dates: "YYYY-MM-DD".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, tzinfo
from decimal import Decimal
from enum import Enum
from typing import TypeAlias
from urllib.parse import quote

PORTAL_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class BatchRef:
    """A `$result[command][path…]` reference to an earlier command of the same batch.

    The portal substitutes it after parsing the command; it is written into the
    command string verbatim and has no meaning in a direct call.
    """

    __slots__ = ("command", "path")

    def __init__(self, command: str, *path: str | int) -> None:
        for part in (command, *map(str, path)):
            if not part or any(char in part for char in "[]&=?"):
                raise ValueError(f"bad batch reference part {part!r}")
        self.command = command
        self.path = tuple(str(part) for part in path)

    def __str__(self) -> str:
        return "$result" + "".join(f"[{part}]" for part in (self.command, *self.path))

    def __repr__(self) -> str:
        return f"BatchRef({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchRef) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))


Wire: TypeAlias = str | BatchRef | list["Wire"] | dict[str, "Wire"]


class Encoder:
    """Turns call parameters into wire values for one portal (its time zone)."""

    def __init__(self, portal_zone: tzinfo) -> None:
        self.portal_zone = portal_zone

    def params(self, params: Mapping[str, object]) -> dict[str, Wire]:
        """The parameters of one call, every value encoded."""
        return {_key(key): self.value(value) for key, value in params.items()}

    def value(self, value: object) -> Wire:
        """One value: a string, a reference, or lists and dicts of them."""
        if isinstance(value, BatchRef):
            return value
        if value is None:
            return ""
        if isinstance(value, bool):
            return "Y" if value else "N"
        if isinstance(value, Enum):
            return self.value(value.value)
        if isinstance(value, str):
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, Decimal | float):
            return _number(value)
        if isinstance(value, datetime):
            return self.datetime(value)
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, Mapping):
            return {_key(key): self.value(item) for key, item in value.items()} or ""
        if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            return [self.value(item) for item in value] or ""
        raise TypeError(f"cannot send a {type(value).__name__} to Bitrix24")

    def datetime(self, moment: datetime) -> str:
        """An aware datetime as the portal's local wall-clock time, without offset."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(
                "naive datetime: give it a time zone, the portal would read it as "
                "portal-local time"
            )
        return moment.astimezone(self.portal_zone).strftime(PORTAL_DATETIME_FORMAT)


def to_json_body(params: Mapping[str, Wire]) -> dict[str, Wire]:
    """The wire parameters of a direct call; references belong in batches only."""
    _refuse_refs(params)
    return dict(params)


def php_query(params: Mapping[str, Wire]) -> str:
    """The PHP bracket query string of wire parameters, UTF-8 percent-encoded.

    Brackets stay literal, keys and values are encoded (`filter[%3EID]=5`), list items
    get numeric indices, references go in verbatim.
    """
    pairs: list[str] = []
    for key, value in params.items():
        _flatten(_quote(key), value, pairs)
    return "&".join(pairs)


def batch_command(method: str, params: Mapping[str, Wire]) -> str:
    """One `cmd` entry: `method?query`."""
    query = php_query(params)
    return f"{method}?{query}" if query else method


def _flatten(prefix: str, value: Wire, pairs: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}[{_quote(key)}]", item, pairs)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten(f"{prefix}[{index}]", item, pairs)
    elif isinstance(value, BatchRef):
        pairs.append(f"{prefix}={value}")
    else:
        pairs.append(f"{prefix}={_quote(value)}")


def _quote(text: str) -> str:
    return quote(text, safe="", encoding="utf-8")


def _key(key: object) -> str:
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(f"parameter names must be strings, got {key!r}")
    name = str(key)
    if not name or "[" in name or "]" in name:
        # PHP reads brackets in a name as nesting, whatever their encoding.
        raise ValueError(f"bad parameter name {name!r}")
    return name


def _number(value: Decimal | float) -> str:
    number = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not number.is_finite():
        raise ValueError(f"cannot send {value!r} to Bitrix24")
    return format(number, "f")


def _refuse_refs(value: object) -> None:
    if isinstance(value, BatchRef):
        raise ValueError(f"{value} only works inside a batch command")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_refs(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_refs(item)
