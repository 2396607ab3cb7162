"""PHP-style request parsing: `parse_str` brackets, `intval` and truthiness.

Bitrix24 runs on PHP, so a faithful stand-in has to read form and query strings the way
`parse_str` does (`fields[PHONE][0][VALUE]=…`, `select[]=ID`) and judge values the way
PHP compares them (the string "false" is true).
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import unquote_plus

_INT_KEY = re.compile(r"^(0|-?[1-9][0-9]*)$")
# PHP reads the leading numeric part of a string; "1e3" and "2.9" count as numbers.
_LEADING_NUMBER = re.compile(
    r"^[ \t\n\r\v\f]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)


def parse_str(query: str) -> dict[str, Any]:
    """Parse a query or form string into nested PHP arrays (dicts, lists when dense)."""
    root: dict[str, Any] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        path = _split_key(unquote_plus(raw_key))
        if path is None:
            continue
        _assign(root, path, unquote_plus(raw_value))
    dense: dict[str, Any] = {k: densify(v) for k, v in root.items()}
    return dense


def _split_key(key: str) -> list[str | None] | None:
    """`a[b][]` -> ["a", "b", None]; None when PHP would drop the pair.

    Follows `php_register_variable_ex`: leading spaces are skipped, an empty name is
    dropped, an unclosed first bracket turns into part of the name (`a[b` -> `a_b`),
    and anything after the last closed bracket is ignored.
    """
    key = key.lstrip(" ")
    start = key.find("[")
    if start == -1:
        return [_php_top_name(key)] if key else None
    if start == 0:
        return None
    parts: list[str | None] = [_php_top_name(key[:start])]
    rest = key[start:]
    while rest.startswith("["):
        end = rest.find("]")
        if end == -1:
            if len(parts) == 1:
                # Not an index: PHP keeps it in the name, brackets and dots as "_".
                return [_php_top_name(key[:start] + "_" + rest[1:])]
            break
        inner = rest[1:end]
        parts.append(None if inner in ("", " ") else inner)
        rest = rest[end + 1 :]
    return parts


def _php_top_name(name: str) -> str:
    # PHP turns spaces, dots and stray brackets in variable names into underscores.
    return name.replace(" ", "_").replace(".", "_").replace("[", "_")


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
    """PHP `intval`: the leading number of a string, 0 when there is none."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0
    if isinstance(value, str):
        return _intval_text(value)
    return 1 if value else 0


def _intval_text(text: str) -> int:
    match = _LEADING_NUMBER.match(text)
    if match is None:
        return 0
    number = match.group(1)
    if number.lstrip("+-").isdigit():
        return int(number)
    as_float = float(number)
    return int(as_float) if math.isfinite(as_float) else 0


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
    """Top-level parameters in lower, UPPER or Title case, as legacy CRM reads them."""
    found: dict[str, Any] = {}
    for name in names:
        for variant in (name.lower(), name.upper(), name.title()):
            if variant in params:
                found[name.lower()] = params[variant]
                break
    return found
