"""The gateway's portal-administration calls, against the sandbox over HTTP."""

from __future__ import annotations

import pytest

from connectors.bitrix24.admin import PortalAdmin, stage_directory
from connectors.bitrix24.client import Bitrix24Client
from connectors.bitrix24.errors import Rejected
from tests.connectors.bitrix24.conftest import Wire
from tests.sandbox.conftest import RunningSandbox


@pytest.fixture
def admin(webhook_client: Bitrix24Client) -> PortalAdmin:
    return PortalAdmin(webhook_client)


class TestPortalAdmin:
    async def test_a_webhook_is_not_an_app_and_holds_its_scopes(
        self, admin: PortalAdmin
    ) -> None:
        assert admin.is_app is False
        assert {"crm", "task", "log", "im", "user"} <= await admin.scopes()
        assert await admin.is_admin() is True

    async def test_a_directory_longer_than_a_page_is_read_whole(
        self, admin: PortalAdmin, portal: RunningSandbox
    ) -> None:
        before = len(await admin.directory("SOURCE"))
        for number in range(60):
            await admin.add_status("SOURCE", f"UC_S{number:02}", f"S{number}", sort=900)

        sources = await admin.directory("SOURCE")

        assert len(sources) == before + 60
        assert len({source.status_id for source in sources}) == before + 60

    async def test_a_pipeline_is_created_with_our_origin_and_its_stages(
        self, admin: PortalAdmin
    ) -> None:
        created = await admin.add_pipeline(
            "Записи", originator_id="leadloop", origin_id="pipeline-1"
        )

        found = {pipeline.id: pipeline for pipeline in await admin.pipelines()}
        stages = await admin.directory(stage_directory(created.id))
        assert found[created.id] == created
        assert (created.originator_id, created.origin_id) == ("leadloop", "pipeline-1")
        assert f"C{created.id}:NEW" in {stage.status_id for stage in stages}
        assert {stage.semantics for stage in stages} == {
            "process",
            "success",
            "failure",
        }

    async def test_a_failure_stage_is_sent_with_its_semantics(
        self, admin: PortalAdmin
    ) -> None:
        await admin.add_status(
            "DEAL_STAGE", "UC_REFUSED", "Отказ", sort=200, semantics="failure"
        )

        stages = {s.status_id: s for s in await admin.directory("DEAL_STAGE")}
        assert (stages["UC_REFUSED"].semantics, stages["UC_REFUSED"].sort) == (
            "failure",
            200,
        )

    async def test_a_user_field_is_sent_by_its_short_name_and_found_by_its_full_one(
        self, admin: PortalAdmin, wire: Wire
    ) -> None:
        await admin.add_user_field(
            "deal", "UF_CRM_LL_VISIT_AT", "datetime", "Время визита"
        )

        fields = await admin.user_fields("deal")
        sent = wire.bodies("crm.deal.userfield.add")[0]["fields"]
        assert (sent["FIELD_NAME"], sent["LABEL"]) == (
            "LL_VISIT_AT",
            "Время визита",
        )
        assert fields["UF_CRM_LL_VISIT_AT"].user_type == "datetime"

    async def test_the_same_field_twice_is_refused(self, admin: PortalAdmin) -> None:
        await admin.add_user_field("lead", "UF_CRM_LL_SUMMARY", "string", "Итог")

        with pytest.raises(Rejected):
            await admin.add_user_field("lead", "UF_CRM_LL_SUMMARY", "string", "Итог")

    async def test_bindings_list_what_was_bound(self, admin: PortalAdmin) -> None:
        # Unlike a portal, the sandbox lets a webhook bind (a portal answers
        # WRONG_AUTH_TYPE): the shapes are the same as for an app.
        handler = "https://leadloop.salon.test/webhooks/bitrix24"

        await admin.bind("onCrmDealUpdate", handler)

        bound = await admin.bindings()
        assert [(b.event, b.handler) for b in bound] == [("ONCRMDEALUPDATE", handler)]
