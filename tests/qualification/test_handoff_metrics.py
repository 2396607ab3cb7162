from __future__ import annotations

from prometheus_client import REGISTRY

from tests.qualification.test_handoff import (
    Desk,
    desk,
    key_root,
    lead,
    portal,
    portal_server,
)

__all__ = ["desk", "key_root", "portal", "portal_server"]  # fixtures


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestHandOffMetrics:
    async def test_a_lead_in_the_crm_counts_with_its_time_from_the_dialog(
        self, desk: Desk
    ) -> None:
        handed = sample("leadloop_handoffs_total", outcome="handed_off")
        timed = sample("leadloop_lead_to_crm_seconds_count")
        total = sample("leadloop_lead_to_crm_seconds_sum")
        new = lead()
        desk.clock.advance(seconds=42)

        await desk.handoff.hand_off(new)

        assert sample("leadloop_handoffs_total", outcome="handed_off") == handed + 1
        assert sample("leadloop_lead_to_crm_seconds_count") == timed + 1
        assert sample("leadloop_lead_to_crm_seconds_sum") == total + 42

    async def test_a_replay_counts_as_replayed_and_is_not_timed_again(
        self, desk: Desk
    ) -> None:
        new = lead()
        await desk.handoff.hand_off(new)
        replayed = sample("leadloop_handoffs_total", outcome="replayed")
        timed = sample("leadloop_lead_to_crm_seconds_count")

        await desk.handoff.hand_off(new)

        assert sample("leadloop_handoffs_total", outcome="replayed") == replayed + 1
        assert sample("leadloop_lead_to_crm_seconds_count") == timed
