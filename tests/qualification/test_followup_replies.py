"""How often the bot answers after the hand-off follows `[intake]` in the rules."""

from __future__ import annotations

from redis.asyncio import Redis

from app.config import BusinessRules, IntakeRules
from qualification.dialog import DialogEngine, Reply
from tests.qualification.conftest import SERVICES, FakeClock
from tests.qualification.test_dialog import LEAD, TEXTS, CountingQualifier, chat


def engine_with(
    redis: Redis, key_prefix: str, clock: FakeClock, minutes: int
) -> DialogEngine:
    rules = BusinessRules(
        services=SERVICES,
        intake=IntakeRules(followup_reply_every_minutes=minutes),
    )
    return DialogEngine(
        redis, rules, CountingQualifier(rules), clock, key_prefix=key_prefix
    )


class TestTheReplyInterval:
    async def test_the_bot_stays_quiet_within_the_configured_minutes(
        self, redis: Redis, key_prefix: str, clock: FakeClock
    ) -> None:
        client = chat(
            engine_with(redis, key_prefix, clock, 30), clock, redis, key_prefix
        )
        await client.say(LEAD)
        first = await client.say("а можно ещё брови?")

        clock.advance(minutes=20)
        within = await client.say("алло")
        clock.advance(minutes=10)
        after = await client.say("вы тут?")

        assert first.replies == after.replies == [Reply(TEXTS.forwarded)]
        assert within.replies == []
        assert within.follow_up is not None
        assert not within.follow_up.first_in_burst

    async def test_zero_minutes_answers_every_message(
        self, redis: Redis, key_prefix: str, clock: FakeClock
    ) -> None:
        client = chat(
            engine_with(redis, key_prefix, clock, 0), clock, redis, key_prefix
        )
        await client.say(LEAD)

        turns = [await client.say(text) for text in ("а можно ещё брови?", "алло")]

        assert [turn.replies for turn in turns] == [[Reply(TEXTS.forwarded)]] * 2
