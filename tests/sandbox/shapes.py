"""Compare the shape (keys and value types) of a sandbox answer with a recording."""

from __future__ import annotations

from typing import Any


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def shape_differences(
    actual: Any,
    recorded: Any,
    path: str = "$",
    *,
    allow_missing: frozenset[str] = frozenset(),
) -> list[str]:
    """Differences where the recording has a key the answer lacks or a type differs.

    Keys the answer has beyond the recording are fine (portals differ in fields);
    `allow_missing` names recorded keys a sandbox answer may omit (by key name).
    Where the recording holds `null`, any type is accepted (an empty link, say).
    """
    if recorded is None:
        return []
    if kind(actual) != kind(recorded):
        return [f"{path}: {kind(actual)} where the recording has {kind(recorded)}"]
    problems: list[str] = []
    if isinstance(recorded, dict):
        for key, value in recorded.items():
            if key not in actual:
                if key not in allow_missing:
                    problems.append(f"{path}.{key}: missing")
                continue
            problems += shape_differences(
                actual[key], value, f"{path}.{key}", allow_missing=allow_missing
            )
    elif isinstance(recorded, list) and recorded and actual:
        problems += shape_differences(
            actual[0], recorded[0], f"{path}[0]", allow_missing=allow_missing
        )
    return problems
