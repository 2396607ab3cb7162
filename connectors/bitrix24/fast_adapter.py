"""fast-bitrix24's `get_all` behind the gateway's pull interface, for comparison only.

fast-bitrix24 is the client leadloop was asked to use. This module lets the evidence
tests (tests/connectors/bitrix24/test_fast_bitrix24_evidence.py) and the pull
benchmark (bench/gateway_pull.py) run it and the gateway's own `Puller` on the same
sandbox scenarios. No production path imports it (fast-bitrix24 is a development
dependency, installed with the `dev` extra); the README's "Dependencies" section
gives the decision and the figures.

Filters and selects go through untouched, so what is observed is fast-bitrix24's own
behaviour. The one thing added is sorting by id: `get_all` de-duplicates its rows
through a set and returns them in no order, and its README leaves sorting to the
caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import aiohttp
from fast_bitrix24 import BitrixAsync

from connectors.bitrix24.errors import IncompletePull
from connectors.bitrix24.pull import ListedEntity, resolve_entity

# fast-bitrix24 sets its own logger to DEBUG and logs whole response bodies (names,
# phones) once the application has a root handler.
logging.getLogger("fast_bitrix24").setLevel(logging.WARNING)


class FastBitrixPuller:
    """Pulls a list with fast-bitrix24's `get_all`, shaped like `Puller.pull`."""

    def __init__(self, bitrix: Any) -> None:
        self.bitrix = bitrix

    async def pull(
        self,
        entity: str | ListedEntity,
        filter: Mapping[str, object] | None = None,
        select: Sequence[str] | None = None,
        *,
        after_id: int = 0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Whatever `get_all` returns for the filter, sorted by id."""
        spec = resolve_entity(entity)
        params: dict[str, object] = dict(spec.fixed_params)
        wanted = dict(filter or {})
        if after_id:
            wanted[f">{spec.id_field}"] = after_id
        if wanted:
            params["filter"] = wanted
        if select:
            params["select"] = list(select)

        rows = await self.bitrix.get_all(spec.list_method, params)

        for row in sorted(_rows(rows), key=lambda row: _row_id(spec, row)):
            yield row


@asynccontextmanager
async def fast_bitrix_puller(
    webhook: str,
    *,
    timeout_s: float = 60.0,
    trace_configs: Iterable[aiohttp.TraceConfig] = (),
) -> AsyncIterator[FastBitrixPuller]:
    """fast-bitrix24 set up the safest way it allows, on one aiohttp session.

    As reference/fast-bitrix24.md §5 advises: no progress bars, 2.0 requests a second
    (an int fails its type check), a session that raises for HTTP errors (the library
    expects one) with an explicit timeout (aiohttp's default is 300 s).
    """
    session = aiohttp.ClientSession(
        raise_for_status=True,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trace_configs=list(trace_configs),
    )
    async with session:
        bitrix = BitrixAsync(
            webhook, verbose=False, requests_per_second=2.0, client=session
        )
        yield FastBitrixPuller(bitrix)


def _rows(answer: object) -> list[dict[str, Any]]:
    # get_all answers None for a list it could not read and a dict for some one-key
    # results (fb#258): shown as an error here rather than as an empty list.
    if not isinstance(answer, list) or not all(isinstance(row, dict) for row in answer):
        raise IncompletePull(
            f"fast-bitrix24 get_all answered {type(answer).__name__}, not rows"
        )
    return cast(list[dict[str, Any]], answer)


def _row_id(spec: ListedEntity, row: Mapping[str, Any]) -> int:
    return int(row[spec.id_field])
