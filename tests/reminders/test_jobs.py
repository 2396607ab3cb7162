from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
from arq import Retry
from pydantic import SecretStr

from app.config import BusinessRules
from app.settings import Settings
from reminders import jobs as reminder_jobs
from reminders.booking import stamp_of
from reminders.service import Reminders
from tests.connectors.bitrix24.conftest import Wire
from tests.reminders.conftest import (
    MOSCOW,
    TELEGRAM_CHAT,
    VISIT,
    FakeClock,
    Jobs,
    Portal,
    make_rules,
)
from tests.sandbox.conftest import RunningSandbox
from tests.support import REDIS_URL

STAMP = stamp_of(VISIT)


def job_context(
    sandbox: RunningSandbox | None,
    rules: BusinessRules,
    reminders: Reminders | None = None,
    **extra: Any,
) -> dict[str, Any]:
    url = SecretStr(sandbox.webhook) if sandbox is not None else None
    settings = Settings(_env_file=None, redis_url=REDIS_URL, bitrix24_webhook_url=url)
    ctx: dict[str, Any] = {"settings": settings, "rules": rules, "job_try": 1}
    if reminders is not None:
        ctx["reminders"] = reminders
    return ctx | extra


class TestReconcile:
    async def test_plans_booked_and_confirmed_deals_with_a_visit_in_the_horizon(
        self,
        portal: Portal,
        reminders: Reminders,
        rules: BusinessRules,
        jobs: Jobs,
    ) -> None:
        booked = portal.book()
        confirmed = portal.book(stage="PREPAYMENT_INVOICE")
        portal.book(stage="FINAL_INVOICE")
        portal.book(VISIT + timedelta(days=3))  # beyond 48 hours
        ctx = job_context(portal.sandbox, rules, reminders)

        count = await reminder_jobs.reconcile(ctx)

        assert count == 2
        planned = {(args[0], args[2]) for args in await jobs.fire_jobs()}
        assert planned == {
            (booked, "day_before"),
            (booked, "2h"),
            (booked, "call"),
            (booked, "outcome"),
            (confirmed, "outcome"),
        }

    async def test_reads_with_one_filtered_complete_pull(
        self,
        portal: Portal,
        reminders: Reminders,
        rules: BusinessRules,
        wire: Wire,
    ) -> None:
        portal.book()
        ctx = job_context(portal.sandbox, rules, reminders)

        await reminder_jobs.reconcile(ctx)

        [batch] = wire.bodies("/batch")
        method, _, query = batch["cmd"]["p0"].partition("?")
        sent = dict(parse_qsl(query))
        assert method == "crm.deal.list"
        assert sent["filter[@STAGE_ID][0]"] == "PREPARATION"
        assert sent["filter[@STAGE_ID][1]"] == "PREPAYMENT_INVOICE"
        # A day back (outcome checks) to 48 hours ahead, in portal time.
        assert sent["filter[>=UF_CRM_VISIT_AT]"] == "2027-03-09 10:00:00"
        assert sent["filter[<=UF_CRM_VISIT_AT]"] == "2027-03-12 10:00:00"
        assert sent["start"] == "-1"

    async def test_a_deal_whose_event_was_lost_is_planned_by_the_next_run(
        self,
        portal: Portal,
        reminders: Reminders,
        rules: BusinessRules,
        jobs: Jobs,
    ) -> None:
        deal_id = portal.book()
        await reminders.links.remember(deal_id, "telegram", TELEGRAM_CHAT)
        ctx = job_context(portal.sandbox, rules, reminders)
        assert await jobs.fire_jobs() == []

        await reminder_jobs.reconcile(ctx)

        assert (deal_id, STAMP, "day_before") in await jobs.fire_jobs()

    async def test_does_nothing_while_reminders_are_off(self) -> None:
        ctx = job_context(None, BusinessRules())

        assert await reminder_jobs.reconcile(ctx) == 0

    def test_runs_every_few_minutes_in_the_business_zone(self) -> None:
        """Q-3: the next run stays tz-aware across a month boundary."""
        # Known fault Q-3: the next run keeps its time zone across the hour.
        cron = reminder_jobs.reconcile_cron(
            make_rules("[reminders]\nreconcile_minutes = 15\n")
        )
        now = datetime(2025, 1, 31, 23, 50, 10, tzinfo=MOSCOW)

        cron.calculate_next(now)

        assert cron.next_run == datetime(2025, 2, 1, 0, 0, tzinfo=MOSCOW)
        assert cron.next_run is not None
        assert cron.next_run.tzinfo is not None
        assert cron.name == "reminders.reconcile"


class TestFireJob:
    async def test_a_quiet_hours_wait_becomes_an_arq_retry_with_its_delay(
        self,
        portal: Portal,
        reminders: Reminders,
        rules: BusinessRules,
        clock: FakeClock,
    ) -> None:
        deal_id = portal.book()
        await reminders.links.remember(deal_id, "telegram", TELEGRAM_CHAT)
        clock.set(datetime(2027, 3, 10, 22, tzinfo=MOSCOW))
        ctx = job_context(portal.sandbox, rules, reminders)

        with pytest.raises(Retry) as retry:
            await reminder_jobs.fire(ctx, deal_id, STAMP, "day_before")

        assert retry.value.defer_score == 11 * 3600 * 1000

    async def test_a_portal_outage_is_retried_with_backoff(
        self,
        portal: Portal,
        reminders: Reminders,
        rules: BusinessRules,
    ) -> None:
        """B24-2: when the client's retries run out, arq re-queues with a delay."""
        deal_id = portal.book()
        # More 502 pages than the client's own retries ride out.
        portal.fault("bitrix24", method="crm.deal.get", kind="html", times=10)
        ctx = job_context(portal.sandbox, rules, reminders, job_try=3)

        with pytest.raises(Retry) as retry:
            await reminder_jobs.fire(ctx, deal_id, STAMP, "day_before")

        assert retry.value.defer_score == 2 * 60 * 1000

    async def test_without_a_portal_the_job_says_so_and_ends(self) -> None:
        ctx = job_context(None, make_rules())

        assert await reminder_jobs.fire(ctx, 1, STAMP, "day_before") == "not_configured"
        assert await reminder_jobs.watch_deal(ctx, 1) == "not_configured"


class TestWatchJob:
    async def test_plans_the_deal_it_names(
        self, portal: Portal, reminders: Reminders, rules: BusinessRules, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        ctx = job_context(portal.sandbox, rules, reminders)

        assert await reminder_jobs.watch_deal(ctx, deal_id) == "planned"
        assert len(await jobs.fire_jobs()) == 4


class TestFunctions:
    """Q-1: reminder jobs keep no arq result that could block their job ids."""

    def test_no_reminder_job_keeps_a_result(self) -> None:
        # Known fault Q-1: a kept result blocks re-using the job id.
        for function in reminder_jobs.functions():
            assert function.keep_result_s == 0
            assert function.timeout_s is not None
            assert function.timeout_s <= 300

    def test_the_cron_line_keeps_no_result_either(self) -> None:
        assert reminder_jobs.reconcile_cron(BusinessRules()).keep_result_s == 0
