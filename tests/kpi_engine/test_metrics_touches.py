"""First response: which activities are human touches, and when they happened.

Each lead is deal 1 of manager 17 with client 501, created Monday 2025-01-06 10:00
Moscow, in the week 2025-01-06 - 2025-01-13; calendar Mon-Sat 09:00-21:00.
"""

from __future__ import annotations

from typing import Any

import pytest

from connectors.bitrix24.models import Activity
from tests.kpi_engine.builders import (
    BOT,
    activity,
    call_in,
    call_out,
    data,
    deal,
    email_out,
    kpi,
    message_out,
    path,
)

CREATED = "2025-01-06T10:00:00+03:00"
LATER = "2025-01-20T00:00:00+03:00"
DEAL, CONTACT = (2, 1), (3, 501)


def first_response(
    activities: list[Activity], as_of: str = LATER, staff: tuple[int, ...] = (17, BOT)
) -> dict[str, Any]:
    lead = deal(id=1, created=CREATED, contact=501)
    report = kpi(
        data(
            deals=[lead],
            history=path(1, ("NEW", CREATED)),
            activities=activities,
            staff=staff,
        ),
        "2025-01-06",
        "2025-01-13",
        as_of,
    )
    fr: dict[str, Any] = report["total"]["first_response"]
    return fr


def answered_in(minutes: float) -> dict[str, Any]:
    return {
        "median_min": minutes,
        "p90_min": minutes,
        "unanswered": 0,
        "within_sla_share": 1.0 if minutes <= 15 else 0.0,
    }


UNANSWERED = {
    "median_min": None,
    "p90_min": None,
    "unanswered": 1,
    "within_sla_share": 0.0,
}


class TestTouchKinds:
    @pytest.mark.parametrize(
        "touch",
        [
            call_out(id=5, start="2025-01-06T10:07:00+03:00", on=DEAL),
            email_out(id=5, start="2025-01-06T10:07:00+03:00", on=DEAL),
            message_out(id=5, start="2025-01-06T10:07:00+03:00", on=DEAL),
            call_in(
                id=5,
                start="2025-01-06T10:07:00+03:00",
                end="2025-01-06T10:09:00+03:00",
                on=DEAL,
            ),
        ],
        ids=["outgoing call", "e-mail", "provider message", "answered incoming call"],
    )
    def test_a_touch_on_the_deal(self, touch: Activity) -> None:
        assert first_response([touch]) == answered_in(7.0)

    def test_a_touch_on_the_client_counts(self) -> None:
        touch = message_out(id=5, start="2025-01-06T10:07:00+03:00", on=CONTACT)

        assert first_response([touch]) == answered_in(7.0)

    def test_a_touch_bound_through_bindings_counts(self) -> None:
        touch = email_out(
            id=5,
            start="2025-01-06T10:07:00+03:00",
            on=(4, 77),
            bindings=[(4, 77), DEAL],
        )

        assert first_response([touch]) == answered_in(7.0)

    @pytest.mark.parametrize(
        "activity_",
        [
            activity(
                id=5,
                type_id=1,
                direction=2,
                start="2025-01-06T10:07:00+03:00",
                owner=DEAL,
                provider="CRM_MEETING",
            ),
            activity(
                id=5,
                type_id=6,
                direction=2,
                start="2025-01-06T10:07:00+03:00",
                owner=DEAL,
                provider="CRM_TODO",
            ),
            activity(
                id=5,
                type_id=6,
                direction=0,
                start="2025-01-06T10:07:00+03:00",
                owner=DEAL,
                provider="CRM_TODO",
            ),
            activity(
                id=5,
                type_id=4,
                direction=1,
                start="2025-01-06T10:07:00+03:00",
                owner=DEAL,
                provider="CRM_EMAIL",
            ),
            activity(
                id=5,
                type_id=6,
                direction=1,
                start="2025-01-06T10:07:00+03:00",
                owner=DEAL,
                provider="IMOPENLINES_SESSION",
            ),
            call_in(
                id=5,
                start="2025-01-06T10:07:00+03:00",
                end="2025-01-06T10:07:00+03:00",
                on=DEAL,
                completed=False,
            ),
            call_out(id=5, start="2025-01-06T10:07:00+03:00", on=DEAL, completed=False),
            call_out(id=5, start="2025-01-06T10:07:00+03:00", on=(2, 2)),
        ],
        ids=[
            "meeting",
            "to-do",
            "to-do without direction",
            "incoming e-mail",
            "incoming chat",
            "missed call",
            "call not completed",
            "another deal",
        ],
    )
    def test_not_a_touch(self, activity_: Activity) -> None:
        assert first_response([activity_]) == UNANSWERED


class TestTouchAuthors:
    def test_a_bot_is_not_a_human_even_with_a_human_responsible(self) -> None:
        touch = message_out(
            id=5, start="2025-01-06T10:01:00+03:00", on=DEAL, author=BOT
        )

        assert first_response([touch]) == UNANSWERED

    def test_a_user_unknown_to_user_get_is_not_a_human(self) -> None:
        touch = message_out(
            id=5, start="2025-01-06T10:01:00+03:00", on=DEAL, author=901
        )

        assert first_response([touch]) == UNANSWERED

    def test_without_an_author_the_responsible_user_made_the_touch(self) -> None:
        touch = message_out(id=5, start="2025-01-06T10:01:00+03:00", on=DEAL)

        assert first_response([touch]) == answered_in(1.0)

    def test_whoever_made_the_touch_it_is_the_leads_first_response(self) -> None:
        touch = call_out(
            id=5, start="2025-01-06T10:02:00+03:00", on=DEAL, responsible=18
        )

        assert first_response([touch], staff=(17, 18)) == answered_in(2.0)

    def test_a_bot_touch_first_and_a_human_later(self) -> None:
        touches = [
            message_out(id=5, start="2025-01-06T10:00:10+03:00", on=DEAL, author=BOT),
            message_out(id=6, start="2025-01-06T10:20:00+03:00", on=CONTACT),
        ]

        assert first_response(touches) == answered_in(20.0)


class TestTouchTiming:
    def test_an_answered_call_in_progress_at_creation_is_a_touch_then(self) -> None:
        # The portal creates the phone lead a few seconds after the call starts.
        touch = call_in(
            id=5,
            start="2025-01-06T09:59:53+03:00",
            end="2025-01-06T10:03:00+03:00",
            on=CONTACT,
        )

        assert first_response([touch]) == answered_in(0.0)

    def test_a_call_that_ended_before_creation_is_not_a_touch(self) -> None:
        touch = call_in(
            id=5,
            start="2025-01-06T09:50:00+03:00",
            end="2025-01-06T09:59:59+03:00",
            on=CONTACT,
        )

        assert first_response([touch]) == UNANSWERED

    def test_an_outgoing_call_before_creation_is_not_a_touch(self) -> None:
        touch = call_out(
            id=5,
            start="2025-01-06T09:59:00+03:00",
            end="2025-01-06T10:05:00+03:00",
            on=CONTACT,
        )

        assert first_response([touch]) == UNANSWERED

    def test_a_long_call_in_progress_hidden_behind_shorter_ones_is_found(
        self,
    ) -> None:
        touches = [
            call_in(
                id=5,
                start="2025-01-06T09:00:00+03:00",
                end="2025-01-06T10:30:00+03:00",
                on=CONTACT,
            ),
            call_in(
                id=6,
                start="2025-01-06T09:40:00+03:00",
                end="2025-01-06T09:45:00+03:00",
                on=CONTACT,
            ),
        ]

        assert first_response(touches) == answered_in(0.0)

    def test_a_touch_at_as_of_is_visible_and_after_it_hidden(self) -> None:
        touch = call_out(id=5, start="2025-01-06T10:30:00+03:00", on=DEAL)

        assert first_response([touch], "2025-01-06T10:30:00+03:00") == answered_in(30.0)
        assert first_response([touch], "2025-01-06T10:29:59+03:00") == UNANSWERED

    def test_the_earliest_touch_of_deal_and_client_wins(self) -> None:
        touches = [
            call_out(id=5, start="2025-01-06T10:12:00+03:00", on=DEAL),
            email_out(id=6, start="2025-01-06T10:09:30+03:00", on=CONTACT),
            message_out(id=7, start="2025-01-06T10:11:00+03:00", on=DEAL),
        ]

        assert first_response(touches) == answered_in(9.5)

    def test_the_sla_boundary_is_included(self) -> None:
        on_time = call_out(id=5, start="2025-01-06T10:15:00+03:00", on=DEAL)
        late = call_out(id=5, start="2025-01-06T10:15:01+03:00", on=DEAL)

        assert first_response([on_time])["within_sla_share"] == 1.0
        assert first_response([late])["within_sla_share"] == 0.0
        assert first_response([late])["median_min"] == 15.0  # 15.0167 rounded

    def test_a_lead_after_hours_waits_for_the_working_day(self) -> None:
        lead = deal(id=1, created="2025-01-11T20:58:00+03:00", contact=501)
        touch = call_out(id=5, start="2025-01-13T09:03:00+03:00", on=DEAL)

        report = kpi(
            data(
                deals=[lead],
                history=path(1, ("NEW", "2025-01-11T20:58:00+03:00")),
                activities=[touch],
            ),
            "2025-01-06",
            "2025-01-13",
            LATER,
        )

        # Saturday 20:58-21:00, Sunday off, Monday 09:00-09:03.
        assert report["total"]["first_response"]["median_min"] == 5.0


class TestPercentiles:
    def test_median_and_p90_interpolate_between_closest_ranks(self) -> None:
        # Minutes 1, 2, 4, 10 on four leads: median at 1.5 -> 3.0; p90 at 2.7 ->
        # 4 + 0.7 x 6 = 8.2 (numpy's default).
        waits = [1, 2, 4, 10]
        leads = [
            deal(id=index + 1, created=CREATED, contact=600 + index)
            for index in range(4)
        ]
        touches = [
            call_out(
                id=50 + index,
                start=f"2025-01-06T10:{wait:02d}:00+03:00",
                on=(2, index + 1),
            )
            for index, wait in enumerate(waits)
        ]
        history = [r for d in leads for r in path(d.id, ("NEW", CREATED))]

        report = kpi(
            data(deals=leads, history=history, activities=touches),
            "2025-01-06",
            "2025-01-13",
            LATER,
        )

        assert report["total"]["first_response"] == {
            "median_min": 3.0,
            "p90_min": 8.2,
            "unanswered": 0,
            "within_sla_share": 1.0,
        }
