"""Coalescing: independent calls made close together share one `batch` request.

A call or a group waits `window_s` in a lane; the lane leaves as one `batch` of at
most 50 commands when the window ends or the lane is full. While `max_open` requests
of a lane are out, a partial lane waits for one to return (group commit): a slow
portal then gets fewer, fuller requests instead of one small batch per window. 200
simultaneous new leads took 260 requests with windows alone and 40-80 with the wait,
measured on the sandbox. A full lane never waits. Reads and writes travel in separate
lanes, so a failed read-only request is retried by the client while a failed write
request reaches its callers as `WriteOutcomeUnknown`.

A group's commands may reference each other (`BatchRef`, `RefText`); each group is
renamed into a prefix of its own, never split across requests, and its references
renamed with it. Two portal behaviours shape how a request with such a group is sent
(reference §4, observed on the sandbox, which follows the server code):

- a reference to a command that failed resolves to the last level found, i.e. the
  whole `result` group: `fields[CONTACT_IDS][0]=$result[contact]` then binds a deal to
  *another caller's* contact. So a request that carries dependent commands is sent
  with `halt`: nothing runs after a failure, and whatever did not run (other callers'
  commands included) is sent again in the next request. A command that did not run
  is safe to resend.
- `$result[...]` is substituted inside *any* value, including a client's own text.
  A single call whose text looks like a reference is sent directly, outside `batch`;
  in a group such text gets a full-width dollar sign (U+FF04), so a client's message
  can never pull another caller's results into a CRM field.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from connectors.bitrix24.client import (
    MAX_BATCH_COMMANDS,
    BatchResult,
    Command,
    is_read,
)
from connectors.bitrix24.encoding import BatchRef, Encoder, Wire
from connectors.bitrix24.errors import Bitrix24Error, Unavailable, WriteOutcomeUnknown

log = structlog.stdlib.get_logger(__name__)

_LOCAL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# What the portal takes for a reference: `$result[`, `$next[`, … in any case.
_REFERENCE_TEXT = re.compile(r"\$(?=(?:result|next|total|time|error)\[)", re.I)
_FULLWIDTH_DOLLAR = "\uff04"
# A command left out by `halt` is sent again; each round settles at least one
# command, so this only guards against a portal that stops answering sensibly.
_MAX_ROUNDS = MAX_BATCH_COMMANDS + 1


class BatchClient(Protocol):
    """What the batcher needs of a client: its encoder, `batch` and `call`."""

    encoder: Encoder

    async def batch(
        self, commands: Mapping[str, Command], *, halt: bool = False
    ) -> BatchResult: ...

    async def call(
        self, method: str, params: Mapping[str, object] | None = None
    ) -> Any: ...


class RefText(str):
    """Text with references spliced in by the portal, e.g. `RefText("D_", deal)`.

    The portal reads a reference up to the next whitespace, so text glued after one
    would become part of it: a reference must end the text or be followed by a space.
    """

    parts: tuple[str | BatchRef, ...]

    def __new__(cls, *parts: str | BatchRef) -> RefText:
        for part, following in itertools.pairwise(parts):
            if isinstance(part, BatchRef) and (
                not isinstance(following, str) or not following[:1].isspace()
            ):
                raise ValueError("a reference inside text must end it or be spaced")
        text = super().__new__(cls, "".join(str(part) for part in parts))
        text.parts = parts
        return text


@dataclass(eq=False)
class _Entry:
    """One caller's commands, under the names they travel with in one request."""

    commands: dict[str, Command]
    single: bool
    dependent: bool
    read: bool
    future: asyncio.Future[Any]
    tally: set[int] | None
    rounds: int = 0
    wire_names: dict[str, str] = field(default_factory=dict)


@dataclass
class _Lane:
    read: bool
    pending: list[_Entry] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None
    open_requests: int = 0
    due: bool = False  # the window ended while requests were open


_TALLY: ContextVar[set[int] | None] = ContextVar("bitrix24_batch_tally", default=None)


class RequestTally:
    """The batch requests that carried commands of one unit of work."""

    def __init__(self) -> None:
        self.batches: set[int] = set()

    @property
    def requests(self) -> int:
        """How many distinct requests those were (shared ones count once)."""
        return len(self.batches)


class Batcher:
    """Coalesces calls and groups of one portal into `batch` requests."""

    def __init__(
        self,
        client: BatchClient,
        *,
        window_s: float = 0.005,
        max_commands: int = MAX_BATCH_COMMANDS,
        max_open: int = 1,
    ) -> None:
        if not 1 <= max_commands <= MAX_BATCH_COMMANDS:
            raise ValueError(f"max_commands must be 1..{MAX_BATCH_COMMANDS}")
        if window_s < 0 or max_open < 1:
            raise ValueError("window_s must not be negative, max_open positive")
        self.client = client
        self.window_s = window_s
        self.max_commands = max_commands
        self.max_open = max_open
        self.requests = 0  # batch requests sent, for measurements
        self._lanes = {True: _Lane(read=True), False: _Lane(read=False)}
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> Batcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(
        self, method: str, params: Mapping[str, object] | None = None
    ) -> Any:
        """Run one method in the next shared request; answer its result or raise."""
        wire = self.client.encoder.params(params or {})
        if _carries_reference_text(wire):
            # Inside `batch` the portal would substitute it; a direct call keeps it.
            self.requests += 1
            tally = _TALLY.get()
            if tally is not None:
                tally.add(self.requests)  # a request of its own
            return await self.client.call(method, wire)
        entry = self._entry({"c": Command(method, wire)}, single=True)
        return await self._wait(entry)

    async def group(self, commands: Mapping[str, Command]) -> BatchResult:
        """Run commands that may reference each other, all in one request."""
        if not commands:
            return BatchResult({}, {}, {}, {}, {})
        if len(commands) > self.max_commands:
            raise ValueError(
                f"a group of {len(commands)} commands cannot travel in one request "
                f"of at most {self.max_commands}"
            )
        encoded: dict[str, Command] = {}
        for name, command in commands.items():
            if not _LOCAL_NAME.fullmatch(name):
                raise ValueError(f"group command names are identifiers: {name!r}")
            wire = self.client.encoder.params(command.params)
            _check_references(wire, commands.keys(), name)
            encoded[name] = Command(command.method, _defused(wire))
        entry = self._entry(encoded, single=False)
        result: BatchResult = await self._wait(entry)
        return result

    @contextlib.contextmanager
    def track(self) -> Iterator[RequestTally]:
        """Count the requests that carry what this task (and its children) send."""
        tally = RequestTally()
        token = _TALLY.set(tally.batches)
        try:
            yield tally
        finally:
            _TALLY.reset(token)

    async def aclose(self) -> None:
        """Send what is waiting, wait for every request, accept nothing more."""
        self._closed = True
        for lane in self._lanes.values():
            self._flush(lane, force=True)
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    # -- queueing ---------------------------------------------------------------------

    def _entry(self, commands: dict[str, Command], *, single: bool) -> _Entry:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        methods = [command.method for command in commands.values()]
        return _Entry(
            commands=commands,
            single=single,
            dependent=not single and _has_references(commands),
            read=all(is_read(method) for method in methods),
            future=asyncio.get_running_loop().create_future(),
            tally=_TALLY.get(),
        )

    async def _wait(self, entry: _Entry) -> Any:
        self._enqueue(entry)
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._withdraw(entry)
            if entry.future.done() and not entry.future.cancelled():
                entry.future.exception()  # answered as we were cancelled: dropped
            raise

    def _enqueue(self, entry: _Entry, *, now: bool = False) -> None:
        lane = self._lanes[entry.read]
        size = len(entry.commands)
        if lane.size + size > self.max_commands:
            self._flush(lane, force=True)
        lane.pending.append(entry)
        lane.size += size
        if now or self._closed or lane.size >= self.max_commands:
            self._flush(lane, force=True)
        elif lane.timer is None:
            loop = asyncio.get_running_loop()
            lane.timer = loop.call_later(self.window_s, self._flush, lane)

    def _withdraw(self, entry: _Entry) -> None:
        """A cancelled caller's commands leave the lane if they have not left yet."""
        lane = self._lanes[entry.read]
        if entry in lane.pending:
            lane.pending.remove(entry)
            lane.size -= len(entry.commands)

    def _flush(self, lane: _Lane, *, force: bool = False) -> None:
        """Send the lane now; a partial one waits while `max_open` requests are out.

        Group commit: when requests are slow, what arrives meanwhile waits for one
        to return and leaves together, instead of in one small batch per window.
        """
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if not lane.pending:
            return
        if not force and lane.open_requests >= self.max_open:
            lane.due = True
            return
        entries, lane.pending, lane.size, lane.due = lane.pending, [], 0, False
        lane.open_requests += 1
        task = asyncio.get_running_loop().create_task(self._send(entries))
        self._inflight.add(task)
        task.add_done_callback(lambda done: self._returned(lane, done))

    def _returned(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        lane.open_requests -= 1
        if lane.due:
            self._flush(lane)

    # -- one request ------------------------------------------------------------------

    async def _send(self, entries: list[_Entry]) -> None:
        self.requests += 1
        batch_id = self.requests
        commands = _name_commands(entries)
        halt = any(entry.dependent for entry in entries)
        for entry in entries:
            entry.rounds += 1
            if entry.tally is not None:
                entry.tally.add(batch_id)
        try:
            result = await self.client.batch(commands, halt=halt)
        except asyncio.CancelledError:
            _fail_all(entries, _interrupted(entries))
            raise
        except Exception as error:  # every caller of the request learns why
            _fail_all(entries, error)
            return
        self._answer(entries, result, halt=halt)

    def _answer(
        self, entries: list[_Entry], result: BatchResult, *, halt: bool
    ) -> None:
        again: list[_Entry] = []
        for entry in entries:
            if entry.future.done():
                continue  # its caller was cancelled
            ran = any(
                name in result.results or name in result.errors
                for name in entry.wire_names.values()
            )
            if not ran and halt and entry.rounds < _MAX_ROUNDS:
                again.append(entry)
            elif entry.single:
                _answer_single(entry, result)
            else:
                entry.future.set_result(_local_result(entry, result))
        if again:
            log.info(
                "bitrix24.batch.resent", commands=sum(len(e.commands) for e in again)
            )
            for entry in again:
                self._enqueue(entry, now=entry is again[-1])


def _name_commands(entries: list[_Entry]) -> dict[str, Command]:
    """Unique names per request: `e3` for a call, `e4_deal` for a group's `deal`."""
    commands: dict[str, Command] = {}
    for index, entry in enumerate(entries):
        if entry.single:
            entry.wire_names = {"c": f"e{index}"}
        else:
            entry.wire_names = {name: f"e{index}_{name}" for name in entry.commands}
        for name, command in entry.commands.items():
            params = command.params
            if entry.dependent:
                params = _renamed(params, entry.wire_names)
            commands[entry.wire_names[name]] = Command(command.method, params)
    return commands


def _answer_single(entry: _Entry, result: BatchResult) -> None:
    name = entry.wire_names["c"]
    if name in result.errors:
        entry.future.set_exception(result.errors[name])
    elif name in result.results:
        entry.future.set_result(result.results[name])
    else:
        entry.future.set_exception(Bitrix24Error(f"batch command {name} did not run"))


def _local_result(entry: _Entry, result: BatchResult) -> BatchResult:
    def local(values: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: values[wire]
            for name, wire in entry.wire_names.items()
            if wire in values
        }

    return BatchResult(
        results=local(result.results),
        errors=local(result.errors),
        totals=local(result.totals),
        next=local(result.next),
        times=local(result.times),
    )


def _fail_all(entries: list[_Entry], error: BaseException) -> None:
    for entry in entries:
        if not entry.future.done():
            entry.future.set_exception(error)


def _interrupted(entries: list[_Entry]) -> Bitrix24Error:
    if all(entry.read for entry in entries):
        return Unavailable("batch: the request was cancelled", method="batch")
    return WriteOutcomeUnknown(
        "batch: the request was cancelled after it may have been sent; reconcile",
        method="batch",
    )


# -- references -----------------------------------------------------------------------


def _walk_refs(value: object) -> Iterator[BatchRef]:
    if isinstance(value, BatchRef):
        yield value
    elif isinstance(value, RefText):
        yield from (part for part in value.parts if isinstance(part, BatchRef))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_refs(item)


def _has_references(commands: Mapping[str, Command]) -> bool:
    return any(
        any(True for _ in _walk_refs(command.params)) for command in commands.values()
    )


def _check_references(
    params: Mapping[str, Wire], names: Collection[str], own: str
) -> None:
    for ref in _walk_refs(dict(params)):
        if ref.command not in names or ref.command == own:
            raise ValueError(
                f"{own}: {ref} must name another command of the same group"
            )


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """The value with every reference pointing at the renamed command."""
    if isinstance(value, BatchRef):
        return BatchRef(names[value.command], *value.path)
    if isinstance(value, RefText):
        return RefText(*(_renamed(part, names) for part in value.parts))
    if isinstance(value, dict):
        return {key: _renamed(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, names) for item in value]
    return value


def _carries_reference_text(value: object) -> bool:
    """True for text the portal would take for a reference; refs are refused."""
    if isinstance(value, str):
        if isinstance(value, RefText):
            raise ValueError("references belong in a group")
        return bool(_REFERENCE_TEXT.search(value))
    if isinstance(value, BatchRef):
        raise ValueError("references belong in a group")
    if isinstance(value, dict):
        return any(_carries_reference_text(item) for item in value.values())
    if isinstance(value, list):
        return any(_carries_reference_text(item) for item in value)
    return False


def _defused(value: Any) -> Any:
    if isinstance(value, str) and not isinstance(value, RefText):
        if _REFERENCE_TEXT.search(value):
            log.warning("bitrix24.batch.reference_text_defused")
            return _REFERENCE_TEXT.sub(_FULLWIDTH_DOLLAR, value)
        return value
    if isinstance(value, dict):
        return {key: _defused(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_defused(item) for item in value]
    return value
