"""`leadloop doctor` against the sandbox portal and bot, real Redis, and a model
endpoint mocked with respx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx
from arq.connections import ArqRedis
from click.testing import CliRunner

from app import cli
from app.clients import redis_client
from app.provision.doctor import Check, Diagnosis, Health, diagnose
from app.provision.setup import run_setup
from app.settings import Settings, get_settings
from sandbox.state import ALL_SCOPES
from sandbox.telegram import SANDBOX_BOT_TOKEN
from tests.app.conftest import DEAD_URL_PORT
from tests.app.provisioning import (
    APPLICATION_TOKEN,
    PUBLIC_URL,
    SALON_RULES,
    TELEGRAM_SECRET,
    App,
    Upstreams,
    oauth_app,
    portal,
    portal_server,
    portal_settings,
    salon_rules,
    set_up,
    upstreams,
)
from tests.sandbox.conftest import RunningSandbox

__all__ = ["oauth_app", "portal", "portal_server", "upstreams"]  # fixtures

LLM_BASE = "http://llm.test/v1"


def check(diagnosis: Diagnosis, name: str) -> Check:
    return next(found for found in diagnosis.checks if found.name == name)


async def examine(
    upstreams: Upstreams, settings: Settings, redis: ArqRedis, rules_extra: str = ""
) -> Diagnosis:
    return await diagnose(
        upstreams.doctor_target(settings, salon_rules(rules_extra), redis)
    )


@pytest.fixture
def model_endpoint() -> Iterator[respx.MockRouter]:
    """The model endpoint mocked; the sandbox on loopback stays real."""
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        yield router


class TestDoctorOnASetUpPortal:
    async def test_every_check_passes(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal)
        await set_up(upstreams, settings, salon_rules())

        diagnosis = await examine(upstreams, settings, redis)

        assert diagnosis.healthy
        by_name = {found.name: found.health for found in diagnosis.checks}
        # The test Redis may run without an append-only file: a warning in
        # development, never a problem.
        assert by_name.pop("redis") in (Health.OK, Health.WARNING)
        assert set(by_name.values()) == {Health.OK}
        assert "rules qualifier" in check(diagnosis, "model").summary

    async def test_an_app_with_its_events_bound_passes_the_events_check(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        oauth_app: App,
    ) -> None:
        settings = portal_settings(portal)
        rules = salon_rules()
        target = upstreams.setup_target(settings, rules, admin=oauth_app.admin)

        await run_setup(target)
        diagnosis = await diagnose(
            upstreams.doctor_target(settings, rules, redis, admin=oauth_app.admin)
        )

        events = check(diagnosis, "bitrix24.events")
        assert events.health is Health.OK
        assert f"{PUBLIC_URL}/webhooks/bitrix24" in events.summary


class TestDoctorOnTheBitrix24Portal:
    async def test_a_wrong_webhook_code_is_an_auth_problem_and_the_rest_waits(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        wrong = portal.webhook.replace("/sandbox/", "/wrong-code/")
        settings = portal_settings(portal, bitrix24_webhook_url=wrong)

        diagnosis = await examine(upstreams, settings, redis)

        connection = check(diagnosis, "bitrix24.connection")
        assert connection.health is Health.PROBLEM
        assert "does not accept these credentials (INVALID_CREDENTIALS)" in (
            connection.summary
        )
        assert "LEADLOOP_BITRIX24_WEBHOOK_URL" in connection.fix
        assert check(diagnosis, "bitrix24.scopes").health is Health.SKIPPED
        assert not diagnosis.healthy

    async def test_a_portal_nobody_answers_for_is_a_connection_problem(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        url = f"http://127.0.0.1:{DEAD_URL_PORT}/rest/1/sandbox/"
        settings = portal_settings(portal, bitrix24_webhook_url=url)

        diagnosis = await examine(upstreams, settings, redis)

        connection = check(diagnosis, "bitrix24.connection")
        assert connection.health is Health.PROBLEM
        assert connection.summary.startswith("no connection to the portal")

    async def test_a_missing_scope_names_the_scope_and_what_needs_it(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        narrow = ALL_SCOPES - {"task", "log"}
        portal.app.portal.add_webhook(1, "narrow", narrow)
        url = portal.webhook.replace("/sandbox/", "/narrow/")
        settings = portal_settings(portal, bitrix24_webhook_url=url)

        diagnosis = await examine(upstreams, settings, redis)

        scopes = check(diagnosis, "bitrix24.scopes")
        assert scopes.health is Health.PROBLEM
        assert "lacks the scope(s) task, log" in scopes.summary
        assert "the weekly report in the feed" in scopes.summary
        assert "tick task, log" in scopes.fix

    async def test_a_webhook_of_a_user_who_is_no_administrator_is_a_warning(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        manager = {"ID": "2", "ACTIVE": True, "NAME": "Ольга", "UF_DEPARTMENT": [1]}
        portal.load({"users": [manager]})
        portal.app.portal.add_webhook(2, "manager", ALL_SCOPES)
        url = portal.webhook.replace("/1/sandbox/", "/2/manager/")
        settings = portal_settings(portal, bitrix24_webhook_url=url)

        diagnosis = await examine(upstreams, settings, redis)

        scopes = check(diagnosis, "bitrix24.scopes")
        assert scopes.health is Health.WARNING
        assert "not an administrator" in scopes.summary

    async def test_a_stage_the_portal_lacks_is_named_with_its_role(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal)
        await set_up(upstreams, settings, salon_rules())
        stray = 'lost = ["LOSE"]\nno_show = ["UC_NOSHOW", "C3:NEW"]'
        rules = salon_rules(base=SALON_RULES.replace('lost = ["LOSE"]', stray))

        diagnosis = await diagnose(upstreams.doctor_target(settings, rules, redis))

        stages = check(diagnosis, "bitrix24.stages")
        assert stages.health is Health.PROBLEM
        assert "stage UC_NOSHOW ([crm.stages].no_show) is not in pipeline 0" in (
            stages.summary
        )
        assert "pipeline 3 does not exist" in stages.summary
        assert "leadloop setup --pipeline" in stages.fix

    async def test_a_lead_status_the_portal_lacks_is_named(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal)
        await set_up(upstreams, settings, salon_rules())

        diagnosis = await examine(
            upstreams, settings, redis, '[crm.lead_statuses]\nlost = ["UC_SPAM"]\n'
        )

        stages = check(diagnosis, "bitrix24.stages")
        assert stages.health is Health.PROBLEM
        assert "lead status UC_SPAM ([crm.lead_statuses]) does not exist" in (
            stages.summary
        )

    async def test_fields_not_yet_created_send_the_integrator_to_setup(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        diagnosis = await examine(upstreams, portal_settings(portal), redis)

        fields = check(diagnosis, "bitrix24.fields")
        assert fields.health is Health.PROBLEM
        assert "UF_CRM_LL_VISIT_AT does not exist on deals" in fields.summary
        assert "UF_CRM_LL_SUMMARY ([intake.fields].summary)" in fields.summary
        assert "run `leadloop setup`" in fields.fix

    async def test_without_the_application_token_events_would_be_refused(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal, bitrix24_application_token=None)

        diagnosis = await examine(upstreams, settings, redis)

        events = check(diagnosis, "bitrix24.events")
        assert events.health is Health.PROBLEM
        assert "every event the portal sends is refused" in events.summary

    async def test_without_a_public_address_an_inbound_webhook_is_told_the_portal_steps(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal, public_url=None)

        diagnosis = await examine(upstreams, settings, redis)

        events = check(diagnosis, "bitrix24.events")
        assert events.health is Health.PROBLEM
        assert "LEADLOOP_PUBLIC_URL is not set" in events.summary
        # Setup cannot bind them for an inbound webhook: the fix is the portal's form.
        assert "leadloop setup" not in events.fix
        assert "Outgoing webhook" in events.fix
        assert "<LEADLOOP_PUBLIC_URL>/webhooks/bitrix24" in events.fix

    async def test_without_a_public_address_an_app_is_told_to_run_setup(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        oauth_app: App,
    ) -> None:
        settings = portal_settings(portal, public_url=None)
        diagnosis = await diagnose(
            upstreams.doctor_target(
                settings, salon_rules(), redis, admin=oauth_app.admin
            )
        )

        events = check(diagnosis, "bitrix24.events")
        assert events.health is Health.PROBLEM
        assert "run `leadloop setup`, which binds the events" in events.fix


class TestDoctorOnTheTelegramWebhook:
    async def test_a_webhook_pointing_elsewhere_is_a_problem(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal)
        await set_up(upstreams, settings, salon_rules())
        elsewhere = "https://old.salon.test/webhooks/telegram"
        portal.http.post(
            f"/bot{SANDBOX_BOT_TOKEN}/setWebhook",
            json={"url": elsewhere, "secret_token": TELEGRAM_SECRET},
        ).raise_for_status()

        diagnosis = await examine(upstreams, settings, redis)

        telegram = check(diagnosis, "telegram.webhook")
        assert telegram.health is Health.PROBLEM
        assert f"points at {elsewhere}, not {PUBLIC_URL}/webhooks/telegram" in (
            telegram.summary
        )
        assert "another deployment" in telegram.summary
        assert not diagnosis.healthy

    async def test_update_kinds_left_out_are_named(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal)
        portal.http.post(
            f"/bot{SANDBOX_BOT_TOKEN}/setWebhook",
            json={
                "url": f"{PUBLIC_URL}/webhooks/telegram",
                "secret_token": TELEGRAM_SECRET,
                "allowed_updates": ["message", "edited_message"],
            },
        ).raise_for_status()

        diagnosis = await examine(upstreams, settings, redis)

        telegram = check(diagnosis, "telegram.webhook")
        assert telegram.health is Health.PROBLEM
        assert "does not send callback_query, my_chat_member" in telegram.summary

    async def test_no_webhook_at_all_sends_the_integrator_to_setup(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        diagnosis = await examine(upstreams, portal_settings(portal), redis)

        telegram = check(diagnosis, "telegram.webhook")
        assert telegram.health is Health.PROBLEM
        assert "has no webhook" in telegram.summary
        assert telegram.fix == "run `leadloop setup`"

    async def test_a_refused_bot_token_is_said_plainly(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        settings = portal_settings(portal, telegram_bot_token="123456:wrong-token")

        diagnosis = await examine(upstreams, settings, redis)

        telegram = check(diagnosis, "telegram.webhook")
        assert telegram.health is Health.PROBLEM
        assert telegram.summary == "Telegram does not accept the bot token"
        assert "@BotFather" in telegram.fix

    async def test_a_recent_delivery_error_with_updates_waiting_is_a_problem(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        # Nothing listens at the public address: the delivery fails as it does
        # for a real Telegram that cannot reach the API.
        down = f"http://127.0.0.1:{DEAD_URL_PORT}"
        settings = portal_settings(portal, public_url=down)
        await set_up(upstreams, settings, salon_rules())
        portal.http.post(
            "/_sandbox/telegram/deliver", json={"chat_id": 100000001, "text": "Привет"}
        )

        diagnosis = await examine(upstreams, settings, redis)

        telegram = check(diagnosis, "telegram.webhook")
        assert telegram.health is Health.PROBLEM
        assert "last delivery failed" in telegram.summary
        assert "1 update(s) waiting" in telegram.summary


class TestDoctorOnRedis:
    async def test_redis_nobody_listens_for_is_a_problem(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        dead = f"redis://127.0.0.1:{DEAD_URL_PORT}/0"
        settings = portal_settings(portal, redis_url=dead)
        redis = redis_client(dead)
        try:
            diagnosis = await examine(upstreams, settings, redis)
        finally:
            await redis.aclose()

        found = check(diagnosis, "redis")
        assert found.health is Health.PROBLEM
        assert found.summary.startswith(f"Redis at {dead} does not answer")
        assert "LEADLOOP_REDIS_URL" in found.fix

    async def test_a_password_redis_refuses_is_named_as_such(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        # The test Redis has no password: AUTH with one is refused.
        wrong = "redis://:not-the-password@127.0.0.1:6379/15"
        settings = portal_settings(portal, redis_url=wrong)
        redis = redis_client(wrong)
        try:
            diagnosis = await examine(upstreams, settings, redis)
        finally:
            await redis.aclose()

        found = check(diagnosis, "redis")
        assert found.health is Health.PROBLEM
        assert found.summary.startswith(
            "Redis at redis://:***@127.0.0.1:6379/15 answers but refuses the user or "
            "password"
        )
        assert "correct the user and password in LEADLOOP_REDIS_URL" in found.fix
        assert "not-the-password" not in found.summary + found.fix

    async def test_a_live_redis_reports_its_version_and_persistence(
        self, portal: RunningSandbox, upstreams: Upstreams, redis: ArqRedis
    ) -> None:
        info = await redis.info("server")

        found = check(await examine(upstreams, portal_settings(portal), redis), "redis")

        assert f"Redis {info['redis_version']}" in found.summary
        assert found.health is not Health.PROBLEM


class TestDoctorOnTheModel:
    def settings(self, portal: RunningSandbox) -> Settings:
        return portal_settings(
            portal, llm_base_url=LLM_BASE, llm_model="qwen2.5-7b", llm_api_key="k"
        )

    async def test_an_endpoint_offering_the_model_passes(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        listing = {"object": "list", "data": [{"id": "qwen2.5-7b", "object": "model"}]}
        models = model_endpoint.get(f"{LLM_BASE}/models").respond(200, json=listing)

        found = check(await examine(upstreams, self.settings(portal), redis), "model")

        assert found.health is Health.OK
        assert models.calls.last.request.headers["authorization"] == "Bearer k"

    async def test_a_refused_key_is_a_problem_and_the_rules_still_answer(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        model_endpoint.get(f"{LLM_BASE}/models").respond(
            401, json={"error": {"message": "bad key", "type": "auth"}}
        )

        diagnosis = await examine(upstreams, self.settings(portal), redis)

        found = check(diagnosis, "model")
        assert found.health is Health.PROBLEM
        assert "refuses the key (HTTP 401)" in found.summary
        assert "no lead is lost" in found.summary
        assert found.fix == "put a valid key in LEADLOOP_LLM_API_KEY"
        assert not diagnosis.healthy

    async def test_a_failing_endpoint_is_a_problem(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        model_endpoint.get(f"{LLM_BASE}/models").respond(503, text="overloaded")

        found = check(await examine(upstreams, self.settings(portal), redis), "model")

        assert (found.health, "answered HTTP 503" in found.summary) == (
            Health.PROBLEM,
            True,
        )

    async def test_an_endpoint_that_hangs_is_a_timeout(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        model_endpoint.get(f"{LLM_BASE}/models").mock(
            side_effect=httpx.ReadTimeout("no answer")
        )

        found = check(await examine(upstreams, self.settings(portal), redis), "model")

        assert found.health is Health.PROBLEM
        assert "did not answer in 10 s" in found.summary

    async def test_a_model_the_endpoint_does_not_offer_is_named(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        listing = {"object": "list", "data": [{"id": "llama3", "object": "model"}]}
        model_endpoint.get(f"{LLM_BASE}/models").respond(200, json=listing)

        found = check(await examine(upstreams, self.settings(portal), redis), "model")

        assert found.health is Health.PROBLEM
        assert "does not offer the model qwen2.5-7b (it offers: llama3)" in (
            found.summary
        )

    async def test_without_a_model_list_a_one_token_completion_decides(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        redis: ArqRedis,
        model_endpoint: respx.MockRouter,
    ) -> None:
        model_endpoint.get(f"{LLM_BASE}/models").respond(404, json={"error": "none"})
        completion = model_endpoint.post(f"{LLM_BASE}/chat/completions").respond(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": "qwen2.5-7b",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "length",
                    }
                ],
            },
        )

        found = check(await examine(upstreams, self.settings(portal), redis), "model")

        assert found.health is Health.OK
        sent = json.loads(completion.calls.last.request.content)
        assert (sent["model"], sent["max_tokens"]) == ("qwen2.5-7b", 1)


class TestDoctorCommand:
    def env(self, portal: RunningSandbox) -> dict[str, str]:
        return {
            "LEADLOOP_BITRIX24_WEBHOOK_URL": portal.webhook,
            "LEADLOOP_BITRIX24_APPLICATION_TOKEN": APPLICATION_TOKEN,
            "LEADLOOP_TELEGRAM_BOT_TOKEN": SANDBOX_BOT_TOKEN,
            "LEADLOOP_TELEGRAM_API_BASE": portal.base_url,
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
            "LEADLOOP_PUBLIC_URL": PUBLIC_URL,
            "LEADLOOP_REDIS_URL": portal_settings(portal).redis_url,
        }

    def test_a_set_up_portal_exits_zero(self, portal: RunningSandbox) -> None:
        get_settings.cache_clear()
        runner = CliRunner()
        assert runner.invoke(cli.main, ["setup"], env=self.env(portal)).exit_code == 0

        result = runner.invoke(cli.main, ["doctor"], env=self.env(portal))

        assert result.exit_code == 0, result.output
        assert result.output.rstrip().endswith("All checks passed.")

    def test_a_problem_exits_one_and_json_carries_the_fix(
        self, portal: RunningSandbox
    ) -> None:
        get_settings.cache_clear()
        env = {
            **self.env(portal),
            "LEADLOOP_REDIS_URL": f"redis://127.0.0.1:{DEAD_URL_PORT}/0",
        }

        result = CliRunner().invoke(cli.main, ["doctor", "--format", "json"], env=env)

        assert result.exit_code == 1
        answer = json.loads(result.output)
        redis = next(found for found in answer["checks"] if found["name"] == "redis")
        assert answer["healthy"] is False
        assert redis["health"] == "problem"
        assert redis["fix"] == "start Redis, or correct LEADLOOP_REDIS_URL"
