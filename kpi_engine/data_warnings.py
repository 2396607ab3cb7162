"""Data warnings for what is counted in P, each naming its deals and users."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from kpi_engine.facts import DealFacts
from kpi_engine.result import DataWarning, LeftOut, ManagerResult


def collect_warnings(
    *,
    counted: Sequence[DealFacts],
    left_out: Iterable[LeftOut],
    deals: Mapping[int, DealFacts],
    managers: Iterable[ManagerResult],
) -> list[DataWarning]:
    """Warnings in a fixed order: checks, visit times, contacts, stages, plans."""
    return [
        *_checks_left_out(left_out, deals),
        *_deal_warning(
            "booked_without_visit_time",
            "booked deals without a visit time are no appointments",
            [f for f in counted if f.booked_at is not None and f.visit_at is None],
        ),
        *_deal_warning(
            "deal_without_contact",
            "deals without a contact take no part in retention",
            [f for f in counted if f.deal.contact_id is None],
        ),
        *_stages_without_role(counted),
        *_managers_without_plan(managers),
    ]


def _checks_left_out(
    left_out: Iterable[LeftOut], deals: Mapping[int, DealFacts]
) -> list[DataWarning]:
    by_reason: dict[str, list[DealFacts]] = defaultdict(list)
    for item in left_out:
        by_reason[item.reason].append(deals[item.deal_id])
    return [
        _warning("check_left_out", f"checks left out of revenue: {reason}", facts)
        for reason, facts in sorted(by_reason.items())
    ]


def _deal_warning(
    code: str, message: str, facts: Sequence[DealFacts]
) -> list[DataWarning]:
    return [_warning(code, message, facts)] if facts else []


def _stages_without_role(counted: Iterable[DealFacts]) -> list[DataWarning]:
    by_stage: dict[str, list[DealFacts]] = defaultdict(list)
    for facts in counted:
        for stage in facts.stages_without_role:
            by_stage[stage].append(facts)
    return [
        _warning(
            "stage_without_role",
            f"stage {stage} has no role in [crm.stages] and is ignored",
            facts,
        )
        for stage, facts in sorted(by_stage.items())
    ]


def _managers_without_plan(managers: Iterable[ManagerResult]) -> list[DataWarning]:
    return [
        DataWarning(
            code="manager_without_plan",
            message=f"manager {row.id} has no plan: percent part 0.00",
            user_ids=(row.id,),
        )
        for row in managers
        if row.bonus is not None and row.bonus.plan is None
    ]


def _warning(code: str, message: str, facts: Iterable[DealFacts]) -> DataWarning:
    deals = {f.deal.id: f.deal.assigned_by_id for f in facts}
    users = {user for user in deals.values() if user is not None}
    return DataWarning(
        code=code,
        message=message,
        deal_ids=tuple(sorted(deals)),
        user_ids=tuple(sorted(users)),
    )
