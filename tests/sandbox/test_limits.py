"""The leaky bucket (503) and the per-method operating-time limit (429)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from sandbox.limits import (
    OPERATING_LIMIT_S,
    LeakyBucket,
    OperatingLimiter,
    RateLimiter,
)
from sandbox.server import SandboxOptions
from tests.sandbox.conftest import RunningSandbox, free_port, running_sandbox

HOOK = "/rest/1/sandbox"
TOO_MANY = {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}
BLOCKED = {
    "error": "OPERATION_TIME_LIMIT",
    "error_description": "Method is blocked due to operation time limit.",
}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def standard_server() -> Iterator[RunningSandbox]:
    """A sandbox started as `--rate-limit standard`."""
    options = SandboxOptions(port=free_port(), rate_limit="standard")
    with running_sandbox(options) as running:
        yield running


@pytest.fixture
def standard(standard_server: RunningSandbox) -> RunningSandbox:
    standard_server.reset()
    return standard_server


@pytest.fixture
def clock(sandbox: RunningSandbox) -> Iterator[FakeClock]:
    """Freeze the live sandbox's bucket clock (buckets made from now on use it)."""
    fake = FakeClock()
    limiter = sandbox.app.sandbox.limiter
    limiter.clock = fake
    yield fake
    limiter.clock = time.monotonic
    limiter.reset()


def hit(sandbox: RunningSandbox, times: int) -> list[int]:
    return [sandbox.call("server.time").status_code for _ in range(times)]


def slow_next_calls(
    sandbox: RunningSandbox, method: str, seconds: float, times: int = 1
) -> None:
    fault = {"method": method, "kind": "latency", "seconds": seconds, "times": times}
    sandbox.http.post("/_sandbox/faults", json=fault).raise_for_status()


class TestLeakyBucket:
    def test_admits_the_burst_then_refuses(self) -> None:
        clock = FakeClock()
        bucket = LeakyBucket(rate=2, burst=50, clock=clock)

        admitted = [bucket.admit() for _ in range(51)]

        assert admitted == [True] * 50 + [False]

    def test_drains_at_the_rate(self) -> None:
        clock = FakeClock()
        bucket = LeakyBucket(rate=2, burst=50, clock=clock)
        for _ in range(50):
            bucket.admit()

        clock.advance(1.0)

        assert [bucket.admit() for _ in range(3)] == [True, True, False]

    def test_a_refused_request_does_not_fill_the_bucket(self) -> None:
        clock = FakeClock()
        bucket = LeakyBucket(rate=2, burst=50, clock=clock)
        for _ in range(60):
            bucket.admit()

        clock.advance(0.5)

        assert bucket.admit() is True

    def test_an_idle_bucket_empties_completely(self) -> None:
        clock = FakeClock()
        bucket = LeakyBucket(rate=2, burst=50, clock=clock)
        for _ in range(50):
            bucket.admit()

        clock.advance(3600)

        assert [bucket.admit() for _ in range(51)] == [True] * 50 + [False]


class TestRateLimiter:
    def test_each_source_has_its_own_bucket(self) -> None:
        limiter = RateLimiter("standard", FakeClock())
        for _ in range(50):
            limiter.admit("10.0.0.1")

        assert limiter.admit("10.0.0.1") is False
        assert limiter.admit("10.0.0.2") is True

    def test_enterprise_allows_250_at_5_a_second(self) -> None:
        clock = FakeClock()
        limiter = RateLimiter("enterprise", clock)

        admitted = [limiter.admit("ip") for _ in range(251)]
        clock.advance(1.0)
        after_a_second = [limiter.admit("ip") for _ in range(6)]

        assert admitted == [True] * 250 + [False]
        assert after_a_second == [True] * 5 + [False]

    def test_off_admits_everything(self) -> None:
        limiter = RateLimiter("off", FakeClock())

        assert all(limiter.admit("ip") for _ in range(1000))

    def test_an_unknown_plan_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown rate-limit plan"):
            RateLimiter("premium")

    def test_changing_the_plan_empties_the_buckets(self) -> None:
        limiter = RateLimiter("standard", FakeClock())
        for _ in range(51):
            limiter.admit("ip")

        limiter.set_plan("standard")

        assert limiter.admit("ip") is True


class TestOperatingLimiter:
    def test_calls_of_a_tenth_of_a_second_or_less_are_not_charged(self) -> None:
        limiter = OperatingLimiter(clock=FakeClock())

        for _ in range(1000):
            limiter.record("crm.deal.list", "hook", 0.1)

        assert limiter.spent("crm.deal.list", "hook") == 0
        assert limiter.reset_at("crm.deal.list", "hook") is None

    def test_slower_calls_are_charged_in_full(self) -> None:
        limiter = OperatingLimiter(clock=FakeClock())

        limiter.record("crm.deal.list", "hook", 0.5)
        limiter.record("crm.deal.list", "hook", 1.5)

        assert limiter.spent("crm.deal.list", "hook") == pytest.approx(2.0)

    def test_blocks_once_strictly_over_the_limit(self) -> None:
        limiter = OperatingLimiter(limit_s=420, clock=FakeClock())

        limiter.record("crm.deal.list", "hook", 420)
        at_limit = limiter.blocked("crm.deal.list", "hook")
        limiter.record("crm.deal.list", "hook", 0.2)

        assert at_limit is False
        assert limiter.blocked("crm.deal.list", "hook") is True

    def test_the_default_limit_is_420_seconds(self) -> None:
        assert OperatingLimiter().limit_s == OPERATING_LIMIT_S == 420

    def test_each_method_and_caller_is_counted_apart(self) -> None:
        limiter = OperatingLimiter(limit_s=1, clock=FakeClock())

        limiter.record("crm.deal.list", "hook", 2)

        assert limiter.blocked("crm.deal.list", "hook") is True
        assert limiter.blocked("crm.deal.get", "hook") is False
        assert limiter.blocked("crm.deal.list", "app") is False

    def test_reset_at_is_the_first_charged_call_plus_ten_minutes(self) -> None:
        clock = FakeClock(1_000_020.5)
        limiter = OperatingLimiter(clock=clock)

        limiter.record("m", "hook", 1)
        clock.advance(30)
        limiter.record("m", "hook", 1)

        assert limiter.reset_at("m", "hook") == 1_000_620

    def test_time_older_than_ten_one_minute_buckets_is_forgotten(self) -> None:
        clock = FakeClock(1_000_020.0)
        limiter = OperatingLimiter(limit_s=1, clock=clock)
        limiter.record("m", "hook", 2)
        clock.advance(300)
        limiter.record("m", "hook", 0.5)

        clock.advance(310)

        assert limiter.spent("m", "hook") == pytest.approx(0.5)
        assert limiter.blocked("m", "hook") is False
        assert limiter.reset_at("m", "hook") == 1_000_920


class TestRequestRateOverHttp:
    def test_the_51st_rapid_request_is_refused_with_503(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="standard")

        statuses = hit(sandbox, 50)
        refused = sandbox.call("server.time")

        assert statuses == [200] * 50
        assert refused.status_code == 503
        assert refused.json() == TOO_MANY
        assert refused.headers["content-type"] == "application/json; charset=utf-8"

    def test_the_bucket_drains_two_a_second(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="standard")
        hit(sandbox, 51)

        clock.advance(1.0)

        assert hit(sandbox, 3) == [200, 200, 503]

    def test_enterprise_allows_a_burst_of_250_at_5_a_second(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="enterprise")

        statuses = hit(sandbox, 251)
        clock.advance(1.0)
        after_a_second = hit(sandbox, 6)

        assert statuses == [200] * 250 + [503]
        assert after_a_second == [200] * 5 + [503]

    def test_a_batch_counts_as_one_request(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="standard")
        hit(sandbox, 49)

        batch = sandbox.call("batch", {"cmd": ["server.time"] * 50})
        refused = sandbox.call("server.time")

        assert batch.status_code == 200
        assert len(batch.json()["result"]["result"]) == 50
        assert refused.status_code == 503

    def test_unknown_methods_and_errors_count_too(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="standard")
        for _ in range(25):
            sandbox.http.get("/rest/no.such.method")
            sandbox.http.get("/rest/1/wrong/server.time")

        assert sandbox.call("server.time").status_code == 503

    def test_refusals_are_counted_in_stats(
        self, sandbox: RunningSandbox, clock: FakeClock
    ) -> None:
        sandbox.settings(rate_limit="standard")
        hit(sandbox, 53)

        stats = sandbox.http.get("/_sandbox/stats").json()

        assert stats["rejected_rate_limit"] == 3
        assert stats["http_by_method"]["server.time"] == 50

    def test_off_never_refuses(self, sandbox: RunningSandbox, clock: FakeClock) -> None:
        sandbox.settings(rate_limit="off")

        assert hit(sandbox, 80) == [200] * 80

    def test_an_unknown_plan_is_a_400_from_settings(
        self, sandbox: RunningSandbox
    ) -> None:
        response = sandbox.http.post(
            "/_sandbox/settings", json={"rate_limit": "premium"}
        )

        assert response.status_code == 400
        assert "premium" in response.json()["error"]


class TestStartedWithStandardLimit:
    def test_the_start_option_sets_the_bucket(self, standard: RunningSandbox) -> None:
        statuses = [standard.call("server.time").status_code for _ in range(60)]

        assert statuses[:50] == [200] * 50
        assert 503 in statuses[50:]

    def test_waiting_lets_requests_through_again(
        self, standard: RunningSandbox
    ) -> None:
        for _ in range(60):
            if standard.call("server.time").status_code == 503:
                break

        time.sleep(0.6)

        assert standard.call("server.time").status_code == 200

    def test_reset_returns_to_the_start_plan(self, standard: RunningSandbox) -> None:
        standard.settings(rate_limit="off")

        standard.reset()
        statuses = [standard.call("server.time").status_code for _ in range(60)]

        assert 503 in statuses


class TestOperatingTimeOverHttp:
    def test_a_slow_call_is_charged_and_reports_its_reset_time(
        self, sandbox: RunningSandbox
    ) -> None:
        slow_next_calls(sandbox, "server.time", 0.15)

        block = sandbox.call("server.time").json()["time"]

        assert isinstance(block["operating"], float)
        assert block["operating"] >= 0.15
        assert isinstance(block["operating_reset_at"], int)
        assert abs(block["operating_reset_at"] - (block["start"] + 600)) <= 1
        assert block["duration"] >= 0.15

    def test_fast_calls_are_never_charged(self, sandbox: RunningSandbox) -> None:
        for _ in range(10):
            block = sandbox.call("server.time").json()["time"]

        assert block["operating"] == 0
        assert "operating_reset_at" not in block

    def test_over_the_limit_the_method_answers_429(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.settings(operating_limit_s=0.25)
        slow_next_calls(sandbox, "server.time", 0.15, times=2)
        sandbox.call("server.time")
        sandbox.call("server.time")

        response = sandbox.call("server.time")

        assert response.status_code == 429
        assert response.json() == BLOCKED

    def test_other_methods_are_not_blocked(self, sandbox: RunningSandbox) -> None:
        sandbox.settings(operating_limit_s=0.1)
        slow_next_calls(sandbox, "server.time", 0.15)
        sandbox.call("server.time")

        assert sandbox.call("server.time").status_code == 429
        assert sandbox.call("scope").status_code == 200

    def test_another_webhook_is_not_blocked(self, sandbox: RunningSandbox) -> None:
        sandbox.app.portal.add_webhook(1, "second", frozenset({"crm"}))
        sandbox.settings(operating_limit_s=0.1)
        slow_next_calls(sandbox, "server.time", 0.15)
        sandbox.call("server.time")

        response = sandbox.http.get("/rest/1/second/server.time")

        assert response.status_code == 200

    def test_batch_commands_are_charged_to_their_own_methods(
        self, sandbox: RunningSandbox
    ) -> None:
        slow_next_calls(sandbox, "server.time", 0.15)

        batch = sandbox.call("batch", {"cmd": {"a": "server.time"}}).json()
        direct = sandbox.call("server.time").json()["time"]

        assert batch["time"]["operating"] == 0
        command_time = batch["result"]["result_time"]["a"]
        assert command_time["operating"] >= 0.15
        assert isinstance(command_time["operating_reset_at"], int)
        assert direct["operating"] >= 0.15

    def test_a_blocked_method_fails_its_batch_command(
        self, sandbox: RunningSandbox
    ) -> None:
        sandbox.settings(operating_limit_s=0.1)
        slow_next_calls(sandbox, "server.time", 0.15)
        sandbox.call("server.time")

        response = sandbox.call("batch", {"cmd": {"a": "server.time", "b": "scope"}})

        assert response.status_code == 200
        result = response.json()["result"]
        assert result["result_error"] == {"a": BLOCKED}
        assert list(result["result"]) == ["b"]

    def test_reset_restores_the_default_limit(self, sandbox: RunningSandbox) -> None:
        sandbox.settings(operating_limit_s=0.1)

        sandbox.reset()
        shown = sandbox.http.post("/_sandbox/settings", json={}).json()

        assert shown["operating_limit_s"] == 420

    @pytest.mark.parametrize("value", [-1, "fast", True])
    def test_a_bad_operating_limit_is_a_400(
        self, sandbox: RunningSandbox, value: object
    ) -> None:
        response = sandbox.http.post(
            "/_sandbox/settings", json={"operating_limit_s": value}
        )

        assert response.status_code == 400
        assert "operating_limit_s" in response.json()["error"]

    def test_an_unknown_setting_is_a_400(self, sandbox: RunningSandbox) -> None:
        response = sandbox.http.post("/_sandbox/settings", json={"burst": 5})

        assert response.status_code == 400
        assert "burst" in response.json()["error"]
