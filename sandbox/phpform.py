"""PHP-style request parsing: `parse_str` brackets, `intval` and truthiness.

Bitrix24 runs on PHP, so a faithful stand-in has to read form and query strings the way
`parse_str` does (`fields[PHONE][0][VALUE]=…`, `select[]=ID`) and judge values the way
PHP compares them (the string "false" is true).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

_INT_KEY = re.compile(r"^(0|-?[1-9][0-9]*)$")
_LEADING_INT = re.compile(r"^\s*([+-]?[0-9]+)")


def parse_str(query: str) -> dict[str, Any]:
    """Parse a query or form string into nested PHP arrays (dicts, lists when dense)."""
    root: dict[str, Any] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        key = unquote_plus(raw_key)
        value = unquote_plus(raw_value)
        if not key:
            continue
        _assign(root, _split_key(key), value)
    return densify(root)


def _split_key(key: str) -> list[str | None]:
    """`a[b][]` -> ["a", "b", None]; a broken bracket keeps the rest literal, as PHP."""
    start = key.find("[")
    if start <= 0:
        return [_php_top_name(key)]
    parts: list[str | None] = [_php_top_name(key[:start])]
    rest = key[start:]
    while rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            break
        inner = rest[1:end]
        parts.append(inner if inner != "" else None)
        rest = rest[end + 1 :]
    return parts


def _php_top_name(name: str) -> str:
    # PHP turns spaces and dots in top-level variable names into underscores.
    return name.replace(" ", "_").replace(".", "_")


def _assign(node: dict[str, Any], path: list[str | None], value: str) -> None:
    for index, part in enumerate(path):
        last = index == len(path) - 1
        key = _next_index(node) if part is None else part
        if last:
            node[key] = value
            return
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child


def _next_index(node: dict[str, Any]) -> str:
    numbers = [int(k) for k in node if _INT_KEY.match(k)]
    return str(max(numbers) + 1 if numbers else 0)


def densify(value: Any) -> Any:
    """Turn dicts keyed exactly 0..n-1 in order into lists, recursively."""
    if isinstance(value, dict):
        converted = {k: densify(v) for k, v in value.items()}
        if converted and list(converted) == [str(i) for i in range(len(converted))]:
            return list(converted.values())
        return converted
    if isinstance(value, list):
        return [densify(v) for v in value]
    return value


def intval(value: Any, default: int = 0) -> int:
    """PHP `intval`: leading digits of a string, 0 when there are none."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        match = _LEADING_INT.match(value)
        return int(match.group(1)) if match else 0
    return 1 if value else 0


def truthy(value: Any) -> bool:
    """PHP truthiness: "", "0", 0, empty arrays and null are false; "false" is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value not in ("", "0")
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (list, dict)):
        return len(value) > 0
    return True


def lower_keys(params: dict[str, Any], *names: str) -> dict[str, Any]:
    """Find top-level parameters by any of lower, UPPER or Title case, as legacy CRM does."""
    found: dict[str, Any] = {}
    for name in names:
        for variant in (name.lower(), name.upper(), name.title()):
            if variant in params:
                found[name.lower()] = params[variant]
                break
    return found
