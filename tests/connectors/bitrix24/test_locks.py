"""Per-person locks in real Redis: hashed names, one holder, bounded waits and TTLs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock

from connectors.bitrix24.locks import ContactLocks, LockTimeout, normalise_phone


@pytest.fixture
def locks(redis: Redis, key_prefix: str) -> ContactLocks:
    return ContactLocks(redis, prefix=f"{key_prefix}:lock", wait_s=2)


class TestNames:
    @pytest.mark.parametrize(
        "spelling", ["89990000001", "+7 999 000-00-01", "79990000001", "9990000001"]
    )
    def test_every_spelling_of_a_phone_names_the_same_lock(
        self, locks: ContactLocks, spelling: str
    ) -> None:
        """B24-6, PH-1: every spelling of one phone takes the same contact lock."""
        assert normalise_phone(spelling) == "+79990000001"
        assert locks.name_for_phone(spelling) == locks.name_for_phone("+79990000001")

    def test_the_name_is_a_hash_without_the_phone(
        self, locks: ContactLocks, redis: Redis, key_prefix: str
    ) -> None:
        name = locks.name_for_phone("+79990000001")

        assert name.startswith(f"{key_prefix}:lock:")
        assert "9990000001" not in name
        assert name != locks.name_for_phone("+79990000002")
        keyed = ContactLocks(redis, prefix=f"{key_prefix}:lock", secret=b"s3cret")
        assert keyed.name_for_phone("+79990000001") != name

    def test_without_a_phone_the_messenger_identity_names_the_lock(
        self, locks: ContactLocks
    ) -> None:
        name = locks.name_for_messenger("TELEGRAM", "100000001")

        assert name != locks.name_for_messenger("VK", "100000001")
        assert "100000001" not in name
        with pytest.raises(ValueError, match="phone or a messenger"):
            locks.for_contact(phone=None, im=None)

    @pytest.mark.parametrize("phone", ["12345", "не телефон", "+7 999"])
    def test_what_is_not_a_phone_is_refused(
        self, locks: ContactLocks, phone: str
    ) -> None:
        with pytest.raises(ValueError, match="phone number"):
            locks.name_for_phone(phone)


class TestHolding:
    async def test_a_second_holder_waits_for_the_first(
        self, locks: ContactLocks, redis_factory: Callable[[], Redis], key_prefix: str
    ) -> None:
        other = ContactLocks(redis_factory(), prefix=f"{key_prefix}:lock", wait_s=2)
        events: list[str] = []

        async def job(locks: ContactLocks, name: str) -> None:
            async with locks.for_contact(phone="+79990000001", im=None):
                events.append(f"{name} in")
                await asyncio.sleep(0.05)
                events.append(f"{name} out")

        first = asyncio.create_task(job(locks, "first"))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, job(other, "second"))

        assert events == ["first in", "first out", "second in", "second out"]

    async def test_different_people_do_not_wait_for_each_other(
        self, locks: ContactLocks
    ) -> None:
        async with locks.for_contact(phone="+79990000001", im=None):
            async with asyncio.timeout(0.5):
                async with locks.for_contact(phone="+79990000002", im=None):
                    pass

    async def test_a_busy_lock_fails_after_the_wait_with_its_name(
        self, locks: ContactLocks, redis: Redis, key_prefix: str
    ) -> None:
        impatient = ContactLocks(redis, prefix=f"{key_prefix}:lock", wait_s=0.1)
        name = locks.name_for_phone("+79990000001")

        async with locks.hold(name):
            with pytest.raises(LockTimeout, match=name) as caught:
                async with impatient.hold(name):
                    pass

        assert "9990000001" not in str(caught.value)

    async def test_the_lock_carries_a_ttl_and_is_gone_after_release(
        self, locks: ContactLocks, redis: Redis
    ) -> None:
        name = locks.name_for_phone("+79990000001")

        async with locks.hold(name):
            ttl_ms = await redis.pttl(name)

        assert 0 < ttl_ms <= 30_000
        assert await redis.exists(name) == 0

    async def test_a_crashed_holder_blocks_others_only_until_the_ttl(
        self, locks: ContactLocks, redis: Redis
    ) -> None:
        name = locks.name_for_phone("+79990000001")
        crashed = Lock(redis, name, timeout=0.2, thread_local=False)
        assert await crashed.acquire(blocking=False)  # and never released

        async with asyncio.timeout(1), locks.hold(name):
            assert await redis.exists(name) == 1

    async def test_a_live_holder_renews_the_lock_past_its_ttl(
        self, redis: Redis, key_prefix: str
    ) -> None:
        short = ContactLocks(redis, prefix=f"{key_prefix}:lock", ttl_s=0.3)
        impatient = ContactLocks(redis, prefix=f"{key_prefix}:lock", wait_s=0.05)
        name = short.name_for_phone("+79990000001")

        async with short.hold(name):
            await asyncio.sleep(0.6)  # twice the TTL
            with pytest.raises(LockTimeout):
                async with impatient.hold(name):
                    pass

    async def test_a_lost_lock_is_reported_not_raised(
        self, locks: ContactLocks, redis: Redis
    ) -> None:
        name = locks.name_for_phone("+79990000001")

        with structlog.testing.capture_logs() as logs:
            async with locks.hold(name):
                await redis.delete(name)

        assert [entry["event"] for entry in logs] == ["bitrix24.lock.lost"]
