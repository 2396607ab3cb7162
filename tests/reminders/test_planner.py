from __future__ import annotations

from datetime import datetime, timedelta

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from structlog.testing import capture_logs

from reminders.booking import stamp_of
from reminders.keys import ReminderKeys
from reminders.service import Reminders
from tests.reminders.conftest import (
    MOSCOW,
    VISIT,
    VISIT_FIELD,
    FakeClock,
    Jobs,
    MakeReminders,
    Portal,
    make_rules,
)

STAMP = stamp_of(VISIT)


def ms(moment: datetime) -> float:
    return moment.timestamp() * 1000


class TestWatch:
    async def test_a_booking_queues_each_reminder_and_check_for_its_time(
        self, portal: Portal, reminders: Reminders, jobs: Jobs, keys: ReminderKeys
    ) -> None:
        deal_id = portal.book()

        planned = await reminders.planner.watch(deal_id)

        assert len(planned.scheduled) == 4
        queued = {args[2]: score for _, args, score in await jobs.queued()}
        assert queued == {
            "day_before": ms(datetime(2027, 3, 10, 12, tzinfo=MOSCOW)),
            "call": ms(datetime(2027, 3, 11, 12, tzinfo=MOSCOW)),
            "2h": ms(datetime(2027, 3, 11, 13, tzinfo=MOSCOW)),
            "outcome": ms(datetime(2027, 3, 12, 9, tzinfo=MOSCOW)),
        }
        assert keys.job_id(deal_id, STAMP, "2h") in planned.scheduled

    async def test_jobs_carry_ids_only(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()

        await reminders.planner.watch(deal_id)

        assert sorted(await jobs.fire_jobs()) == sorted(
            (deal_id, STAMP, kind) for kind in ("day_before", "2h", "call", "outcome")
        )

    async def test_the_same_deal_planned_twice_keeps_one_job_each(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()

        await reminders.planner.watch(deal_id)
        again = await reminders.planner.watch(deal_id)

        assert (again.scheduled, again.cancelled) == ((), ())
        assert len(again.kept) == 4
        assert len(await jobs.fire_jobs()) == 4

    async def test_a_moved_visit_replaces_the_old_jobs(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        later = VISIT + timedelta(days=1)
        portal.update(deal_id, **{VISIT_FIELD: later.isoformat()})

        moved = await reminders.planner.watch(deal_id)

        assert len(moved.cancelled) == 4
        assert {args[1] for args in await jobs.fire_jobs()} == {stamp_of(later)}

    async def test_a_cancelled_visit_drops_every_job(
        self, portal: Portal, reminders: Reminders, jobs: Jobs, redis: ArqRedis
    ) -> None:
        deal_id = portal.book()
        first = await reminders.planner.watch(deal_id)
        portal.update(deal_id, STAGE_ID="FINAL_INVOICE")

        dropped = await reminders.planner.watch(deal_id)

        assert dropped.reason == "role_cancelled"
        assert await jobs.queued() == []
        for job_id in first.scheduled:
            assert not await redis.exists(job_key_prefix + job_id)

    async def test_a_confirmed_visit_keeps_only_its_outcome_check(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        portal.update(deal_id, STAGE_ID="PREPAYMENT_INVOICE")

        await reminders.planner.watch(deal_id)

        assert await jobs.fire_jobs() == [(deal_id, STAMP, "outcome")]

    async def test_a_deleted_deal_drops_every_job(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        portal.sandbox.result("crm.deal.delete", {"id": deal_id})

        gone = await reminders.planner.watch(deal_id)

        assert gone.reason == "deal_deleted"
        assert await jobs.queued() == []

    async def test_a_running_job_is_left_to_stand_down_by_itself(
        self,
        portal: Portal,
        reminders: Reminders,
        redis: ArqRedis,
        keys: ReminderKeys,
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        running = keys.job_id(deal_id, STAMP, "day_before")
        await redis.set(in_progress_key_prefix + running, b"1")
        portal.update(deal_id, STAGE_ID="FINAL_INVOICE")

        await reminders.planner.watch(deal_id)

        assert await redis.exists(job_key_prefix + running)


class TestJobIds:
    async def test_a_kept_result_does_not_block_a_reminder_id(
        self,
        portal: Portal,
        reminders: Reminders,
        jobs: Jobs,
        redis: ArqRedis,
        keys: ReminderKeys,
    ) -> None:
        """Q-1: a kept arq result does not stop a reminder from being scheduled."""
        # Known fault Q-1: arq's enqueue_job answers None while a result is kept.
        deal_id = portal.book()
        job_id = keys.job_id(deal_id, STAMP, "2h")
        await redis.set(result_key_prefix + job_id, b"an old result")

        planned = await reminders.planner.watch(deal_id)

        assert job_id in planned.scheduled
        assert (deal_id, STAMP, "2h") in await jobs.fire_jobs()

    async def test_a_finished_reminder_is_not_queued_again(
        self,
        portal: Portal,
        reminders: Reminders,
        jobs: Jobs,
        redis: ArqRedis,
        keys: ReminderKeys,
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        await redis.set(keys.done(deal_id, STAMP, "day_before"), "sent")
        await redis.delete(job_key_prefix + keys.job_id(deal_id, STAMP, "day_before"))
        await redis.zrem(
            redis.default_queue_name, keys.job_id(deal_id, STAMP, "day_before")
        )

        await reminders.planner.watch(deal_id)

        kinds = {args[2] for args in await jobs.fire_jobs()}
        assert kinds == {"2h", "call", "outcome"}

    async def test_changed_rules_move_a_queued_job_to_its_new_time(
        self,
        portal: Portal,
        make_reminders: MakeReminders,
        jobs: Jobs,
    ) -> None:
        deal_id = portal.book()
        await make_reminders().planner.watch(deal_id)
        later_noon = make_rules("[reminders]\nday_before_at = '17:00'\n")

        moved = await make_reminders(rules=later_noon).planner.watch(deal_id)

        queued = {args[2]: score for _, args, score in await jobs.queued()}
        assert queued["day_before"] == ms(datetime(2027, 3, 10, 17, tzinfo=MOSCOW))
        assert len(moved.scheduled) == 1


class TestObserve:
    async def test_a_listed_deal_adds_jobs_and_cancels_none(
        self, portal: Portal, reminders: Reminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        await reminders.planner.watch(deal_id)
        later = VISIT + timedelta(hours=1)
        portal.update(deal_id, **{VISIT_FIELD: later.isoformat()})
        listed = await reminders.crm.deal(deal_id)
        assert listed is not None

        observed = await reminders.planner.observe(listed)

        assert observed.cancelled == ()
        assert {args[1] for args in await jobs.fire_jobs()} == {STAMP, stamp_of(later)}


class TestRulesOff:
    async def test_without_booked_stages_nothing_is_planned(
        self, portal: Portal, make_reminders: MakeReminders, jobs: Jobs
    ) -> None:
        deal_id = portal.book()
        rules = make_rules("[reminders]\nenabled = false\n")

        planned = await make_reminders(rules=rules).planner.watch(deal_id)

        assert planned.reason == "disabled"
        assert await jobs.queued() == []


class TestQuietHoursWithoutAWay:
    async def test_a_reminder_with_no_allowed_time_is_skipped_with_a_log_line(
        self, portal: Portal, reminders: Reminders, jobs: Jobs, clock: FakeClock
    ) -> None:
        early = datetime(2027, 3, 11, 9, tzinfo=MOSCOW)
        deal_id = portal.book(early)
        clock.set(datetime(2027, 3, 10, 22, tzinfo=MOSCOW))

        with capture_logs() as logged:
            await reminders.planner.watch(deal_id)

        kinds = {args[2] for args in await jobs.fire_jobs()}
        assert "2h" not in kinds
        [line] = [
            entry
            for entry in logged
            if entry["event"] == "reminders.slot_dropped"
            and entry["reason"] == "no_allowed_time"
        ]
        assert (line["kind"], line["log_level"], line["deal_id"]) == (
            "2h",
            "info",
            deal_id,
        )
