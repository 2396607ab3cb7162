"""One intake at a time per person: a Redis lock named by a hash of the phone.

Known fault B24-6: two intake jobs for the same person both look the contact up, find
nothing, and both create it. Under this lock the second job waits, looks again after
the first one's contact exists, and reuses it.

The lock is redis-py's `redis.asyncio.lock.Lock` (token per holder, atomic release
by Lua). Its name is a keyed BLAKE2b hash of the normalised E.164 phone (or of a
messenger id when there is no phone): no phone number reaches Redis. The TTL bounds
how long a crashed holder blocks others; a live holder renews it every third of the
TTL, so a slow portal cannot let a second job in halfway through. The wait is bounded
too: past it `LockTimeout` says which lock was busy, and the job can be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import phonenumbers
import structlog
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

log = structlog.stdlib.get_logger(__name__)


class LockTimeout(TimeoutError):
    """The contact's lock stayed busy for longer than the wait allowed."""


def normalise_phone(phone: str) -> str:
    """The E.164 form of a phone (region RU for national forms), or ValueError."""
    try:
        number = phonenumbers.parse(phone, "RU")
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class ContactLocks:
    """Per-person locks in Redis, shared by every process of the service."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "leadloop:lock:contact",
        ttl_s: float = 30.0,
        wait_s: float = 20.0,
        poll_s: float = 0.02,
        secret: bytes = b"",
    ) -> None:
        if ttl_s <= 0 or wait_s < 0 or poll_s <= 0:
            raise ValueError("lock times must be positive")
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self._secret = secret

    def name_for_phone(self, phone: str) -> str:
        """The Redis key of a phone's lock; the same for every spelling of it."""
        return self._name(f"phone:{normalise_phone(phone)}")

    def name_for_messenger(self, kind: str, value: str) -> str:
        """The Redis key of a messenger identity's lock (e.g. TELEGRAM, tg:123)."""
        if not kind or not value:
            raise ValueError("a messenger identity needs a type and a value")
        return self._name(f"im:{kind.upper()}:{value}")

    def for_contact(
        self, *, phone: str | None, im: tuple[str, str] | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of a person: by phone when known, else by messenger identity."""
        if phone is not None:
            return self.hold(self.name_for_phone(phone))
        if im is not None:
            return self.hold(self.name_for_messenger(*im))
        raise ValueError("a contact lock needs a phone or a messenger identity")

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold the named lock for the block: wait at most `wait_s`, renew the TTL."""
        lock = Lock(
            self.redis,
            name,
            timeout=self.ttl_s,
            sleep=self.poll_s,
            blocking_timeout=self.wait_s,
            thread_local=False,  # one Lock per holder; tasks share a thread
        )
        if not await lock.acquire():
            log.warning("bitrix24.lock.timeout", lock=name, wait_s=self.wait_s)
            raise LockTimeout(f"lock {name} stayed busy for {self.wait_s} s")
        renewal = asyncio.get_running_loop().create_task(self._renew(lock, name))
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await self._release(lock, name)

    def _name(self, subject: str) -> str:
        digest = hashlib.blake2b(subject.encode(), digest_size=16, key=self._secret)
        return f"{self.prefix}:{digest.hexdigest()}"

    async def _renew(self, lock: Lock, name: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await lock.reacquire()
            except RedisError:  # lost, or Redis out of reach: the release will tell
                log.error("bitrix24.lock.renewal_failed", lock=name)
                return

    async def _release(self, lock: Lock, name: str) -> None:
        try:
            await lock.release()
        except LockError:
            # The TTL ran out (Redis unreachable for a while, or the loop stalled):
            # someone else may have worked in parallel. Keys keep writes single.
            log.error("bitrix24.lock.lost", lock=name)
