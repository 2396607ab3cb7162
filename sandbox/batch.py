"""`batch`: up to 50 commands, `$result[...]` references, per-command errors."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from zoneinfo import ZoneInfo

from sandbox import protocol
from sandbox.engine import Sandbox
from sandbox.phpform import densify, parse_str, truthy
from sandbox.protocol import RestError, Timing, iso_in_zone
from sandbox.registry import Auth, lookup

MAX_COMMANDS = 50
NOT_IN_BATCH = frozenset({"batch", "download", "upload"})

# `$result[cmd][path…]`, `$next[cmd]`, `$total[cmd]`, `$time[cmd][…]`, `$error[cmd]`.
_REFERENCE = re.compile(
    r"\$(result|next|total|time|error)((?:\[[^\[\]]*\])+)", re.IGNORECASE
)


class BatchState:
    """The groups a batch answers with, filled command by command."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}
        self.error: dict[str, Any] = {}
        self.total: dict[str, Any] = {}
        self.next: dict[str, Any] = {}
        self.time: dict[str, Any] = {}

    def group(self, name: str) -> dict[str, Any]:
        return {
            "result": self.result,
            "next": self.next,
            "total": self.total,
            "time": self.time,
            "error": self.error,
        }[name.lower()]

    def render(self) -> dict[str, Any]:
        return {
            "result": _group(self.result),
            "result_error": _group(self.error),
            "result_total": _group(self.total),
            "result_next": _group(self.next),
            "result_time": _group(self.time),
        }


def _group(values: dict[str, Any]) -> Any:
    # PHP json_encode: an empty array is `[]`, a dense 0..n-1 array a list.
    if not values:
        return []
    return densify(dict(values))


def _commands(raw: Any) -> list[tuple[str, str]]:
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = [(str(i), v) for i, v in enumerate(raw)]
    else:
        return []
    return [(str(key), value) for key, value in items if isinstance(value, str)]


def _lookup_path(state: BatchState, group: str, path: list[str]) -> Any:
    node: Any = state.group(group)
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            break  # a missing path stops at the last level found
    return node


def _scalar_text(value: Any) -> str | None:
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def substitute(value: Any, state: BatchState) -> Any:
    """Replace references value by value, after the command was parsed."""
    if isinstance(value, dict):
        return {k: substitute(v, state) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, state) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    whole = _REFERENCE.fullmatch(value)
    if whole:
        return _lookup_path(state, whole.group(1), _path(whole.group(2)))

    def replace(match: re.Match[str]) -> str:
        found = _lookup_path(state, match.group(1), _path(match.group(2)))
        text = _scalar_text(found)
        return match.group(0) if text is None else text

    return _REFERENCE.sub(replace, value)


def _path(brackets: str) -> list[str]:
    return re.findall(r"\[([^\[\]]*)\]", brackets)


async def run_batch(
    sandbox: Sandbox, params: dict[str, Any], auth: Auth
) -> dict[str, Any]:
    """Execute a batch and return its `result` object (the envelope is the caller's)."""
    lowered = {str(k).lower(): v for k, v in params.items()}
    halt = truthy(lowered.get("halt", 0))
    state = BatchState()

    for index, (key, command) in enumerate(_commands(lowered.get("cmd"))):
        if index >= MAX_COMMANDS:
            state.error[key] = {
                "error": "ERROR_BATCH_LENGTH_EXCEEDED",
                "error_description": "Max batch length exceeded",
            }
            continue
        failed = await _run_command(sandbox, key, command, auth, state)
        if failed and halt:
            break
    return state.render()


async def _run_command(
    sandbox: Sandbox, key: str, command: str, auth: Auth, state: BatchState
) -> bool:
    """Run one command into the state; True when it failed."""
    name, _, query = command.partition("?")
    name = name.strip().lower()
    try:
        if name in NOT_IN_BATCH:
            raise RestError(
                "ERROR_BATCH_METHOD_NOT_ALLOWED", "Method is not allowed for batch usage"
            )
        spec = lookup(name)
        if spec is None:
            raise protocol.method_not_found()
        sandbox.stats.batch_command(spec.name)
        params = substitute(parse_str(query), state)
        fault = sandbox.faults.take(spec.name, in_batch=True)
        extra = 0.0
        if fault is not None:
            if fault.kind == "latency":
                await asyncio.sleep(fault.seconds)
                extra = fault.seconds
            elif fault.kind in ("error", "status", "html"):
                raise RestError(fault.code, fault.description, fault.status)
        outcome, timing = sandbox.invoke(
            spec, params, auth, in_batch=True, extra_seconds=extra
        )
    except RestError as error:
        state.error[key] = {
            "error": error.code,
            "error_description": error.description,
        }
        return True

    state.result[key] = outcome.result
    if outcome.total is not None:
        state.total[key] = outcome.total
    if outcome.next is not None:
        state.next[key] = outcome.next
    state.time[key] = _command_time(timing, sandbox.portal.zone)
    return False


def _command_time(timing: Timing, zone: ZoneInfo) -> dict[str, Any]:
    duration = timing.finished - timing.started
    entry: dict[str, Any] = {
        "start": timing.started,
        "finish": timing.finished,
        "duration": duration,
        "processing": duration,
        "date_start": iso_in_zone(timing.started, zone),
        "date_finish": iso_in_zone(timing.finished, zone),
        "operating": timing.operating,
    }
    if timing.operating_reset_at is not None:
        entry["operating_reset_at"] = timing.operating_reset_at
    return entry
