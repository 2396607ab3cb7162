"""`batch`: up to 50 commands, `$result[...]` references, per-command errors."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from zoneinfo import ZoneInfo

from sandbox import protocol
from sandbox.engine import Sandbox
from sandbox.phpform import parse_str, truthy
from sandbox.protocol import RestError, Timing, iso_in_zone
from sandbox.registry import Auth, lookup

MAX_COMMANDS = 50
NOT_IN_BATCH = frozenset({"batch", "download", "upload"})

# `$result[cmd][path…]`, `$next[cmd]`, `$total[cmd]`, `$time[cmd][…]`, `$error[cmd]`.
_REFERENCE = re.compile(r"\$(result|next|total|time|error)(\S*)", re.IGNORECASE)
_PATH_PART = re.compile(r"\[([^\]]+)\]")
_LIST_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")


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
    # PHP json_encode: an empty array is `[]`, keys exactly 0..n-1 in order a list.
    # Only the group itself: the commands' own results keep the shape they had.
    if not values:
        return []
    if list(values) == [str(i) for i in range(len(values))]:
        return list(values.values())
    return dict(values)


def _commands(raw: Any) -> list[tuple[str, Any]]:
    if isinstance(raw, dict):
        return [(str(key), value) for key, value in raw.items()]
    if isinstance(raw, list):
        return [(str(index), value) for index, value in enumerate(raw)]
    return []


def _lookup_path(state: BatchState, group: str, path: list[str]) -> Any:
    """Walk the path while each step is set (PHP `isset`: present and not null)."""
    node: Any = state.group(group)
    for part in path:
        if isinstance(node, dict) and node.get(part) is not None:
            node = node[part]
        elif isinstance(node, list) and _LIST_INDEX.match(part):
            index = int(part)
            if index >= len(node) or node[index] is None:
                break
            node = node[index]
        else:
            break  # a missing path stops at the last level found
    return node


def _scalar_text(value: Any) -> str | None:
    """PHP string conversion of a scalar; None for arrays, which are not spliced in."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | str):
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
    return _substitute_text(value, state)


def _substitute_text(text: str, state: BatchState) -> Any:
    # `CRestUtil::processBatchElement`: a reference runs to the next whitespace, so
    # text glued after it (`$result[a][ID]_x`) belongs to it and is replaced too;
    # the path is every non-empty `[...]` inside. A value that is exactly one
    # reference becomes the referenced value itself, arrays included.
    replaced: Any = text
    for match in _REFERENCE.finditer(text):
        path = _PATH_PART.findall(match.group(2))
        if not path:
            continue  # `$result` with no `[...]` is not a reference
        found = _lookup_path(state, match.group(1), path)
        if match.group(0) == text:
            return found
        spliced = _scalar_text(found)
        # PHP 8 cannot splice an array into a string; the reference is left as sent.
        if spliced is not None and isinstance(replaced, str):
            replaced = replaced.replace(match.group(0), spliced)
    return replaced


def command_methods(params: dict[str, Any]) -> list[str]:
    """The method names a batch's commands call (the first 50), lower-cased."""
    lowered = {str(k).lower(): v for k, v in params.items()}
    names = []
    for _, command in _commands(lowered.get("cmd"))[:MAX_COMMANDS]:
        if isinstance(command, str):
            names.append(command.partition("?")[0].strip().lower())
    return names


async def run_batch(
    sandbox: Sandbox, params: dict[str, Any], auth: Auth
) -> dict[str, Any]:
    """Execute a batch and return its `result` object (the envelope is the caller's)."""
    lowered = {str(k).lower(): v for k, v in params.items()}
    halt = truthy(lowered.get("halt", 0))
    state = BatchState()

    # `methodsBatch` counts every entry, strings or not, against the 50; entries past
    # it fail without running, and `halt` stops at the first such failure as well.
    for index, (key, command) in enumerate(_commands(lowered.get("cmd"))):
        if index >= MAX_COMMANDS:
            state.error[key] = {
                "error": "ERROR_BATCH_LENGTH_EXCEEDED",
                "error_description": "Max batch length exceeded",
            }
            failed = True
        elif not isinstance(command, str):
            continue
        else:
            failed = await _run_command(sandbox, key, command, auth, state)
        if failed and halt:
            break
    return state.render()


async def _run_command(
    sandbox: Sandbox, key: str, command: str, auth: Auth, state: BatchState
) -> bool:
    """Run one command into the state; True when it failed."""
    name, _, query = command.partition("?")
    name = name.lower()
    try:
        if name in NOT_IN_BATCH:
            raise RestError(
                "ERROR_BATCH_METHOD_NOT_ALLOWED",
                "Method is not allowed for batch usage",
            )
        spec = lookup(name)
        if spec is None:
            raise protocol.method_not_found()
        sandbox.stats.batch_command(spec.name)
        params = substitute(parse_str(query), state)
        extra = await _batch_fault(sandbox, spec.name)
        outcome, timing = sandbox.invoke(
            spec, params, auth, in_batch=True, extra_seconds=extra
        )
    except RestError as error:
        state.error[key] = error.body()
        return True

    state.result[key] = outcome.result
    if outcome.total is not None:
        state.total[key] = outcome.total
    if outcome.next is not None:
        state.next[key] = outcome.next
    state.time[key] = _command_time(timing, sandbox.portal.zone)
    return False


async def _batch_fault(sandbox: Sandbox, method: str) -> float:
    """Apply a scripted fault to one command; returns the latency it added."""
    fault = sandbox.faults.take(method, in_batch=True)
    if fault is None:
        return 0.0
    if fault.kind == "latency":
        await asyncio.sleep(fault.seconds)
        return fault.seconds
    raise RestError(fault.code, fault.description, fault.status)


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
