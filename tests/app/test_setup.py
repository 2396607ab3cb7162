"""`leadloop setup` against the sandbox portal and bot over real sockets."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from app import cli
from app.provision.setup import Status, make_plan, run_setup
from app.settings import get_settings
from sandbox.telegram import SANDBOX_BOT_TOKEN
from tests.app.provisioning import (
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
    snapshot,
    statuses,
    upstreams,
)
from tests.sandbox.conftest import RunningSandbox

__all__ = ["oauth_app", "portal", "portal_server", "upstreams"]  # fixtures

VISIT_FIELD = "UF_CRM_LL_VISIT_AT"
DEAL_EVENTS = [
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMDEALMOVETOCATEGORY",
]
# A pipeline of the salon's own: pipeline 1 with two stages a fresh one lacks.
OWN_PIPELINE = """
[crm]
mode = "classic"
pipelines = [1]
visit_field = "UF_CRM_LL_VISIT_AT"

[crm.stages]
new = ["C1:NEW"]
booked = ["C1:UC_BOOKED"]
visited = ["C1:WON"]
no_show = ["C1:UC_NOSHOW"]
lost = ["C1:LOSE"]
"""


def user_fields(portal: RunningSandbox, owner: str) -> dict[str, dict[str, Any]]:
    rows = portal.result(f"crm.{owner}.userfield.list", {"filter": {"LANG": "ru"}})
    return {row["FIELD_NAME"]: row for row in rows}


def directory(portal: RunningSandbox, entity_id: str) -> dict[str, dict[str, Any]]:
    rows = portal.result("crm.status.list", {"filter": {"ENTITY_ID": entity_id}})
    return {row["STATUS_ID"]: row for row in rows}


def pipeline_ids(portal: RunningSandbox) -> list[int]:
    answer = portal.result("crm.category.list", {"entityTypeId": 2})
    return [row["id"] for row in answer["categories"]]


def webhook_info(portal: RunningSandbox) -> dict[str, Any]:
    answer = portal.http.post(f"/bot{SANDBOX_BOT_TOKEN}/getWebhookInfo").json()
    info: dict[str, Any] = answer["result"]
    return info


class TestSetupThroughAnInboundWebhook:
    async def test_creates_the_fields_sources_and_telegram_webhook(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        settings = portal_settings(portal)

        report = await run_setup(upstreams.setup_target(settings, salon_rules()))

        assert not report.failed
        done = statuses(report)
        assert done[VISIT_FIELD] is Status.DONE
        assert done["UF_CRM_LL_READINESS"] is Status.DONE
        assert done["Telegram webhook"] is Status.DONE
        visit = user_fields(portal, "deal")[VISIT_FIELD]
        assert (visit["USER_TYPE_ID"], visit["EDIT_FORM_LABEL"]) == (
            "datetime",
            "Время визита",
        )
        # The sandbox starts in classic mode: the intake writes leads.
        lead_fields = user_fields(portal, "lead")
        assert lead_fields["UF_CRM_LL_SUMMARY"]["USER_TYPE_ID"] == "string"
        assert "UF_CRM_LL_SUMMARY" not in user_fields(portal, "deal")
        sources = directory(portal, "SOURCE")
        assert sources["TELEGRAM"]["NAME"] == "Telegram"
        assert sources["WHATSAPP"]["NAME"] == "WhatsApp"
        info = webhook_info(portal)
        assert info["url"] == f"{PUBLIC_URL}/webhooks/telegram"
        assert info["allowed_updates"] == [
            "message",
            "edited_message",
            "callback_query",
            "my_chat_member",
        ]
        assert portal.app.telegram.webhook.secret_token == TELEGRAM_SECRET

    async def test_a_second_run_changes_nothing_and_says_so(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        settings = portal_settings(portal)
        target = upstreams.setup_target(settings, salon_rules())
        await run_setup(target)
        before = snapshot(portal)

        again = await run_setup(target)

        assert snapshot(portal) == before
        assert {step.status for step in again.steps} <= {
            Status.ALREADY,
            Status.LEFT_ALONE,
        }
        assert statuses(again)[VISIT_FIELD] is Status.ALREADY
        telegram = next(s for s in again.steps if s.subject == "Telegram webhook")
        assert (telegram.status, telegram.detail.endswith("secret unchanged")) == (
            Status.ALREADY,
            True,
        )

    async def test_a_changed_secret_is_set_again(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        await run_setup(upstreams.setup_target(portal_settings(portal), salon_rules()))
        rotated = portal_settings(portal, telegram_webhook_secret="rotated_secret")

        report = await run_setup(upstreams.setup_target(rotated, salon_rules()))

        assert statuses(report)["Telegram webhook"] is Status.DONE
        assert portal.app.telegram.webhook.secret_token == "rotated_secret"

    async def test_a_dry_run_writes_nothing(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        before = snapshot(portal)

        report = await run_setup(
            upstreams.setup_target(portal_settings(portal), salon_rules()),
            dry_run=True,
        )

        assert snapshot(portal) == before
        assert webhook_info(portal)["url"] == ""
        assert statuses(report)[VISIT_FIELD] is Status.WOULD

    async def test_events_are_left_alone_with_the_outgoing_webhook_steps(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        report = await run_setup(
            upstreams.setup_target(portal_settings(portal), salon_rules())
        )

        events = next(step for step in report.steps if step.area == "events")
        assert events.status is Status.LEFT_ALONE
        assert "cannot subscribe" in events.detail
        assert "Outgoing webhook" in events.detail
        assert f"{PUBLIC_URL}/webhooks/bitrix24" in events.detail
        assert portal.result("event.get") == []

    async def test_whatsapp_is_left_to_the_meta_dashboard(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        settings = portal_settings(portal, whatsapp_access_token="EAA-token")

        report = await run_setup(upstreams.setup_target(settings, salon_rules()))

        whatsapp = next(step for step in report.steps if step.area == "whatsapp")
        assert whatsapp.status is Status.LEFT_ALONE
        assert f"Callback URL {PUBLIC_URL}/webhooks/whatsapp" in whatsapp.detail
        assert "LEADLOOP_WHATSAPP_VERIFY_TOKEN" in whatsapp.detail

    async def test_without_a_public_address_no_webhook_is_registered(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        settings = portal_settings(portal, public_url=None)

        report = await run_setup(upstreams.setup_target(settings, salon_rules()))

        telegram = next(step for step in report.steps if step.area == "telegram")
        assert telegram.status is Status.LEFT_ALONE
        assert "LEADLOOP_PUBLIC_URL" in telegram.detail
        assert webhook_info(portal)["url"] == ""

    async def test_a_field_of_another_type_is_left_alone(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        portal.result(
            "crm.deal.userfield.add",
            {"fields": {"FIELD_NAME": "LL_VISIT_AT", "USER_TYPE_ID": "string"}},
        )

        report = await run_setup(
            upstreams.setup_target(portal_settings(portal), salon_rules())
        )

        visit = next(step for step in report.steps if step.subject == VISIT_FIELD)
        assert visit.status is Status.LEFT_ALONE
        assert "exists as string" in visit.detail
        assert user_fields(portal, "deal")[VISIT_FIELD]["USER_TYPE_ID"] == "string"

    async def test_a_refused_create_fails_that_step_and_the_rest_go_on(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        portal.http.post(
            "/_sandbox/faults",
            json={
                "method": "crm.deal.userfield.add",
                "kind": "error",
                "status": 401,
                "code": "insufficient_scope",
                "description": "The request requires higher privileges",
            },
        ).raise_for_status()

        report = await run_setup(
            upstreams.setup_target(portal_settings(portal), salon_rules())
        )

        visit = next(step for step in report.steps if step.subject == VISIT_FIELD)
        assert report.failed
        assert visit.status is Status.FAILED
        assert "may not call crm.deal.userfield.add" in visit.detail
        assert "tick the scopes" in visit.detail
        assert statuses(report)["UF_CRM_LL_SUMMARY"] is Status.DONE


class TestSetupOfPipelines:
    async def test_without_the_flag_a_missing_pipeline_is_only_reported(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        rules = salon_rules(base=OWN_PIPELINE)

        report = await run_setup(upstreams.setup_target(portal_settings(portal), rules))

        pipeline = next(step for step in report.steps if step.area == "pipeline")
        assert pipeline.status is Status.LEFT_ALONE
        assert "--pipeline" in pipeline.detail
        assert pipeline_ids(portal) == [0]

    async def test_the_flag_creates_the_pipeline_and_its_own_stages_once(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        target = upstreams.setup_target(
            portal_settings(portal), salon_rules(base=OWN_PIPELINE), pipelines=True
        )

        first = await run_setup(target)
        second = await run_setup(target)

        assert statuses(first)["pipeline 1"] is Status.DONE
        categories = portal.result("crm.category.list", {"entityTypeId": 2})
        created = categories["categories"][-1]
        assert (created["id"], created["name"], created["originatorId"]) == (
            1,
            "Записи (leadloop)",
            "leadloop",
        )
        stages = directory(portal, "DEAL_STAGE_1")
        assert stages["C1:UC_BOOKED"]["NAME"] == "Записан"
        assert stages["C1:UC_NOSHOW"]["NAME"] == "Не пришёл"
        assert statuses(second)["C1:UC_BOOKED"] is Status.ALREADY
        assert pipeline_ids(portal) == [0, 1]

    async def test_a_pipeline_given_another_id_asks_for_the_config_to_follow(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        rules = salon_rules(base=OWN_PIPELINE.replace("1", "2"))
        target = upstreams.setup_target(portal_settings(portal), rules, pipelines=True)

        first = await run_setup(target)
        second = await run_setup(target)

        created = next(step for step in first.steps if step.area == "pipeline")
        assert created.status is Status.DONE
        assert "created as pipeline 1, not 2" in created.detail
        assert "C2: to C1:" in created.detail
        again = next(step for step in second.steps if step.area == "pipeline")
        assert again.status is Status.LEFT_ALONE
        assert "an earlier setup created it as pipeline 1" in again.detail
        assert pipeline_ids(portal) == [0, 1]

    async def test_a_missing_stage_of_the_default_pipeline_is_added_to_it(
        self, portal: RunningSandbox, upstreams: Upstreams
    ) -> None:
        rules = salon_rules(
            base=SALON_RULES.replace('lost = ["LOSE"]', 'lost = ["LOSE", "UC_REFUSED"]')
        )

        plan = await make_plan(
            upstreams.setup_target(portal_settings(portal), rules, pipelines=True)
        )
        report = await run_setup(
            upstreams.setup_target(portal_settings(portal), rules, pipelines=True)
        )

        assert {item.subject: item.status for item in plan}["UC_REFUSED"] is (
            Status.WOULD
        )
        assert statuses(report)["UC_REFUSED"] is Status.DONE
        refused = directory(portal, "DEAL_STAGE")["UC_REFUSED"]
        assert (refused["NAME"], refused["SEMANTICS"]) == ("Отказ", "F")


class TestSetupThroughAnApp:
    async def test_binds_the_deal_events_to_the_public_address_once(
        self,
        portal: RunningSandbox,
        upstreams: Upstreams,
        oauth_app: App,
    ) -> None:
        target = upstreams.setup_target(
            portal_settings(portal), salon_rules(), admin=oauth_app.admin
        )

        first = await run_setup(target)
        second = await run_setup(target)

        assert [statuses(first)[event] for event in DEAL_EVENTS] == [Status.DONE] * 4
        assert [statuses(second)[event] for event in DEAL_EVENTS] == (
            [Status.ALREADY] * 4
        )
        bound = portal.http.get(
            "/rest/event.get", params={"auth": oauth_app.access_token}
        ).json()["result"]
        assert sorted((row["event"], row["handler"]) for row in bound) == sorted(
            (event, f"{PUBLIC_URL}/webhooks/bitrix24") for event in DEAL_EVENTS
        )


class TestSetupCommand:
    def test_prints_what_it_did_and_exits_zero(self, portal: RunningSandbox) -> None:
        get_settings.cache_clear()
        env = {
            "LEADLOOP_BITRIX24_WEBHOOK_URL": portal.webhook,
            "LEADLOOP_TELEGRAM_BOT_TOKEN": SANDBOX_BOT_TOKEN,
            "LEADLOOP_TELEGRAM_API_BASE": portal.base_url,
            "LEADLOOP_TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
            "LEADLOOP_PUBLIC_URL": PUBLIC_URL,
        }

        result = CliRunner().invoke(cli.main, ["setup"], env=env)

        assert result.exit_code == 0, result.output
        assert "done           telegram  Telegram webhook" in result.output
        assert "left alone     events" in result.output

    def test_a_wrong_webhook_code_stops_it_with_the_fix(
        self, portal: RunningSandbox
    ) -> None:
        get_settings.cache_clear()
        wrong = portal.webhook.replace("/sandbox/", "/wrong-code/")
        env = {"LEADLOOP_BITRIX24_WEBHOOK_URL": wrong}

        result = CliRunner().invoke(cli.main, ["setup"], env=env)

        assert result.exit_code == 1
        assert "does not accept these credentials (INVALID_CREDENTIALS)" in (
            result.output
        )
        assert "fix: copy the URL again" in result.output
        assert "wrong-code" not in result.output

    def test_without_a_portal_it_says_how_to_connect_one(self) -> None:
        get_settings.cache_clear()

        result = CliRunner().invoke(cli.main, ["setup"])

        assert result.exit_code == 1
        assert "LEADLOOP_BITRIX24_WEBHOOK_URL is not set" in result.output
        assert "Inbound webhook" in result.output

    def test_a_public_address_with_a_path_is_refused(self) -> None:
        get_settings.cache_clear()
        env = {"LEADLOOP_PUBLIC_URL": "https://example.ru/webhooks/telegram"}

        result = CliRunner().invoke(cli.main, ["setup"], env=env)

        assert result.exit_code == 1
        assert "must be the bare address" in result.output

    @pytest.mark.parametrize("flag", ["--dry-run", "--pipeline"])
    def test_help_names_the_flags(self, flag: str) -> None:
        result = CliRunner().invoke(cli.main, ["setup", "--help"])

        assert flag in result.output
