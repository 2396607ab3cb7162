"""Closed months: the figures reported for a month, kept so later changes are named.

Bitrix24 keeps no history of a deal's amount, currency, manager, contact, pipeline or
visit-time field (KPI.md "Time and as_of"), so a month recomputed later can move by
a kopeck or a client. `leadloop kpi close YYYY-MM` stores the month's JSON report and
those values of every deal behind it; a recomputation of that month then carries one
warning per difference.

The record lives in Redis under a key that never expires, not in a file: the API,
every worker and the CLI already share that Redis wherever they run, and `SET NX`
makes the first close win when two processes close at once. A file would be shared
only where a volume is. The cost is that Redis must keep it: persistence on and no
`allkeys-*` eviction, which `durability_problems` checks where Redis lets it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.config import BusinessRules
from kpi_engine import report
from kpi_engine.data import (
    ClosedMonth,
    DealValues,
    InvalidPeriod,
    KpiData,
    KpiError,
)
from kpi_engine.period import month_period
from kpi_engine.result import DataWarning, KpiResult

log = structlog.stdlib.get_logger(__name__)

KEY_PREFIX = "leadloop:kpi:closed"
_DAY = timedelta(days=1)
# What is compared: the figures, not the names or the evidence lists (the deals
# behind those are compared one by one below).
_SKIPPED_KEYS = frozenset({"id", "name", "evidence"})
# DealValues' keys as Bitrix24 names the fields.
_VALUE_NAMES = {
    "opportunity": "OPPORTUNITY",
    "currency_id": "CURRENCY_ID",
    "assigned_by_id": "ASSIGNED_BY_ID",
    "contact_id": "CONTACT_ID",
    "category_id": "CATEGORY_ID",
}
# Replace a record atomically, keeping the one it replaces in a list beside it.
_REPLACE = """
local old = redis.call('GET', KEYS[1])
if old then
  redis.call('LPUSH', KEYS[2], old)
end
redis.call('SET', KEYS[1], ARGV[1])
return old and 1 or 0
"""


class MonthAlreadyClosed(KpiError):
    """The month has a stored record and replacing it was not asked for."""

    def __init__(self, month: str, closed_at: datetime) -> None:
        super().__init__(f"{month} was closed at {closed_at.isoformat()}")
        self.month = month
        self.closed_at = closed_at


class MonthNotOver(KpiError):
    """A month can be closed only once it has ended."""


class NarrowedToManager(KpiError, ValueError):
    """A report of one manager (`--manager`): a closed month keeps every manager."""


def close_month(
    month: str,
    result: KpiResult,
    data: KpiData,
    rules: BusinessRules,
    *,
    closed_at: datetime,
) -> ClosedMonth:
    """The record of `month` from its report: JSON figures and the deals' values.

    The report must be of every manager and of exactly that calendar month: a
    record of less would later name every other manager's figures as changed.
    """
    first, after = month_period(month)
    if result.manager is not None:
        raise NarrowedToManager(
            f"the report is of manager {result.manager} alone (--manager); "
            f"{month} is closed from the report of every manager"
        )
    start, end = _dates(result)
    if (start, end) != (first, after):
        raise InvalidPeriod(
            f"the report covers {start} to {end - _DAY}, not the calendar month "
            f"{month} ({first} to {after - _DAY})"
        )
    period = result.period
    if closed_at < period.end:
        raise MonthNotOver(f"{month} ends at {period.end.isoformat()}")
    visit_field = rules.crm.visit_field
    deals = {
        deal.id: DealValues.of(deal, visit_field)
        for deal in data.deals
        if deal.id in result.counted_deal_ids
    }
    return ClosedMonth(
        month=month, closed_at=closed_at, figures=report.to_json(result), deals=deals
    )


class ClosedMonths:
    """Closed-month records in Redis, one key per month, none of them expiring."""

    def __init__(self, redis: Redis, *, prefix: str = KEY_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix

    def key(self, month: str) -> str:
        return f"{self.prefix}:{month}"

    async def get(self, month: str) -> ClosedMonth | None:
        """The stored record of `month`, or None when it was never closed."""
        raw = await self.redis.get(self.key(month))
        if raw is None:
            return None
        return ClosedMonth.from_json(json.loads(raw))

    async def save(self, closed: ClosedMonth, *, replace: bool = False) -> None:
        """Store the record; replacing one keeps it in the month's `:replaced` list."""
        key = self.key(closed.month)
        value = _dump(closed)
        if not replace:
            if not await self.redis.set(key, value, nx=True):
                raise MonthAlreadyClosed(closed.month, await self._closed_at(key))
            log.info("kpi.month_closed", month=closed.month, deals=len(closed.deals))
            return
        await self.redis.register_script(_REPLACE)(
            keys=[key, f"{key}:replaced"], args=[value]
        )
        log.info("kpi.month_reclosed", month=closed.month, deals=len(closed.deals))

    async def durability_problems(self) -> list[str]:
        """Why Redis might lose a record; empty when it keeps them or will not say."""
        config: dict[str, Any] = {}
        try:
            for name in ("maxmemory-policy", "appendonly", "save"):
                config |= await self.redis.config_get(name)
        except ResponseError:
            # Managed Redis often disables CONFIG; nothing can be said then.
            log.info("kpi.redis_config_unknown")
            return []
        return redis_durability(config)

    async def _closed_at(self, key: str) -> datetime:
        raw = await self.redis.get(key)
        return ClosedMonth.from_json(json.loads(raw)).closed_at


def redis_durability(config: Mapping[str, Any]) -> list[str]:
    """What in Redis' `CONFIG GET` answers would lose a key that never expires."""
    problems = []
    policy = _text(config.get("maxmemory-policy"))
    if policy.startswith("allkeys-"):
        problems.append(
            f"Redis evicts any key under memory pressure (maxmemory-policy "
            f"{policy}); closed months need noeviction or a volatile-* policy"
        )
    if _text(config.get("appendonly")) == "no" and not _text(config.get("save")):
        problems.append(
            "Redis persists nothing (appendonly no, save empty): a restart "
            "loses closed months"
        )
    return problems


def _dump(closed: ClosedMonth) -> str:
    return json.dumps(closed.to_json(), ensure_ascii=False, sort_keys=True)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


# --- differences ---------------------------------------------------------------------


def compare_with_closed(
    result: KpiResult, closed: ClosedMonth, data: KpiData, rules: BusinessRules
) -> list[DataWarning]:
    """One warning per figure and per deal that differs from the closed record."""
    if not _is_month(result, closed.month):
        raise InvalidPeriod(f"the record of {closed.month} is of another period")
    warnings = list(_figure_changes(closed.figures, report.to_json(result)))
    warnings += _deal_changes(result, closed, data, rules)
    if warnings:
        log.info("kpi.closed_month_differs", month=closed.month, count=len(warnings))
    return warnings


def _figure_changes(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> Iterator[DataWarning]:
    yield from _scope_changes("total", (), old.get("total"), new.get("total"))
    old_rows = {row["id"]: row for row in old.get("managers", [])}
    new_rows = {row["id"]: row for row in new.get("managers", [])}
    for manager in sorted(old_rows.keys() | new_rows.keys(), key=int):
        yield from _scope_changes(
            f"manager {manager}",
            (int(manager),),
            old_rows.get(manager),
            new_rows.get(manager),
        )


def _scope_changes(
    scope: str,
    users: tuple[int, ...],
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> Iterator[DataWarning]:
    before, after = dict(_flatten(old or {})), dict(_flatten(new or {}))
    names = list(after) + [name for name in before if name not in after]
    for name in names:
        old_value, new_value = before.get(name), after.get(name)
        if old_value == new_value:
            continue
        yield DataWarning(
            code="closed_month_figure_changed",
            message=f"{scope} {name}: {_shown(old_value)} when closed, "
            f"{_shown(new_value)} now",
            user_ids=users,
        )


def _flatten(figures: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in figures.items():
        if key in _SKIPPED_KEYS:
            continue
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _shown(value: object) -> str:
    return "null" if value is None else str(value)


def _dates(result: KpiResult) -> tuple[date, date]:
    """The report's first day and the day after its last, in the business zone."""
    return result.period.start.date(), result.period.end.date()


def _is_month(result: KpiResult, month: str) -> bool:
    return _dates(result) == month_period(month)


def _deal_changes(
    result: KpiResult, closed: ClosedMonth, data: KpiData, rules: BusinessRules
) -> list[DataWarning]:
    current = {deal.id: deal for deal in data.deals}
    visit_field = rules.crm.visit_field
    names = {**_VALUE_NAMES, "visit_field": visit_field or "visit_field"}
    warnings = []
    for deal_id, old in sorted(closed.deals.items()):
        deal = current.get(deal_id)
        if deal is None:
            continue
        new = DealValues.of(deal, visit_field)
        before, after = old.to_json(), new.to_json()
        changes = [
            f"{names[key]} {_shown(before[key])} → {_shown(after[key])}"
            for key in before
            if before[key] != after[key]
        ]
        if changes:
            warnings.append(
                DataWarning(
                    code="closed_month_deal_changed",
                    message=f"deal {deal_id} changed since the month was closed: "
                    + "; ".join(changes),
                    deal_ids=(deal_id,),
                    user_ids=_users(old.assigned_by_id, new.assigned_by_id),
                )
            )
    for deal_id in sorted(closed.deals.keys() - result.counted_deal_ids):
        fate = "is gone now" if deal_id not in current else "is not counted now"
        warnings.append(
            DataWarning(
                code="closed_month_deal_dropped",
                message=f"deal {deal_id} was counted when the month was closed and "
                f"{fate}",
                deal_ids=(deal_id,),
                user_ids=_users(closed.deals[deal_id].assigned_by_id),
            )
        )
    for deal_id in sorted(result.counted_deal_ids - closed.deals.keys()):
        deal = current.get(deal_id)
        warnings.append(
            DataWarning(
                code="closed_month_deal_added",
                message=f"deal {deal_id} is counted now but was not when the month "
                "was closed",
                deal_ids=(deal_id,),
                user_ids=_users(deal.assigned_by_id if deal else None),
            )
        )
    return warnings


def _users(*user_ids: int | None) -> tuple[int, ...]:
    return tuple(sorted({user for user in user_ids if user is not None}))
